--
-- topics: create_topic, drop_topic, set_retention; the columns of a topic;
-- id and created_at assigned by evstream on every form of INSERT and COPY;
-- names quoted like SQL identifiers; bad input and privileges.
--
-- Timestamps, OIDs and partition bounds are never printed: partitions are
-- checked by name pattern and access method.
\set SHOW_CONTEXT never

------------------------------------------------------------------ create
SELECT evstream.create_topic('clicks');
-- the columns, in the SPEC's order
SELECT attnum, attname, format_type(atttypid, atttypmod) AS type, attnotnull
  FROM pg_attribute WHERE attrelid = 'clicks'::regclass AND attnum > 0 AND NOT attisdropped
 ORDER BY attnum;
-- partitioned by range on created_at
SELECT pg_get_partkeydef('clicks'::regclass);
-- a default partition, partitions made ahead (named <topic>_pYYYYMMDD_HH24MISS),
-- every one stored with the evstream access method
SELECT count(*) FILTER (WHERE c.relname = 'clicks_default') AS default_partition,
       count(*) FILTER (WHERE c.relname ~ '^clicks_p\d{8}_\d{6}$') >= 4 AS made_ahead,
       count(*) FILTER (WHERE c.relname !~ '^clicks_(default|p\d{8}_\d{6})$') AS other,
       bool_and(a.amname = 'evstream') AS all_evstream_am
  FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_am a ON a.oid = c.relam
 WHERE i.inhparent = 'clicks'::regclass;
-- partitions are aligned on the interval, one of them holds now()
SELECT count(*) FILTER (WHERE lo <= now() AND now() < hi) AS holds_now,
       bool_and(hi - lo = '1 day') AS one_day_each,
       bool_and(lo = date_bin('1 day', lo, 'epoch')) AS aligned,
       bool_and(part::text = 'clicks_p' || to_char(lo AT TIME ZONE 'UTC', 'YYYYMMDD_HH24MISS')) AS named_by_lower_bound
  FROM evstream._partitions('clicks') WHERE NOT is_default;
-- the id sequence
SELECT pg_get_serial_sequence('clicks', 'id');
SELECT topic, partition_interval, retention, notify FROM evstream._topic WHERE topic = 'clicks'::regclass;

------------------------------------------------------------------ producers
-- ids are assigned in insert order, created_at is the append time
BEGIN;
INSERT INTO clicks (key, payload) VALUES ('a', '{"n": 1}') RETURNING id, key, payload, created_at = now() AS now;
INSERT INTO clicks (key, payload) VALUES ('b', '{"n": 2}'), ('c', '{"n": 3}'), ('d', NULL)
  RETURNING id, key, payload, created_at = now() AS now;
COMMIT;
-- values a producer supplies are replaced
INSERT INTO clicks (id, key, payload, created_at)
  VALUES (1000, 'e', '{}', '2000-01-01'), (-1, 'f', '{}', 'infinity'), (NULL, 'g', NULL, now() - interval '1 year')
  RETURNING id, key, created_at > now() - interval '1 hour' AND created_at <= now() AS recent;
INSERT INTO clicks VALUES (7777, 'h', '[1, 2]', '1999-12-31 23:59:59+00') RETURNING id, key, payload;
INSERT INTO clicks (id, key) VALUES (DEFAULT, 'i') RETURNING id, key;
INSERT INTO clicks DEFAULT VALUES RETURNING id, key, payload, created_at IS NOT NULL AS has_created_at;
-- INSERT ... SELECT
INSERT INTO clicks (id, key, payload, created_at)
  SELECT 1, 'sel' || g, jsonb_build_object('g', g), '2001-01-01' FROM generate_series(1, 3) g
  RETURNING id, key, payload;
