--
-- aggregates: create_aggregate / drop_aggregate; counts always exact (backfill,
-- every form of INSERT and COPY, transactions and savepoints, NULL groups,
-- buckets); output topics; drop_topic with aggregates; bad expressions and
-- names fail cleanly and leave nothing behind; the evstream.aggregates view.
--
-- The maintenance worker merges deltas into counts in the background; an
-- aggregate's relation sums merged and pending counts, so every count shown
-- here is exact whenever the worker runs.
\set SHOW_CONTEXT never

-- number of (group, count) rows where an aggregate and GROUP BY over its
-- topic differ (EXCEPT treats NULL groups as equal)
CREATE FUNCTION agg_mismatches(agg regclass, topic regclass, expr text) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    n bigint;
BEGIN
    EXECUTE format('WITH a AS (SELECT group_key, count FROM %s),
                         b AS (SELECT (%s)::text AS group_key, count(*) AS count FROM %s GROUP BY 1)
                    SELECT count(*) FROM ((TABLE a EXCEPT ALL TABLE b) UNION ALL (TABLE b EXCEPT ALL TABLE a)) x',
                   agg, expr, topic) INTO n;
    RETURN n;
END
$$;
-- the same for a bucketed aggregate
CREATE FUNCTION agg_mismatches(agg regclass, topic regclass, expr text, bucket interval) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    n bigint;
BEGIN
    EXECUTE format('WITH a AS (SELECT group_key, bucket_start, count FROM %s),
                         b AS (SELECT (%s)::text AS group_key, date_bin(%L, created_at, %L) AS bucket_start,
                                      count(*) AS count FROM %s GROUP BY 1, 2)
                    SELECT count(*) FROM ((TABLE a EXCEPT ALL TABLE b) UNION ALL (TABLE b EXCEPT ALL TABLE a)) x',
                   agg, expr, bucket, 'epoch'::timestamptz, topic) INTO n;
    RETURN n;
END
$$;

SELECT evstream.create_topic('words');
-- events from before the aggregate exists: backfilled
INSERT INTO words (key, payload) VALUES
    ('apple', '{"w": "red", "n": 1}'), ('apple', '{"w": "green", "n": 2}'), ('pear', '{"w": "green", "n": 7}'),
    (NULL, '{"w": "red", "n": 9}'), ('Apple', '{"n": 3}');

------------------------------------------------------------------ create
SELECT evstream.create_aggregate('word_counts', 'words');
SELECT attnum, attname, format_type(atttypid, atttypmod) FROM pg_attribute
 WHERE attrelid = 'word_counts'::regclass AND attnum > 0 ORDER BY attnum;
SELECT * FROM word_counts ORDER BY group_key COLLATE "C" NULLS FIRST;
-- group_by is any immutable expression over id, key, payload, created_at
SELECT evstream.create_aggregate('color_counts', 'words', group_by => $$payload->>'w'$$);
SELECT evstream.create_aggregate('lower_counts', 'words', group_by => 'lower(key)');
SELECT evstream.create_aggregate('parity_counts', 'words', group_by => 'id % 2');
SELECT evstream.create_aggregate('big_counts', 'words', group_by => $$(payload->>'n')::int > 5$$);
SELECT evstream.create_aggregate('constant_counts', 'words', group_by => $$'all'$$);
SELECT * FROM color_counts ORDER BY group_key COLLATE "C" NULLS FIRST;
SELECT * FROM lower_counts ORDER BY group_key COLLATE "C" NULLS FIRST;
SELECT * FROM parity_counts ORDER BY group_key COLLATE "C" NULLS FIRST;
SELECT * FROM big_counts ORDER BY group_key COLLATE "C" NULLS FIRST;
SELECT * FROM constant_counts ORDER BY group_key COLLATE "C" NULLS FIRST;

