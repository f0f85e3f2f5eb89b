--
-- transforms (0.2): create_transform / drop_transform / resume_transform,
-- the evstream.transforms view, every bad input, privileges; the
-- background workers run the transforms (waited for with timeouts).
-- (Crashes, parallel shards, pause after failures, chains: TAP 140.)
--
\set VERBOSITY terse
CREATE FUNCTION wait_for(cond text, secs int DEFAULT 30) RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE ok boolean;
BEGIN
    FOR i IN 1 .. secs * 20 LOOP
        EXECUTE cond INTO ok;
        IF ok THEN RETURN true; END IF;
        PERFORM pg_sleep(0.05);
    END LOOP;
    RETURN false;
END $$;

SELECT evstream.create_topic('sentences');
INSERT INTO sentences (key, payload) VALUES ('s1', '{"text": "the quick brown fox"}'), ('s2', '{"text": "jumps over the lazy dog"}');
-- flatMap: one sentence, one event per word (created before: from the oldest event)
SELECT evstream.create_transform('split', 'sentences',
    $$SELECT w, jsonb_build_object('word', w, 'from', id) FROM events,
             regexp_split_to_table(lower(payload->>'text'), '[^a-z]+') AS w WHERE w <> ''$$,
    'words');
SELECT topic, shards FROM evstream.topics WHERE topic = 'words'::regclass;
SELECT name, source, output_topic, paused, last_error FROM evstream.transforms;
SELECT consumer_group FROM evstream.consumer_groups WHERE topic = 'sentences'::regclass;
SELECT wait_for($$SELECT count(*) = 9 FROM words$$);
SELECT key, payload->>'from' AS from_id FROM words ORDER BY id;
-- new events are picked up after commit
INSERT INTO sentences (key, payload) VALUES ('s3', '{"text": "hello world"}');
SELECT wait_for($$SELECT count(*) = 11 FROM words$$);
SELECT wait_for($$SELECT lag_events = 0 FROM evstream.transforms WHERE name = 'split'$$);
-- chains: an aggregate on the output, and a second transform
SELECT evstream.create_aggregate('word_counts', 'words');
SELECT evstream.create_transform('shout', 'words', $$SELECT upper(key), payload FROM events$$, 'loud');
SELECT wait_for($$SELECT count(*) = 11 FROM loud$$);
SELECT count FROM word_counts WHERE group_key = 'the';
-- a failing query pauses after evstream.transform_max_attempts (here 5) failures
SELECT evstream.create_topic('nums');
INSERT INTO nums (key, payload) VALUES ('a', '{"n": 0}');
SELECT evstream.create_transform('inverse', 'nums', $$SELECT key, jsonb_build_object('inv', 100 / (payload->>'n')::int) FROM events$$, 'inverses');
SELECT wait_for($$SELECT paused FROM evstream.transforms WHERE name = 'inverse'$$, 60);
SELECT name, paused, last_error FROM evstream.transforms WHERE name = 'inverse';
SELECT count(*) FROM inverses;
-- fix the cause (skip the bad event) and resume
SELECT evstream.seek('nums', 'inverse', 2);
INSERT INTO nums (key, payload) VALUES ('b', '{"n": 4}');
SELECT evstream.resume_transform('inverse');
SELECT wait_for($$SELECT count(*) = 1 FROM inverses$$);
SELECT key, payload FROM inverses;
SELECT paused FROM evstream.transforms WHERE name = 'inverse';

