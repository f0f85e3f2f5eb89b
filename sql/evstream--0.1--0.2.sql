-- evstream 0.1 -> 0.2 (ALTER EXTENSION evstream UPDATE).
--
-- Trust (issue: privilege model): group ownership, groups readable only
-- with SELECT on the topic, no SECURITY DEFINER helpers, maintenance and
-- merge per topic / aggregate as their owners (C), rehoming without
-- rewriting rows, nobody with UPDATE/USAGE on topics' id sequences.
-- Nothing of the data changes: events, ids, positions and counts stay.

\echo Use "ALTER EXTENSION evstream UPDATE TO '0.2'" to load this file. \quit

-- groups belong to a role: existing ones to their topic's owner
ALTER TABLE evstream._group ADD COLUMN owner regrole;
UPDATE evstream._group g SET owner = c.relowner::regrole
  FROM pg_catalog.pg_class c WHERE c.oid OPERATOR(pg_catalog.=) g.topic::pg_catalog.oid;
DELETE FROM evstream._group WHERE owner IS NULL;   -- topic gone
ALTER TABLE evstream._group ALTER COLUMN owner SET NOT NULL;
ALTER TABLE evstream._group ENABLE ROW LEVEL SECURITY;
CREATE POLICY readable_groups ON evstream._group FOR SELECT USING
    (pg_catalog.has_table_privilege(topic, 'SELECT'));

-- COPY into topics batches rows (see _next_id in the install script)
ALTER FUNCTION evstream._next_id(regclass) STABLE;

-- views depend on the helpers being replaced
DROP VIEW evstream.topics, evstream.consumer_groups, evstream.aggregates, evstream.workers;

-- (0.2) shards and scale-out consumer groups: a topic's shards (1 for
-- every existing topic), group ids, per-shard positions (insert-only) and
-- member leases; an existing group's position becomes its shard 0's.
ALTER TABLE evstream._topic ADD COLUMN shards integer NOT NULL DEFAULT 1
    CHECK (shards OPERATOR(pg_catalog.>=) 1 AND shards OPERATOR(pg_catalog.<=) 256);
CREATE SEQUENCE evstream._group_id_seq;
ALTER TABLE evstream._group RENAME COLUMN updated_at TO created;
ALTER TABLE evstream._group
    ADD COLUMN id integer NOT NULL UNIQUE DEFAULT pg_catalog.nextval('evstream._group_id_seq'),
    ADD COLUMN max_attempts integer,
    ADD COLUMN dead_letter_topic regclass REFERENCES evstream._topic ON DELETE SET NULL,
    ADD COLUMN dead_lettered bigint NOT NULL DEFAULT 0;
