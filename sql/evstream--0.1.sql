-- evstream install script (the source of sql/evstream--<version>.sql).
--
-- Rules (from timescaledb's): everything schema-qualified, search_path
-- pinned on every function, internal catalog tables owned by the installing
-- superuser and written only through the C functions (which check the
-- caller's privileges on the topic first).

\echo Use "CREATE EXTENSION evstream" to load this file. \quit

-- The schema is created here (not by the control file) so that it is a
-- member of the extension and DROP EXTENSION removes it too.
CREATE SCHEMA evstream;
GRANT USAGE ON SCHEMA evstream TO PUBLIC;

-- Fails with a hint when the library is not in shared_preload_libraries.
CREATE FUNCTION evstream._check_preload() RETURNS void
    LANGUAGE C STRICT AS 'MODULE_PATHNAME', 'evstream_check_preload';
SELECT evstream._check_preload();

------------------------------------------------------------------ storage
CREATE FUNCTION evstream._am_handler(internal) RETURNS table_am_handler
    LANGUAGE C STRICT AS 'MODULE_PATHNAME', 'evstream_am_handler';
CREATE ACCESS METHOD evstream TYPE TABLE HANDLER evstream._am_handler;
COMMENT ON ACCESS METHOD evstream IS 'append-only heap: storage of evstream topic partitions';

------------------------------------------------------------------ catalog
CREATE TABLE evstream._topic (
    topic              regclass PRIMARY KEY,
    partition_interval interval NOT NULL,
    retention          interval,
    notify             boolean NOT NULL,
    created            timestamptz NOT NULL DEFAULT pg_catalog.now()
);

CREATE TABLE evstream._group (
    topic          regclass NOT NULL REFERENCES evstream._topic ON DELETE CASCADE,
    consumer_group text NOT NULL,
    committed_id   bigint NOT NULL,
    updated_at     timestamptz NOT NULL DEFAULT pg_catalog.now(),
    PRIMARY KEY (topic, consumer_group)
);

CREATE SEQUENCE evstream._aggregate_id_seq;
CREATE TABLE evstream._aggregate (
    id             integer PRIMARY KEY DEFAULT pg_catalog.nextval('evstream._aggregate_id_seq'),
    aggregate      regclass NOT NULL UNIQUE,          -- the view users query
    topic          regclass NOT NULL REFERENCES evstream._topic,
    group_by       text NOT NULL,                     -- deparsed, fully qualified
    bucket         interval,
    output_topic   regclass REFERENCES evstream._topic,
    output_created boolean NOT NULL DEFAULT false,    -- drop_aggregate drops it too
    notify         boolean NOT NULL
);

-- Merged counts, and the per-statement deltas producers append; the
-- maintenance worker folds deltas into counts.  An aggregate's view sums
-- both, so it is exact at every instant.
CREATE TABLE evstream._count (
    agg          integer NOT NULL,
    group_key    text,
    bucket_start timestamptz,
    count        bigint NOT NULL,
    last_id      bigint,      -- latest output-topic event of the group
    last_count   bigint,      -- and the count it carries
    CONSTRAINT _count_key UNIQUE NULLS NOT DISTINCT (agg, group_key, bucket_start)
);
CREATE TABLE evstream._delta (
    agg          integer NOT NULL,
    group_key    text,
    bucket_start timestamptz,
    delta        bigint NOT NULL,
    published    bigint,      -- count of the output event the statement produced
    published_id bigint       -- and that event's id
);
CREATE INDEX _delta_agg_key ON evstream._delta (agg, group_key, bucket_start);

SELECT pg_catalog.pg_extension_config_dump('evstream._topic', '');
SELECT pg_catalog.pg_extension_config_dump('evstream._group', '');
SELECT pg_catalog.pg_extension_config_dump('evstream._aggregate', '');
SELECT pg_catalog.pg_extension_config_dump('evstream._aggregate_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('evstream._count', '');
SELECT pg_catalog.pg_extension_config_dump('evstream._delta', '');

GRANT SELECT ON evstream._topic, evstream._group, evstream._aggregate,
                evstream._count, evstream._delta TO PUBLIC;

-- Counts are readable only by roles that can read the aggregate's topic
-- (an aggregate's view reads them with its owner's rights).
ALTER TABLE evstream._count ENABLE ROW LEVEL SECURITY;
ALTER TABLE evstream._delta ENABLE ROW LEVEL SECURITY;
CREATE POLICY readable_counts ON evstream._count FOR SELECT USING
    (agg IN (SELECT a.id FROM evstream._aggregate a
              WHERE pg_catalog.has_table_privilege(a.topic, 'SELECT')));
CREATE POLICY readable_deltas ON evstream._delta FOR SELECT USING
    (agg IN (SELECT a.id FROM evstream._aggregate a
              WHERE pg_catalog.has_table_privilege(a.topic, 'SELECT')));

CREATE TYPE evstream.event AS (
    id         bigint,
    key        text,
    payload    jsonb,
    created_at timestamptz
);

------------------------------------------------------------------ producers
-- The default of every topic's id column: publishes the caller's lowest
-- in-flight id (for stable_id) and takes the next value of the topic's
-- sequence.
CREATE FUNCTION evstream._next_id(regclass) RETURNS bigint
    LANGUAGE C STRICT VOLATILE PARALLEL UNSAFE AS 'MODULE_PATHNAME', 'evstream_next_id';

------------------------------------------------------------------ topics
CREATE FUNCTION evstream.create_topic(topic text,
                                         partition_interval interval DEFAULT '1 day',
                                         retention interval DEFAULT NULL,
                                         notify boolean DEFAULT true)
    RETURNS regclass LANGUAGE C CALLED ON NULL INPUT VOLATILE
    AS 'MODULE_PATHNAME', 'evstream_create_topic';

CREATE FUNCTION evstream.drop_topic(topic regclass, "cascade" boolean DEFAULT false)
    RETURNS void LANGUAGE C CALLED ON NULL INPUT VOLATILE
    AS 'MODULE_PATHNAME', 'evstream_drop_topic';

CREATE FUNCTION evstream.set_retention(topic regclass, retention interval)
    RETURNS void LANGUAGE C CALLED ON NULL INPUT VOLATILE
    AS 'MODULE_PATHNAME', 'evstream_set_retention';

------------------------------------------------------------------ consumers
CREATE FUNCTION evstream.stable_id(topic regclass) RETURNS bigint
    LANGUAGE C CALLED ON NULL INPUT VOLATILE AS 'MODULE_PATHNAME', 'evstream_stable_id';

CREATE FUNCTION evstream.poll(topic regclass, consumer_group text, max_events int DEFAULT 100)
    RETURNS SETOF evstream.event LANGUAGE C CALLED ON NULL INPUT VOLATILE
    AS 'MODULE_PATHNAME', 'evstream_poll';

CREATE FUNCTION evstream.consume(topic regclass, consumer_group text, max_events int DEFAULT 100)
    RETURNS SETOF evstream.event LANGUAGE C CALLED ON NULL INPUT VOLATILE
    AS 'MODULE_PATHNAME', 'evstream_consume';

CREATE FUNCTION evstream.commit(topic regclass, consumer_group text, last_id bigint)
    RETURNS void LANGUAGE C CALLED ON NULL INPUT VOLATILE
    AS 'MODULE_PATHNAME', 'evstream_commit';

CREATE FUNCTION evstream.seek(topic regclass, consumer_group text, next_id bigint)
    RETURNS void LANGUAGE C CALLED ON NULL INPUT VOLATILE
    AS 'MODULE_PATHNAME', 'evstream_seek_id';

CREATE FUNCTION evstream.seek(topic regclass, consumer_group text, since timestamptz)
    RETURNS void LANGUAGE C CALLED ON NULL INPUT VOLATILE
    AS 'MODULE_PATHNAME', 'evstream_seek_time';

------------------------------------------------------------------ aggregates
CREATE FUNCTION evstream.create_aggregate(name text, topic regclass,
                                             group_by text DEFAULT 'key',
                                             bucket interval DEFAULT NULL,
                                             output_topic text DEFAULT NULL,
                                             notify boolean DEFAULT true)
    RETURNS regclass LANGUAGE C CALLED ON NULL INPUT VOLATILE
    AS 'MODULE_PATHNAME', 'evstream_create_aggregate';

CREATE FUNCTION evstream.drop_aggregate(name regclass)
    RETURNS void LANGUAGE C CALLED ON NULL INPUT VOLATILE
    AS 'MODULE_PATHNAME', 'evstream_drop_aggregate';

------------------------------------------------------------------ maintenance
-- Partition bounds of a topic's partitions (the default partition has none).
CREATE FUNCTION evstream._partitions(topic regclass,
        OUT part regclass, OUT lo timestamptz, OUT hi timestamptz, OUT is_default boolean)
    RETURNS SETOF record LANGUAGE sql STABLE
    SET search_path = pg_catalog, pg_temp AS $$
    SELECT c.oid::regclass,
           pg_catalog.substring(pg_catalog.pg_get_expr(c.relpartbound, c.oid), 'FROM \(''([^'']+)''\)')::timestamptz,
           pg_catalog.substring(pg_catalog.pg_get_expr(c.relpartbound, c.oid), 'TO \(''([^'']+)''\)')::timestamptz,
           pg_catalog.pg_get_expr(c.relpartbound, c.oid) = 'DEFAULT'
      FROM pg_catalog.pg_inherits i JOIN pg_catalog.pg_class c ON c.oid = i.inhrelid
     WHERE i.inhparent = $1
$$;

-- Creates the missing partitions of a topic from the one holding `from_ts`
-- up to the one holding `upto`.  Partitions are aligned on the epoch like
-- date_bin(partition_interval, created_at, 'epoch'), named
-- <topic>_pYYYYMMDD_HH24MISS (UTC lower bound), use the evstream access
-- method and belong to the topic's owner.  A range that the default
-- partition already holds rows for is left to the default partition.
CREATE FUNCTION evstream._ensure_partitions(topic regclass, from_ts timestamptz, upto timestamptz)
    RETURNS integer LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_ivl     interval;
    v_nsp     name;
    v_rel     name;
    v_owner   name;
    v_lo      timestamptz;
    v_hi      timestamptz;
    v_made    integer := 0;
    v_busy    boolean;
    v_default regclass;
    v_name    text;
BEGIN
    SELECT t.partition_interval INTO v_ivl FROM evstream._topic t WHERE t.topic = $1;
    IF v_ivl IS NULL THEN
        RAISE EXCEPTION 'relation "%" is not an evstream topic', $1 USING ERRCODE = 'undefined_table';
    END IF;
    SELECT n.nspname, c.relname, pg_catalog.pg_get_userbyid(c.relowner) INTO v_nsp, v_rel, v_owner
      FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
     WHERE c.oid = $1;
    SELECT p.part INTO v_default FROM evstream._partitions($1) p WHERE p.is_default;
    v_lo := pg_catalog.date_bin(v_ivl, from_ts, 'epoch'::timestamptz);
    WHILE v_lo <= upto LOOP
        v_hi := v_lo + v_ivl;
        IF NOT EXISTS (SELECT 1 FROM evstream._partitions($1) p
                        WHERE NOT p.is_default AND p.lo < v_hi AND p.hi > v_lo) THEN
            v_busy := false;
            IF v_default IS NOT NULL THEN
                EXECUTE pg_catalog.format('SELECT EXISTS (SELECT 1 FROM %s WHERE created_at >= $1 AND created_at < $2)', v_default)
                   INTO STRICT v_busy USING v_lo, v_hi;
            END IF;
            IF NOT v_busy THEN
                v_name := v_rel || '_p' || pg_catalog.to_char(v_lo AT TIME ZONE 'UTC', 'YYYYMMDD_HH24MISS');
                EXECUTE pg_catalog.format(
                    'CREATE TABLE %I.%I PARTITION OF %I.%I FOR VALUES FROM (%L) TO (%L) USING evstream',
                    v_nsp, v_name, v_nsp, v_rel,
                    pg_catalog.to_char(v_lo AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS+00'),
                    pg_catalog.to_char(v_hi AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS+00'));
                IF v_owner <> current_user THEN
                    EXECUTE pg_catalog.format('ALTER TABLE %I.%I OWNER TO %I', v_nsp, v_name, v_owner);
                END IF;
                v_made := v_made + 1;
            END IF;
        END IF;
        v_lo := v_hi;
    END LOOP;
    RETURN v_made;
END
$$;

-- Moves the events that landed in a topic's default partition (because
-- their partition did not exist yet, e.g. while the worker was stopped)
-- into proper partitions, keeping their ids and times, in one transaction
-- under a short ACCESS EXCLUSIVE lock (bounded by the caller's
-- lock_timeout).  Consumers see the events either in the old place or in
-- the new one, never both or neither.  Aggregates are not recounted.
CREATE FUNCTION evstream._rehome_default(topic regclass)
    RETURNS bigint LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_default regclass;
    v_nsp     name;
    v_rel     name;
    v_owner   name;
    v_tmp     text;
    v_ivl     interval;
    v_bins    timestamptz[];
    v_bin     timestamptz;
    v_moved   bigint;
BEGIN
    SELECT p.part INTO v_default FROM evstream._partitions($1) p WHERE p.is_default;
    IF v_default IS NULL THEN
        RETURN 0;
    END IF;
    SELECT t.partition_interval INTO v_ivl FROM evstream._topic t WHERE t.topic = $1;
    EXECUTE pg_catalog.format('SELECT pg_catalog.array_agg(DISTINCT pg_catalog.date_bin($1, created_at, ''epoch''::timestamptz)) FROM %s',
                              v_default) INTO v_bins USING v_ivl;
    IF v_bins IS NULL OR pg_catalog.cardinality(v_bins) > 1000 THEN
        RETURN 0;   -- nothing to move, or too many partitions to make: leave it
    END IF;
    SELECT n.nspname, c.relname, pg_catalog.pg_get_userbyid(c.relowner) INTO v_nsp, v_rel, v_owner
      FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
     WHERE c.oid = $1;
    EXECUTE pg_catalog.format('LOCK TABLE %s IN ACCESS EXCLUSIVE MODE', $1);
    v_tmp := 'evstream_rehome_' || $1::oid;
    EXECUTE pg_catalog.format('ALTER TABLE %s DETACH PARTITION %s', $1, v_default);
    EXECUTE pg_catalog.format('ALTER TABLE %s RENAME TO %I', v_default, v_tmp);
    EXECUTE pg_catalog.format('CREATE TABLE %I.%I PARTITION OF %s DEFAULT USING evstream',
                              v_nsp, v_rel || '_default', $1);
    IF v_owner <> current_user THEN
        EXECUTE pg_catalog.format('ALTER TABLE %I.%I OWNER TO %I', v_nsp, v_rel || '_default', v_owner);
    END IF;
    FOREACH v_bin IN ARRAY v_bins LOOP
        PERFORM evstream._ensure_partitions($1, v_bin, v_bin);
    END LOOP;
    PERFORM pg_catalog.set_config('evstream.restore_mode', 'on', true);
    EXECUTE pg_catalog.format('INSERT INTO %s SELECT id, key, payload, created_at FROM %I.%I',
                              $1, v_nsp, v_tmp);
    GET DIAGNOSTICS v_moved = ROW_COUNT;
    PERFORM pg_catalog.set_config('evstream.restore_mode', 'off', true);
    EXECUTE pg_catalog.format('DROP TABLE %I.%I', v_nsp, v_tmp);
    RETURN v_moved;
END
$$;
REVOKE ALL ON FUNCTION evstream._rehome_default(regclass) FROM PUBLIC;

-- One maintenance pass over every topic: move rows out of the default
-- partition, premake partitions, apply retention (whole partitions only),
-- fold aggregate deltas into counts.  Lock waits are bounded by
-- lock_timeout: a busy topic is skipped and retried at the next pass, so
-- producers never queue behind maintenance for long.  One topic's failure
-- does not stop the others.  Returns the errors met (NULL when none; lock
-- timeouts, which are normal under load, only raise a NOTICE); the worker
-- shows them in evstream.workers.last_error.
CREATE FUNCTION evstream.run_maintenance(premake integer DEFAULT 3)
    RETURNS text LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    t      record;
    p      record;
    v_old  boolean;
    v_dump boolean;
    errs   text := '';
BEGIN
    PERFORM pg_catalog.set_config('lock_timeout', '200ms', true);
    -- pg_dump reads the catalog first and locks the tables one by one: a
    -- partition dropped in between makes it fail.  No retention meanwhile.
    SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_stat_activity a
                    WHERE a.datname = pg_catalog.current_database()
                      AND a.application_name IN ('pg_dump', 'pg_dumpall'))
      INTO v_dump;
    FOR t IN SELECT * FROM evstream._topic ORDER BY topic::oid LOOP
        BEGIN
            IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_class c WHERE c.oid = t.topic::oid) THEN
                CONTINUE;   -- dropped meanwhile
            END IF;
            PERFORM evstream._rehome_default(t.topic);
            PERFORM evstream._ensure_partitions(t.topic, pg_catalog.now(),
                                                pg_catalog.now() + t.partition_interval * premake);
            IF t.retention IS NOT NULL AND NOT v_dump THEN
                FOR p IN SELECT * FROM evstream._partitions(t.topic) x
                          WHERE NOT x.is_default AND x.hi <= pg_catalog.now() - t.retention LOOP
                    -- parent first, as producers and consumers lock: no deadlock
                    EXECUTE pg_catalog.format('LOCK TABLE ONLY %s IN ACCESS EXCLUSIVE MODE', t.topic);
                    EXECUTE pg_catalog.format('DROP TABLE %s', p.part);
                END LOOP;
                FOR p IN SELECT * FROM evstream._partitions(t.topic) x WHERE x.is_default LOOP
                    EXECUTE pg_catalog.format(
                        'SELECT pg_catalog.max(created_at) < pg_catalog.now() - $1 FROM %s', p.part)
                        INTO v_old USING t.retention;
                    IF v_old THEN
                        EXECUTE pg_catalog.format('TRUNCATE %s', p.part);
                    END IF;
                END LOOP;
            END IF;
        EXCEPTION
            WHEN lock_not_available THEN
                RAISE NOTICE 'evstream maintenance: topic % is busy, retrying at the next pass', t.topic;
            WHEN OTHERS THEN
                errs := errs || pg_catalog.format('topic %s: %s; ', t.topic, SQLERRM);
        END;
    END LOOP;
    BEGIN
        PERFORM evstream._merge_deltas();
    EXCEPTION
        WHEN lock_not_available OR deadlock_detected THEN
            RAISE NOTICE 'evstream maintenance: delta merge deferred to the next pass';
    END;
    IF errs <> '' THEN
        RAISE WARNING 'evstream maintenance: %', errs;
        RETURN errs;
    END IF;
    RETURN NULL;
END
$$;
REVOKE ALL ON FUNCTION evstream.run_maintenance(integer) FROM PUBLIC;

-- Folds the committed deltas of every aggregate (or one) into its counts,
-- atomically, and returns the new count of each group that changed.
--
-- Push: for aggregates with notify, the new counts are sent on channel =
-- the aggregate's relation name, payload {"aggregate": name, "changes":
-- [{"group_key": ..., "bucket_start": ... (null without bucket), "count":
-- n}, ...]}, split to
-- stay under the 8000-byte payload limit.  Whoever merges (the worker, or
-- a maintenance pass) notifies, so every change is announced once.  A
-- single change too large for any payload (a group key of ~8 kB) is
-- reported with a WARNING instead.
--
-- Output topics: producers publish the count their transaction sees, so
-- two producers of one group committing concurrently both publish n + 1
-- and the group's latest event is stale.  _count remembers, per group, the
-- latest output event (highest id) and its count; when, after folding, that
-- event's count differs from the merged total, a correction event with the
-- total is published.  Ids grow in insertion order, so the latest event of
-- every group ends up carrying its exact count.
CREATE FUNCTION evstream._merge_deltas(only_agg integer DEFAULT NULL,
        OUT agg integer, OUT group_key text, OUT bucket_start timestamptz, OUT count bigint)
    RETURNS SETOF record LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r         record;
    a         record;
    v_id      bigint;
    v_cur     integer;
    v_change  text;
    v_head    text;
    v_buf     text := '';
BEGIN
    FOR r IN
        WITH d AS (
            DELETE FROM evstream._delta x WHERE $1 IS NULL OR x.agg = $1
            RETURNING x.agg, x.group_key, x.bucket_start, x.delta, x.published, x.published_id
        ), s AS (
            SELECT d.agg, d.group_key, d.bucket_start, pg_catalog.sum(d.delta)::bigint AS n,
                   pg_catalog.max(d.published_id) AS pid,
                   (pg_catalog.array_agg(d.published ORDER BY d.published_id DESC NULLS LAST))[1] AS pcount
              FROM d GROUP BY 1, 2, 3
        ), u AS (
            INSERT INTO evstream._count AS c (agg, group_key, bucket_start, count, last_id, last_count)
            SELECT s.agg, s.group_key, s.bucket_start, s.n, s.pid, s.pcount FROM s
            ON CONFLICT ON CONSTRAINT _count_key DO UPDATE
               SET count = c.count + excluded.count,
                   last_id = CASE WHEN excluded.last_id > COALESCE(c.last_id, 0) THEN excluded.last_id ELSE c.last_id END,
                   last_count = CASE WHEN excluded.last_id > COALESCE(c.last_id, 0) THEN excluded.last_count ELSE c.last_count END
            RETURNING c.ctid AS row_ctid, c.agg, c.group_key, c.bucket_start, c.count, c.last_id, c.last_count
        )
        SELECT * FROM u ORDER BY u.agg
    LOOP
        agg := r.agg; group_key := r.group_key; bucket_start := r.bucket_start; count := r.count;
        RETURN NEXT;

        IF v_cur IS DISTINCT FROM r.agg THEN
            IF v_buf <> '' THEN
                PERFORM pg_catalog.pg_notify(a.channel, v_head || v_buf || ']}');
            END IF;
            v_cur := r.agg;
            v_buf := '';
            SELECT x.output_topic, x.bucket IS NOT NULL AS windowed, x.notify,
                   c.relname::text AS channel
              INTO a
              FROM evstream._aggregate x JOIN pg_catalog.pg_class c ON c.oid = x.aggregate
             WHERE x.id = r.agg;
            v_head := '{"aggregate": ' || pg_catalog.to_json(a.channel)::text || ', "changes": [';
        END IF;

        -- changelog correction (see above)
        IF a.output_topic IS NOT NULL AND r.last_id IS NOT NULL
           AND r.last_count IS DISTINCT FROM r.count THEN
            EXECUTE pg_catalog.format(
                'INSERT INTO %s (key, payload) VALUES ($1, pg_catalog.jsonb_build_object(''count'', $2)'
                || CASE WHEN a.windowed THEN ' || pg_catalog.jsonb_build_object(''bucket_start'', $3)' ELSE '' END
                || ') RETURNING id', a.output_topic)
               INTO v_id USING r.group_key, r.count, r.bucket_start;
            UPDATE evstream._count c SET last_id = v_id, last_count = r.count
             WHERE c.ctid = r.row_ctid;
        END IF;

        -- push
        IF a.notify THEN
            v_change := '{"group_key": ' || COALESCE(pg_catalog.to_json(r.group_key)::text, 'null')
                || ', "bucket_start": ' || COALESCE(pg_catalog.to_json(r.bucket_start)::text, 'null')
                || ', "count": ' || r.count || '}';
            IF pg_catalog.octet_length(v_head || v_change) + 2 > 7900 THEN
                RAISE WARNING 'evstream: change of group % of aggregate % is too large to notify',
                    pg_catalog.left(r.group_key, 40), a.channel;
            ELSE
                IF v_buf <> '' AND pg_catalog.octet_length(v_head || v_buf || v_change) + 4 > 7900 THEN
                    PERFORM pg_catalog.pg_notify(a.channel, v_head || v_buf || ']}');
                    v_buf := '';
                END IF;
                v_buf := v_buf || CASE WHEN v_buf = '' THEN '' ELSE ', ' END || v_change;
            END IF;
        END IF;
    END LOOP;
    IF v_buf <> '' THEN
        PERFORM pg_catalog.pg_notify(a.channel, v_head || v_buf || ']}');
    END IF;
END
$$;
REVOKE ALL ON FUNCTION evstream._merge_deltas(integer) FROM PUBLIC;

-- The count of one group as the calling transaction sees it (merged
-- counts plus pending deltas): what output topics publish.
CREATE FUNCTION evstream._current_count(agg integer, k text, b timestamptz)
    RETURNS bigint LANGUAGE plpgsql STABLE
    SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    n bigint;
BEGIN
    IF k IS NULL THEN
        SELECT COALESCE(sum(x.n), 0) INTO n FROM (
            SELECT c.count AS n FROM evstream._count c
             WHERE c.agg = $1 AND c.group_key IS NULL AND c.bucket_start IS NOT DISTINCT FROM $3
            UNION ALL
            SELECT d.delta FROM evstream._delta d
             WHERE d.agg = $1 AND d.group_key IS NULL AND d.bucket_start IS NOT DISTINCT FROM $3) x;
    ELSE
        SELECT COALESCE(sum(x.n), 0) INTO n FROM (
            SELECT c.count AS n FROM evstream._count c
             WHERE c.agg = $1 AND c.group_key = $2 AND c.bucket_start IS NOT DISTINCT FROM $3
            UNION ALL
            SELECT d.delta FROM evstream._delta d
             WHERE d.agg = $1 AND d.group_key = $2 AND d.bucket_start IS NOT DISTINCT FROM $3) x;
    END IF;
    RETURN n;
END
$$;

------------------------------------------------------------------ workers
CREATE FUNCTION evstream._workers(OUT database name, OUT pid integer,
        OUT last_maintenance timestamptz, OUT last_error text)
    RETURNS SETOF record LANGUAGE C AS 'MODULE_PATHNAME', 'evstream_workers';

-- Wakes the launcher when the creating transaction commits, so the new
-- database gets its maintenance worker within a second or so.
CREATE FUNCTION evstream._wake_launcher() RETURNS void
    LANGUAGE C AS 'MODULE_PATHNAME', 'evstream_wake_launcher';
SELECT evstream._wake_launcher();

------------------------------------------------------------------ cleanup of dropped objects
-- A plain DROP TABLE of a topic or of an aggregate's view forgets it.
CREATE FUNCTION evstream._invalidate(topic regclass) RETURNS void
    LANGUAGE C AS 'MODULE_PATHNAME', 'evstream_invalidate';

CREATE FUNCTION evstream._on_sql_drop() RETURNS event_trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    o record;
BEGIN
    FOR o IN SELECT * FROM pg_catalog.pg_event_trigger_dropped_objects()
              WHERE classid = 'pg_catalog.pg_class'::regclass AND objsubid = 0 LOOP
        PERFORM evstream._invalidate(a.topic::oid::regclass) FROM evstream._aggregate a
          WHERE a.aggregate::oid = o.objid AND a.topic::oid <> o.objid;
        -- _delta before _count: the order the merge locks them in
        DELETE FROM evstream._delta WHERE agg IN
            (SELECT a.id FROM evstream._aggregate a WHERE a.aggregate::oid = o.objid);
        DELETE FROM evstream._count WHERE agg IN
            (SELECT a.id FROM evstream._aggregate a WHERE a.aggregate::oid = o.objid);
        DELETE FROM evstream._aggregate a WHERE a.aggregate::oid = o.objid;
        UPDATE evstream._aggregate a SET output_topic = NULL WHERE a.output_topic::oid = o.objid;
        DELETE FROM evstream._delta WHERE agg IN
            (SELECT a.id FROM evstream._aggregate a WHERE a.topic::oid = o.objid);
        DELETE FROM evstream._count WHERE agg IN
            (SELECT a.id FROM evstream._aggregate a WHERE a.topic::oid = o.objid);
        DELETE FROM evstream._aggregate a WHERE a.topic::oid = o.objid;
        DELETE FROM evstream._topic t WHERE t.topic::oid = o.objid;
    END LOOP;
END
$$;
CREATE EVENT TRIGGER evstream_sql_drop ON sql_drop EXECUTE FUNCTION evstream._on_sql_drop();

------------------------------------------------------------------ views
-- First or last event of a topic (by id: one index probe per partition).
-- SECURITY DEFINER so the monitoring views work for every role; they only
-- show ids and times, never payloads.
CREATE FUNCTION evstream._edge(topic regclass, first boolean, OUT id bigint, OUT created_at timestamptz)
    RETURNS record LANGUAGE plpgsql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    EXECUTE pg_catalog.format('SELECT id, created_at FROM %s ORDER BY id %s LIMIT 1',
                              topic, CASE WHEN first THEN 'ASC' ELSE 'DESC' END)
       INTO id, created_at;
END
$$;

-- Creation time of the oldest event after a position.
CREATE FUNCTION evstream._time_after(topic regclass, after_id bigint)
    RETURNS timestamptz LANGUAGE plpgsql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    ts timestamptz;
BEGIN
    EXECUTE pg_catalog.format('SELECT created_at FROM %s WHERE id > $1 AND id <= $2 ORDER BY id LIMIT 1', topic)
       INTO ts USING after_id, evstream.stable_id(topic);
    RETURN ts;
END
$$;

CREATE VIEW evstream.topics AS
SELECT t.topic,
       (SELECT pg_catalog.count(*) FROM evstream._partitions(t.topic))::integer AS partitions,
       (SELECT pg_catalog.sum(GREATEST(c.reltuples, 0))::bigint FROM pg_catalog.pg_inherits i
          JOIN pg_catalog.pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = t.topic) AS events,
       (SELECT pg_catalog.sum(pg_catalog.pg_total_relation_size(i.inhrelid))::bigint
          FROM pg_catalog.pg_inherits i WHERE i.inhparent = t.topic) AS bytes,
       f.first_id, l.last_id, evstream.stable_id(t.topic) AS stable_id,
       f.oldest, l.newest, t.retention, t.partition_interval, t.notify
  FROM evstream._topic t
  LEFT JOIN LATERAL evstream._edge(t.topic, true) f(first_id, oldest) ON true
  LEFT JOIN LATERAL evstream._edge(t.topic, false) l(last_id, newest) ON true;

CREATE VIEW evstream.consumer_groups AS
-- lag_events: ids between the position and the last stable event (an
-- estimate when aborted transactions left gaps in between; cheap: two
-- index probes, whatever the lag).
SELECT g.topic, g.consumer_group, g.committed_id,
       GREATEST(LEAST(s.stable, COALESCE(l.id, 0))
                - GREATEST(g.committed_id, COALESCE(f.id, s.stable + 1) - 1), 0) AS lag_events,
       COALESCE(EXTRACT(epoch FROM pg_catalog.now() - evstream._time_after(g.topic, g.committed_id)), 0)::double precision AS lag_seconds,
       g.updated_at
  FROM evstream._group g
  CROSS JOIN LATERAL (SELECT evstream.stable_id(g.topic) AS stable) s
  LEFT JOIN LATERAL evstream._edge(g.topic, true) f ON true
  LEFT JOIN LATERAL evstream._edge(g.topic, false) l ON true;

CREATE VIEW evstream.aggregates AS
SELECT a.aggregate AS name, a.topic, a.group_by, a.bucket, a.output_topic,
       (SELECT pg_catalog.count(*) FROM (
            SELECT c.group_key, c.bucket_start FROM evstream._count c WHERE c.agg = a.id
            UNION
            SELECT d.group_key, d.bucket_start FROM evstream._delta d WHERE d.agg = a.id) g) AS groups,
       a.notify
  FROM evstream._aggregate a;

CREATE VIEW evstream.workers AS
SELECT * FROM evstream._workers();

GRANT SELECT ON evstream.topics, evstream.consumer_groups, evstream.aggregates,
                evstream.workers TO PUBLIC;