------------------------------------------------------------------ bad input
SELECT evstream.create_transform('split', 'sentences', 'SELECT key, payload FROM events', 'x');
\echo :LAST_ERROR_SQLSTATE
SELECT evstream.create_transform('t2', 'sentences', 'SELECT key FROM events', 'x');
\echo :LAST_ERROR_SQLSTATE
SELECT evstream.create_transform('t2', 'sentences', 'SELECT key, payload::text FROM events', 'x');
\echo :LAST_ERROR_SQLSTATE
SELECT evstream.create_transform('t2', 'sentences', 'SELEC key, payload FROM events', 'x');
\echo :LAST_ERROR_SQLSTATE
SELECT evstream.create_transform('t2', 'sentences', 'SELECT key, payload FROM events; DROP TABLE words', 'x');
\echo :LAST_ERROR_SQLSTATE
SELECT evstream.create_transform('t2', 'sentences', 'SELECT key, payload FROM events) q; DROP TABLE words; --', 'x');
\echo :LAST_ERROR_SQLSTATE
SELECT evstream.create_transform('t2', 'sentences', $$SELECT 'k'::text, '{}'::jsonb$$, 'x');
\echo :LAST_ERROR_SQLSTATE
SELECT evstream.create_transform('t2', 'sentences', 'DELETE FROM words', 'x');
\echo :LAST_ERROR_SQLSTATE
SELECT evstream.create_transform('t2', 'sentences', 'SELECT key, payload FROM events', 'sentences');
\echo :LAST_ERROR_SQLSTATE
-- a cycle through another transform
SELECT evstream.create_transform('t2', 'loud', 'SELECT key, payload FROM events', 'sentences');
\echo :LAST_ERROR_SQLSTATE
-- cycles through an aggregate's output topic: a transform feeding the
-- aggregate's topic, and an aggregate feeding a transform's source, or
-- another aggregate's topic; nothing is created
SELECT evstream.create_aggregate('loop_counts', 'loud', output_topic => 'loop_changes');
SELECT evstream.create_transform('t2', 'loop_changes', 'SELECT key, payload FROM events', 'sentences');
\echo :LAST_ERROR_SQLSTATE
SELECT evstream.create_aggregate('loop_back', 'loop_changes', output_topic => 'sentences');
\echo :LAST_ERROR_SQLSTATE
SELECT evstream.create_aggregate('loop_back', 'loop_changes', output_topic => 'loud');
\echo :LAST_ERROR_SQLSTATE
SELECT to_regclass('loop_back') AS view, (SELECT count(*) FROM evstream._transform WHERE name = 't2') AS transforms;
SELECT evstream.drop_aggregate('loop_counts');
CREATE TABLE plain (x int);
SELECT evstream.create_transform('t2', 'sentences', 'SELECT key, payload FROM events', 'plain');
\echo :LAST_ERROR_SQLSTATE
SELECT evstream.create_transform('t2', 'plain', 'SELECT key, payload FROM events', 'x');
\echo :LAST_ERROR_SQLSTATE
SELECT evstream.create_transform('t2', 'sentences', 'SELECT key, payload FROM events', 'x', batch => 0);
\echo :LAST_ERROR_SQLSTATE
SELECT evstream.create_transform(NULL, 'sentences', 'SELECT key, payload FROM events', 'x');
\echo :LAST_ERROR_SQLSTATE
SELECT evstream.create_transform('t2', 'sentences', NULL, 'x');
\echo :LAST_ERROR_SQLSTATE
SELECT evstream.create_transform('t2', 'sentences', 'SELECT key, payload FROM events', NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT evstream.drop_transform('nope');
\echo :LAST_ERROR_SQLSTATE
SELECT evstream.resume_transform('nope');
\echo :LAST_ERROR_SQLSTATE
-- nothing half-created
SELECT to_regclass('x'), (SELECT count(*) FROM evstream._transform WHERE name = 't2') AS rows;

------------------------------------------------------------------ privileges
CREATE ROLE regress_tf_user;
CREATE ROLE regress_tf_other;
CREATE SCHEMA tf AUTHORIZATION regress_tf_user;
SET ROLE regress_tf_user;
-- no SELECT on the source
SELECT evstream.create_transform('t3', 'sentences', 'SELECT key, payload FROM events', 'tf.out');
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
GRANT SELECT ON sentences TO regress_tf_user;
SET ROLE regress_tf_user;
-- no INSERT on an existing output topic
SELECT evstream.create_transform('t3', 'sentences', 'SELECT key, payload FROM events', 'words');
\echo :LAST_ERROR_SQLSTATE
-- no CREATE in the output's schema
SELECT evstream.create_transform('t3', 'sentences', 'SELECT key, payload FROM events', 'public.t3_out');
\echo :LAST_ERROR_SQLSTATE
-- the query runs as its owner: it cannot read what the owner cannot
CREATE TABLE tf.mine (k text);
SELECT evstream.create_transform('t3', 'sentences',
    $$SELECT key, jsonb_build_object('secret', (SELECT count(*) FROM public.plain)) FROM events$$, 'tf.out');
\echo :LAST_ERROR_SQLSTATE
-- the query resolves names with search_path = pg_catalog, pg_temp, as its
-- batches do: an unqualified table of the owner's is not found ...
SELECT evstream.create_transform('t3', 'sentences', $$SELECT key, payload FROM events WHERE NOT EXISTS (SELECT FROM mine)$$, 'tf.out');
\echo :LAST_ERROR_SQLSTATE
-- ... so no one can plant a function on the owner's path for it to call
SELECT evstream.create_transform('t3', 'sentences', $$SELECT key, payload FROM events WHERE NOT EXISTS (SELECT FROM tf.mine)$$, 'tf.out');
SELECT wait_for($$SELECT count(*) = 3 FROM tf.out$$);
RESET ROLE;
-- another role cannot drop or resume it
SET ROLE regress_tf_other;
SELECT evstream.drop_transform('t3');
\echo :LAST_ERROR_SQLSTATE
SELECT evstream.resume_transform('t3');
\echo :LAST_ERROR_SQLSTATE
-- nor see it without SELECT on the source
SELECT count(*) FROM evstream.transforms;
RESET ROLE;
SET ROLE regress_tf_user;
SELECT evstream.drop_transform('t3');
RESET ROLE;
-- a transform's group is its owner's own: when the source's owner dropped
-- it and another role made a group of that name (in one transaction here,
-- so that no batch re-creates it in between), the batches fail and the
-- transform pauses, rather than move that role's group
GRANT SELECT ON sentences TO regress_tf_other;
SELECT evstream.create_transform('own', 'sentences', 'SELECT key, payload FROM events', 'tf.own_out');
SELECT wait_for($$SELECT lag_events = 0 FROM evstream.transforms WHERE name = 'own'$$);
BEGIN;
SELECT evstream.drop_group('sentences', 'own');
SET LOCAL ROLE regress_tf_other;
SELECT count(*) FROM evstream.consume('sentences', 'own', 1);
COMMIT;
INSERT INTO sentences (key, payload) VALUES ('s9', '{"text": "after the takeover"}');
SELECT wait_for($$SELECT paused FROM evstream.transforms WHERE name = 'own'$$, 60);
SELECT last_error FROM evstream.transforms WHERE name = 'own';
SELECT owner, committed_id = (SELECT min(id) FROM sentences) AS untouched
  FROM evstream.consumer_groups WHERE topic = 'sentences'::regclass AND consumer_group = 'own';
SELECT evstream.drop_transform('own');
SELECT evstream.drop_group('sentences', 'own');
-- REASSIGN OWNED and DROP OWNED take a role's transforms and groups along
CREATE ROLE regress_tf_gone;
GRANT SELECT ON sentences TO regress_tf_gone;
GRANT USAGE, CREATE ON SCHEMA tf TO regress_tf_gone;
SET ROLE regress_tf_gone;
SELECT evstream.create_transform('gone_tx', 'sentences', 'SELECT key, payload FROM events', 'tf.gone_out');
SELECT count(*) FROM evstream.consume('sentences', 'gone_group', 1);
RESET ROLE;
REASSIGN OWNED BY regress_tf_gone TO regress_tf_other;
SELECT name, owner FROM evstream._transform WHERE name = 'gone_tx';
SELECT consumer_group, owner FROM evstream.consumer_groups
 WHERE topic = 'sentences'::regclass AND consumer_group IN ('gone_tx', 'gone_group') ORDER BY 1;
DROP OWNED BY regress_tf_other;
SELECT count(*) AS transforms_left FROM evstream._transform WHERE name = 'gone_tx';
SELECT count(*) AS groups_left FROM evstream._group WHERE consumer_group IN ('gone_tx', 'gone_group');
DROP OWNED BY regress_tf_gone;
DROP ROLE regress_tf_gone;
-- a transform whose owner was dropped (nothing PostgreSQL tracks held the
-- role: it read and wrote through PUBLIC grants) pauses, and the owner of
-- its source may drop it
CREATE ROLE regress_tf_orphan;
SET ROLE regress_tf_user;
SELECT evstream.create_topic('tf.osrc');
SELECT evstream.create_topic('tf.odst');
GRANT USAGE ON SCHEMA tf TO PUBLIC;
GRANT SELECT ON tf.osrc TO PUBLIC;
GRANT INSERT ON tf.odst TO PUBLIC;
RESET ROLE;
SET ROLE regress_tf_orphan;
SELECT evstream.create_transform('orphan_tx', 'tf.osrc', 'SELECT key, payload FROM events', 'tf.odst');
RESET ROLE;
DROP ROLE regress_tf_orphan;
INSERT INTO tf.osrc (key, payload) VALUES ('o1', '{}');
SELECT wait_for($$SELECT paused FROM evstream.transforms WHERE name = 'orphan_tx'$$, 60);
SELECT last_error FROM evstream.transforms WHERE name = 'orphan_tx';
SET ROLE regress_tf_other;
SELECT evstream.drop_transform('orphan_tx');
\echo :LAST_ERROR_SQLSTATE
SET ROLE regress_tf_user;
SELECT evstream.drop_transform('orphan_tx');
RESET ROLE;
SELECT count(*) AS orphan_groups FROM evstream._group WHERE consumer_group = 'orphan_tx';
REVOKE SELECT ON sentences FROM regress_tf_other;
DROP SCHEMA tf CASCADE;
REVOKE SELECT ON sentences FROM regress_tf_user;
DROP ROLE regress_tf_user, regress_tf_other;

------------------------------------------------------------------ clean up
SELECT evstream.drop_transform('inverse');
SELECT evstream.drop_transform('shout');
SELECT evstream.drop_transform('split');
SELECT count(*) FROM evstream.consumer_groups WHERE consumer_group IN ('split', 'shout', 'inverse');
SELECT evstream.drop_aggregate('word_counts');
SELECT evstream.drop_topic(t) FROM unnest(ARRAY['sentences', 'words', 'loud', 'nums', 'inverses']::regclass[]) t;
DROP TABLE plain;
DROP FUNCTION wait_for(text, int);