-- a data-modifying CTE
WITH w AS (INSERT INTO clicks (id, key) VALUES (1, 'cte') RETURNING id, key)
SELECT * FROM w;
-- a prepared statement with the id as parameter
PREPARE ins(bigint, text) AS INSERT INTO clicks (id, key) VALUES ($1, $2) RETURNING id, key;
EXECUTE ins(1, 'prep1');
EXECUTE ins(2, 'prep2');
DEALLOCATE ins;
-- PL/pgSQL
DO $$
BEGIN
    FOR i IN 1..2 LOOP
        INSERT INTO clicks (id, key, created_at) VALUES (i, 'plpgsql' || i, '1970-01-01');
    END LOOP;
END
$$;
-- straight into a partition: still assigned
SELECT part AS current_part FROM evstream._partitions('clicks')
 WHERE NOT is_default AND lo <= now() AND now() < hi \gset
INSERT INTO :current_part (id, key, created_at) VALUES (5, 'partition', now()) RETURNING id, key;
-- COPY (key, payload)
COPY clicks (key, payload) FROM STDIN;
copy1	{"c": 1}
copy2	\N
\N	{"c": 3}
\.
COPY clicks (payload, key) FROM STDIN (FORMAT csv);
"{""c"": 4}",copy4
\.
-- every event: ids unique, increasing in insert order, created_at never from the producer
SELECT id, key, payload FROM clicks ORDER BY id;
SELECT count(*) AS events, count(DISTINCT id) AS distinct_ids, min(id), max(id),
       bool_and(created_at > now() - interval '1 hour') AS all_recent
  FROM clicks;
-- created_at and id order agree (the append time of later inserts is not earlier)
SELECT count(*) AS out_of_order FROM (
    SELECT created_at < lag(created_at) OVER (ORDER BY id) AS bad FROM clicks) s WHERE bad;

-- ids are never reused: not after a rollback, nor a truncate
BEGIN;
INSERT INTO clicks (key) VALUES ('rolled back') RETURNING id;
ROLLBACK;
INSERT INTO clicks (key) VALUES ('after rollback') RETURNING id;
BEGIN;
INSERT INTO clicks (key) VALUES ('kept') RETURNING id;
SAVEPOINT s;
INSERT INTO clicks (key) VALUES ('rolled back to savepoint') RETURNING id;
ROLLBACK TO SAVEPOINT s;
INSERT INTO clicks (key) VALUES ('after savepoint') RETURNING id;
COMMIT;
SELECT id, key FROM clicks WHERE id > 20 ORDER BY id;
TRUNCATE clicks;
INSERT INTO clicks (key) VALUES ('after truncate') RETURNING id;
SELECT evstream.stable_id('clicks');

-- an INSERT does not depend on partitions made ahead: drop the one for now,
-- the row lands in the default partition (in one transaction, so the
-- maintenance worker cannot make it again in between)
SELECT evstream.create_topic('landing', partition_interval => '1 hour');
BEGIN;
SELECT format('DROP TABLE %s', part) AS drop_current
  FROM evstream._partitions('landing') WHERE NOT is_default AND lo <= now() AND now() < hi \gset
:drop_current;
INSERT INTO landing (key) VALUES ('lands') RETURNING id, key, tableoid::regclass;
COMMIT;
-- ... and the default partition cannot be taken away (DETACH, DROP, also
-- in a list with another), by the topic's owner either; the topic is
-- whole afterwards and its other partitions can still be dropped
ALTER TABLE landing DETACH PARTITION landing_default;
ALTER TABLE landing DETACH PARTITION landing_default CONCURRENTLY;
DROP TABLE landing_default;
SELECT format('DROP TABLE %s, landing_default', part) AS drop_two
  FROM evstream._partitions('landing') WHERE NOT is_default ORDER BY lo LIMIT 1 \gset
:drop_two;
SELECT count(*) FILTER (WHERE is_default) AS defaults FROM evstream._partitions('landing');
INSERT INTO landing (key) VALUES ('lands again') RETURNING key;
SELECT format('DROP TABLE %s', part) AS drop_one
  FROM evstream._partitions('landing') WHERE NOT is_default ORDER BY lo LIMIT 1 \gset
