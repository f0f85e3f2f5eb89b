--
-- consumers: poll, consume, commit, seek (by id and by time), stable_id;
-- positions per (topic, group); errors; privileges; isolation levels.
--
\set SHOW_CONTEXT never
SELECT evstream.create_topic('orders');
SELECT evstream.stable_id('orders');
-- an empty topic: nothing to read, and no error
SELECT * FROM evstream.poll('orders', 'g1');
SELECT * FROM evstream.consume('orders', 'g1');
INSERT INTO orders (key, payload)
  SELECT 'k' || g, jsonb_build_object('n', g) FROM generate_series(1, 10) g;
SELECT evstream.stable_id('orders');

------------------------------------------------------------------ poll
-- the event type: (id, key, payload, created_at)
SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute
 WHERE attrelid = 'evstream.event'::regclass AND attnum > 0 ORDER BY attnum;
-- a new group starts at the beginning; poll does not move the position
SELECT id, key, payload, created_at IS NOT NULL AS has_created_at FROM evstream.poll('orders', 'g1', 3);
SELECT id FROM evstream.poll('orders', 'g1', 3);
-- the default max_events is 100
SELECT count(*), min(id), max(id) FROM evstream.poll('orders', 'g1');
-- commit moves the position forward
SELECT evstream.commit('orders', 'g1', 3);
SELECT id FROM evstream.poll('orders', 'g1', 3);
-- an older id is a no-op, never a rewind
SELECT evstream.commit('orders', 'g1', 1);
SELECT evstream.commit('orders', 'g1', 0);
SELECT evstream.commit('orders', 'g1', 3);
SELECT id FROM evstream.poll('orders', 'g1', 2);
SELECT consumer_group, committed_id FROM evstream.consumer_groups WHERE topic = 'orders'::regclass ORDER BY 1;
-- commit up to the stable id, not beyond
SELECT evstream.commit('orders', 'g1', 10);
SELECT id FROM evstream.poll('orders', 'g1');
SELECT evstream.commit('orders', 'g1', 11);
\echo :LAST_ERROR_SQLSTATE
SELECT evstream.commit('orders', 'g1', -1);
\echo :LAST_ERROR_SQLSTATE
SELECT evstream.commit('orders', 'g1', NULL);
\echo :LAST_ERROR_SQLSTATE

------------------------------------------------------------------ consume
-- poll + commit in one call
SELECT id, key FROM evstream.consume('orders', 'g2', 4);
SELECT id, key FROM evstream.consume('orders', 'g2', 4);
SELECT consumer_group, committed_id FROM evstream.consumer_groups WHERE topic = 'orders'::regclass ORDER BY 1;
-- in the caller's transaction: rolled back, the position stays
BEGIN;
SELECT id FROM evstream.consume('orders', 'g2', 1);
ROLLBACK;
SELECT id FROM evstream.consume('orders', 'g2', 1);
-- and the consumer's own writes commit or roll back with it
CREATE TABLE processed (id bigint PRIMARY KEY);
BEGIN;
INSERT INTO processed SELECT id FROM evstream.consume('orders', 'g3', 5);
ROLLBACK;
BEGIN;
INSERT INTO processed SELECT id FROM evstream.consume('orders', 'g3', 5);
COMMIT;
INSERT INTO processed SELECT id FROM evstream.consume('orders', 'g3', 5);
INSERT INTO processed SELECT id FROM evstream.consume('orders', 'g3', 5);
SELECT array_agg(id ORDER BY id) FROM processed;
SELECT committed_id FROM evstream.consumer_groups WHERE topic = 'orders'::regclass AND consumer_group = 'g3';
-- nothing left: an empty result, the position stays
SELECT * FROM evstream.consume('orders', 'g3');
SELECT committed_id FROM evstream.consumer_groups WHERE topic = 'orders'::regclass AND consumer_group = 'g3';
-- several consume calls in one transaction go on from each other
BEGIN;
SELECT id FROM evstream.consume('orders', 'g4', 2);
SELECT id FROM evstream.consume('orders', 'g4', 2);
SELECT id FROM evstream.poll('orders', 'g4', 2);
COMMIT;
-- poll, then commit what was processed
SELECT max(id) AS last FROM evstream.poll('orders', 'g4', 3) \gset
SELECT :last;
SELECT evstream.commit('orders', 'g4', :last);
SELECT id FROM evstream.poll('orders', 'g4');