------------------------------------------------------------------ maintained on insert
INSERT INTO words (key, payload) VALUES ('apple', '{"w": "red"}');
INSERT INTO words (key, payload) VALUES ('pear', '{"w": "red"}'), ('pear', '{"w": "blue"}'), ('fig', NULL), (NULL, NULL);
INSERT INTO words (key, payload) SELECT 'plum', jsonb_build_object('w', 'c' || (g % 3)) FROM generate_series(1, 30) g;
WITH w AS (INSERT INTO words (key) VALUES ('cte'), ('cte') RETURNING id) SELECT count(*) FROM w;
COPY words (key, payload) FROM STDIN;
kiwi	{"w": "green"}
kiwi	{"w": "green"}
\N	{"w": "copy"}
apple	\N
\.
DO $$
BEGIN
    FOR i IN 1..3 LOOP
        INSERT INTO words (key, payload) VALUES ('plpgsql', jsonb_build_object('n', i));
    END LOOP;
END
$$;
PREPARE ins(text) AS INSERT INTO words (key) VALUES ($1);
EXECUTE ins('prepared');
EXECUTE ins('prepared');
DEALLOCATE ins;
SELECT * FROM word_counts ORDER BY group_key COLLATE "C" NULLS FIRST;
SELECT * FROM color_counts ORDER BY group_key COLLATE "C" NULLS FIRST;
SELECT agg_mismatches('word_counts', 'words', 'key') AS word,
       agg_mismatches('color_counts', 'words', $$payload->>'w'$$) AS color,
       agg_mismatches('lower_counts', 'words', 'lower(key)') AS lower,
       agg_mismatches('parity_counts', 'words', 'id % 2') AS parity,
       agg_mismatches('big_counts', 'words', $$(payload->>'n')::int > 5$$) AS big,
       agg_mismatches('constant_counts', 'words', $$'all'$$) AS constant;
SELECT count FROM constant_counts;
SELECT count(*) FROM words;

------------------------------------------------------------------ transactions
-- a transaction sees its own increments; rolled-back ones never count
BEGIN;
INSERT INTO words (key) VALUES ('tx'), ('tx');
SELECT count FROM word_counts WHERE group_key = 'tx';
INSERT INTO words (key) VALUES ('tx');
SELECT count FROM word_counts WHERE group_key = 'tx';
ROLLBACK;
SELECT count(*) FROM word_counts WHERE group_key = 'tx';
BEGIN;
INSERT INTO words (key) VALUES ('tx');
SAVEPOINT s1;
INSERT INTO words (key) VALUES ('tx'), ('tx');
SELECT count FROM word_counts WHERE group_key = 'tx';
ROLLBACK TO SAVEPOINT s1;
SELECT count FROM word_counts WHERE group_key = 'tx';
SAVEPOINT s2;
INSERT INTO words (key) VALUES ('tx');
RELEASE SAVEPOINT s2;
SAVEPOINT s3;
SAVEPOINT s4;
INSERT INTO words (key) VALUES ('tx');
RELEASE SAVEPOINT s4;
ROLLBACK TO SAVEPOINT s3;
COMMIT;
SELECT count FROM word_counts WHERE group_key = 'tx';
SELECT count(*) FROM words WHERE key = 'tx';
-- a failed statement counts nothing
INSERT INTO words (key, payload) VALUES ('fails', '{}'), ('fails', '{"n": "x"}');
INSERT INTO words (key, payload) SELECT 'fails', jsonb_build_object('n', 1 / (3 - g)) FROM generate_series(1, 5) g;
SELECT count(*) FROM word_counts WHERE group_key = 'fails';
-- an exception caught in PL/pgSQL rolls its counts back
DO $$
BEGIN
    INSERT INTO words (key) VALUES ('caught');
    BEGIN
        INSERT INTO words (key) VALUES ('caught');
        RAISE EXCEPTION 'oops';
    EXCEPTION WHEN OTHERS THEN
        NULL;
    END;
END
$$;
SELECT count FROM word_counts WHERE group_key = 'caught';
SELECT agg_mismatches('word_counts', 'words', 'key') AS word,
       agg_mismatches('color_counts', 'words', $$payload->>'w'$$) AS color;