CREATE TABLE evstream._position (
    group_id     integer NOT NULL,
    shard        integer NOT NULL,
    version      bigint NOT NULL,
    committed_id bigint NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT pg_catalog.now(),
    PRIMARY KEY (group_id, shard, version)
);
CREATE TABLE evstream._lease (
    group_id     integer NOT NULL,
    shard        integer NOT NULL,
    member       text,
    expires_at   timestamptz,
    PRIMARY KEY (group_id, shard)
);
INSERT INTO evstream._position (group_id, shard, version, committed_id, updated_at)
SELECT g.id, 0, 1, g.committed_id, g.created FROM evstream._group g;
SELECT pg_catalog.pg_extension_config_dump('evstream._group_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('evstream._position', '');
SELECT pg_catalog.pg_extension_config_dump('evstream._lease', '');
GRANT SELECT ON evstream._position, evstream._lease TO PUBLIC;
ALTER TABLE evstream._position ENABLE ROW LEVEL SECURITY;
ALTER TABLE evstream._lease ENABLE ROW LEVEL SECURITY;
CREATE POLICY readable_positions ON evstream._position FOR SELECT USING
    (group_id IN (SELECT g.id FROM evstream._group g));
CREATE POLICY readable_leases ON evstream._lease FOR SELECT USING
    (group_id IN (SELECT g.id FROM evstream._group g));

DROP FUNCTION evstream.create_topic(text, interval, interval, boolean);
DROP FUNCTION evstream.poll(regclass, text, integer);
DROP FUNCTION evstream.consume(regclass, text, integer);
DROP FUNCTION evstream.commit(regclass, text, bigint);
CREATE FUNCTION evstream.create_topic(topic text,
                                         partition_interval interval DEFAULT '1 day',
                                         retention interval DEFAULT NULL,
                                         notify boolean DEFAULT true,
                                         shards integer DEFAULT 1)
    RETURNS regclass LANGUAGE C CALLED ON NULL INPUT VOLATILE
    AS 'MODULE_PATHNAME', 'evstream_create_topic';

-- The shard of an event: a hash of its key's bytes modulo the topic's
-- shards, or for a NULL key its id modulo the shards.  The expression
-- index of sharded topics is on (evstream._shard(key, id, shards), id).
CREATE FUNCTION evstream._shard(key text, id bigint, shards integer) RETURNS integer
    LANGUAGE C IMMUTABLE PARALLEL SAFE AS 'MODULE_PATHNAME', 'evstream_shard';

CREATE FUNCTION evstream.shard_of(topic regclass, key text) RETURNS integer
    LANGUAGE C CALLED ON NULL INPUT STABLE AS 'MODULE_PATHNAME', 'evstream_shard_of';

CREATE FUNCTION evstream.poll(topic regclass, consumer_group text, max_events int DEFAULT 100,
                              wait interval DEFAULT NULL, member text DEFAULT NULL,
                              lease interval DEFAULT '30 seconds')
    RETURNS SETOF evstream.event LANGUAGE C CALLED ON NULL INPUT VOLATILE
    AS 'MODULE_PATHNAME', 'evstream_poll';

CREATE FUNCTION evstream.consume(topic regclass, consumer_group text, max_events int DEFAULT 100,
                                 wait interval DEFAULT NULL)
    RETURNS SETOF evstream.event LANGUAGE C CALLED ON NULL INPUT VOLATILE
    AS 'MODULE_PATHNAME', 'evstream_consume';

CREATE FUNCTION evstream.commit(topic regclass, consumer_group text, last_id bigint,
                                member text DEFAULT NULL)
    RETURNS void LANGUAGE C CALLED ON NULL INPUT VOLATILE
    AS 'MODULE_PATHNAME', 'evstream_commit';

CREATE FUNCTION evstream.release(topic regclass, consumer_group text, member text)
    RETURNS void LANGUAGE C CALLED ON NULL INPUT VOLATILE
    AS 'MODULE_PATHNAME', 'evstream_release';

CREATE FUNCTION evstream.drop_group(topic regclass, consumer_group text)
    RETURNS void LANGUAGE C CALLED ON NULL INPUT VOLATILE
    AS 'MODULE_PATHNAME', 'evstream_drop_group';

CREATE FUNCTION evstream.set_group_options(topic regclass, consumer_group text,
                                           max_attempts integer DEFAULT NULL,
                                           dead_letter_topic text DEFAULT NULL)
    RETURNS void LANGUAGE C CALLED ON NULL INPUT VOLATILE
    AS 'MODULE_PATHNAME', 'evstream_set_group_options';

ALTER TABLE evstream._group DROP COLUMN committed_id;

-- (0.2) Continuous transforms: each consumes its source with a group of its
-- own (named after it) and inserts its query's rows into its output topic,
-- one transaction per batch, as its owner (transforms.c).
CREATE TABLE evstream._transform (
    name          text PRIMARY KEY,
    owner         regrole NOT NULL,
    source        regclass NOT NULL REFERENCES evstream._topic ON DELETE CASCADE,
    query         text NOT NULL,
    output_topic  regclass NOT NULL REFERENCES evstream._topic ON DELETE CASCADE,
    batch         integer NOT NULL,
    paused        boolean NOT NULL DEFAULT false,
    failures      integer NOT NULL DEFAULT 0,     -- batches failed in a row
    retry_at      timestamptz,                    -- backing off until
    last_error    text,
    created       timestamptz NOT NULL DEFAULT pg_catalog.now()
);
SELECT pg_catalog.pg_extension_config_dump('evstream._transform', '');
GRANT SELECT ON evstream._transform TO PUBLIC;
ALTER TABLE evstream._transform ENABLE ROW LEVEL SECURITY;
CREATE POLICY readable_transforms ON evstream._transform FOR SELECT USING
    (pg_catalog.has_table_privilege(source, 'SELECT'));

------------------------------------------------------------------ transforms
CREATE FUNCTION evstream.create_transform(name text, source regclass, query text,
                                          output_topic text, batch integer DEFAULT 1000)
    RETURNS void LANGUAGE C CALLED ON NULL INPUT VOLATILE
    AS 'MODULE_PATHNAME', 'evstream_create_transform';

CREATE FUNCTION evstream.drop_transform(name text)
    RETURNS void LANGUAGE C CALLED ON NULL INPUT VOLATILE
    AS 'MODULE_PATHNAME', 'evstream_drop_transform';

CREATE FUNCTION evstream.resume_transform(name text)
    RETURNS void LANGUAGE C CALLED ON NULL INPUT VOLATILE
    AS 'MODULE_PATHNAME', 'evstream_resume_transform';


DROP FUNCTION evstream._edge(regclass, boolean);
DROP FUNCTION evstream._time_after(regclass, bigint);
DROP FUNCTION evstream.run_maintenance(integer);
DROP FUNCTION evstream._merge_deltas(integer);
DROP FUNCTION evstream._current_count(integer, text, timestamptz);
DROP FUNCTION evstream._rehome_default(regclass);
DROP FUNCTION evstream._ensure_partitions(regclass, timestamptz, timestamptz);
-- read from the bound nodes, not by deparsing them (maintenance's cost)
CREATE OR REPLACE FUNCTION evstream._partitions(topic regclass,
        OUT part regclass, OUT lo timestamptz, OUT hi timestamptz, OUT is_default boolean)
    RETURNS SETOF record LANGUAGE C STABLE STRICT ROWS 10
    AS 'MODULE_PATHNAME', 'evstream_partitions';
REVOKE ALL ON FUNCTION evstream._wake_launcher() FROM PUBLIC;
REVOKE ALL ON FUNCTION evstream._invalidate(regclass) FROM PUBLIC;

-- existing topics: nobody keeps UPDATE or USAGE on the id sequences
DO $$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT s.oid::regclass AS seq, g.grantee
               FROM evstream._topic t
               JOIN pg_catalog.pg_depend d ON d.refobjid OPERATOR(pg_catalog.=) t.topic::pg_catalog.oid
                AND d.refobjsubid OPERATOR(pg_catalog.=) 1 AND d.deptype OPERATOR(pg_catalog.=) 'a'
                AND d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass
               JOIN pg_catalog.pg_class s ON s.oid OPERATOR(pg_catalog.=) d.objid
                AND s.relkind OPERATOR(pg_catalog.=) 'S'
               CROSS JOIN LATERAL (SELECT DISTINCT a.grantee FROM pg_catalog.aclexplode(
                    COALESCE(s.relacl, pg_catalog.acldefault('s', s.relowner))) a) g LOOP
        EXECUTE pg_catalog.format('REVOKE UPDATE, USAGE ON SEQUENCE %s FROM %s', r.seq,
            CASE WHEN r.grantee OPERATOR(pg_catalog.=) 0 THEN 'PUBLIC'
                 ELSE pg_catalog.quote_ident(pg_catalog.pg_get_userbyid(r.grantee)) END);
    END LOOP;
END
$$;

-- A free relation name in a schema: `wanted`, or, when someone already
-- took it, `wanted` cut short with a random suffix (partition names carry
-- no meaning -- bounds come from the catalog -- so a tenant who can create
-- relations or types in the same schema cannot block premake or rehoming by taking
-- the names in advance).
CREATE FUNCTION evstream._free_name(nsp name, wanted text)
    RETURNS text LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v text := wanted;
    v_cut text := wanted;
BEGIN
    -- the fallback keeps at most 57 bytes of the name (whole characters),
    -- so that with its suffix it fits NAMEDATALEN: PostgreSQL would cut a
    -- longer name back to the taken one
    WHILE pg_catalog.octet_length(v_cut) OPERATOR(pg_catalog.>) 57 LOOP
        v_cut := pg_catalog.left(v_cut, -1);
    END LOOP;
    -- a table needs its name free as a relation and as a (row) type
    WHILE EXISTS (SELECT FROM pg_catalog.pg_class c
                    JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace
                   WHERE n.nspname OPERATOR(pg_catalog.=) nsp AND c.relname OPERATOR(pg_catalog.=) v)
       OR EXISTS (SELECT FROM pg_catalog.pg_type y
                    JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) y.typnamespace
                   WHERE n.nspname OPERATOR(pg_catalog.=) nsp AND y.typname OPERATOR(pg_catalog.=) v) LOOP
        v := v_cut OPERATOR(pg_catalog.||) '_' OPERATOR(pg_catalog.||)
             pg_catalog.substr(pg_catalog.md5(pg_catalog.random()::text), 1, 5);
    END LOOP;
    RETURN v;
END
$$;

-- Creates the missing partitions of a topic from the one holding `from_ts`
-- up to the one holding `upto`.  Partitions are aligned on the epoch like
-- date_bin(partition_interval, created_at, 'epoch'), named
-- <topic>_pYYYYMMDD_HH24MISS (UTC lower bound), use the evstream access
-- method and belong to the topic's owner (the worker runs this as the
-- owner).  A range between the oldest and the newest row of the default
-- partition is left to it: _rehome_default attaches those rows whole.
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
    v_default regclass;
    v_dmin    timestamptz;
    v_dmax    timestamptz;
    v_name    text;
