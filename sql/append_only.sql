--
-- append_only: events are immutable.  UPDATE, DELETE and MERGE fail with
-- SQLSTATE 0A000 and a message saying the topic is append-only -- on the
-- topic, on its partitions, through views, with triggers disabled and with
-- session_replication_role = replica; the access method refuses the rows
-- themselves.  TRUNCATE is allowed and ids continue; TRUNCATE ... RESTART
-- IDENTITY (id reuse) is refused.
--
\set SHOW_CONTEXT never
SELECT evstream.create_topic('ledger');
INSERT INTO ledger (key, payload) VALUES ('a', '{"v": 1}'), ('b', '{"v": 2}'), ('c', '{"v": 3}');

------------------------------------------------------------------ UPDATE / DELETE / MERGE
UPDATE ledger SET key = 'changed';
\echo :LAST_ERROR_SQLSTATE
UPDATE ledger SET payload = '{}' WHERE id = 1;
\echo :LAST_ERROR_SQLSTATE
-- refused even when no row would match
UPDATE ledger SET key = 'x' WHERE false;
\echo :LAST_ERROR_SQLSTATE
DELETE FROM ledger;
\echo :LAST_ERROR_SQLSTATE
DELETE FROM ledger WHERE id = 2;
\echo :LAST_ERROR_SQLSTATE
DELETE FROM ledger WHERE false;
\echo :LAST_ERROR_SQLSTATE
-- moving an event across partitions is an update too
UPDATE ledger SET created_at = created_at - interval '10 years';
\echo :LAST_ERROR_SQLSTATE
MERGE INTO ledger l USING (VALUES (1)) v(id) ON l.id = v.id
  WHEN MATCHED THEN UPDATE SET key = 'merged';
\echo :LAST_ERROR_SQLSTATE
MERGE INTO ledger l USING (VALUES (2)) v(id) ON l.id = v.id
  WHEN MATCHED THEN DELETE;
\echo :LAST_ERROR_SQLSTATE
-- inside a data-modifying CTE, a function, a prepared statement
WITH d AS (DELETE FROM ledger RETURNING id) SELECT count(*) FROM d;
\echo :LAST_ERROR_SQLSTATE
CREATE FUNCTION tamper() RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    UPDATE ledger SET key = 'tampered';
END
$$;
SELECT tamper();
\echo :LAST_ERROR_SQLSTATE
DROP FUNCTION tamper();
PREPARE del AS DELETE FROM ledger WHERE id = $1;
EXECUTE del(1);
\echo :LAST_ERROR_SQLSTATE
DEALLOCATE del;
-- straight on a partition
SELECT part AS current_part FROM evstream._partitions('ledger')
 WHERE NOT is_default AND lo <= now() AND now() < hi \gset
UPDATE :current_part SET key = 'x';
\echo :LAST_ERROR_SQLSTATE
DELETE FROM :current_part;
\echo :LAST_ERROR_SQLSTATE
DELETE FROM ledger_default;
\echo :LAST_ERROR_SQLSTATE
-- through an updatable view
CREATE VIEW ledger_view AS SELECT * FROM ledger;
UPDATE ledger_view SET key = 'x';
\echo :LAST_ERROR_SQLSTATE
DELETE FROM ledger_view;
\echo :LAST_ERROR_SQLSTATE
DROP VIEW ledger_view;

------------------------------------------------------------------ triggers off, replica role
ALTER TABLE ledger DISABLE TRIGGER ALL;
UPDATE ledger SET key = 'x';
\echo :LAST_ERROR_SQLSTATE
DELETE FROM ledger;
\echo :LAST_ERROR_SQLSTATE
ALTER TABLE ledger ENABLE TRIGGER ALL;
SET session_replication_role = replica;
UPDATE ledger SET key = 'x';
\echo :LAST_ERROR_SQLSTATE
DELETE FROM ledger;
\echo :LAST_ERROR_SQLSTATE
DELETE FROM :current_part;
\echo :LAST_ERROR_SQLSTATE
RESET session_replication_role;