-- whatever the worker merged, an explicit merge changes no count
SELECT count(*) >= 0 AS merged FROM evstream._merge_deltas();
SELECT agg_mismatches('word_counts', 'words', 'key') AS word,
       agg_mismatches('color_counts', 'words', $$payload->>'w'$$) AS color;
-- a TRUNCATE (like retention) does not decrement counts
SELECT sum(count) FROM word_counts;
TRUNCATE words;
SELECT sum(count) FROM word_counts;
SELECT count FROM word_counts WHERE group_key = 'apple';
INSERT INTO words (key) VALUES ('apple');
SELECT count FROM word_counts WHERE group_key = 'apple';
-- the aggregate is a relation to read, not to write
INSERT INTO word_counts VALUES ('apple', 1);

------------------------------------------------------------------ buckets
SELECT evstream.create_topic('clicks');
INSERT INTO clicks (key) VALUES ('a'), ('b');
SELECT evstream.create_aggregate('clicks_per_second', 'clicks', bucket => '1 second');
SELECT evstream.create_aggregate('clicks_per_hour', 'clicks', bucket => '1 hour');
SELECT evstream.create_aggregate('clicks_per_2days', 'clicks', 'upper(key)', '2 days');
SELECT attnum, attname, format_type(atttypid, atttypmod) FROM pg_attribute
 WHERE attrelid = 'clicks_per_second'::regclass AND attnum > 0 ORDER BY attnum;
BEGIN;
INSERT INTO clicks (key) VALUES ('a'), ('a'), ('c');
INSERT INTO clicks (key) VALUES ('a');
-- a transaction's events are in the bucket of its now(), aligned like
-- date_bin(bucket, created_at, 'epoch'); its own increments are visible
SELECT group_key, count FROM clicks_per_second
 WHERE group_key = 'c' AND bucket_start = date_bin('1 second', now(), 'epoch');
SELECT group_key, count FROM clicks_per_2days
 WHERE group_key = 'C' AND bucket_start = date_bin('2 days', now(), 'epoch');
SELECT agg_mismatches('clicks_per_second', 'clicks', 'key', '1 second') AS per_second,
       agg_mismatches('clicks_per_hour', 'clicks', 'key', '1 hour') AS per_hour,
       agg_mismatches('clicks_per_2days', 'clicks', 'upper(key)', '2 days') AS per_2days;
COMMIT;
COPY clicks (key) FROM STDIN;
a
d
\N
\.
SELECT agg_mismatches('clicks_per_second', 'clicks', 'key', '1 second') AS per_second,
       agg_mismatches('clicks_per_hour', 'clicks', 'key', '1 hour') AS per_hour,
       agg_mismatches('clicks_per_2days', 'clicks', 'upper(key)', '2 days') AS per_2days;
SELECT sum(count), count(*) FILTER (WHERE group_key IS NULL) AS null_groups,
       bool_and(bucket_start = date_bin('1 second', bucket_start, 'epoch')) AS aligned
  FROM clicks_per_second;
SELECT bool_and(bucket_start = date_bin('2 days', bucket_start, 'epoch')) AS aligned FROM clicks_per_2days;
-- bad buckets
SELECT evstream.create_aggregate('bad_bucket', 'clicks', bucket => '0');
\echo :LAST_ERROR_SQLSTATE
SELECT evstream.create_aggregate('bad_bucket', 'clicks', bucket => '-1 hour');
SELECT evstream.create_aggregate('bad_bucket', 'clicks', bucket => '500 milliseconds');
SELECT evstream.create_aggregate('bad_bucket', 'clicks', bucket => '1 month');
SELECT evstream.create_aggregate('bad_bucket', 'clicks', bucket => '1 year 2 days');