------------------------------------------------------------------ stable_id
-- events of open transactions are not delivered, not even to their own session
BEGIN;
INSERT INTO orders (key) VALUES ('open') RETURNING id;
SELECT evstream.stable_id('orders');
SELECT id FROM evstream.poll('orders', 'g4');
SELECT id FROM evstream.consume('orders', 'g4');
COMMIT;
SELECT evstream.stable_id('orders');
SELECT id, key FROM evstream.consume('orders', 'g4');
-- an aborted insert leaves a gap; the stable id passes it
BEGIN;
INSERT INTO orders (key) VALUES ('aborted') RETURNING id;
ROLLBACK;
INSERT INTO orders (key) VALUES ('after gap') RETURNING id;
SELECT evstream.stable_id('orders');
SELECT id, key FROM evstream.consume('orders', 'g4');
-- a subtransaction's rolled-back insert as well
BEGIN;
SAVEPOINT s;
INSERT INTO orders (key) VALUES ('rolled back to savepoint') RETURNING id;
ROLLBACK TO SAVEPOINT s;
INSERT INTO orders (key) VALUES ('kept') RETURNING id;
COMMIT;
SELECT evstream.stable_id('orders');
SELECT id, key FROM evstream.consume('orders', 'g4');
-- ids from a transaction producing to several topics
SELECT evstream.create_topic('refunds');
BEGIN;
INSERT INTO orders (key) VALUES ('two topics');
INSERT INTO refunds (key) VALUES ('two topics');
SELECT evstream.stable_id('orders') AS orders_stable, evstream.stable_id('refunds') AS refunds_stable;
COMMIT;
SELECT evstream.stable_id('orders') AS orders_stable, evstream.stable_id('refunds') AS refunds_stable;

------------------------------------------------------------------ seek
-- by id: the next event the group reads
SELECT evstream.seek('orders', 'g4', 3);
SELECT id FROM evstream.poll('orders', 'g4', 3);
SELECT evstream.seek('orders', 'g4', 0);
SELECT id FROM evstream.poll('orders', 'g4', 3);
SELECT evstream.seek('orders', 'g4', 1);
SELECT id FROM evstream.poll('orders', 'g4', 3);
-- seek moves anywhere, also backwards over commits
SELECT evstream.commit('orders', 'g4', 12);
SELECT evstream.seek('orders', 'g4', 5);
SELECT committed_id FROM evstream.consumer_groups WHERE topic = 'orders'::regclass AND consumer_group = 'g4';
SELECT id FROM evstream.consume('orders', 'g4', 2);
-- to the end: stable_id + 1
SELECT evstream.seek('orders', 'g4', evstream.stable_id('orders') + 1);
SELECT count(*) FROM evstream.poll('orders', 'g4');
SELECT evstream.seek('orders', 'g4', evstream.stable_id('orders') + 2);
\echo :LAST_ERROR_SQLSTATE
SELECT evstream.seek('orders', 'g4', -1);
\echo :LAST_ERROR_SQLSTATE
SELECT evstream.seek('orders', 'g4', NULL::bigint);
\echo :LAST_ERROR_SQLSTATE
-- seek creates the group
SELECT evstream.seek('orders', 'g5', 7);
SELECT id FROM evstream.poll('orders', 'g5', 1);
-- by time: the first event created at or after the time
SELECT evstream.create_topic('timed');
INSERT INTO timed (key) VALUES ('before1'), ('before2');
SELECT clock_timestamp() AS mid \gset
INSERT INTO timed (key) VALUES ('after1');
INSERT INTO timed (key) VALUES ('after2');
SELECT evstream.seek('timed', 'tg', :'mid'::timestamptz);
SELECT id, key FROM evstream.poll('timed', 'tg');
SELECT evstream.seek('timed', 'tg', '-infinity'::timestamptz);
SELECT id, key FROM evstream.poll('timed', 'tg');
SELECT evstream.seek('timed', 'tg', (SELECT created_at FROM timed WHERE key = 'after2'));
SELECT id, key FROM evstream.poll('timed', 'tg');
-- a time after every event: to the end
SELECT evstream.seek('timed', 'tg', now() + interval '1 day');
SELECT count(*) FROM evstream.poll('timed', 'tg');
INSERT INTO timed (key) VALUES ('later');
SELECT id, key FROM evstream.poll('timed', 'tg');
SELECT evstream.seek('timed', 'tg', NULL::timestamptz);
\echo :LAST_ERROR_SQLSTATE

------------------------------------------------------------------ groups are per topic
SELECT id FROM evstream.consume('refunds', 'g1');
SELECT id FROM evstream.consume('timed', 'g1', 1);
SELECT topic, consumer_group, committed_id FROM evstream.consumer_groups ORDER BY topic::text, consumer_group;

------------------------------------------------------------------ after a truncate
-- a group whose unconsumed events are gone goes on from the oldest one left
SELECT evstream.create_topic('trunc');
INSERT INTO trunc (key) SELECT 'old' || g FROM generate_series(1, 5) g;
SELECT id FROM evstream.consume('trunc', 'tg', 2);
TRUNCATE trunc;
INSERT INTO trunc (key) VALUES ('new1'), ('new2');
SELECT id, key FROM evstream.consume('trunc', 'tg');
SELECT id, key FROM evstream.poll('trunc', 'fresh');