------------------------------------------------------------------ the access method itself
-- A table stored with the evstream access method refuses row changes even
-- when it is not (or no longer) part of a topic, so nothing but the access
-- method stands in the way here.
CREATE TABLE am_only (id bigint, key text) USING evstream;
INSERT INTO am_only VALUES (1, 'x'), (2, 'y');
UPDATE am_only SET key = 'z';
\echo :LAST_ERROR_SQLSTATE
DELETE FROM am_only;
\echo :LAST_ERROR_SQLSTATE
SET session_replication_role = replica;
DELETE FROM am_only WHERE id = 1;
\echo :LAST_ERROR_SQLSTATE
RESET session_replication_role;
SELECT * FROM am_only ORDER BY id;
-- a partition detached from its topic keeps its events immutable (in a
-- transaction rolled back at the end, so the maintenance worker never sees
-- the topic without it)
BEGIN;
ALTER TABLE ledger DETACH PARTITION :current_part;
ALTER TABLE :current_part RENAME TO detached;
SAVEPOINT s;
UPDATE detached SET key = 'x';
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO SAVEPOINT s;
DELETE FROM detached;
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
-- a table with another access method cannot become a topic partition;
-- one with the evstream access method can
CREATE TABLE heap_part (LIKE ledger);
ALTER TABLE ledger ATTACH PARTITION heap_part FOR VALUES FROM ('2000-01-01') TO ('2000-01-02');
\echo :LAST_ERROR_SQLSTATE
CREATE TABLE evs_part (LIKE ledger) USING evstream;
ALTER TABLE ledger ATTACH PARTITION evs_part FOR VALUES FROM ('2000-01-01') TO ('2000-01-02');
DELETE FROM evs_part;
\echo :LAST_ERROR_SQLSTATE
ALTER TABLE ledger DETACH PARTITION evs_part;
-- a partition created by hand does not bring another access method in:
-- it gets the evstream access method, or CREATE TABLE is refused; nor can
-- a partition's access method be changed away from evstream
DO $$
BEGIN
    CREATE TABLE by_hand PARTITION OF ledger FOR VALUES FROM ('2000-01-02') TO ('2000-01-03');
EXCEPTION WHEN feature_not_supported THEN
    NULL;
END
$$;
DO $$
BEGIN
    ALTER TABLE ledger_default SET ACCESS METHOD heap;
EXCEPTION WHEN feature_not_supported THEN
    NULL;
END
$$;
SELECT count(*) AS partitions_not_evstream
  FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_am a ON a.oid = c.relam
 WHERE i.inhparent = 'ledger'::regclass AND a.amname <> 'evstream';
DROP TABLE IF EXISTS by_hand;
DROP TABLE heap_part, evs_part, am_only;

-- nothing changed
SELECT id, key, payload FROM ledger ORDER BY id;

------------------------------------------------------------------ reads are fine
SELECT id, key FROM ledger WHERE id = 2 FOR SHARE;
COPY (SELECT id, key, payload FROM ledger ORDER BY id) TO STDOUT;

------------------------------------------------------------------ TRUNCATE
TRUNCATE ledger RESTART IDENTITY;
\echo :LAST_ERROR_SQLSTATE
TRUNCATE ONLY ledger_default RESTART IDENTITY;
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) FROM ledger;
-- plain TRUNCATE empties the topic; ids continue after the last one
TRUNCATE ledger;
SELECT count(*) FROM ledger;
INSERT INTO ledger (key) VALUES ('after truncate') RETURNING id, key;
TRUNCATE ledger CONTINUE IDENTITY;
INSERT INTO ledger (key) VALUES ('after truncate continue identity') RETURNING id, key;
-- truncating one partition is allowed too
TRUNCATE :current_part;
INSERT INTO ledger (key) VALUES ('after partition truncate') RETURNING id, key;
SELECT evstream.stable_id('ledger');
-- consumers go on after a truncate without seeing old ids again
SELECT id, key FROM evstream.consume('ledger', 'g');
INSERT INTO ledger (key) VALUES ('next') RETURNING id;
SELECT id, key FROM evstream.consume('ledger', 'g');

SELECT evstream.drop_topic('ledger');
