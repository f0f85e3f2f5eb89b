--
-- lifecycle: DROP EXTENSION refuses while topics exist, CASCADE removes every
-- topic, partition, sequence, aggregate, output topic, group and catalog
-- object, and stops the database's worker; CREATE EXTENSION works again
-- afterwards.  (Ends with the extension installed, for the tests after it.)
--
\set SHOW_CONTEXT never
-- wait (at most 30 s) until this database has n maintenance workers
CREATE FUNCTION pg_temp.wait_workers(n int) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    FOR i IN 1..300 LOOP
        PERFORM pg_stat_clear_snapshot();
        IF (SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND backend_type = 'evstream worker') = n THEN
            RETURN true;
        END IF;
        PERFORM pg_sleep(0.1);
    END LOOP;
    RETURN false;
END
$$;

SELECT evstream.create_topic('lc_events');
CREATE SCHEMA lc;
CREATE ROLE regress_evs_lc_owner;
GRANT CREATE, USAGE ON SCHEMA lc TO regress_evs_lc_owner;
SET ROLE regress_evs_lc_owner;
SELECT evstream.create_topic('lc.owned_by_role', '1 hour');
INSERT INTO lc.owned_by_role (key) VALUES ('x');
RESET ROLE;
INSERT INTO lc_events (key) VALUES ('a'), ('b'), ('a');
SELECT id FROM evstream.consume('lc_events', 'lc_group', 2);
SELECT evstream.create_aggregate('lc_counts', 'lc_events', output_topic => 'lc.counts_out');
SELECT * FROM lc_counts ORDER BY group_key;
SELECT pg_temp.wait_workers(1);

------------------------------------------------------------------ DROP EXTENSION
\set VERBOSITY terse
DROP EXTENSION evstream;
\set VERBOSITY default
\echo :LAST_ERROR_SQLSTATE
-- the topics depend on the extension
SELECT pg_describe_object(classid, objid, objsubid) AS dependent
  FROM pg_depend
 WHERE refclassid = 'pg_extension'::regclass AND deptype = 'n'
   AND refobjid = (SELECT oid FROM pg_extension WHERE extname = 'evstream')
 ORDER BY 1;
-- nothing was dropped
SELECT count(*) FROM lc_events;
SELECT * FROM lc_counts ORDER BY group_key;

-- (what the NOTICE lists is an implementation detail: checked below instead)
SET client_min_messages = warning;
DROP EXTENSION evstream CASCADE;
RESET client_min_messages;
-- everything evstream made is gone
SELECT count(*) AS evstream_relations FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE c.relname LIKE 'lc\_%' OR n.nspname = 'evstream'
    OR (n.nspname = 'lc' AND c.relname NOT LIKE 'pg\_%');
SELECT count(*) AS evstream_schema FROM pg_namespace WHERE nspname = 'evstream';
SELECT count(*) AS access_method FROM pg_am WHERE amname = 'evstream';
SELECT count(*) AS event_triggers FROM pg_event_trigger WHERE evtname LIKE 'evstream%';
SELECT count(*) AS functions FROM pg_proc WHERE proname IN ('create_topic', 'poll', 'consume', '_next_id');
SELECT count(*) AS types FROM pg_type WHERE typname = 'event' AND typnamespace NOT IN ('pg_catalog'::regnamespace);
-- schemas and roles of the users stay
SELECT nspname FROM pg_namespace WHERE nspname = 'lc';
-- the worker of this database stops
SELECT pg_temp.wait_workers(0);
-- plain tables can be made with the freed names
CREATE TABLE lc_events (a int);
DROP TABLE lc_events;

------------------------------------------------------------------ CREATE EXTENSION again
CREATE EXTENSION evstream;
SELECT pg_temp.wait_workers(1);
SELECT count(*) FROM evstream._topic;
SELECT count(*) FROM evstream._group;
SELECT count(*) FROM evstream._aggregate;
SELECT evstream.create_topic('lc_events');
INSERT INTO lc_events (key) VALUES ('fresh') RETURNING id, key;
SELECT id, key FROM evstream.consume('lc_events', 'lc_group');
SELECT evstream.create_aggregate('lc_counts', 'lc_events');
SELECT * FROM lc_counts ORDER BY group_key;
UPDATE lc_events SET key = 'x';
SELECT evstream.drop_topic('lc_events', cascade => true);
-- without topics, DROP EXTENSION needs no CASCADE
DROP EXTENSION evstream;
CREATE EXTENSION evstream;
SELECT pg_temp.wait_workers(1);
SELECT evstream.create_topic('lc_events');
SELECT evstream.drop_topic('lc_events');

DROP SCHEMA lc;
DROP ROLE regress_evs_lc_owner;