------------------------------------------------------------------ bad arguments
SELECT * FROM evstream.poll(NULL, 'g');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM evstream.poll('orders', NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM evstream.poll('orders', '');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM evstream.poll('orders', repeat('g', 201));
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) FROM evstream.poll('orders', repeat('g', 200));
SELECT * FROM evstream.poll('orders', 'g', 0);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM evstream.poll('orders', 'g', -5);
SELECT * FROM evstream.poll('orders', 'g', NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM evstream.consume('orders', 'g', 0);
SELECT * FROM evstream.consume(NULL, 'g');
SELECT * FROM evstream.consume('orders', NULL);
SELECT evstream.commit(NULL, 'g', 1);
SELECT evstream.commit('orders', NULL, 1);
SELECT evstream.seek(NULL, 'g', 1);
SELECT evstream.seek('orders', '', 1);
SELECT evstream.stable_id(NULL);
\echo :LAST_ERROR_SQLSTATE
-- unknown relations, relations that are not topics, partitions
SELECT * FROM evstream.poll('nosuch', 'g');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM evstream.poll('processed', 'g');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM evstream.consume('orders_default', 'g');
SELECT evstream.commit('processed', 'g', 1);
SELECT evstream.seek('processed', 'g', 1);
SELECT evstream.seek('processed', 'g', now());
SELECT evstream.stable_id('processed');
SELECT evstream.stable_id('orders_default');
-- group names are data, never SQL
SELECT id FROM evstream.consume('orders', 'g''); DROP TABLE processed; --', 1);
SELECT id FROM evstream.consume('orders', E'tab\tand\nnewline', 1);
SELECT consumer_group, committed_id FROM evstream.consumer_groups
 WHERE topic = 'orders'::regclass AND consumer_group NOT LIKE 'g_' AND consumer_group NOT LIKE 'ggg%' ORDER BY 1;
SELECT count(*) FROM processed;

------------------------------------------------------------------ isolation levels
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT * FROM evstream.poll('orders', 'g1');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT * FROM evstream.consume('orders', 'g1');
ROLLBACK;
BEGIN ISOLATION LEVEL SERIALIZABLE;
SELECT * FROM evstream.consume('orders', 'g1');
ROLLBACK;
SET default_transaction_isolation = 'repeatable read';
SELECT * FROM evstream.poll('orders', 'g1');
RESET default_transaction_isolation;
BEGIN ISOLATION LEVEL READ COMMITTED;
SELECT count(*) FROM evstream.poll('orders', 'g1');
COMMIT;

------------------------------------------------------------------ privileges
CREATE ROLE regress_evs_reader;
CREATE ROLE regress_evs_stranger;
SET ROLE regress_evs_stranger;
SELECT * FROM evstream.poll('orders', 'g1');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM evstream.consume('orders', 'g1');
\echo :LAST_ERROR_SQLSTATE
SELECT evstream.commit('orders', 'g1', 1);
\echo :LAST_ERROR_SQLSTATE
SELECT evstream.seek('orders', 'g1', 1);
\echo :LAST_ERROR_SQLSTATE
SELECT evstream.seek('orders', 'g1', now());
\echo :LAST_ERROR_SQLSTATE
-- nor hold back the stable offset of a topic it cannot produce to
BEGIN;
SELECT evstream._next_id('orders');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
-- the catalog cannot be written around the functions
INSERT INTO evstream._group (topic, consumer_group, owner) VALUES ('orders', 'forged', 'regress_evs_stranger');
\echo :LAST_ERROR_SQLSTATE
UPDATE evstream._group SET dead_lettered = 0;
\echo :LAST_ERROR_SQLSTATE
INSERT INTO evstream._position VALUES (1, 0, 100, 0);
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
-- SELECT on the topic is what a consumer needs
GRANT SELECT ON orders TO regress_evs_reader;
SET ROLE regress_evs_reader;
SELECT id FROM evstream.consume('orders', 'reader', 2);
SELECT id FROM evstream.poll('orders', 'reader', 2);
SELECT evstream.commit('orders', 'reader', 3);
SELECT evstream.seek('orders', 'reader', 2);
SELECT id FROM evstream.poll('orders', 'reader', 2);
SELECT evstream.seek('orders', 'reader', '-infinity'::timestamptz);
SELECT evstream.stable_id('orders');
-- but not to produce
INSERT INTO orders (key) VALUES ('reader');
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
SELECT consumer_group, committed_id FROM evstream.consumer_groups
 WHERE topic = 'orders'::regclass AND consumer_group IN ('reader', 'forged') ORDER BY 1;
REVOKE SELECT ON orders FROM regress_evs_reader;
DROP ROLE regress_evs_reader, regress_evs_stranger;

------------------------------------------------------------------ clean up
DROP TABLE processed;
SELECT evstream.drop_topic('orders');
SELECT evstream.drop_topic('refunds');
SELECT evstream.drop_topic('timed');
SELECT evstream.drop_topic('trunc');
SELECT count(*) FROM evstream._group;