------------------------------------------------------------------ output topics
-- created when missing
SELECT evstream.create_aggregate('word_totals', 'words', output_topic => 'word_totals_out');
SELECT topic FROM evstream._topic WHERE topic = 'word_totals_out'::regclass;
BEGIN;
INSERT INTO words (key) VALUES ('rolled back');
ROLLBACK;
-- change events come from the merge, after commit: none before it.  One
-- transaction, so whichever merge comes first (the worker's, every 100 ms,
-- or the one below) folds all of it.
BEGIN;
INSERT INTO words (key) VALUES ('apple'), ('pear'), ('apple');
INSERT INTO words (key) VALUES ('apple');
INSERT INTO words (key) VALUES ('fig'), (NULL), (NULL);
COPY words (key) FROM STDIN;
pear
pear
\.
SELECT count(*) FROM word_totals_out;
COMMIT;
-- one event per group changed since the last merge, with its new total
SELECT evstream._merge_deltas() >= 0 AS merged;
SELECT key, payload FROM word_totals_out ORDER BY key COLLATE "C" NULLS FIRST, id;
INSERT INTO words (key) VALUES ('apple');
SELECT evstream._merge_deltas() >= 0 AS merged;
SELECT key, payload FROM word_totals_out ORDER BY key COLLATE "C" NULLS FIRST, id;
SELECT * FROM word_totals ORDER BY group_key COLLATE "C" NULLS FIRST;
-- consumable like any topic
SELECT key, payload FROM evstream.consume('word_totals_out', 'out_reader', 3) ORDER BY key, id;
-- an existing topic can be the output
SELECT evstream.create_topic('click_changes');
SELECT evstream.create_aggregate('clicks_out', 'clicks', bucket => '1 hour', output_topic => 'click_changes');
INSERT INTO clicks (key) VALUES ('z'), ('z');
SELECT evstream._merge_deltas() >= 0 AS merged;
SELECT key, payload - 'bucket_start' AS payload,
       (payload->>'bucket_start')::timestamptz = date_bin('1 hour', now(), 'epoch') AS bucket_start_ok
  FROM click_changes ORDER BY id;
-- aggregates on an output topic: a pipeline
SELECT evstream.create_aggregate('changes_per_word', 'word_totals_out');
INSERT INTO words (key) VALUES ('fig');
SELECT evstream._merge_deltas() >= 0 AS merged;
SELECT * FROM changes_per_word ORDER BY group_key COLLATE "C" NULLS FIRST;
SELECT evstream.drop_aggregate('changes_per_word');
-- bad output topics
SELECT evstream.create_aggregate('bad_out', 'words', output_topic => 'words');
\echo :LAST_ERROR_SQLSTATE
CREATE TABLE not_a_topic (a int);
SELECT evstream.create_aggregate('bad_out', 'words', output_topic => 'not_a_topic');
\echo :LAST_ERROR_SQLSTATE
SELECT evstream.create_aggregate('bad_out', 'words', output_topic => 'nosuch.out');
SELECT evstream.create_aggregate('bad_out', 'words', output_topic => 'x; drop table words');
SELECT evstream.create_aggregate('bad_out', 'words', output_topic => repeat('o', 47));
SELECT count(*) FROM pg_class WHERE relname LIKE 'bad\_out%' OR relname LIKE 'ooooo%';

------------------------------------------------------------------ the catalog view
SELECT name, topic, group_by, bucket, output_topic, notify
  FROM evstream.aggregates ORDER BY name::text;
-- groups (bucketed aggregates have one per group and bucket: depends on the clock)
SELECT name, groups FROM evstream.aggregates WHERE bucket IS NULL ORDER BY name::text;