:drop_one;
-- refusals on the id sequence name the topic
ALTER SEQUENCE landing_id_seq SET UNLOGGED;
ALTER SEQUENCE landing_id_seq RENAME TO landing_seq;
SELECT evstream.drop_topic('landing');

------------------------------------------------------------------ names
CREATE SCHEMA app;
SELECT evstream.create_topic('app.clicks');
SELECT evstream.create_topic('"Mixed Case"');
SELECT evstream.create_topic('"app"."Dotted.Name"');
SELECT evstream.create_topic('"x; drop table clicks; --"');
SELECT evstream.create_topic('"quote""d"');
INSERT INTO app.clicks (key) VALUES ('app') RETURNING id, key;
INSERT INTO "Mixed Case" (key) VALUES ('mixed'), ('case') RETURNING id, key;
INSERT INTO app."Dotted.Name" (key) VALUES ('dotted') RETURNING id, key;
INSERT INTO "x; drop table clicks; --" (key) VALUES ('injection') RETURNING id, key;
INSERT INTO "quote""d" (key) VALUES ('quoted') RETURNING id, key;
SELECT id, key FROM evstream.poll('"Mixed Case"', 'g') ORDER BY id;
SELECT id, key FROM evstream.poll('app."Dotted.Name"', 'g') ORDER BY id;
-- partitions and sequences are named after the topic and quoted
SELECT n.nspname, c.relkind,
       regexp_replace(c.relname, '_p\d{8}_\d{6}$', '_pYYYYMMDD_HH24MISS') AS relname,
       count(*) > 0 AS present
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE (n.nspname = 'app' OR c.relname ~ '^(Mixed Case|x; drop table clicks; --|quote"d)')
   AND c.relkind IN ('r', 'p', 'S')
 GROUP BY 1, 2, 3 ORDER BY 1, 3, 2;
SELECT topic FROM evstream._topic
 WHERE topic::text IN ('"Mixed Case"', '"quote""d"', '"x; drop table clicks; --"', 'app."Dotted.Name"', 'app.clicks', 'clicks')
 ORDER BY topic::text COLLATE "C";
