--
-- aggregates_v2: the 0.2 parameters of create_aggregate (SPEC "Continuous
-- aggregates", issue 10): measures of every kind and input type (NULL
-- inputs, result column types), hopping windows, event_time, grace and late
-- events (evstream.aggregates.late_events), emit => 'final' and
-- window_retention, backfill of an existing topic with all of them, every
-- bad input with its SQLSTATE, and the privileges of measure and event_time
-- expressions.
--
-- Exactness: v2_truth() writes, for the parameters an aggregate was created
-- with, the plain SQL (GROUP BY over the topic, one row per event and window
-- for hopping windows, late events left out) that must give exactly the
-- aggregate's rows, and v2_diff() counts the rows where they differ, so any
-- wrong value fails the test.  The maintenance worker merges in the
-- background; evstream._merge_deltas() merges in the middle, and the
-- comparison is repeated.
--
\set VERBOSITY sqlstate
\set SHOW_CONTEXT never
SET TimeZone = 'UTC';
SET DateStyle = 'ISO, YMD';
SET IntervalStyle = 'postgres';
-- (the plain SQL of many measures is not worth compiling)
SET jit = off;

------------------------------------------------------------------ helpers
-- the parameters each aggregate under test was created with
-- (truth_event_time: the event time as plain SQL evaluated in this session
-- must see it, when the producer's TimeZone differed)
CREATE TABLE v2_params (agg regclass PRIMARY KEY, topic regclass, group_by text, measures text,
                        bucket interval, hop interval, event_time text, grace interval,
                        truth_event_time text);

-- create_aggregate, remembering the parameters
CREATE FUNCTION v2_create(name text, topic regclass, group_by text DEFAULT 'key',
                          bucket interval DEFAULT NULL, output_topic text DEFAULT NULL,
                          measures text DEFAULT NULL, hop interval DEFAULT NULL,
                          event_time text DEFAULT NULL, grace interval DEFAULT NULL,
                          emit text DEFAULT 'changes', window_retention interval DEFAULT NULL)
RETURNS regclass LANGUAGE plpgsql AS $$
DECLARE
    a regclass;
BEGIN
    a := evstream.create_aggregate(name, topic, group_by => group_by, bucket => bucket,
            output_topic => output_topic, measures => measures, hop => hop, event_time => event_time,
            grace => grace, emit => emit, window_retention => window_retention);
    INSERT INTO v2_params VALUES (a, topic, group_by, measures, bucket, hop, event_time, grace, NULL);
    RETURN a;
END
$$;

-- the plain SQL an aggregate must equal: group_key, [bucket_start,] count,
-- then the measures, computed by PostgreSQL's own aggregates over the topic.
-- An event counts in every window [s, s + bucket) that contains its time,
-- s on the epoch in steps of hop; in the window NULL when its event time is
-- NULL or infinite; with event_time, not in a window that ended more than
-- grace before the event's created_at (late).
CREATE FUNCTION v2_truth(p v2_params) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    m text := CASE WHEN p.measures IS NULL THEN '' ELSE ', ' || p.measures END;
BEGIN
    IF p.bucket IS NULL THEN
        RETURN format('SELECT (%s)::text AS group_key, count(*) AS count%s FROM %s GROUP BY 1',
                      p.group_by, m, p.topic);
    END IF;
    RETURN format($f$
        SELECT (%1$s)::text AS group_key, w_.s_ AS bucket_start, count(*) AS count%2$s
          FROM %3$s
         CROSS JOIN LATERAL (SELECT (%4$s)::timestamptz AS t_) t_
         CROSS JOIN LATERAL (
               SELECT NULL::timestamptz AS s_ WHERE t_.t_ IS NULL OR NOT isfinite(t_.t_)
               UNION ALL
               SELECT g_ FROM generate_series(
                   CASE WHEN isfinite(t_.t_) THEN date_bin(%5$L::interval, t_.t_, 'epoch') - %6$L::interval + %5$L::interval END,
                   CASE WHEN isfinite(t_.t_) THEN date_bin(%5$L::interval, t_.t_, 'epoch') END,
                   %5$L::interval) g_) w_
         WHERE %8$L::boolean OR w_.s_ IS NULL OR w_.s_ + %6$L::interval + %7$L::interval >= created_at
         GROUP BY 1, 2$f$,
        p.group_by, m, p.topic, coalesce(p.truth_event_time, p.event_time, 'created_at'), coalesce(p.hop, p.bucket), p.bucket,
        coalesce(p.grace, '0'), p.event_time IS NULL);
END
$$;

-- PostgreSQL has no min(jsonb) and max(jsonb), though jsonb is ordered:
-- for the plain SQL only
CREATE SCHEMA v2truth;
CREATE FUNCTION v2truth.jsonb_smaller(a jsonb, b jsonb) RETURNS jsonb LANGUAGE sql IMMUTABLE STRICT
    AS $$ SELECT CASE WHEN a <= b THEN a ELSE b END $$;
CREATE FUNCTION v2truth.jsonb_larger(a jsonb, b jsonb) RETURNS jsonb LANGUAGE sql IMMUTABLE STRICT
    AS $$ SELECT CASE WHEN a >= b THEN a ELSE b END $$;
CREATE AGGREGATE v2truth.min(jsonb) (SFUNC = v2truth.jsonb_smaller, STYPE = jsonb);
CREATE AGGREGATE v2truth.max(jsonb) (SFUNC = v2truth.jsonb_larger, STYPE = jsonb);

-- rows where an aggregate and its plain SQL differ (multisets, NULL = NULL)
CREATE FUNCTION v2_diff(agg regclass) RETURNS bigint LANGUAGE plpgsql SET search_path = public, v2truth AS $$
DECLARE
    q text := v2_truth((SELECT p FROM v2_params p WHERE p.agg = v2_diff.agg));
    n bigint;
BEGIN
    EXECUTE format('SELECT count(*) FROM ((SELECT * FROM %1$s EXCEPT ALL SELECT * FROM (%2$s) t)
                    UNION ALL (SELECT * FROM (%2$s) t EXCEPT ALL SELECT * FROM %1$s)) x', agg, q) INTO n;
    RETURN n;
END
$$;

-- every aggregate under test at once: the ones that differ, and how many
CREATE VIEW v2_wrong AS
SELECT coalesce(string_agg(agg::text || ' (' || d || ' rows)', ', ' ORDER BY agg::text) FILTER (WHERE d <> 0), 'none') AS wrong
  FROM (SELECT agg, v2_diff(agg) AS d FROM v2_params) x;

-- the columns of a relation
CREATE FUNCTION v2_columns(rel regclass) RETURNS TABLE (attname name, type text)
LANGUAGE sql AS $$
    SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute
     WHERE attrelid = rel AND attnum > 0 AND NOT attisdropped ORDER BY attnum
$$;

-- Merges and commits every 0.1 s until the query cond is true, for at most
-- secs seconds (a procedure: each round is a transaction of its own, so no
-- transaction of this session keeps a window open).
CREATE PROCEDURE v2_wait(cond text, secs integer) LANGUAGE plpgsql AS $$
DECLARE
    ok boolean;
BEGIN
    FOR i IN 1 .. secs * 10 LOOP
        PERFORM evstream._merge_deltas();
        COMMIT;
        EXECUTE cond INTO ok;
        COMMIT;
        EXIT WHEN ok;
        PERFORM pg_sleep(0.1);
        COMMIT;
    END LOOP;
END
$$;

SELECT count(*) AS aggregates_before FROM evstream._aggregate \gset

------------------------------------------------------------------ measures
SELECT evstream.create_topic('m');
-- before the aggregates exist: backfilled.  Group nulls has no input of
-- any measure, group c a NULL payload, the NULL key is a group of its own.
INSERT INTO m (key, payload) VALUES
    ('a', '{"i": 1, "b": 10000000000, "x": "1.50", "f": 0.5, "s": "kiwi"}'),
    ('a', '{"i": -3, "b": -5, "x": 2.25, "f": 1.25, "s": "apple"}'),
    ('b', '{"i": 7, "b": 1, "x": 0.1, "f": 2, "s": "fig"}'),
    ('nulls', '{}'),
    ('c', NULL),
    (NULL, '{"i": 4, "s": "none"}');
\set all_measures 'sum((payload->>''i'')::int) AS sum_i, sum((payload->>''i'')::smallint) AS sum_i2, sum((payload->>''b'')::bigint) AS sum_b, sum((payload->>''x'')::numeric) AS sum_x, sum((payload->>''f'')::real) AS sum_f4, sum((payload->>''f'')::float8) AS sum_f8, avg((payload->>''i'')::int) AS avg_i, avg((payload->>''i'')::smallint) AS avg_i2, avg((payload->>''b'')::bigint) AS avg_b, avg((payload->>''x'')::numeric) AS avg_x, avg((payload->>''f'')::real) AS avg_f4, avg((payload->>''f'')::float8) AS avg_f8, min((payload->>''i'')::int) AS min_i, max((payload->>''i'')::int) AS max_i, min((payload->>''b'')::bigint) AS min_b, max((payload->>''x'')::numeric) AS max_x, min((payload->>''f'')::real) AS min_f4, max((payload->>''f'')::float8) AS max_f8, min(payload->>''s'') AS min_s, max(payload->>''s'') AS max_s, min(id) AS min_id, max(id) AS max_id, max(created_at) AS last_at, count(payload->>''i'') AS n_i, count(payload) AS n_p'
SELECT v2_create('m_all', 'm', measures => :'all_measures');
-- result types: what the SQL aggregate returns for the expression's type
SELECT * FROM v2_columns('m_all');
SELECT group_key, count, sum_i, sum_i2, sum_b, sum_x, sum_f4, sum_f8, min_i, max_i, min_b, max_x,
       min_f4, max_f8, min_s, max_s, n_i, n_p
  FROM m_all ORDER BY group_key NULLS FIRST;
SELECT group_key, avg_i, avg_i2, avg_b, avg_x, avg_f4, avg_f8
  FROM m_all ORDER BY group_key NULLS FIRST;
SELECT * FROM v2_wrong;
-- min and max take what SQL's min and max take: PostgreSQL has no
-- min(jsonb) or max(jsonb), so neither has evstream (42883, nothing created)
SELECT v2_create('m_jsonb', 'm', measures => $$min(payload) AS min_p, max(payload) AS max_p, max(payload->'x') AS max_x$$);
SELECT to_regclass('m_jsonb') IS NULL AS not_created;
-- a measure-less aggregate keeps the 0.1 shape; a single measure
SELECT v2_create('m_plain', 'm');
SELECT v2_create('m_one', 'm', group_by => $$payload->>'s'$$, measures => $$max((payload->>'i')::int) AS top$$);
SELECT * FROM v2_columns('m_plain');
SELECT * FROM v2_columns('m_one');
-- names are identifiers: quoted names keep their case and spaces; the order
-- written is the column order; function names are case-insensitive
SELECT v2_create('m_names', 'm', measures => $$MAX(id) AS "Top Id", Min(id) AS low, COUNT(key) AS "count of keys"$$);
SELECT * FROM v2_columns('m_names');
SELECT * FROM m_names ORDER BY group_key NULLS FIRST;

-- maintained on every form of insert
INSERT INTO m (key, payload) VALUES ('a', '{"i": 10, "f": 0.25, "s": "zucchini"}');
INSERT INTO m (key, payload) SELECT 'g' || (g % 3), jsonb_build_object('i', g, 'b', g::bigint * 1000000000, 'x', g / 4.0, 'f', g * 0.5, 's', 's' || g)
  FROM generate_series(1, 60) g;
WITH w AS (INSERT INTO m (key, payload) VALUES ('cte', '{"i": 2}'), ('cte', '{"i": 3}') RETURNING id) SELECT count(*) FROM w;
COPY m (key, payload) FROM STDIN;
b	{"i": -100, "x": -0.5, "f": -4}
b	{"i": 100, "s": "zz"}
\N	{"i": 5}
nulls	\N
\.
DO $$
BEGIN
    FOR i IN 1..3 LOOP
        INSERT INTO m (key, payload) VALUES ('plpgsql', jsonb_build_object('i', i * 11, 'f', i));
    END LOOP;
END
$$;
SELECT group_key, count, sum_i, min_i, max_i, avg_i, n_i FROM m_all WHERE group_key IN ('a', 'b', 'cte', 'nulls', 'plpgsql') OR group_key IS NULL
 ORDER BY group_key NULLS FIRST;
SELECT * FROM v2_wrong;

-- transactions: a transaction sees its own values; a rolled-back new max
-- or min is forgotten
BEGIN;
INSERT INTO m (key, payload) VALUES ('b', '{"i": 1000}');
SELECT count, sum_i, max_i FROM m_all WHERE group_key = 'b';
SAVEPOINT s1;
INSERT INTO m (key, payload) VALUES ('b', '{"i": -1000, "s": "aaa"}'), ('b', '{"i": 5000}');
SELECT count, sum_i, min_i, max_i, min_s FROM m_all WHERE group_key = 'b';
SELECT * FROM v2_wrong;
ROLLBACK TO SAVEPOINT s1;
SELECT count, sum_i, min_i, max_i, min_s FROM m_all WHERE group_key = 'b';
SELECT * FROM v2_wrong;
ROLLBACK;
SELECT count, sum_i, min_i, max_i, min_s FROM m_all WHERE group_key = 'b';
SELECT * FROM v2_wrong;
BEGIN;
INSERT INTO m (key, payload) VALUES ('new', '{"i": 1}');
SAVEPOINT s2;
INSERT INTO m (key, payload) VALUES ('new', '{"i": 99}');
RELEASE SAVEPOINT s2;
SAVEPOINT s3;
INSERT INTO m (key, payload) VALUES ('new', '{"i": -99}');
ROLLBACK TO SAVEPOINT s3;
COMMIT;
SELECT group_key, count, sum_i, min_i, max_i, avg_i FROM m_all WHERE group_key = 'new';
-- a statement that fails in a measure counts nothing (and neither does an
-- exception caught in PL/pgSQL)
INSERT INTO m (key, payload) VALUES ('new', '{"i": 7}'), ('new', '{"i": "seven"}');
INSERT INTO m (key, payload) VALUES ('new', '{"i": 30000}');
DO $$
BEGIN
    BEGIN
        INSERT INTO m (key, payload) VALUES ('new', '{"i": 500}');
        RAISE EXCEPTION 'undo';
    EXCEPTION WHEN raise_exception THEN NULL;
    END;
END
$$;
SELECT group_key, count, sum_i, min_i, max_i FROM m_all WHERE group_key = 'new';
SELECT * FROM v2_wrong;
-- merged in the middle: the same values
SELECT evstream._merge_deltas() >= 0 AS merged;
SELECT * FROM v2_wrong;
INSERT INTO m (key, payload) VALUES ('a', '{"i": -50, "b": 3, "x": 9.99, "f": 8}'), ('nulls', '{}');
SELECT group_key, count, sum_i, min_i, max_i, n_i FROM m_all WHERE group_key IN ('a', 'nulls') ORDER BY 1;
SELECT * FROM v2_wrong;
-- the aggregate is a relation to read
INSERT INTO m_all (group_key, count) VALUES ('x', 1);
UPDATE m_all SET sum_i = 0;

------------------------------------------------------------------ measures in windows (created_at)
SELECT v2_create('m_hourly', 'm', bucket => '1 hour', measures => :'all_measures');
SELECT * FROM v2_columns('m_hourly');
INSERT INTO m (key, payload) VALUES ('a', '{"i": 3, "x": 1, "f": 1, "s": "hour"}'), ('zz', '{"i": 8}');
SELECT group_key, bucket_start = date_bin('1 hour', now(), 'epoch') AS this_hour, count, sum_i, max_i
  FROM m_hourly WHERE group_key = 'zz';
SELECT * FROM v2_wrong;

------------------------------------------------------------------ hopping windows
SELECT evstream.create_topic('h');
-- event times given explicitly: each event counts in the bucket / hop = 3
-- windows of a minute that contain it, on the epoch in steps of 20 s
SELECT v2_create('h_hop', 'h', bucket => '1 minute', hop => '20 seconds',
                 event_time => $$(payload->>'ts')::timestamptz$$, measures => $$sum((payload->>'n')::int) AS total$$);
INSERT INTO h (key, payload) VALUES
    ('a', '{"ts": "2100-01-01 00:00:30+00", "n": 1}'),
    ('a', '{"ts": "2100-01-01 00:00:00+00", "n": 2}'),
    ('b', '{"ts": "2100-01-01 00:00:59.999999+00", "n": 4}');
SELECT v2_create('h_tumble', 'h', bucket => '1 minute', hop => '1 minute', event_time => $$(payload->>'ts')::timestamptz$$);
SELECT v2_create('h_nohop', 'h', bucket => '1 minute', event_time => $$(payload->>'ts')::timestamptz$$);
-- (plain SQL evaluates the time of the event produced in Tokyo below in Tokyo)
UPDATE v2_params SET truth_event_time = $$CASE WHEN payload ? 'tz' THEN timezone(payload->>'tz', (payload->>'ts')::timestamp)
                                              ELSE (payload->>'ts')::timestamptz END$$
 WHERE topic = 'h'::regclass;
SELECT * FROM h_hop ORDER BY group_key, bucket_start;
-- an event without an event time, or an infinite one, counts once, in the
-- window NULL
INSERT INTO h (key, payload) VALUES ('a', '{"n": 8}'), ('a', '{"ts": "infinity", "n": 16}'), ('a', '{"ts": "-infinity", "n": 32}');
SELECT * FROM h_hop WHERE bucket_start IS NULL ORDER BY group_key;
-- the event time is evaluated in the producing session: a time without a
-- UTC offset follows its TimeZone
SET TimeZone = 'Asia/Tokyo';
INSERT INTO h (key, payload) VALUES ('tz', '{"ts": "2100-01-01 09:00:30", "tz": "Asia/Tokyo", "n": 1}');
SET TimeZone = 'UTC';
INSERT INTO h (key, payload) VALUES ('tz', '{"ts": "2100-01-01 00:00:30", "n": 2}');
SELECT * FROM h_hop WHERE group_key = 'tz' ORDER BY bucket_start;
-- hop = bucket: tumbling windows, as without hop
SELECT count(*) AS differing FROM ((TABLE h_tumble EXCEPT ALL TABLE h_nohop) UNION ALL (TABLE h_nohop EXCEPT ALL TABLE h_tumble)) x;
SELECT * FROM h_tumble ORDER BY group_key, bucket_start NULLS FIRST;
-- on created_at: every event in bucket / hop = 4 windows
SELECT v2_create('m_hop', 'm', bucket => '1 hour', hop => '15 minutes', measures => $$sum((payload->>'i')::int) AS sum_i, max(id) AS max_id$$);
INSERT INTO m (key, payload) VALUES ('hop', '{"i": 1}'), ('hop', '{"i": 2}');
SELECT sum(count) = 4 * (SELECT count(*) FROM m) AS four_windows_each,
       bool_and(bucket_start = date_bin('15 minutes', bucket_start, 'epoch')) AS aligned,
       count(*) FILTER (WHERE bucket_start IS NULL) AS null_windows
  FROM m_hop;
SELECT count(*) AS windows, sum(count) AS count, sum(sum_i) AS sum_i FROM m_hop WHERE group_key = 'hop';
SELECT * FROM v2_wrong;

------------------------------------------------------------------ event_time, grace, late events
SELECT evstream.create_topic('lt');
SELECT v2_create('lt_min', 'lt', bucket => '1 minute', event_time => $$(payload->>'ts')::timestamptz$$,
                 measures => $$sum((payload->>'n')::int) AS total$$);
SELECT v2_create('lt_grace', 'lt', bucket => '1 minute', event_time => $$(payload->>'ts')::timestamptz$$,
                 grace => '100000 days');
SELECT v2_create('lt_hop', 'lt', bucket => '1 hour', hop => '30 minutes', event_time => $$(payload->>'ts')::timestamptz$$,
                 grace => NULL, measures => $$count(payload->>'n') AS n$$);
-- without event_time no event is late, however old its window
SELECT v2_create('lt_created', 'lt', bucket => '1 minute', grace => '0');
INSERT INTO lt (key, payload) VALUES ('future', '{"ts": "2100-01-01 00:00:10+00", "n": 1}');
-- a window that ended long ago: late for lt_min and lt_hop (once per
-- window: twice for lt_hop), on time for lt_grace
INSERT INTO lt (key, payload) VALUES ('old', '{"ts": "2020-01-01 00:00:10+00", "n": 2}');
INSERT INTO lt (key, payload) VALUES ('old', '{"ts": "2020-01-01 00:00:20+00", "n": 4}'), ('future', '{"ts": "2100-01-01 00:00:50+00", "n": 8}');
SELECT name, late_events FROM evstream.aggregates WHERE topic = 'lt'::regclass ORDER BY name::text;
-- late events are in no group
SELECT * FROM lt_min ORDER BY group_key, bucket_start NULLS FIRST;
SELECT * FROM lt_grace ORDER BY group_key, bucket_start NULLS FIRST;
SELECT * FROM lt_hop ORDER BY group_key, bucket_start NULLS FIRST;
SELECT group_key, count FROM lt_created ORDER BY group_key;
-- an event late for the earlier of its two windows only: counts in the
-- later one, late_events + 1
INSERT INTO lt (key, payload) VALUES ('half', jsonb_build_object('ts', date_bin('30 minutes', now(), 'epoch') - interval '1 second', 'n', 1));
SELECT group_key, bucket_start = date_bin('30 minutes', now(), 'epoch') - interval '30 minutes' AS later_window, count, n
  FROM lt_hop WHERE group_key = 'half';
-- an event of the current window is on time
INSERT INTO lt (key, payload) SELECT 'now', jsonb_build_object('ts', now(), 'n', g) FROM generate_series(1, 3) g;
SELECT group_key, bucket_start = date_bin('1 minute', now(), 'epoch') AS this_minute, count, total FROM lt_min WHERE group_key = 'now';
-- NULL and infinite event times are never late
INSERT INTO lt (key, payload) VALUES ('none', '{"n": 1}'), ('none', '{"ts": "-infinity", "n": 2}');
SELECT group_key, bucket_start, count, total FROM lt_min WHERE group_key = 'none';
-- a rolled-back late event is not counted as late
BEGIN;
INSERT INTO lt (key, payload) VALUES ('old', '{"ts": "2020-01-01 00:00:30+00", "n": 1}');
ROLLBACK;
SELECT name, late_events FROM evstream.aggregates WHERE topic = 'lt'::regclass ORDER BY name::text;
SELECT * FROM v2_wrong;
SELECT evstream._merge_deltas() >= 0 AS merged;
SELECT name, late_events FROM evstream.aggregates WHERE topic = 'lt'::regclass ORDER BY name::text;
SELECT * FROM v2_wrong;

------------------------------------------------------------------ output topics (emit 'changes')
SELECT v2_create('m_out', 'm', group_by => $$'all'$$, output_topic => 'm_out_topic',
                 measures => $$sum((payload->>'i')::int) AS sum_i, max((payload->>'s')) AS max_s, avg((payload->>'f')::float8) AS avg_f$$);
SELECT v2_create('lt_out', 'lt', bucket => '1 minute', event_time => $$(payload->>'ts')::timestamptz$$,
                 output_topic => 'lt_out_topic', measures => $$sum((payload->>'n')::int) AS total$$);
INSERT INTO m (key, payload) VALUES ('out', '{"i": 5, "s": "zzzz", "f": 0.5}');
INSERT INTO lt (key, payload) VALUES ('future', '{"ts": "2100-01-01 00:00:40+00", "n": 100}');
INSERT INTO lt (key, payload) VALUES ('old', '{"ts": "2020-01-01 00:00:40+00", "n": 100}');
SELECT evstream._merge_deltas() >= 0 AS merged;
-- the latest change event of each group carries its exact values by name
SELECT o.key, o.payload - 'avg_f' AS payload, (o.payload->>'avg_f')::float8 = a.avg_f AS avg_f_exact,
       (o.payload->>'count')::bigint = a.count AND (o.payload->>'sum_i')::bigint = a.sum_i AS exact
  FROM m_out_topic o JOIN m_out a ON a.group_key = o.key
 WHERE o.id = (SELECT max(id) FROM m_out_topic l WHERE l.key = o.key);
SELECT o.key, o.payload - 'bucket_start' AS payload, (o.payload->>'bucket_start')::timestamptz AS bucket_start
  FROM lt_out_topic o
 WHERE o.id = (SELECT max(id) FROM lt_out_topic l WHERE l.key IS NOT DISTINCT FROM o.key
                  AND l.payload->'bucket_start' IS NOT DISTINCT FROM o.payload->'bucket_start')
 ORDER BY 1, 3;
-- nothing for the late event's window
SELECT count(*) FROM lt_out_topic WHERE (payload->>'bucket_start')::timestamptz < '2099-01-01';

------------------------------------------------------------------ backfill of an existing topic
-- events restored with their old append times (the owner's restore COPY):
-- windows of 2020 that have closed long ago, one 2100 window, the NULL window
SELECT evstream.create_topic('old');
COPY old (id, key, payload, created_at) FROM STDIN;
1	a	{"n": 1, "ts": "2020-01-01 00:00:10+00"}	2020-01-01 00:00:30+00
2	a	{"n": 2, "ts": "2020-01-01 00:00:50+00"}	2020-01-01 00:00:55+00
3	b	{"n": 4, "ts": "2020-01-01 00:00:20+00"}	2020-01-01 00:00:40+00
4	a	{"n": 8, "ts": "2019-12-31 23:58:00+00"}	2020-01-01 00:00:40+00
5	b	{"n": 16, "ts": "2100-01-01 00:00:00+00"}	2020-01-01 00:01:00+00
6	c	{"n": 32}	2020-01-01 00:01:00+00
7	a	{"n": 64, "ts": "2020-01-01 00:01:05+00"}	2020-01-01 00:01:10+00
\.
-- and events of now
INSERT INTO old (key, payload) VALUES ('a', '{"n": 128}');
SELECT v2_create('old_min', 'old', bucket => '1 minute', event_time => $$(payload->>'ts')::timestamptz$$,
                 measures => $$sum((payload->>'n')::int) AS total, min((payload->>'n')::int) AS least$$);
-- event 1 (time 00:00:10, appended 00:00:30) is late for its window
-- [23:59:20, 00:00:20) only
SELECT v2_create('old_hop', 'old', bucket => '1 minute', hop => '20 seconds', event_time => $$(payload->>'ts')::timestamptz$$,
                 measures => $$sum((payload->>'n')::int) AS total$$);
SELECT v2_create('old_grace', 'old', bucket => '1 minute', grace => '30 seconds', event_time => $$(payload->>'ts')::timestamptz$$,
                 measures => $$sum((payload->>'n')::int) AS total$$);
SELECT v2_create('old_created', 'old', bucket => '1 minute', measures => $$sum((payload->>'n')::int) AS total$$);
SELECT v2_create('old_total', 'old', measures => $$sum((payload->>'n')::int) AS total, max(created_at) AS last_at$$);
SELECT * FROM old_min ORDER BY group_key, bucket_start NULLS FIRST;
SELECT * FROM old_hop WHERE bucket_start < '2099-01-01' ORDER BY group_key, bucket_start;
SELECT group_key, bucket_start, count, total FROM old_grace WHERE bucket_start < '2099-01-01' ORDER BY group_key, bucket_start;
SELECT group_key, count, total FROM old_total ORDER BY group_key;
SELECT name, late_events FROM evstream.aggregates WHERE topic = 'old'::regclass ORDER BY name::text;
SELECT * FROM v2_wrong;
-- emit final: the windows of the backfill that closed long ago get their
-- final event at the first merge; the 2100 window and the NULL window do
-- not
SELECT evstream.create_aggregate('old_final', 'old', bucket => '1 minute', event_time => $$(payload->>'ts')::timestamptz$$,
                                 measures => $$sum((payload->>'n')::int) AS total$$, output_topic => 'old_final_out', emit => 'final');
-- with window_retention => '0' they are removed from the aggregate once
-- closed, after their final event was published
SELECT evstream.create_aggregate('old_ret', 'old', bucket => '1 minute', event_time => $$(payload->>'ts')::timestamptz$$,
                                 measures => $$sum((payload->>'n')::int) AS total$$, output_topic => 'old_ret_out',
                                 emit => 'final', window_retention => '0');
-- a retention longer than their age keeps them
SELECT evstream.create_aggregate('old_keep', 'old', bucket => '1 minute', event_time => $$(payload->>'ts')::timestamptz$$,
                                 window_retention => '100000 days');
SELECT evstream._merge_deltas() >= 0 AS merged;
SELECT key, payload - 'bucket_start' AS payload, (payload->>'bucket_start')::timestamptz AS bucket_start
  FROM old_final_out ORDER BY key, 3;
SELECT key, payload - 'bucket_start' AS payload, (payload->>'bucket_start')::timestamptz AS bucket_start
  FROM old_ret_out ORDER BY key, 3;
SELECT group_key, bucket_start, count, total FROM old_final WHERE bucket_start < '2099-01-01' ORDER BY 1, 2;
SELECT group_key, bucket_start, count, total FROM old_ret WHERE bucket_start < '2099-01-01' OR bucket_start IS NULL ORDER BY 1, 2 NULLS FIRST;
SELECT count(*) AS kept_2020_windows FROM old_keep WHERE bucket_start < '2021-01-01';
-- every later merge publishes nothing more for them
SELECT evstream._merge_deltas() >= 0 AS merged;
SELECT (SELECT count(*) FROM old_final_out) AS final_events, (SELECT count(*) FROM old_ret_out) AS ret_events;
-- a late event does not reopen a closed window, nor bring back a removed one
INSERT INTO old (key, payload) VALUES ('a', '{"n": 512, "ts": "2020-01-01 00:00:11+00"}');
SELECT evstream._merge_deltas() >= 0 AS merged;
SELECT (SELECT count(*) FROM old_final_out) AS final_events, (SELECT count(*) FROM old_ret_out) AS ret_events,
       (SELECT count(*) FROM old_ret WHERE bucket_start < '2099-01-01') AS ret_2020_windows;
SELECT name, late_events FROM evstream.aggregates WHERE topic = 'old'::regclass ORDER BY name::text;
SELECT * FROM v2_wrong;

------------------------------------------------------------------ emit final, live
-- windows of a second, grace of a second: nothing is published while a
-- window is open; once it closed (1-2 s after end + grace), exactly one
-- event per group with its final values
SELECT evstream.create_topic('fin');
SELECT v2_create('fin_agg', 'fin', bucket => '1 second', grace => '1 second', output_topic => 'fin_out', emit => 'final',
                 measures => $$sum((payload->>'n')::int) AS total, max((payload->>'n')::int) AS top$$);
BEGIN;
INSERT INTO fin (key, payload) VALUES ('a', '{"n": 1}'), ('a', '{"n": 2}'), ('b', '{"n": 5}'), (NULL, '{"n": 7}');
INSERT INTO fin (key, payload) VALUES ('b', '{}');
SELECT date_bin('1 second', now(), 'epoch') AS fin_window \gset
COMMIT;
SELECT evstream._merge_deltas() >= 0 AS merged;
SELECT count(*) AS published_while_open FROM fin_out;
SELECT group_key, bucket_start = :'fin_window' AS in_window, count, total, top FROM fin_agg ORDER BY 1 NULLS FIRST;
CALL v2_wait('SELECT count(*) >= 3 FROM fin_out', 15);
SELECT key, payload - 'bucket_start' AS payload, (payload->>'bucket_start')::timestamptz = :'fin_window' AS in_window
  FROM fin_out ORDER BY key NULLS FIRST;
-- and never again
SELECT evstream._merge_deltas() >= 0 AS merged;
SELECT pg_sleep(0.5);
SELECT evstream._merge_deltas() >= 0 AS merged;
SELECT count(*) AS final_events FROM fin_out;
SELECT * FROM v2_wrong;

------------------------------------------------------------------ the catalog view
SELECT name, topic, bucket, hop, event_time IS NOT NULL AS has_event_time, grace, emit, window_retention,
       output_topic, late_events
  FROM evstream.aggregates ORDER BY name::text;
-- measures as deparsed (NULL when none)
SELECT name, measures FROM evstream.aggregates WHERE name IN ('m_one'::regclass, 'm_names'::regclass, 'm_plain'::regclass, 'lt_min'::regclass)
 ORDER BY name::text;
SELECT name, event_time FROM evstream.aggregates WHERE name = 'lt_min'::regclass;
-- the deparsed measures make the same aggregate
SELECT v2_create('m_all_again', 'm', measures => (SELECT measures FROM evstream.aggregates WHERE name = 'm_all'::regclass));
SELECT v2_create('m_names_again', 'm', measures => (SELECT measures FROM evstream.aggregates WHERE name = 'm_names'::regclass));
SELECT count(*) AS differing FROM ((TABLE m_all EXCEPT ALL TABLE m_all_again) UNION ALL (TABLE m_all_again EXCEPT ALL TABLE m_all)) x;
SELECT (SELECT array_agg(attname || ' ' || type) FROM v2_columns('m_all')) = (SELECT array_agg(attname || ' ' || type) FROM v2_columns('m_all_again')) AS same_columns;
SELECT * FROM v2_columns('m_names_again');
SELECT count(*) AS differing FROM ((TABLE m_names EXCEPT ALL TABLE m_names_again) UNION ALL (TABLE m_names_again EXCEPT ALL TABLE m_names)) x;

------------------------------------------------------------------ bad input
SELECT count(*) AS aggregates_before_bad FROM evstream._aggregate \gset
SELECT count(*) AS classes_before_bad FROM pg_class \gset
-- measures: not a list of fn(expr) AS name
SELECT evstream.create_aggregate('bad', 'm', measures => 'sum(id)');
SELECT evstream.create_aggregate('bad', 'm', measures => 'id AS x');
SELECT evstream.create_aggregate('bad', 'm', measures => 'sum(id) AS s, max(id)');
SELECT evstream.create_aggregate('bad', 'm', measures => '');
SELECT evstream.create_aggregate('bad', 'm', measures => ' ');
SELECT evstream.create_aggregate('bad', 'm', measures => 'sum(DISTINCT id) AS s');
SELECT evstream.create_aggregate('bad', 'm', measures => 'count(DISTINCT key) AS s');
SELECT evstream.create_aggregate('bad', 'm', measures => 'sum(id) FILTER (WHERE id > 1) AS s');
SELECT evstream.create_aggregate('bad', 'm', measures => 'max(id ORDER BY id) AS s');
SELECT evstream.create_aggregate('bad', 'm', measures => 'sum(id) OVER () AS s');
SELECT evstream.create_aggregate('bad', 'm', measures => 'sum(id, id) AS s');
SELECT evstream.create_aggregate('bad', 'm', measures => 'min() AS s');
SELECT evstream.create_aggregate('bad', 'm', measures => 'count(*) AS c');
SELECT evstream.create_aggregate('bad', 'm', measures => 'sum(*) AS c');
SELECT evstream.create_aggregate('bad', 'm', measures => 'sum(id) + 1 AS s');
-- not one of sum, min, max, avg, count
SELECT evstream.create_aggregate('bad', 'm', measures => 'median(id) AS m');
SELECT evstream.create_aggregate('bad', 'm', measures => 'stddev(id) AS m');
SELECT evstream.create_aggregate('bad', 'm', measures => 'string_agg(key, '','') AS m');
SELECT evstream.create_aggregate('bad', 'm', measures => 'abs(id) AS m');
-- sum/avg of a non-numeric type; min/max of a type without ordering
SELECT evstream.create_aggregate('bad', 'm', measures => 'sum(key) AS s');
SELECT evstream.create_aggregate('bad', 'm', measures => 'avg(key) AS s');
SELECT evstream.create_aggregate('bad', 'm', measures => 'sum(payload) AS s');
SELECT evstream.create_aggregate('bad', 'm', measures => 'avg(payload) AS s');
SELECT evstream.create_aggregate('bad', 'm', measures => 'sum(created_at) AS s');
SELECT evstream.create_aggregate('bad', 'm', measures => 'avg(created_at) AS s');
SELECT evstream.create_aggregate('bad', 'm', measures => 'max(id) AS ok, sum(key) AS s');
SELECT evstream.create_aggregate('bad', 'm', measures => 'min(payload::json) AS s');
SELECT evstream.create_aggregate('bad', 'm', measures => 'max(point(id, id)) AS s');
-- duplicate names, or the names of the fixed columns
SELECT evstream.create_aggregate('bad', 'm', measures => 'sum(id) AS s, max(id) AS s');
SELECT evstream.create_aggregate('bad', 'm', measures => 'sum(id) AS count');
SELECT evstream.create_aggregate('bad', 'm', measures => 'max(key) AS group_key');
SELECT evstream.create_aggregate('bad', 'm', measures => 'max(created_at) AS bucket_start');
SELECT evstream.create_aggregate('bad', 'm', bucket => '1 hour', measures => 'max(created_at) AS bucket_start');
-- expressions checked like group_by
SELECT evstream.create_aggregate('bad', 'm', measures => 'sum(random()) AS s');
SELECT evstream.create_aggregate('bad', 'm', measures => 'max(clock_timestamp()) AS s');
SELECT evstream.create_aggregate('bad', 'm', measures => 'max(now()) AS s');
SELECT evstream.create_aggregate('bad', 'm', measures => 'max(created_at::text) AS s');
SELECT evstream.create_aggregate('bad', 'm', measures => $$sum(nextval('m_id_seq')) AS s$$);
SELECT evstream.create_aggregate('bad', 'm', measures => 'sum(nosuch) AS s');
SELECT evstream.create_aggregate('bad', 'm', measures => 'sum(m.nosuch) AS s');
SELECT evstream.create_aggregate('bad', 'm', measures => 'max(key) AS k, sum(nosuch) AS s');
-- the same SQLSTATE as the same mistake in group_by
CREATE FUNCTION v2_state(sql text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE sql;
    RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
    RETURN SQLSTATE;
END
$$;
-- (count() takes any type: only the expression is wrong)
SELECT m.what, v2_state(format('SELECT evstream.create_aggregate(''bad'', ''m'', measures => %L)', 'count(' || m.what || ') AS s')) AS measure,
       v2_state(format('SELECT evstream.create_aggregate(''bad'', ''m'', group_by => %L)', m.what)) AS group_by
  FROM (VALUES ('(SELECT 1)'), ('id + (SELECT count(*) FROM pg_class)'), ('max(id)'), ('row_number() OVER ()'),
               ('generate_series(1, 2)'), ('m.*'), ('ctid'), ('xmin'), ('m'), ('pg_sleep(1)'), ('random()'),
               ('nosuch'), ('key::regclass')) m(what);
-- syntax errors and SQL in the list run nothing
SELECT v2_state($$SELECT evstream.create_aggregate('bad', 'm', measures => 'sum(id) AS')$$) IN ('22023', '42601') AS refused;
SELECT v2_state($$SELECT evstream.create_aggregate('bad', 'm', measures => 'sum(id) AS s,')$$) IN ('22023', '42601') AS refused;
SELECT v2_state($$SELECT evstream.create_aggregate('bad', 'm', measures => 'sum(id +) AS s')$$) IN ('22023', '42601') AS refused;
SELECT v2_state($$SELECT evstream.create_aggregate('bad', 'm', measures => 'sum(id)); DROP TABLE m; -- AS s')$$) IN ('22023', '42601') AS refused;
SELECT v2_state($$SELECT evstream.create_aggregate('bad', 'm', measures => 'sum(id) AS s''); DROP TABLE m; --')$$) IN ('22023', '42601') AS refused;
SELECT v2_state($$SELECT evstream.create_aggregate('bad', 'm', measures => 'sum(id) AS s; DROP TABLE m')$$) IN ('22023', '42601') AS refused;
SELECT v2_state($$SELECT evstream.create_aggregate('bad', 'm', measures => 'sum(id) AS s FROM m')$$) IN ('22023', '42601') AS refused;
SELECT v2_state($$SELECT evstream.create_aggregate('bad', 'm', measures => 'sum(id) AS s) FROM m; --')$$) IN ('22023', '42601') AS refused;
-- hop
SELECT evstream.create_aggregate('bad', 'm', hop => '1 minute');
SELECT evstream.create_aggregate('bad', 'm', bucket => '1 hour', hop => '0');
SELECT evstream.create_aggregate('bad', 'm', bucket => '1 hour', hop => '-15 minutes');
SELECT evstream.create_aggregate('bad', 'm', bucket => '1 hour', hop => '500 milliseconds');
SELECT evstream.create_aggregate('bad', 'm', bucket => '1 second', hop => '0.5 seconds');
SELECT evstream.create_aggregate('bad', 'm', bucket => '1 hour', hop => '2 hours');
SELECT evstream.create_aggregate('bad', 'm', bucket => '1 hour', hop => '7 minutes');
SELECT evstream.create_aggregate('bad', 'm', bucket => '1 hour', hop => '1.7 seconds');
SELECT evstream.create_aggregate('bad', 'm', bucket => '1 minute', hop => '1 minute 1 second');
SELECT evstream.create_aggregate('bad', 'm', bucket => '1 day', hop => '1 month');
-- event_time
SELECT evstream.create_aggregate('bad', 'm', event_time => 'created_at');
SELECT evstream.create_aggregate('bad', 'm', bucket => '1 hour', event_time => $$(payload->>'ts')::timestamp$$);
SELECT evstream.create_aggregate('bad', 'm', bucket => '1 hour', event_time => $$payload->>'ts'$$);
SELECT evstream.create_aggregate('bad', 'm', bucket => '1 hour', event_time => 'id');
SELECT evstream.create_aggregate('bad', 'm', bucket => '1 hour', event_time => $$(payload->>'ts')::date$$);
SELECT evstream.create_aggregate('bad', 'm', bucket => '1 hour', event_time => 'clock_timestamp()');
SELECT evstream.create_aggregate('bad', 'm', bucket => '1 hour', event_time => $$created_at + random() * interval '1 second'$$);
SELECT evstream.create_aggregate('bad', 'm', bucket => '1 hour', event_time => 'nosuch');
SELECT evstream.create_aggregate('bad', 'm', bucket => '1 hour', event_time => '(SELECT now())');
SELECT evstream.create_aggregate('bad', 'm', bucket => '1 hour', event_time => 'max(created_at)');
SELECT evstream.create_aggregate('bad', 'm', bucket => '1 hour', event_time => 'created_at, created_at');
SELECT evstream.create_aggregate('bad', 'm', bucket => '1 hour', event_time => '');
-- grace
SELECT evstream.create_aggregate('bad', 'm', grace => '1 minute');
SELECT evstream.create_aggregate('bad', 'm', bucket => '1 hour', grace => '-1 second');
SELECT evstream.create_aggregate('bad', 'm', bucket => '1 hour', event_time => 'created_at', grace => '-1 day');
-- emit
SELECT evstream.create_aggregate('bad', 'm', bucket => '1 hour', output_topic => 'bad_out', emit => 'all');
SELECT evstream.create_aggregate('bad', 'm', bucket => '1 hour', output_topic => 'bad_out', emit => '');
SELECT evstream.create_aggregate('bad', 'm', bucket => '1 hour', output_topic => 'bad_out', emit => 'final; DROP TABLE m');
SELECT evstream.create_aggregate('bad', 'm', output_topic => 'bad_out', emit => 'final');
SELECT evstream.create_aggregate('bad', 'm', bucket => '1 hour', emit => 'final');
-- window_retention
SELECT evstream.create_aggregate('bad', 'm', window_retention => '1 day');
SELECT evstream.create_aggregate('bad', 'm', bucket => '1 hour', window_retention => '-1 day');
-- valid settings in the same calls work
SELECT evstream.create_aggregate('good', 'm', bucket => '1 hour', hop => '15 minutes', grace => '0', window_retention => '0',
                                 event_time => 'created_at', emit => 'changes', measures => 'count(id) AS n');
SELECT evstream.drop_aggregate('good');
-- nothing was left behind, nothing was dropped
SELECT count(*) - :aggregates_before_bad AS new_aggregates FROM evstream._aggregate;
SELECT count(*) - :classes_before_bad AS new_relations FROM pg_class;
SELECT count(*) FROM pg_class WHERE relname LIKE 'bad%';
SELECT to_regclass('m') IS NOT NULL AS m_still_there, (SELECT count(*) > 0 FROM m) AS m_has_events;
SELECT * FROM v2_wrong;

------------------------------------------------------------------ privileges
CREATE ROLE regress_v2_owner;
CREATE ROLE regress_v2_member;
CREATE ROLE regress_v2_other;
CREATE ROLE regress_v2_producer;
GRANT regress_v2_owner TO regress_v2_member;
CREATE SCHEMA v2own AUTHORIZATION regress_v2_owner;
CREATE SCHEMA v2other AUTHORIZATION regress_v2_other;
GRANT USAGE ON SCHEMA v2own TO regress_v2_other, regress_v2_producer, regress_v2_member;
CREATE TABLE public.v2_only_super (who name);
REVOKE ALL ON public.v2_only_super FROM PUBLIC;
SET ROLE regress_v2_owner;
SELECT evstream.create_topic('v2own.t');
INSERT INTO v2own.t (key, payload) VALUES ('k', '{"n": 1, "ts": "2100-01-01 00:00:01+00"}');
-- functions of the owner's, marked immutable (measures) and stable
-- (event_time): they report the role they run as, and try what only a
-- superuser may do
CREATE FUNCTION v2own.try_write(via text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF current_user <> 'regress_v2_owner' THEN
        RAISE WARNING '% of regress_v2_owner ran as %', via, current_user;
    END IF;
    BEGIN
        INSERT INTO public.v2_only_super VALUES (current_user);
    EXCEPTION WHEN OTHERS THEN NULL;
    END;
    BEGIN
        ALTER ROLE regress_v2_owner SUPERUSER;
    EXCEPTION WHEN OTHERS THEN NULL;
    END;
END $$;
CREATE FUNCTION v2own.who(n bigint) RETURNS text LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    PERFORM v2own.try_write('measure');
    RETURN current_user::text;
END $$;
CREATE FUNCTION v2own.ts(p jsonb) RETURNS timestamptz LANGUAGE plpgsql STABLE AS $$
BEGIN
    PERFORM v2own.try_write('event_time');
    RETURN (p->>'ts')::timestamptz;
END $$;
GRANT SELECT, INSERT ON v2own.t TO regress_v2_other;
GRANT INSERT ON v2own.t TO regress_v2_producer;
RESET ROLE;
-- a role that does not own the topic cannot add measures or an event time
-- to it (they would run inside every producer's INSERT), not even with
-- SELECT and INSERT on it, nor into its own schema
GRANT CREATE ON SCHEMA v2own TO regress_v2_other;
SET ROLE regress_v2_other;
SELECT evstream.create_aggregate('v2other.stolen', 'v2own.t', measures => $$sum((payload->>'n')::int) AS s$$);
SELECT evstream.create_aggregate('v2own.stolen', 'v2own.t', measures => $$sum((payload->>'n')::int) AS s$$);
SELECT evstream.create_aggregate('v2other.stolen', 'v2own.t', bucket => '1 hour', event_time => $$(payload->>'ts')::timestamptz$$);
SELECT evstream.create_aggregate('v2other.stolen', 'v2own.t', bucket => '1 hour', hop => '1 minute', output_topic => 'v2other.stolen_out', emit => 'final');
-- nor with its own function in the measures
CREATE FUNCTION v2other.f(n bigint) RETURNS bigint LANGUAGE sql IMMUTABLE AS $$ SELECT n $$;
SELECT evstream.create_aggregate('v2other.stolen', 'v2own.t', measures => 'sum(v2other.f(id)) AS s');
RESET ROLE;
REVOKE CREATE ON SCHEMA v2own FROM regress_v2_other;
SELECT count(*) AS stolen FROM pg_class WHERE relname LIKE 'stolen%';
-- a member of the owner role may
SET ROLE regress_v2_member;
SELECT evstream.create_aggregate('v2own.member_agg', 'v2own.t', measures => $$max((payload->>'n')::int) AS top$$);
SELECT * FROM v2own.member_agg;
SELECT evstream.drop_aggregate('v2own.member_agg');
RESET ROLE;
-- the owner's measure and event_time run as the owner: at backfill, and in
-- the INSERTs of a superuser and of a producer with INSERT only
SET ROLE regress_v2_owner;
SELECT evstream.create_aggregate('v2own.by_role', 'v2own.t', group_by => 'key', bucket => '1 hour',
                                 event_time => 'v2own.ts(payload)', measures => 'max(v2own.who(id)) AS who, min(v2own.who(id)) AS who2, count(v2own.who(id)) AS n');
SELECT * FROM v2own.by_role;
RESET ROLE;
INSERT INTO v2own.t (key, payload) VALUES ('super', '{"n": 2, "ts": "2100-01-01 00:00:02+00"}');
SET ROLE regress_v2_producer;
INSERT INTO v2own.t (key, payload) VALUES ('producer', '{"n": 3, "ts": "2100-01-01 00:00:03+00"}');
RESET ROLE;
SET ROLE regress_v2_other;
INSERT INTO v2own.t (key, payload) VALUES ('other', '{"n": 4, "ts": "2100-01-01 00:00:04+00"}');
RESET ROLE;
SELECT evstream._merge_deltas() >= 0 AS merged;
SELECT * FROM v2own.by_role ORDER BY group_key;
SELECT count(*) AS only_super_rows FROM public.v2_only_super;
SELECT rolname, rolsuper FROM pg_roles WHERE rolname LIKE 'regress\_v2\_%' ORDER BY 1;
-- a producer cannot read the aggregate's values
SET ROLE regress_v2_producer;
SELECT * FROM v2own.by_role;
SELECT count(*) AS listed, count(groups) AS groups_shown FROM evstream.aggregates WHERE name::text = 'v2own.by_role';
RESET ROLE;
-- only the owner drops it
SET ROLE regress_v2_other;
SELECT evstream.drop_aggregate('v2own.by_role');
SET ROLE regress_v2_owner;
SELECT evstream.drop_aggregate('v2own.by_role');
SELECT evstream.drop_topic('v2own.t');
DROP FUNCTION v2own.who(bigint), v2own.ts(jsonb), v2own.try_write(text);
RESET ROLE;
DROP FUNCTION v2other.f(bigint);
DROP SCHEMA v2own, v2other;
DROP TABLE public.v2_only_super;
DROP ROLE regress_v2_owner, regress_v2_member, regress_v2_other, regress_v2_producer;

------------------------------------------------------------------ windows at the end of the timestamp range
-- the window start of an event time near the largest timestamp is the
-- day it falls in (the start was computed as ts - epoch, which overflowed)
SELECT evstream.create_topic('edge');
SELECT evstream.create_aggregate('edge_days', 'edge', bucket => '1 day',
       event_time => $$'294276-12-31 23:59:59+00'::timestamptz$$);
INSERT INTO edge (key) VALUES ('a'), ('a');
BEGIN;
SET LOCAL TimeZone = 'UTC';
SELECT * FROM edge_days;
COMMIT;
SELECT evstream.drop_topic('edge', cascade => true);

------------------------------------------------------------------ clean up
SELECT * FROM v2_wrong;
SELECT evstream.drop_topic('m', cascade => true);
SELECT evstream.drop_topic('h', cascade => true);
SELECT evstream.drop_topic('lt', cascade => true);
SELECT evstream.drop_topic('old', cascade => true);
SELECT evstream.drop_topic('fin', cascade => true);
SELECT count(*) - :aggregates_before AS aggregates_left FROM evstream._aggregate;
SELECT count(*) AS topics_left FROM evstream._topic
 WHERE topic::text IN ('m', 'h', 'lt', 'old', 'fin', 'm_out_topic', 'lt_out_topic', 'old_final_out', 'old_ret_out', 'fin_out');
DROP VIEW v2_wrong;
DROP FUNCTION v2_diff(regclass), v2_truth(v2_params), v2_columns(regclass), v2_state(text),
              v2_create(text, regclass, text, interval, text, text, interval, text, interval, text, interval);
DROP PROCEDURE v2_wait(text, integer);
DROP TABLE v2_params;
DROP AGGREGATE v2truth.min(jsonb), v2truth.max(jsonb);
DROP FUNCTION v2truth.jsonb_smaller(jsonb, jsonb), v2truth.jsonb_larger(jsonb, jsonb);
DROP SCHEMA v2truth;