------------------------------------------------------------------ drop_aggregate
SELECT evstream.drop_aggregate('lower_counts');
SELECT to_regclass('lower_counts');
-- its output topic goes with it when the aggregate created it ...
SELECT evstream.drop_aggregate('word_totals');
SELECT to_regclass('word_totals'), to_regclass('word_totals_out');
SELECT count(*) FROM evstream._group WHERE consumer_group = 'out_reader';
-- ... and stays when it existed before
SELECT evstream.drop_aggregate('clicks_out');
SELECT to_regclass('clicks_out'), to_regclass('click_changes');
SELECT count(*) FROM click_changes;
-- nothing of the dropped aggregates is left in the catalog
SELECT count(*) FROM evstream._aggregate a WHERE NOT EXISTS (SELECT 1 FROM pg_class c WHERE c.oid = a.aggregate);
SELECT count(*) FROM evstream._count c WHERE NOT EXISTS (SELECT 1 FROM evstream._aggregate a WHERE a.id = c.agg);
SELECT count(*) FROM evstream._delta d WHERE NOT EXISTS (SELECT 1 FROM evstream._aggregate a WHERE a.id = d.agg);
-- inserts go on without them
INSERT INTO words (key) VALUES ('apple');
SELECT count FROM word_counts WHERE group_key = 'apple';
-- a plain DROP VIEW forgets the aggregate as well
DROP VIEW parity_counts;
SELECT count(*) FROM evstream._aggregate a WHERE NOT EXISTS (SELECT 1 FROM pg_class c WHERE c.oid = a.aggregate);
INSERT INTO words (key) VALUES ('apple');
SELECT count FROM word_counts WHERE group_key = 'apple';
-- errors
SELECT evstream.drop_aggregate(NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT evstream.drop_aggregate('words');
\echo :LAST_ERROR_SQLSTATE
SELECT evstream.drop_aggregate('not_a_topic');
SELECT evstream.drop_aggregate('nosuch');

------------------------------------------------------------------ drop_topic with aggregates
SELECT evstream.drop_topic('words');
\echo :LAST_ERROR_SQLSTATE
SELECT evstream.create_aggregate('click_totals', 'clicks', output_topic => 'click_totals_out');
SELECT evstream.drop_topic('click_totals_out');
\echo :LAST_ERROR_SQLSTATE
SELECT to_regclass('words'), to_regclass('word_counts');
-- cascade drops the aggregates reading the topic
SELECT evstream.drop_topic('words', cascade => true);
SELECT to_regclass('words'), to_regclass('word_counts'), to_regclass('color_counts'), to_regclass('big_counts');
SELECT count(*) FROM evstream._aggregate a WHERE NOT EXISTS (SELECT 1 FROM pg_class c WHERE c.oid = a.aggregate);
SELECT name FROM evstream.aggregates ORDER BY name::text;

------------------------------------------------------------------ bad expressions and names
SELECT count(*) AS aggregates_before FROM evstream._aggregate \gset
SELECT evstream.create_aggregate('bad', 'clicks', group_by => 'key +');
\echo :LAST_ERROR_SQLSTATE
SELECT evstream.create_aggregate('bad', 'clicks', group_by => 'nosuch');
\echo :LAST_ERROR_SQLSTATE
SELECT evstream.create_aggregate('bad', 'clicks', group_by => 'clicks.nosuch');
SELECT evstream.create_aggregate('bad', 'clicks', group_by => 'random()');
\echo :LAST_ERROR_SQLSTATE
SELECT evstream.create_aggregate('bad', 'clicks', group_by => 'key || random()::text');
SELECT evstream.create_aggregate('bad', 'clicks', group_by => 'now()');
SELECT evstream.create_aggregate('bad', 'clicks', group_by => $$date_trunc('day', created_at)$$);
SELECT evstream.create_aggregate('bad', 'clicks', group_by => $$nextval('clicks_id_seq')$$);
SELECT evstream.create_aggregate('bad', 'clicks', group_by => '(SELECT 1)');
\echo :LAST_ERROR_SQLSTATE
SELECT evstream.create_aggregate('bad', 'clicks', group_by => 'key IN (SELECT relname FROM pg_class)');
SELECT evstream.create_aggregate('bad', 'clicks', group_by => 'count(*)');
\echo :LAST_ERROR_SQLSTATE
SELECT evstream.create_aggregate('bad', 'clicks', group_by => 'max(key)');
SELECT evstream.create_aggregate('bad', 'clicks', group_by => 'row_number() OVER ()');
SELECT evstream.create_aggregate('bad', 'clicks', group_by => 'generate_series(1, 2)');
SELECT evstream.create_aggregate('bad', 'clicks', group_by => 'key, payload');
\echo :LAST_ERROR_SQLSTATE
SELECT evstream.create_aggregate('bad', 'clicks', group_by => 'key AS k');
SELECT evstream.create_aggregate('bad', 'clicks', group_by => 'key FROM clicks');
SELECT evstream.create_aggregate('bad', 'clicks', group_by => 'key); drop table clicks; --');
SELECT evstream.create_aggregate('bad', 'clicks', group_by => 'key; drop table clicks');
SELECT evstream.create_aggregate('bad', 'clicks', group_by => $$key')); drop table clicks; --$$);
SELECT evstream.create_aggregate('bad', 'clicks', group_by => '');
SELECT evstream.create_aggregate('bad', 'clicks', group_by => ' ');
SELECT evstream.create_aggregate('bad', 'clicks', group_by => 'pg_sleep(1)');
SELECT evstream.create_aggregate('bad', 'clicks', group_by => 'clicks');
SELECT evstream.create_aggregate('bad', 'clicks', group_by => 'clicks.*');
SELECT evstream.create_aggregate('bad', 'clicks', group_by => 'ctid');
-- names
SELECT evstream.create_aggregate(NULL, 'clicks');
\echo :LAST_ERROR_SQLSTATE
SELECT evstream.create_aggregate('bad', NULL);
SELECT evstream.create_aggregate('bad', 'clicks', NULL);
SELECT evstream.create_aggregate('bad', 'clicks', 'key', NULL, NULL, NULL);
SELECT evstream.create_aggregate('clicks_per_hour', 'clicks');
\echo :LAST_ERROR_SQLSTATE
SELECT evstream.create_aggregate('not_a_topic', 'clicks');
SELECT evstream.create_aggregate('bad', 'not_a_topic');
\echo :LAST_ERROR_SQLSTATE
SELECT evstream.create_aggregate('bad', 'clicks_default');
SELECT evstream.create_aggregate('bad', 'nosuch');
SELECT evstream.create_aggregate('nosuch.bad', 'clicks');
\echo :LAST_ERROR_SQLSTATE
SELECT evstream.create_aggregate('bad; drop table clicks', 'clicks');
SELECT evstream.create_aggregate('', 'clicks');
SELECT evstream.create_aggregate('""', 'clicks');
-- a name PostgreSQL would cut short is refused, not truncated
SELECT evstream.create_aggregate(repeat('a', 64), 'clicks');
\echo :LAST_ERROR_SQLSTATE
SELECT evstream.create_aggregate('public."' || repeat('b', 64) || '"', 'clicks');
SELECT evstream.create_aggregate('clicks_x', 'clicks', output_topic => repeat('c', 70));
-- nothing was left behind
SELECT count(*) - :aggregates_before AS new_aggregates FROM evstream._aggregate;
SELECT count(*) FROM pg_class WHERE relname LIKE 'bad%' OR relname LIKE 'nosuch%';
SELECT count(*) FROM clicks;
-- names longer than 63 bytes are refused (as create_topic and
-- create_transform do), not cut short to another name
SELECT evstream.create_aggregate(repeat('b', 70), 'clicks');
SELECT evstream.create_aggregate(repeat('b', 63), 'clicks');
SELECT evstream.drop_aggregate(repeat('b', 63));
-- quoted and schema-qualified names work
CREATE SCHEMA stats;
SELECT evstream.create_aggregate('stats."Clicks; By Key"', 'clicks');
SELECT * FROM stats."Clicks; By Key" ORDER BY group_key COLLATE "C" NULLS FIRST;
SELECT evstream.drop_aggregate('stats."Clicks; By Key"');

------------------------------------------------------------------ search_path
-- group_by is stored fully qualified: producers with any search_path count the same
CREATE FUNCTION public.norm(t text) RETURNS text LANGUAGE sql IMMUTABLE AS $$ SELECT upper(t) $$;
SELECT evstream.create_aggregate('normed', 'clicks', group_by => 'norm(key)');
SELECT group_by FROM evstream.aggregates WHERE name = 'normed'::regclass;
CREATE SCHEMA decoy;
CREATE FUNCTION decoy.norm(t text) RETURNS text LANGUAGE sql IMMUTABLE AS $$ SELECT 'decoy' $$;
CREATE FUNCTION decoy.upper(t text) RETURNS text LANGUAGE sql IMMUTABLE AS $$ SELECT 'decoy' $$;
SET search_path = decoy, public;
INSERT INTO public.clicks (key) VALUES ('m');
SET search_path = '';
INSERT INTO public.clicks (key) VALUES ('m');
RESET search_path;
SELECT * FROM normed WHERE group_key IN ('M', 'decoy') ORDER BY 1;
SELECT agg_mismatches('normed', 'clicks', 'public.norm(key)') AS normed;
SELECT evstream.drop_aggregate('normed');
DROP SCHEMA decoy CASCADE;
DROP FUNCTION public.norm(text);

------------------------------------------------------------------ privileges
CREATE ROLE regress_evs_analyst;
CREATE ROLE regress_evs_stranger;
GRANT CREATE, USAGE ON SCHEMA stats TO regress_evs_analyst;
GRANT USAGE ON SCHEMA stats TO regress_evs_stranger;
SET ROLE regress_evs_analyst;
-- creating an aggregate needs ownership of the topic: its expression runs
-- inside every producer's INSERT
SELECT evstream.create_aggregate('stats.analyst_counts', 'clicks');
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
GRANT SELECT ON clicks TO regress_evs_analyst;
SET ROLE regress_evs_analyst;
-- SELECT is not enough
SELECT evstream.create_aggregate('stats.analyst_counts', 'clicks', group_by => 'upper(key)');
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
SELECT evstream.create_aggregate('stats.analyst_counts', 'clicks', group_by => 'upper(key)');
SELECT * FROM stats.analyst_counts ORDER BY group_key COLLATE "C" NULLS FIRST;
-- producers need no privileges on the aggregate
GRANT INSERT ON clicks TO regress_evs_stranger;
SET ROLE regress_evs_stranger;
INSERT INTO clicks (key) VALUES ('s');
-- nor can they read the counts
SELECT * FROM stats.analyst_counts;
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM clicks_per_hour;
\echo :LAST_ERROR_SQLSTATE
-- not through the catalog tables either: group keys are data of the topic
-- (payload values, for instance)
DO $$
DECLARE
    n bigint;
BEGIN
    SELECT count(*) INTO n FROM (
        SELECT c.group_key FROM evstream._count c UNION ALL SELECT u.group_key FROM evstream._delta d, evstream._unpack(d.data) u) x;
    RAISE NOTICE 'counts readable without SELECT on any topic: %', n;
EXCEPTION WHEN insufficient_privilege THEN
    RAISE NOTICE 'counts readable without SELECT on any topic: 0';
END
$$;
-- only the owner drops an aggregate
SELECT evstream.drop_aggregate('stats.analyst_counts');
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
SELECT * FROM stats.analyst_counts ORDER BY group_key COLLATE "C" NULLS FIRST;
SET ROLE regress_evs_analyst;
SELECT evstream.drop_aggregate('stats.analyst_counts');
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
SELECT evstream.drop_aggregate('stats.analyst_counts');
REVOKE ALL ON clicks FROM regress_evs_analyst, regress_evs_stranger;
REVOKE ALL ON SCHEMA stats FROM regress_evs_analyst, regress_evs_stranger;
DROP ROLE regress_evs_analyst, regress_evs_stranger;

------------------------------------------------------------------ nested statements
-- a statement nested in a subtransaction that rolls back loses its own
-- counts, never the enclosing statement's
SELECT evstream.create_topic('nest');
SELECT evstream.create_aggregate('nest_counts', 'nest');
CREATE FUNCTION nest_inner() RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    BEGIN
        INSERT INTO nest (key) VALUES ('inner');
        RAISE EXCEPTION 'undo the inner insert';
    EXCEPTION WHEN raise_exception THEN NULL;
    END;
    RETURN true;
END $$;
INSERT INTO nest (key) SELECT 'outer' FROM generate_series(1, 5) g WHERE nest_inner();
-- a nested statement that stays counts too
CREATE FUNCTION nest_inner_ok() RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO nest (key) VALUES ('inner ok');
    RETURN true;
END $$;
INSERT INTO nest (key) SELECT 'outer ok' FROM generate_series(1, 3) g WHERE nest_inner_ok();
SELECT * FROM nest_counts ORDER BY group_key;
SELECT count(*) AS differing FROM (
    (SELECT group_key, count FROM nest_counts EXCEPT SELECT key, count(*) FROM nest GROUP BY key)
    UNION ALL
    (SELECT key, count(*) FROM nest GROUP BY key EXCEPT SELECT group_key, count FROM nest_counts)) x;
SELECT evstream._merge_deltas() >= 0 AS merged;
SELECT * FROM nest_counts ORDER BY group_key;
SELECT evstream.drop_topic('nest', cascade => true);
DROP FUNCTION nest_inner(), nest_inner_ok();

-- a group is the value as text, the same in every session: dates,
-- timestamps and floats are converted under fixed settings (ISO, UTC,
-- extra_float_digits 1), not under each producer's DateStyle, TimeZone
-- or extra_float_digits
SELECT evstream.create_topic('styles');
SELECT evstream.create_aggregate('styles_day', 'styles', group_by => $$(created_at AT TIME ZONE 'UTC')::date$$);
SELECT evstream.create_aggregate('styles_hour', 'styles',
    group_by => $$date_trunc('hour', created_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'$$);
SELECT evstream.create_aggregate('styles_third', 'styles', group_by => $$(payload->>'f')::float8 / 3$$);
SET DateStyle = 'ISO, MDY'; SET TimeZone = 'UTC';
INSERT INTO styles (key, payload) VALUES ('a', '{"f": 1}');
SET DateStyle = 'German'; SET TimeZone = 'America/New_York'; SET extra_float_digits = 3;
INSERT INTO styles (key, payload) VALUES ('b', '{"f": 1}');
SET DateStyle = 'SQL, DMY'; SET TimeZone = 'Asia/Tokyo'; SET extra_float_digits = -2;
INSERT INTO styles (key, payload) VALUES ('c', '{"f": 1}');
RESET DateStyle; RESET TimeZone; RESET extra_float_digits;
SELECT count(*) AS groups, sum(count) AS events, bool_and(group_key ~ '^\d{4}-\d\d-\d\d$') AS iso
  FROM styles_day;
SELECT count(*) AS groups, sum(count) AS events,
       bool_and(group_key ~ '^\d{4}-\d\d-\d\d \d\d:00:00\+00$') AS iso_utc
  FROM styles_hour;
SELECT * FROM styles_third;
-- a conversion to text inside the expression would be the producer's:
-- refused (the final one is the fixed one)
SELECT evstream.create_aggregate('styles_bad', 'styles',
    group_by => $$((payload->>'f')::float8)::text COLLATE "C"$$);
\echo :LAST_ERROR_SQLSTATE
SELECT evstream.create_aggregate('styles_bad', 'styles', group_by => $$decode(key, 'escape')::text || '!'$$);
SELECT evstream.create_aggregate('styles_ok', 'styles', group_by => $$'k' || id::text$$);
SELECT evstream.drop_topic('styles', cascade => true);

------------------------------------------------------------------ clean up
SELECT evstream.drop_topic('clicks', cascade => true);
SELECT evstream.drop_topic('click_changes');
SELECT to_regclass('click_totals_out');
DROP TABLE not_a_topic;
DROP SCHEMA stats;
DROP FUNCTION agg_mismatches(regclass, regclass, text), agg_mismatches(regclass, regclass, text, interval);
SELECT count(*) FROM evstream._aggregate;
SELECT count(*) FROM evstream._topic;