-- clicks survived the "injection"
SELECT count(*) FROM clicks;
-- names that are not a (qualified) identifier fail before anything is made
SELECT evstream.create_topic('x; drop table clicks');
\echo :LAST_ERROR_SQLSTATE
SELECT evstream.create_topic('x"; drop table clicks; --');
SELECT evstream.create_topic('clicks); drop table clicks; --');
SELECT evstream.create_topic('');
SELECT evstream.create_topic('""');
SELECT evstream.create_topic('a.b.c.d');
SELECT count(*) FROM clicks;
-- too long for partition names: 46 bytes is the limit
SELECT evstream.create_topic(repeat('n', 46));
SELECT evstream.create_topic(repeat('m', 47));
\echo :LAST_ERROR_SQLSTATE
SELECT evstream.create_topic(repeat('é', 23));
SELECT evstream.create_topic(repeat('è', 24));
SELECT evstream.create_topic('app.' || repeat('o', 47));
-- ... also when a topic is renamed (its partitions' names follow)
ALTER TABLE nnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnn RENAME TO mmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmm;
\echo :LAST_ERROR_SQLSTATE
ALTER INDEX nnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnn RENAME TO mmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmmm;
\echo :LAST_ERROR_SQLSTATE
ALTER TABLE nnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnn RENAME TO short_n;
-- its id sequence goes with it, not on its own
DROP SEQUENCE nnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnn_id_seq;
\echo :LAST_ERROR_SQLSTATE
ALTER TABLE short_n RENAME TO nnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnn;
SELECT evstream.drop_topic(repeat('n', 46));
SELECT evstream.drop_topic(quote_ident(repeat('é', 23)));
-- duplicates
SELECT evstream.create_topic('clicks');
\echo :LAST_ERROR_SQLSTATE
SELECT evstream.create_topic('public.clicks');
CREATE TABLE plain_table (a int);
SELECT evstream.create_topic('plain_table');
-- missing schema
SELECT evstream.create_topic('nosuch.clicks');
\echo :LAST_ERROR_SQLSTATE

------------------------------------------------------------------ bad arguments
SELECT evstream.create_topic(NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT evstream.create_topic('t_bad', NULL);
SELECT evstream.create_topic('t_bad', '1 day', '1 day', NULL);
SELECT evstream.create_topic('t_bad', '0');
\echo :LAST_ERROR_SQLSTATE
SELECT evstream.create_topic('t_bad', '-1 day');
SELECT evstream.create_topic('t_bad', '999 milliseconds');
SELECT evstream.create_topic('t_bad', '1 month');
SELECT evstream.create_topic('t_bad', '1 year');
SELECT evstream.create_topic('t_bad', '1 day', retention => '0');
\echo :LAST_ERROR_SQLSTATE
SELECT evstream.create_topic('t_bad', '1 day', retention => '-1 hour');
SELECT evstream.create_topic('t_bad', '1 day', retention => '1 day -25 hours');
-- spans whose arithmetic would leave the timestamp range
SELECT evstream.create_topic('t_bad', '1 day', retention => '100000000 days');
\echo :LAST_ERROR_SQLSTATE
SELECT evstream.create_topic('t_bad', '100000000 days');
\echo :LAST_ERROR_SQLSTATE
SELECT evstream.create_topic('t_bad', '365000 days', retention => '12000 months');
SELECT evstream.run_maintenance() IS NULL AS maintained;
SELECT evstream.drop_topic('t_bad');
-- nothing was left behind by the failures
SELECT count(*) FROM pg_class WHERE relname LIKE 't\_bad%' OR relname LIKE 'mmm%' OR relname LIKE 'èèè%';
-- the smallest partition interval: 1 second
SELECT evstream.create_topic('t_second', '1 second');
SELECT count(*) >= 4 AS made_ahead, bool_and(hi - lo = '1 second') AS one_second_each
  FROM evstream._partitions('t_second') WHERE NOT is_default;
INSERT INTO t_second (key) VALUES ('s') RETURNING id;
SELECT evstream.drop_topic('t_second');
SELECT evstream.drop_topic(NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT evstream.drop_topic('clicks', NULL);
SELECT evstream.drop_topic('nosuch');
\echo :LAST_ERROR_SQLSTATE
SELECT evstream.drop_topic('plain_table');
\echo :LAST_ERROR_SQLSTATE
SELECT evstream.drop_topic('clicks_default');
SELECT evstream.set_retention(NULL, '1 day');
SELECT evstream.set_retention('plain_table', '1 day');
SELECT evstream.set_retention('clicks', '0');
SELECT evstream.set_retention('clicks', '-1 day');

------------------------------------------------------------------ set_retention
SELECT evstream.set_retention('clicks', '7 days');
SELECT topic, retention FROM evstream._topic WHERE topic = 'clicks'::regclass;
SELECT evstream.set_retention('clicks', '1 month');
SELECT topic, retention FROM evstream._topic WHERE topic = 'clicks'::regclass;
SELECT evstream.set_retention('clicks', NULL);
SELECT topic, retention FROM evstream._topic WHERE topic = 'clicks'::regclass;
SELECT evstream.create_topic('t_ret', retention => '30 days', notify => false);
SELECT topic, partition_interval, retention, notify FROM evstream._topic WHERE topic = 't_ret'::regclass;

------------------------------------------------------------------ privileges
CREATE ROLE regress_evs_owner;
CREATE ROLE regress_evs_producer;
CREATE ROLE regress_evs_nobody;
CREATE SCHEMA evs_owned AUTHORIZATION regress_evs_owner;
GRANT USAGE ON SCHEMA evs_owned TO regress_evs_producer, regress_evs_nobody;
SET ROLE regress_evs_owner;
-- no CREATE on schema public
\set VERBOSITY terse
SELECT evstream.create_topic('public.not_mine');
\set VERBOSITY default
\echo :LAST_ERROR_SQLSTATE
SELECT evstream.create_topic('evs_owned.orders');
SELECT evstream.create_topic('evs_owned.orders2', '1 hour', '1 day', false);
INSERT INTO evs_owned.orders (key) VALUES ('by owner') RETURNING id, key;
RESET ROLE;
-- the topic, its partitions and its sequence belong to the creator
SELECT regexp_replace(c.relname, '_p\d{8}_\d{6}', '_pYYYYMMDD_HH24MISS') AS relname,
       c.relkind, pg_get_userbyid(c.relowner) AS owner, count(*) > 0 AS present
  FROM pg_class c WHERE c.relnamespace = 'evs_owned'::regnamespace AND c.relname ~ '^orders($|_)'
 GROUP BY 1, 2, 3 ORDER BY 1;
-- producing needs INSERT
SET ROLE regress_evs_producer;
INSERT INTO evs_owned.orders (key) VALUES ('no grant');
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
GRANT INSERT ON evs_owned.orders TO regress_evs_producer;
SET ROLE regress_evs_producer;
-- INSERT alone is enough (no privileges on the sequence, no SELECT)
INSERT INTO evs_owned.orders (id, key) VALUES (99, 'producer');
INSERT INTO evs_owned.orders (key) SELECT 'producer' || g FROM generate_series(1, 2) g;
COPY evs_owned.orders (key, payload) FROM STDIN;
producer-copy	{"p": 1}
\.
-- a producer does not choose ids either: a COPY listing the id column (or
-- no column list) is a restore, which only the topic's owner may run
COPY evs_owned.orders (id, key, created_at) FROM STDIN;
1	producer-copy-id	2000-01-01 00:00:00+00
\.
\echo :LAST_ERROR_SQLSTATE
COPY evs_owned.orders FROM STDIN;
1	producer-copy-all	\N	2000-01-01 00:00:00+00
\.
SELECT count(*) FROM evs_owned.orders;
\echo :LAST_ERROR_SQLSTATE
-- keeping supplied ids is for superusers restoring
SET evstream.restore_mode = on;
\echo :LAST_ERROR_SQLSTATE
-- only the owner drops a topic or changes its retention
SELECT evstream.set_retention('evs_owned.orders', '1 day');
\echo :LAST_ERROR_SQLSTATE
SELECT evstream.drop_topic('evs_owned.orders');
\echo :LAST_ERROR_SQLSTATE
SET ROLE regress_evs_nobody;
SELECT evstream.drop_topic('evs_owned.orders');
UPDATE evs_owned.orders SET key = 'x';
RESET ROLE;
SELECT id, key, payload, created_at > now() - interval '1 hour' AS recent FROM evs_owned.orders ORDER BY id;
SET ROLE regress_evs_owner;
-- the owner's restore keeps ids and times, and ids go on after the largest one
COPY evs_owned.orders (id, key, payload, created_at) FROM STDIN;
100	restored	{"r": 1}	2000-01-01 00:00:00+00
101	restored	{"r": 2}	2000-01-01 00:00:01+00
\.
INSERT INTO evs_owned.orders (key) VALUES ('after restore') RETURNING id, key;
-- a restore cannot give an id the topic already has (ids are unique),
-- neither one of another COPY nor one twice in the same COPY (23505)
\set VERBOSITY sqlstate
COPY evs_owned.orders (id, key, payload, created_at) FROM STDIN;
101	duplicate	{"r": 3}	2000-01-01 00:00:02+00
\.
\set VERBOSITY default
COPY evs_owned.orders (id, key, payload, created_at) FROM STDIN;
200	twice	{"r": 4}	2000-01-01 00:00:03+00
200	twice	{"r": 5}	2000-01-01 00:00:04+00
\.
-- nor an id below 1 (evstream never hands one out): 23514
\set VERBOSITY sqlstate
COPY evs_owned.orders (id, key, payload, created_at) FROM STDIN;
0	zero	{"r": 6}	2000-01-01 00:00:05+00
0	zero	{"r": 7}	2000-01-01 00:00:06+00
\.
COPY evs_owned.orders (id, key, payload, created_at) FROM STDIN;
-5	negative	{"r": 8}	2000-01-01 00:00:07+00
\.
\set VERBOSITY default
SELECT count(*) FROM evs_owned.orders WHERE key IN ('duplicate', 'twice', 'zero', 'negative');
SELECT id, key, payload, created_at < '2001-01-01' AS kept_time FROM evs_owned.orders WHERE id >= 100 ORDER BY id;
SELECT evstream.set_retention('evs_owned.orders', '1 day');
SELECT evstream.drop_topic('evs_owned.orders2');
RESET ROLE;
SELECT topic, retention FROM evstream._topic WHERE topic::text LIKE 'evs_owned.%' ORDER BY 1;

------------------------------------------------------------------ drop_topic
-- removes the table, its partitions, its sequence and its consumer groups
SELECT evstream.create_topic('dropme', '1 hour');
INSERT INTO dropme (key) VALUES ('x');
SELECT id FROM evstream.consume('dropme', 'dropme_group');
SELECT count(*) FROM evstream._group WHERE consumer_group = 'dropme_group';
SELECT evstream.drop_topic('dropme');
SELECT count(*) FROM pg_class WHERE relname LIKE 'dropme%';
SELECT count(*) FROM evstream._group WHERE consumer_group = 'dropme_group';
SELECT count(*) FROM evstream._topic WHERE topic::text = 'dropme';
-- a plain DROP TABLE of a topic forgets it as well
SELECT evstream.create_topic('dropped_by_sql');
SELECT evstream.commit('dropped_by_sql', 'gone_group', 0);
DROP TABLE dropped_by_sql;
SELECT count(*) FROM evstream._group WHERE consumer_group = 'gone_group';
SELECT count(*) FROM evstream._topic WHERE topic::text = 'dropped_by_sql';
SELECT count(*) FROM pg_class WHERE relname LIKE 'dropped\_by\_sql%';
-- ... and like drop_topic, it is refused while an aggregate reads the
-- topic (or writes to it); with CASCADE the aggregates go with it
SELECT evstream.create_topic('dropped_with_agg');
SELECT evstream.create_aggregate('dropped_agg', 'dropped_with_agg', output_topic => 'dropped_agg_out');
DROP TABLE dropped_with_agg;
DROP TABLE dropped_agg_out;
DROP TABLE dropped_with_agg CASCADE;
SELECT count(*) FROM pg_class WHERE relname IN ('dropped_with_agg', 'dropped_agg');
SELECT count(*) FROM evstream.aggregates WHERE name::text = 'dropped_agg';
SELECT count(*) FROM pg_class WHERE relname = 'dropped_agg_out';  -- it made that one
SELECT evstream.create_topic('dropped_with_agg');
SELECT evstream.create_aggregate('dropped_agg', 'dropped_with_agg');  -- the name is free
SELECT evstream.drop_topic('dropped_with_agg', cascade => true);
-- DROP SCHEMA ... CASCADE of a topic's schema drops its aggregates too,
-- also one whose view is in another schema (its view reads the topic
-- through evstream's catalog, so PostgreSQL does not see the dependency)
CREATE SCHEMA drop_src;
SELECT evstream.create_topic('drop_src.feed');
SELECT evstream.create_aggregate('public.drop_src_counts', 'drop_src.feed');
INSERT INTO drop_src.feed (key) VALUES ('a');
SET client_min_messages = warning;
DROP SCHEMA drop_src CASCADE;
RESET client_min_messages;
SELECT count(*) AS views_left FROM pg_class WHERE relname = 'drop_src_counts';
SELECT count(*) AS aggregates_left FROM evstream.aggregates WHERE name::text = 'drop_src_counts';
CREATE VIEW public.drop_src_counts AS SELECT 1 AS x;  -- the name is free
DROP VIEW public.drop_src_counts;
-- DROP OWNED BY a topic's owner: refused while another role's aggregate
-- reads the topic (her own aggregates would go with her); with CASCADE
-- all go, wherever their views are
CREATE ROLE regress_evs_drop_owner;
CREATE ROLE regress_evs_drop_other IN ROLE regress_evs_drop_owner;
CREATE SCHEMA drop_owned AUTHORIZATION regress_evs_drop_owner;
CREATE SCHEMA drop_other AUTHORIZATION regress_evs_drop_other;
SET ROLE regress_evs_drop_owner;
SELECT evstream.create_topic('drop_owned.feed');
SELECT evstream.create_aggregate('drop_owned.own_counts', 'drop_owned.feed');
SET ROLE regress_evs_drop_other;
SELECT evstream.create_aggregate('drop_other.other_counts', 'drop_owned.feed');
RESET ROLE;
\set VERBOSITY terse
DROP OWNED BY regress_evs_drop_owner;
\set VERBOSITY default
SELECT count(*) AS still_there FROM pg_class
 WHERE oid IN ('drop_owned.feed'::regclass, 'drop_owned.own_counts'::regclass, 'drop_other.other_counts'::regclass);
DROP OWNED BY regress_evs_drop_owner, regress_evs_drop_other;  -- both roles' aggregates go with it
SELECT count(*) AS schemas_left FROM pg_namespace WHERE nspname IN ('drop_owned', 'drop_other');
SELECT count(*) AS aggregates_forgotten FROM evstream._aggregate a
 WHERE NOT EXISTS (SELECT FROM pg_class c WHERE c.oid = a.aggregate::oid);
CREATE SCHEMA drop_owned AUTHORIZATION regress_evs_drop_owner;
CREATE SCHEMA drop_other AUTHORIZATION regress_evs_drop_other;
SET ROLE regress_evs_drop_owner;
SELECT evstream.create_topic('drop_owned.feed');
SET ROLE regress_evs_drop_other;
-- (with an output topic it made: the cascade drops that topic too)
SELECT evstream.create_aggregate('drop_other.other_counts', 'drop_owned.feed',
                                 output_topic => 'drop_other.other_out');
RESET ROLE;
SET client_min_messages = warning;
DROP OWNED BY regress_evs_drop_owner CASCADE;
RESET client_min_messages;
SELECT count(*) AS relations_left FROM pg_class WHERE relname IN ('other_counts', 'other_out');
SELECT count(*) AS aggregates_forgotten FROM evstream._aggregate a
 WHERE NOT EXISTS (SELECT FROM pg_class c WHERE c.oid = a.aggregate::oid);
DROP OWNED BY regress_evs_drop_other;
DROP ROLE regress_evs_drop_owner, regress_evs_drop_other;
-- ALTER TABLE topic OWNER TO: its partitions follow (PostgreSQL does not
-- pass a new owner on to partitions, and the old owner could truncate or
-- drop the events of the topic she handed over)
CREATE ROLE regress_evs_new_owner;
SELECT evstream.create_topic('owner_moves');
ALTER TABLE owner_moves OWNER TO regress_evs_new_owner;
SELECT count(*) > 1 AS has_partitions,
       count(*) FILTER (WHERE c.relowner <> 'regress_evs_new_owner'::regrole) AS old_owner_keeps
  FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'owner_moves'::regclass;
SELECT evstream.drop_topic('owner_moves');
DROP ROLE regress_evs_new_owner;
-- a name is free again after drop_topic, and ids start over in the new topic
SELECT evstream.create_topic('dropme');
INSERT INTO dropme (key) VALUES ('again') RETURNING id, key;

------------------------------------------------------------------ _partitions
-- the bounds come from the catalog's bound nodes: the same as deparsing them
-- (every topic locked first: the worker rehomes a default partition or
-- drops an empty old one under ACCESS EXCLUSIVE, and _partitions reads the
-- catalog as it is now while the join reads it as of the statement's start)
BEGIN;
DO $$
DECLARE t regclass;
BEGIN
    FOR t IN SELECT x.topic FROM evstream._topic x ORDER BY x.topic::oid LOOP
        EXECUTE format('LOCK TABLE %s IN ACCESS SHARE MODE', t);
    END LOOP;
END $$;
SELECT count(*) > 0 AS rows_compared,
       count(*) FILTER (WHERE p.lo IS DISTINCT FROM
           substring(pg_get_expr(c.relpartbound, c.oid), 'FROM \(''([^'']+)''\)')::timestamptz
           OR p.hi IS DISTINCT FROM
           substring(pg_get_expr(c.relpartbound, c.oid), 'TO \(''([^'']+)''\)')::timestamptz
           OR p.is_default IS DISTINCT FROM (pg_get_expr(c.relpartbound, c.oid) = 'DEFAULT')) AS differ
  FROM evstream._topic t, evstream._partitions(t.topic) p JOIN pg_class c ON c.oid = p.part;
COMMIT;
SELECT count(*) AS none_for_null FROM evstream._partitions(NULL);
-- any relation, also as a role without privileges on it: what pg_inherits shows
CREATE TABLE parts_any (t timestamptz, n int) PARTITION BY RANGE (t);
CREATE TABLE parts_any_lo PARTITION OF parts_any FOR VALUES FROM (MINVALUE) TO ('2020-01-01 00:00:00+00');
CREATE TABLE parts_any_hi PARTITION OF parts_any FOR VALUES FROM ('2020-01-01 00:00:00+00') TO (MAXVALUE);
CREATE TABLE parts_list (n int) PARTITION BY LIST (n);
CREATE TABLE parts_list_1 PARTITION OF parts_list FOR VALUES IN (1);
CREATE TABLE parts_list_d PARTITION OF parts_list DEFAULT;
CREATE TABLE inh_parent (n int);
CREATE TABLE inh_child () INHERITS (inh_parent);
SET ROLE regress_evs_nobody;
SELECT * FROM evstream._partitions('parts_any') ORDER BY part::text;
SELECT * FROM evstream._partitions('parts_list') ORDER BY part::text;
SELECT * FROM evstream._partitions('inh_parent');
SELECT count(*) AS no_children FROM evstream._partitions('pg_class');
RESET ROLE;
DROP TABLE parts_any, parts_list, inh_parent CASCADE;

------------------------------------------------------------------ clean up
SELECT evstream.drop_topic(t) FROM unnest(ARRAY['clicks', 'dropme', 't_ret', 'app.clicks', '"Mixed Case"',
       'app."Dotted.Name"', '"x; drop table clicks; --"', '"quote""d"', 'evs_owned.orders']) t
 WHERE to_regclass(t) IS NOT NULL AND EXISTS (SELECT 1 FROM evstream._topic WHERE topic = to_regclass(t));
DROP TABLE plain_table;
DROP SCHEMA app, evs_owned;
DROP ROLE regress_evs_owner, regress_evs_producer, regress_evs_nobody;
SELECT count(*) FROM evstream._topic t JOIN pg_class c ON c.oid = t.topic
 WHERE c.relname IN ('clicks', 'dropme', 't_ret', 'Mixed Case', 'Dotted.Name', 'x; drop table clicks; --',
                     'quote"d', 'orders', 'orders2', 'landing', 't_second', 'dropped_by_sql');