BEGIN
    SELECT t.partition_interval INTO v_ivl FROM evstream._topic t WHERE t.topic OPERATOR(pg_catalog.=) $1;
    IF v_ivl IS NULL THEN
        RAISE EXCEPTION 'relation "%" is not an evstream topic', $1 USING ERRCODE = 'undefined_table';
    END IF;
    SELECT n.nspname, c.relname, pg_catalog.pg_get_userbyid(c.relowner) INTO v_nsp, v_rel, v_owner
      FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace
     WHERE c.oid OPERATOR(pg_catalog.=) $1;
    SELECT p.part INTO v_default FROM evstream._partitions($1) p WHERE p.is_default;
    IF v_default IS NOT NULL THEN
        EXECUTE pg_catalog.format('SELECT pg_catalog.min(created_at), pg_catalog.max(created_at) FROM %s', v_default)
           INTO v_dmin, v_dmax;
    END IF;
    v_lo := pg_catalog.date_bin(v_ivl, from_ts, 'epoch'::timestamptz);
    WHILE v_lo OPERATOR(pg_catalog.<=) upto LOOP
        v_hi := v_lo OPERATOR(pg_catalog.+) v_ivl;
        IF NOT EXISTS (SELECT FROM evstream._partitions($1) p
                        WHERE NOT p.is_default AND p.lo OPERATOR(pg_catalog.<) v_hi
                          AND p.hi OPERATOR(pg_catalog.>) v_lo)
           AND (v_dmin IS NULL OR v_hi OPERATOR(pg_catalog.<=) v_dmin OR v_lo OPERATOR(pg_catalog.>) v_dmax) THEN
            v_name := evstream._free_name(v_nsp, v_rel OPERATOR(pg_catalog.||) '_p' OPERATOR(pg_catalog.||)
                      pg_catalog.to_char(v_lo AT TIME ZONE 'UTC', 'YYYYMMDD_HH24MISS'));
            EXECUTE pg_catalog.format(
                'CREATE TABLE %I.%I PARTITION OF %I.%I FOR VALUES FROM (%L) TO (%L) USING evstream',
                v_nsp, v_name, v_nsp, v_rel,
                pg_catalog.to_char(v_lo AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS+00'),
                pg_catalog.to_char(v_hi AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS+00'));
            IF v_owner OPERATOR(pg_catalog.<>) current_user THEN
                EXECUTE pg_catalog.format('ALTER TABLE %I.%I OWNER TO %I', v_nsp, v_name, v_owner);
            END IF;
            v_made := v_made OPERATOR(pg_catalog.+) 1;
        END IF;
        v_lo := v_hi;
    END LOOP;
    RETURN v_made;
END
$$;

-- Gives the events that landed in a topic's default partition (because
-- their partition did not exist yet, e.g. while the worker was stopped) a
-- proper partition without moving a row: under a short ACCESS EXCLUSIVE
-- lock (bounded by the caller's lock_timeout) the default partition is
-- detached, renamed after the range its rows span, and attached back for
-- that range, and a new empty default partition is made.  No row is
-- rewritten, so no trigger fires and ids, times and aggregates stay as
-- they are; consumers see the events in the old place or in the new one,
-- never both or neither.  Rows spanning a range that already has
-- partitions are left in the default partition (retention truncates it).
CREATE FUNCTION evstream._rehome_default(topic regclass)
    RETURNS bigint LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_default regclass;
    v_nsp     name;
    v_rel     name;
    v_ivl     interval;
    v_lo      timestamptz;
    v_hi      timestamptz;
    v_n       bigint;
    v_any     boolean;
    v_name    text;
BEGIN
    SELECT p.part INTO v_default FROM evstream._partitions($1) p WHERE p.is_default;
    IF v_default IS NULL THEN
        RETURN 0;
    END IF;
    EXECUTE pg_catalog.format('SELECT EXISTS (SELECT FROM %s)', v_default) INTO v_any;
    IF NOT v_any THEN
        RETURN 0;
    END IF;
    SELECT t.partition_interval INTO v_ivl FROM evstream._topic t WHERE t.topic OPERATOR(pg_catalog.=) $1;
    SELECT n.nspname, c.relname INTO v_nsp, v_rel
      FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace
     WHERE c.oid OPERATOR(pg_catalog.=) $1;
    EXECUTE pg_catalog.format('LOCK TABLE %s IN ACCESS EXCLUSIVE MODE', $1);
    EXECUTE pg_catalog.format('SELECT pg_catalog.min(created_at), pg_catalog.max(created_at), pg_catalog.count(*) FROM %s',
                              v_default) INTO v_lo, v_hi, v_n;
    IF v_n OPERATOR(pg_catalog.=) 0 THEN
        RETURN 0;
    END IF;
    v_lo := pg_catalog.date_bin(v_ivl, v_lo, 'epoch'::timestamptz);
    v_hi := pg_catalog.date_bin(v_ivl, v_hi, 'epoch'::timestamptz) OPERATOR(pg_catalog.+) v_ivl;
    IF EXISTS (SELECT FROM evstream._partitions($1) p
                WHERE NOT p.is_default AND p.lo OPERATOR(pg_catalog.<) v_hi AND p.hi OPERATOR(pg_catalog.>) v_lo) THEN
        RETURN 0;
    END IF;
    v_name := evstream._free_name(v_nsp, v_rel OPERATOR(pg_catalog.||) '_p' OPERATOR(pg_catalog.||)
              pg_catalog.to_char(v_lo AT TIME ZONE 'UTC', 'YYYYMMDD_HH24MISS'));
    EXECUTE pg_catalog.format('ALTER TABLE %s DETACH PARTITION %s', $1, v_default);
    EXECUTE pg_catalog.format('ALTER TABLE %s RENAME TO %I', v_default, v_name);
    EXECUTE pg_catalog.format('CREATE TABLE %I.%I PARTITION OF %s DEFAULT USING evstream',
                              v_nsp, evstream._free_name(v_nsp, v_rel OPERATOR(pg_catalog.||) '_default'), $1);
    EXECUTE pg_catalog.format('ALTER TABLE %s ATTACH PARTITION %I.%I FOR VALUES FROM (%L) TO (%L)',
                              $1, v_nsp, v_name,
                              pg_catalog.to_char(v_lo AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS+00'),
                              pg_catalog.to_char(v_hi AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS+00'));
    RETURN v_n;
END
$$;

-- One topic's upkeep; the worker runs it as the topic's owner under
-- SECURITY_RESTRICTED_OPERATION, one topic per subtransaction: rehome the
-- default partition, premake partitions, and unless allow_drop is false
-- (pg_dump is running) drop partitions past retention (whole partitions
-- only; the default partition is truncated once all its rows are old) and
-- empty partitions more than one interval in the past (so 1-second
-- partitions do not pile up).  Parent locked first, as producers and
-- consumers lock: no deadlock.
CREATE FUNCTION evstream._maintain_topic(topic regclass, premake integer, allow_drop boolean)
    RETURNS void LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    t      record;
    p      record;
    v_old  boolean;
    v_any  boolean;
BEGIN
    SELECT x.*, c.relowner INTO t FROM evstream._topic x
      JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) x.topic::pg_catalog.oid
     WHERE x.topic OPERATOR(pg_catalog.=) $1;
    IF NOT FOUND THEN
        RETURN;     -- dropped meanwhile
    END IF;
    IF NOT pg_catalog.pg_has_role(t.relowner, 'USAGE') THEN
        RAISE EXCEPTION 'must be owner of topic %', $1 USING ERRCODE = 'insufficient_privilege';
    END IF;
    PERFORM evstream._rehome_default($1);
    PERFORM evstream._ensure_partitions($1, pg_catalog.now(),
                                        pg_catalog.now() OPERATOR(pg_catalog.+) (t.partition_interval OPERATOR(pg_catalog.*) premake));
    IF NOT allow_drop THEN
        RETURN;
    END IF;
    IF t.retention IS NOT NULL THEN
        FOR p IN SELECT * FROM evstream._partitions($1) x
                  WHERE NOT x.is_default AND x.hi OPERATOR(pg_catalog.<=) (pg_catalog.now() OPERATOR(pg_catalog.-) t.retention) LOOP
            EXECUTE pg_catalog.format('LOCK TABLE ONLY %s IN ACCESS EXCLUSIVE MODE', $1);
            EXECUTE pg_catalog.format('DROP TABLE %s', p.part);
        END LOOP;
        FOR p IN SELECT * FROM evstream._partitions($1) x WHERE x.is_default LOOP
            EXECUTE pg_catalog.format(
                'SELECT pg_catalog.max(created_at) OPERATOR(pg_catalog.<) (pg_catalog.now() OPERATOR(pg_catalog.-) $1) FROM %s', p.part)
                INTO v_old USING t.retention;
            IF v_old THEN
                EXECUTE pg_catalog.format('TRUNCATE %s', p.part);
            END IF;
        END LOOP;
    END IF;
    FOR p IN SELECT * FROM evstream._partitions($1) x
              WHERE NOT x.is_default
                AND x.hi OPERATOR(pg_catalog.<=) (pg_catalog.now() OPERATOR(pg_catalog.-) t.partition_interval)
              ORDER BY x.lo LOOP
        EXECUTE pg_catalog.format('SELECT EXISTS (SELECT FROM %s)', p.part) INTO v_any;
        CONTINUE WHEN v_any;
        EXECUTE pg_catalog.format('LOCK TABLE ONLY %s IN ACCESS EXCLUSIVE MODE', $1);
        EXECUTE pg_catalog.format('LOCK TABLE %s IN ACCESS EXCLUSIVE MODE', p.part);
        -- an insert that was in flight has ended now: look again
        EXECUTE pg_catalog.format('SELECT EXISTS (SELECT FROM %s)', p.part) INTO v_any;
        IF NOT v_any THEN
            EXECUTE pg_catalog.format('DROP TABLE %s', p.part);
        END IF;
    END LOOP;
END
$$;

-- One maintenance pass over every topic (what the worker runs every
-- evstream.maintenance_interval): forget catalog rows of dropped
-- relations, each topic's upkeep as its owner (evstream._maintain_topic),
-- then the aggregate delta merge.  Lock waits are bounded by lock_timeout:
-- a busy topic is skipped and retried at the next pass.  One topic's or
-- aggregate's failure does not stop the others.  Returns the errors met
-- (NULL when none); the worker shows them in evstream.workers.last_error.
CREATE FUNCTION evstream.run_maintenance(premake integer DEFAULT 3)
    RETURNS text LANGUAGE C AS 'MODULE_PATHNAME', 'evstream_run_maintenance';
REVOKE ALL ON FUNCTION evstream.run_maintenance(integer) FROM PUBLIC;

-- Folds the committed deltas of every aggregate (or one) into its counts,
-- announces the changed groups and publishes them to the output topic
-- (see aggregates.c); returns how many groups changed.
CREATE FUNCTION evstream._merge_deltas(only_agg integer DEFAULT NULL)
    RETURNS integer LANGUAGE C CALLED ON NULL INPUT AS 'MODULE_PATHNAME', 'evstream_merge_deltas';
REVOKE ALL ON FUNCTION evstream._merge_deltas(integer) FROM PUBLIC;

------------------------------------------------------------------ views
-- First or last event of a topic, and the time of the next stable event
-- after a position, for the monitoring views: ids and times only, never
-- payloads.  Topics only; read as the topic's owner (topics.c).
CREATE FUNCTION evstream._edge(topic regclass, first boolean, OUT id bigint, OUT created_at timestamptz)
    RETURNS record LANGUAGE C STABLE AS 'MODULE_PATHNAME', 'evstream_edge';
CREATE FUNCTION evstream._time_after(topic regclass, after_id bigint)
    RETURNS timestamptz LANGUAGE C STABLE AS 'MODULE_PATHNAME', 'evstream_time_after';

-- (0.2) Per shard: the pid of the transaction bounding the stable id,
-- the committed events after a group's positions (exact up to 10000), and
-- the attempts of a shard's next event (waits.c; not kept over restarts).
CREATE FUNCTION evstream._held_by(topic regclass) RETURNS integer
    LANGUAGE C STABLE AS 'MODULE_PATHNAME', 'evstream_held_by';
CREATE FUNCTION evstream._lag(topic regclass, positions bigint[], shard integer,
        OUT events bigint, OUT oldest timestamptz)
    RETURNS record LANGUAGE C STABLE AS 'MODULE_PATHNAME', 'evstream_lag';
CREATE FUNCTION evstream._attempts(group_id integer, shard integer, after_id bigint) RETURNS integer
    LANGUAGE C STABLE AS 'MODULE_PATHNAME', 'evstream_attempts';

-- The latest position of every shard of a group (0: none yet)
CREATE FUNCTION evstream._positions(group_id integer, shards integer,
        OUT shard integer, OUT committed_id bigint, OUT updated_at timestamptz)
    RETURNS SETOF record LANGUAGE sql STABLE
    SET search_path = pg_catalog, pg_temp AS $$
    SELECT s.shard, COALESCE(p.committed_id, 0), p.updated_at
      FROM pg_catalog.generate_series(0, $2 OPERATOR(pg_catalog.-) 1) s(shard)
      LEFT JOIN LATERAL (SELECT x.committed_id, x.updated_at FROM evstream._position x
                          WHERE x.group_id OPERATOR(pg_catalog.=) $1
                            AND x.shard OPERATOR(pg_catalog.=) s.shard
                          ORDER BY x.version DESC LIMIT 1) p ON true
$$;

-- (0.2) Aggregates v2: measures, hopping and event-time windows, grace,
-- final results, window retention; deltas packed many entries a row.
-- 0.1's pending deltas are folded into the counts first (0.1 producers
-- published their changes themselves, so nothing is left to announce),
-- then each aggregate's view is rebuilt over the new tables (as its
-- owner; the views stay the users' objects), and 0.1's columns go.
INSERT INTO evstream._count AS c (agg, group_key, bucket_start, count)
SELECT d.agg, d.group_key, d.bucket_start, pg_catalog.sum(d.delta)::pg_catalog.int8
  FROM evstream._delta d GROUP BY 1, 2, 3
    ON CONFLICT ON CONSTRAINT _count_key DO UPDATE
   SET count = c.count OPERATOR(pg_catalog.+) excluded.count;
DELETE FROM evstream._delta;
ALTER TABLE evstream._aggregate
    ADD COLUMN measures text,
    ADD COLUMN m_kinds text[] NOT NULL DEFAULT '{}',
    ADD COLUMN m_names text[] NOT NULL DEFAULT '{}',
    ADD COLUMN m_exprs text[] NOT NULL DEFAULT '{}',
    ADD COLUMN m_types regtype[] NOT NULL DEFAULT '{}',
    ADD COLUMN m_colls text[] NOT NULL DEFAULT '{}',
    ADD COLUMN hop interval,
    ADD COLUMN event_time text,
    ADD COLUMN grace interval,
    ADD COLUMN emit text NOT NULL DEFAULT 'changes',
    ADD COLUMN window_retention interval,
    ADD COLUMN finalized_upto timestamptz,
    -- NULL for the updated 0.1 aggregates: their functions are not checked
    ADD COLUMN functions text[];
ALTER TABLE evstream._count DROP COLUMN last_id, DROP COLUMN last_count, ADD COLUMN m bytea[];
ALTER TABLE evstream._delta ADD COLUMN data bytea;
-- (0.2) Reading aggregate state (aggregate views and the merge use them):
-- the entries packed in a delta row, and a state in its type's binary
-- format, back and forth.  Any input is checked (as from a client).
CREATE FUNCTION evstream._unpack(data bytea,
                                 OUT group_key text, OUT bucket_start timestamptz,
                                 OUT n bigint, OUT m bytea[])
    RETURNS SETOF record LANGUAGE C STRICT IMMUTABLE PARALLEL SAFE
    AS 'MODULE_PATHNAME', 'evstream_unpack';
CREATE FUNCTION evstream._recv(state bytea, type_of anyelement) RETURNS anyelement
    LANGUAGE C CALLED ON NULL INPUT IMMUTABLE PARALLEL SAFE
    AS 'MODULE_PATHNAME', 'evstream_recv';
CREATE FUNCTION evstream._send(v anyelement) RETURNS bytea
    LANGUAGE C CALLED ON NULL INPUT IMMUTABLE PARALLEL SAFE
    AS 'MODULE_PATHNAME', 'evstream_send';
CREATE FUNCTION evstream._rebuild_views() RETURNS void LANGUAGE C
    AS 'MODULE_PATHNAME', 'evstream_rebuild_views';
REVOKE ALL ON FUNCTION evstream._rebuild_views() FROM PUBLIC;
SELECT evstream._rebuild_views();
DROP FUNCTION evstream._rebuild_views();
ALTER TABLE evstream._delta DROP COLUMN group_key, DROP COLUMN bucket_start,
    DROP COLUMN delta, DROP COLUMN published, DROP COLUMN published_id;
ALTER TABLE evstream._delta ALTER COLUMN data SET NOT NULL;
ALTER TABLE evstream._delta ALTER COLUMN data SET STORAGE EXTERNAL;
ALTER TABLE evstream._delta SET (toast_tuple_target = 8160);
CREATE INDEX _delta_agg ON evstream._delta (agg);
DROP FUNCTION evstream.create_aggregate(text, regclass, text, interval, text, boolean);
CREATE FUNCTION evstream.create_aggregate(name text, topic regclass,
                                             group_by text DEFAULT 'key',
                                             bucket interval DEFAULT NULL,
                                             output_topic text DEFAULT NULL,
                                             notify boolean DEFAULT true,
                                             measures text DEFAULT NULL,
                                             hop interval DEFAULT NULL,
                                             event_time text DEFAULT NULL,
                                             grace interval DEFAULT NULL,
                                             emit text DEFAULT 'changes',
                                             window_retention interval DEFAULT NULL)
    RETURNS regclass LANGUAGE C CALLED ON NULL INPUT VOLATILE
    AS 'MODULE_PATHNAME', 'evstream_create_aggregate';

CREATE VIEW evstream.topics WITH (security_barrier) AS
SELECT t.topic,
       (SELECT pg_catalog.count(*) FROM evstream._partitions(t.topic))::integer AS partitions,
       (SELECT pg_catalog.sum(GREATEST(c.reltuples, 0))::bigint FROM pg_catalog.pg_inherits i
          JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) i.inhrelid
         WHERE i.inhparent OPERATOR(pg_catalog.=) t.topic::pg_catalog.oid) AS events,
       (SELECT pg_catalog.sum(pg_catalog.pg_total_relation_size(i.inhrelid))::bigint
          FROM pg_catalog.pg_inherits i WHERE i.inhparent OPERATOR(pg_catalog.=) t.topic::pg_catalog.oid) AS bytes,
       f.first_id, l.last_id, evstream.stable_id(t.topic) AS stable_id,
       f.oldest, l.newest, t.retention, t.partition_interval, t.notify,
       t.shards, evstream._held_by(t.topic) AS held_by
  FROM evstream._topic t
  JOIN pg_catalog.pg_class tc ON tc.oid OPERATOR(pg_catalog.=) t.topic::pg_catalog.oid
  LEFT JOIN LATERAL evstream._edge(t.topic, true) f(first_id, oldest) ON true
  LEFT JOIN LATERAL evstream._edge(t.topic, false) l(last_id, newest) ON true;

-- The views are security barriers: a caller's cheap function in WHERE
-- cannot see rows before their privilege filters.  Groups of topics the
-- viewer cannot read are not shown.  committed_id of a sharded group is its
-- lowest shard position; lag_events counts the committed events after the
-- positions, also those not deliverable yet (exact below 10000).
CREATE VIEW evstream.consumer_groups WITH (security_barrier) AS
SELECT g.topic, g.consumer_group, p.committed_id,
       lag.events AS lag_events,
       COALESCE(EXTRACT(epoch FROM pg_catalog.now() OPERATOR(pg_catalog.-) lag.oldest), 0)::double precision AS lag_seconds,
       COALESCE(p.updated_at, g.created) AS updated_at,
       g.owner, g.dead_lettered
  FROM evstream._group g
  JOIN pg_catalog.pg_class tc ON tc.oid OPERATOR(pg_catalog.=) g.topic::pg_catalog.oid
  JOIN evstream._topic t ON t.topic OPERATOR(pg_catalog.=) g.topic
  CROSS JOIN LATERAL (SELECT pg_catalog.min(x.committed_id) AS committed_id,
                             pg_catalog.max(x.updated_at) AS updated_at,
                             pg_catalog.array_agg(x.committed_id ORDER BY x.shard) AS positions
                        FROM evstream._positions(g.id, t.shards) x) p
  CROSS JOIN LATERAL evstream._lag(g.topic, p.positions, NULL) lag
 WHERE pg_catalog.has_table_privilege(g.topic, 'SELECT');

CREATE VIEW evstream.group_shards WITH (security_barrier) AS
SELECT g.topic, g.consumer_group, x.shard, x.committed_id,
       lag.events AS lag_events,
       CASE WHEN l.expires_at OPERATOR(pg_catalog.>) pg_catalog.now() THEN l.member END AS member,
       CASE WHEN l.expires_at OPERATOR(pg_catalog.>) pg_catalog.now() THEN l.expires_at END AS lease_expires_at,
       evstream._attempts(g.id, x.shard, x.committed_id) AS attempts
  FROM evstream._group g
  JOIN pg_catalog.pg_class tc ON tc.oid OPERATOR(pg_catalog.=) g.topic::pg_catalog.oid
  JOIN evstream._topic t ON t.topic OPERATOR(pg_catalog.=) g.topic
  CROSS JOIN LATERAL evstream._positions(g.id, t.shards) x
  LEFT JOIN evstream._lease l ON l.group_id OPERATOR(pg_catalog.=) g.id AND l.shard OPERATOR(pg_catalog.=) x.shard
  CROSS JOIN LATERAL evstream._lag(g.topic, ARRAY[x.committed_id], x.shard) lag
 WHERE pg_catalog.has_table_privilege(g.topic, 'SELECT');

CREATE VIEW evstream.aggregates WITH (security_barrier) AS
SELECT a.aggregate AS name, a.topic, a.group_by, a.bucket, a.output_topic,
       CASE WHEN pg_catalog.has_table_privilege(a.topic, 'SELECT') THEN
       (SELECT pg_catalog.count(*) FROM (
            SELECT c.group_key, c.bucket_start FROM evstream._count c
             WHERE c.agg OPERATOR(pg_catalog.=) a.id
               AND (c.bucket_start IS NULL OR c.bucket_start OPERATOR(pg_catalog.<>) '-infinity'::pg_catalog.timestamptz)
            UNION
            SELECT u.group_key, u.bucket_start FROM evstream._delta d
             CROSS JOIN LATERAL evstream._unpack(d.data) u
             WHERE d.agg OPERATOR(pg_catalog.=) a.id
               AND (u.bucket_start IS NULL OR u.bucket_start OPERATOR(pg_catalog.<>) '-infinity'::pg_catalog.timestamptz)) g)
       END AS groups,     -- NULL for roles that cannot read the topic
       a.notify,
       a.measures, a.hop, a.event_time, a.grace, a.emit,
       CASE WHEN pg_catalog.has_table_privilege(a.topic, 'SELECT') THEN
       (SELECT COALESCE(pg_catalog.sum(l.n), 0)::pg_catalog.int8 FROM (
            SELECT c.count AS n FROM evstream._count c
             WHERE c.agg OPERATOR(pg_catalog.=) a.id AND c.group_key IS NULL
               AND c.bucket_start OPERATOR(pg_catalog.=) '-infinity'::pg_catalog.timestamptz
            UNION ALL
            SELECT u.n FROM evstream._delta d CROSS JOIN LATERAL evstream._unpack(d.data) u
             WHERE d.agg OPERATOR(pg_catalog.=) a.id
               AND u.bucket_start OPERATOR(pg_catalog.=) '-infinity'::pg_catalog.timestamptz) l)
       END AS late_events,
       a.window_retention
  FROM evstream._aggregate a
  JOIN pg_catalog.pg_class ac ON ac.oid OPERATOR(pg_catalog.=) a.aggregate::pg_catalog.oid;

CREATE VIEW evstream.transforms WITH (security_barrier) AS
SELECT x.name, x.source, x.query, x.output_topic,
       g.lag_events, x.last_error, x.paused
  FROM evstream._transform x
  LEFT JOIN evstream.consumer_groups g
    ON g.topic OPERATOR(pg_catalog.=) x.source AND g.consumer_group OPERATOR(pg_catalog.=) x.name
 WHERE pg_catalog.has_table_privilege(x.source, 'SELECT');

CREATE VIEW evstream.workers AS
SELECT * FROM evstream._workers();

GRANT SELECT ON evstream.topics, evstream.consumer_groups, evstream.group_shards,
                evstream.aggregates, evstream.transforms, evstream.workers TO PUBLIC;

-- (0.2) forget positions and leases of a dropped topic's groups
CREATE OR REPLACE FUNCTION evstream._on_sql_drop() RETURNS event_trigger
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
        DELETE FROM evstream._position p WHERE p.group_id IN
            (SELECT g.id FROM evstream._group g WHERE g.topic::oid = o.objid);
        DELETE FROM evstream._lease l WHERE l.group_id IN
            (SELECT g.id FROM evstream._group g WHERE g.topic::oid = o.objid);
        DELETE FROM evstream._topic t WHERE t.topic::oid = o.objid;
    END LOOP;
END
$$;
