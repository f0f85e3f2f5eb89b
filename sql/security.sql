--
-- security: evstream attacked by a user, as issue 7 asks (SPEC 0.2,
-- sections Install, Topics, Consumers, Continuous aggregates, Security).
--
-- A role `attacker` (no privileges but its own schema `atk`) puts its schema
-- first in search_path -- before pg_catalog -- with operators and functions
-- that shadow the built-ins evstream uses, and hangs triggers, defaults,
-- index expressions, constraints and policies on its own topics.  Every one
-- of them calls atk.escalate(), which, when it runs as anyone but its owner,
-- warns (WARNING:  EVATK), tries ALTER ROLE <owner> SUPERUSER and inserts
-- into public.only_super, which only the superuser may write.  After each
-- attack :check asks, as the superuser with a clean search_path, whether
-- any of this worked (and repairs it, so that every attack is judged on its
-- own): the expected output is the fixed behaviour -- no EVATK warning, never
-- a superuser, only_super always empty.
--
-- Then tenants: tenant_b may read tenant_a's topic but not move its groups,
-- attach aggregates to it or read counts of a topic it cannot read; the
-- fixed topic shape; COPY by a non-owner; temporary topics.
--
\set VERBOSITY sqlstate
\set SHOW_CONTEXT never
SET client_min_messages = warning;

------------------------------------------------------------------ set-up (superuser)
CREATE TABLE public.only_super (who name, via text);
REVOKE ALL ON public.only_super FROM PUBLIC;
CREATE TABLE public.secret (id bigint, created_at timestamptz, payload text);
REVOKE ALL ON public.secret FROM PUBLIC;
INSERT INTO public.secret VALUES (4242, '2001-01-01', 'the secret');

CREATE ROLE attacker NOLOGIN;
CREATE ROLE tenant_a NOLOGIN;
CREATE ROLE tenant_b NOLOGIN;
CREATE SCHEMA atk AUTHORIZATION attacker;
CREATE SCHEMA ta AUTHORIZATION tenant_a;
CREATE SCHEMA tb AUTHORIZATION tenant_b;
GRANT USAGE ON SCHEMA ta TO tenant_b;

-- Did anything escalate?  Reports, then undoes it.
CREATE FUNCTION public.breach(OUT any_superuser boolean, OUT only_super_rows bigint)
    LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    SELECT bool_or(r.rolsuper) INTO any_superuser FROM pg_roles r
     WHERE r.rolname IN ('attacker', 'tenant_a', 'tenant_b');
    SELECT count(*) INTO only_super_rows FROM public.only_super;
    ALTER ROLE attacker NOSUPERUSER;
    ALTER ROLE tenant_a NOSUPERUSER;
    ALTER ROLE tenant_b NOSUPERUSER;
    DELETE FROM public.only_super;
END
$$;

-- The SQLSTATE a statement fails with, or 'ok'.  SECURITY INVOKER and no SET
-- clause: runs with the caller's role and search_path.
CREATE FUNCTION public.sqlstate_of(sql text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE sql;
    RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
    RETURN SQLSTATE;
END
$$;

-- 'no' when the query fails or yields NULL/0/false/no row, else what it yields.
CREATE FUNCTION public.leak_of(sql text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    v text;
BEGIN
    EXECUTE sql INTO v;
    IF v IS NULL OR v IN ('0', 'f', '') THEN
        RETURN 'no';
    END IF;
    RETURN v;
EXCEPTION WHEN OTHERS THEN
    RETURN 'no';
END
$$;

\set check 'RESET ROLE; RESET search_path; SELECT * FROM public.breach();'
\set attack 'SET ROLE attacker; SET search_path = atk, pg_catalog, public;'

------------------------------------------------------------------ the attacker's arsenal
SET ROLE attacker;
-- who = the role the code belongs to; via = where it was called from
CREATE FUNCTION atk.escalate(who name, via text) RETURNS void
    LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF current_user OPERATOR(pg_catalog.<>) who THEN
        RAISE WARNING 'evstream security: code of % (%) ran as %', who, via, current_user
              USING ERRCODE = 'EVATK';
    END IF;
    BEGIN
        EXECUTE pg_catalog.format('ALTER ROLE %I SUPERUSER', who);
    EXCEPTION WHEN OTHERS THEN NULL;
    END;
    BEGIN
        INSERT INTO public.only_super VALUES (current_user, via);
    EXCEPTION WHEN OTHERS THEN NULL;
    END;
END
$$;
CREATE FUNCTION atk.pwn_bool(via text) RETURNS boolean
    LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN PERFORM atk.escalate('attacker', via); RETURN true; END $$;
CREATE FUNCTION atk.pwn_text(t text) RETURNS text
    LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN PERFORM atk.escalate('attacker', 'expression'); RETURN t; END $$;
CREATE FUNCTION atk.pwn_trigger() RETURNS trigger
    LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM atk.escalate('attacker', 'trigger ' || TG_NAME || ' on ' || TG_TABLE_NAME);
    IF TG_LEVEL = 'ROW' AND TG_OP <> 'DELETE' THEN RETURN NEW; END IF;
    RETURN NULL;
END $$;

-- Operators shadowing pg_catalog's: each escalates, then answers correctly.
DO $$
DECLARE
    o record;
BEGIN
    FOR o IN SELECT * FROM (VALUES
        ('=',  'regclass', 'regclass', 'oideq'),
        ('<>', 'regclass', 'regclass', 'oidne'),
        ('=',  'oid', 'oid', 'oideq'),
        ('=',  'text', 'text', 'texteq'),
        ('<>', 'text', 'text', 'textne'),
        ('=',  'name', 'name', 'nameeq'),
        ('=',  'integer', 'integer', 'int4eq'),
        ('=',  'bigint', 'bigint', 'int8eq'),
        ('<>', 'bigint', 'bigint', 'int8ne'),
        ('<',  'bigint', 'bigint', 'int8lt'),
        ('<=', 'bigint', 'bigint', 'int8le'),
        ('>',  'bigint', 'bigint', 'int8gt'),
        ('>=', 'bigint', 'bigint', 'int8ge'),
        ('=',  'timestamptz', 'timestamptz', 'timestamptz_eq'),
        ('<',  'timestamptz', 'timestamptz', 'timestamptz_lt'),
        ('<=', 'timestamptz', 'timestamptz', 'timestamptz_le'),
        ('>',  'timestamptz', 'timestamptz', 'timestamptz_gt'),
        ('>=', 'timestamptz', 'timestamptz', 'timestamptz_ge'),
        ('+',  'timestamptz', 'interval', 'timestamptz_pl_interval'),
        ('-',  'timestamptz', 'interval', 'timestamptz_mi_interval'),
        ('||', 'text', 'text', 'textcat'),
        ('||', 'jsonb', 'jsonb', 'jsonb_concat')) v(op, l, r, proc)
    LOOP
        EXECUTE pg_catalog.format(
            'CREATE FUNCTION atk.%I(a %s, b %s) RETURNS %s LANGUAGE plpgsql '
            'SET search_path = pg_catalog, pg_temp AS $f$ BEGIN '
            'PERFORM atk.escalate(''attacker'', %L); RETURN pg_catalog.%I(a, b); END $f$',
            'op_' || o.proc, o.l, o.r,
            (SELECT pg_catalog.format_type(p.prorettype, NULL) FROM pg_catalog.pg_proc p
              WHERE p.proname = o.proc AND p.pronamespace = 'pg_catalog'::regnamespace LIMIT 1),
            'operator ' || o.op || ' (' || o.l || ', ' || o.r || ')', o.proc);
        EXECUTE pg_catalog.format('CREATE OPERATOR atk.%s (LEFTARG = %s, RIGHTARG = %s, FUNCTION = atk.%I)',
                                  o.op, o.l, o.r, 'op_' || o.proc);
    END LOOP;
END
$$;

-- Functions shadowing built-ins evstream (or SQL it generates) might call
-- unqualified.
CREATE FUNCTION atk.now() RETURNS timestamptz LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
    AS $$ BEGIN PERFORM atk.escalate('attacker', 'now()'); RETURN pg_catalog.now(); END $$;
CREATE FUNCTION atk.nextval(regclass) RETURNS bigint LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
    AS $$ BEGIN PERFORM atk.escalate('attacker', 'nextval()'); RETURN pg_catalog.nextval($1); END $$;
CREATE FUNCTION atk.setval(regclass, bigint) RETURNS bigint LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
    AS $$ BEGIN PERFORM atk.escalate('attacker', 'setval()'); RETURN pg_catalog.setval($1, $2); END $$;
CREATE FUNCTION atk.lower(text) RETURNS text LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp
    AS $$ BEGIN PERFORM atk.escalate('attacker', 'lower()'); RETURN pg_catalog.lower($1); END $$;
CREATE FUNCTION atk.upper(text) RETURNS text LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp
    AS $$ BEGIN PERFORM atk.escalate('attacker', 'upper()'); RETURN pg_catalog.upper($1); END $$;
CREATE FUNCTION atk.format(text, anyelement) RETURNS text LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
    AS $$ BEGIN PERFORM atk.escalate('attacker', 'format()'); RETURN pg_catalog.format($1, $2); END $$;
CREATE FUNCTION atk.format(text, anyelement, anyelement) RETURNS text LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
    AS $$ BEGIN PERFORM atk.escalate('attacker', 'format()'); RETURN pg_catalog.format($1, $2, $3); END $$;
CREATE FUNCTION atk.jsonb_build_object(text, anyelement) RETURNS jsonb LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
    AS $$ BEGIN PERFORM atk.escalate('attacker', 'jsonb_build_object()'); RETURN pg_catalog.jsonb_build_object($1, $2); END $$;
CREATE FUNCTION atk.date_bin(interval, timestamptz, timestamptz) RETURNS timestamptz LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp
    AS $$ BEGIN PERFORM atk.escalate('attacker', 'date_bin()'); RETURN pg_catalog.date_bin($1, $2, $3); END $$;
CREATE FUNCTION atk.has_table_privilege(regclass, text) RETURNS boolean LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
    AS $$ BEGIN PERFORM atk.escalate('attacker', 'has_table_privilege()'); RETURN true; END $$;
CREATE FUNCTION atk.unnest(anyarray) RETURNS SETOF anyelement LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
    AS $$ BEGIN PERFORM atk.escalate('attacker', 'unnest()'); RETURN QUERY SELECT pg_catalog.unnest($1); END $$;
CREATE FUNCTION atk.pg_notify(text, text) RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
    AS $$ BEGIN PERFORM atk.escalate('attacker', 'pg_notify()'); END $$;
CREATE FUNCTION atk.stable_id(regclass) RETURNS bigint LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
    AS $$ BEGIN PERFORM atk.escalate('attacker', 'stable_id()'); RETURN 0; END $$;
CREATE FUNCTION atk.cnt_sfunc(bigint) RETURNS bigint LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
    AS $$ BEGIN PERFORM atk.escalate('attacker', 'count(*)'); RETURN $1 OPERATOR(pg_catalog.+) 1; END $$;
CREATE AGGREGATE atk.count(*) (SFUNC = atk.cnt_sfunc, STYPE = bigint, INITCOND = '0');
CREATE FUNCTION atk.sum_sfunc(numeric, bigint) RETURNS numeric LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
    AS $$ BEGIN PERFORM atk.escalate('attacker', 'sum()'); RETURN COALESCE($1, 0) OPERATOR(pg_catalog.+) $2; END $$;
CREATE AGGREGATE atk.sum(bigint) (SFUNC = atk.sum_sfunc, STYPE = numeric);

-- a view whose column expression escalates, and a table with such a default
CREATE VIEW atk.v AS SELECT 1::bigint AS id, pg_catalog.now() AS created_at WHERE atk.pwn_bool('view');
RESET ROLE;

------------------------------------------------------------------ topics
:attack
SELECT evstream.create_topic('atk.t1', '1 day', NULL, true);
:check
:attack
INSERT INTO atk.t1 (key, payload) VALUES ('a', '{"n": 1}'), ('b', '{"n": 2}');
INSERT INTO atk.t1 (id, key, payload, created_at) VALUES (77, 'c', '{}', '2001-01-01');
INSERT INTO atk.t1 (key, payload) SELECT 'd', '{}' RETURNING id, key;
:check
:attack
SELECT id, key, created_at > '2020-01-01' AS now_ish FROM atk.t1 ORDER BY id;
:check
:attack
SELECT evstream.stable_id('atk.t1');
:check
:attack
SELECT evstream.set_retention('atk.t1', '30 days');
:check
:attack
SELECT evstream.set_retention('atk.t1', NULL);
:check

------------------------------------------------------------------ consumers
:attack
SELECT id, key FROM evstream.poll('atk.t1', 'g1', 10) ORDER BY id;
:check
:attack
SELECT id, key FROM evstream.consume('atk.t1', 'g1', 2) ORDER BY id;
:check
:attack
SELECT evstream.commit('atk.t1', 'g1', 3);
:check
:attack
SELECT evstream.seek('atk.t1', 'g1', 1::bigint);
:check
:attack
SELECT evstream.seek('atk.t1', 'g1', '2000-01-01'::timestamptz);
:check
:attack
SELECT id, key FROM evstream.consume('atk.t1', 'g2') ORDER BY id;
SELECT id, key FROM evstream.poll('atk.t1', 'g2') ORDER BY id;
:check

------------------------------------------------------------------ views
:attack
SELECT topic, first_id, last_id, stable_id FROM evstream.topics WHERE topic = 'atk.t1'::regclass;
:check
:attack
SELECT topic, consumer_group, committed_id, lag_events FROM evstream.consumer_groups
 WHERE topic = 'atk.t1'::regclass ORDER BY consumer_group;
:check
:attack
SELECT count(*) >= 0 AS readable FROM evstream.workers;
:check

------------------------------------------------------------------ aggregates and output topics
-- triggers on a topic that will be an aggregate's output topic: the change
-- events go in there
:attack
SELECT evstream.create_topic('atk.out1');
CREATE TRIGGER b_row BEFORE INSERT ON atk.out1 FOR EACH ROW EXECUTE FUNCTION atk.pwn_trigger();
CREATE TRIGGER a_row AFTER INSERT ON atk.out1 FOR EACH ROW EXECUTE FUNCTION atk.pwn_trigger();
CREATE TRIGGER a_stmt AFTER INSERT ON atk.out1 FOR EACH STATEMENT EXECUTE FUNCTION atk.pwn_trigger();
CREATE TRIGGER b_stmt BEFORE INSERT ON atk.out1 FOR EACH STATEMENT EXECUTE FUNCTION atk.pwn_trigger();
CREATE TRIGGER b_row_def BEFORE INSERT ON atk.out1_default FOR EACH ROW EXECUTE FUNCTION atk.pwn_trigger();
CREATE INDEX ON atk.out1 (atk.pwn_text(key));
:check
:attack
SELECT evstream.create_aggregate('atk.agg1', 'atk.t1', 'key', NULL, 'atk.out1');
:check
:attack
INSERT INTO atk.t1 (key, payload) VALUES ('a', '{}'), ('e', '{}');
:check
-- change events are written by the merge (the worker's job), as the
-- aggregate's owner: the output topic's triggers must not run as the
-- superuser who merges
SELECT evstream._merge_deltas() >= 0 AS merged;
:check
:attack
SELECT group_key, count FROM atk.agg1 ORDER BY group_key;
SELECT key, payload FROM atk.out1 ORDER BY key, payload::text;
:check
-- an output topic created by create_aggregate, then given triggers
:attack
SELECT evstream.create_aggregate('atk.agg2', 'atk.t1', 'key', '1 hour', 'atk.out2');
CREATE TRIGGER b_row BEFORE INSERT ON atk.out2 FOR EACH ROW EXECUTE FUNCTION atk.pwn_trigger();
:check
:attack
INSERT INTO atk.t1 (key, payload) VALUES ('A', '{}');
:check
:attack
SELECT group_key, count FROM atk.agg2 ORDER BY group_key;
SELECT name, topic, group_by, output_topic FROM evstream.aggregates
 WHERE topic = 'atk.t1'::regclass ORDER BY name;
:check
-- the worker's part, done here by the superuser as the worker would: fold
-- deltas (publishing corrections into the output topics), premake, rehome
RESET ROLE;
SELECT count(*) >= 0 AS merged FROM evstream._merge_deltas();
:check
RESET ROLE;
SELECT evstream.run_maintenance() IS NULL AS maintenance_ok;
:check
:attack
SELECT group_key, count FROM atk.agg1 ORDER BY group_key;
:check
:attack
SELECT evstream.drop_aggregate('atk.agg2');
:check

------------------------------------------------------------------ triggers on the topic, its partitions and its default partition
:attack
SELECT evstream.create_topic('atk.t2');
CREATE TRIGGER b_row BEFORE INSERT ON atk.t2 FOR EACH ROW EXECUTE FUNCTION atk.pwn_trigger();
CREATE TRIGGER a_row AFTER INSERT ON atk.t2 FOR EACH ROW EXECUTE FUNCTION atk.pwn_trigger();
CREATE TRIGGER b_stmt BEFORE INSERT ON atk.t2 FOR EACH STATEMENT EXECUTE FUNCTION atk.pwn_trigger();
CREATE TRIGGER a_stmt AFTER INSERT ON atk.t2 FOR EACH STATEMENT EXECUTE FUNCTION atk.pwn_trigger();
CREATE TRIGGER trunc BEFORE TRUNCATE ON atk.t2 FOR EACH STATEMENT EXECUTE FUNCTION atk.pwn_trigger();
CREATE TRIGGER b_row_def BEFORE INSERT ON atk.t2_default FOR EACH ROW EXECUTE FUNCTION atk.pwn_trigger();
CREATE TRIGGER a_row_def AFTER INSERT ON atk.t2_default FOR EACH ROW EXECUTE FUNCTION atk.pwn_trigger();
CREATE TRIGGER trunc_def BEFORE TRUNCATE ON atk.t2_default FOR EACH STATEMENT EXECUTE FUNCTION atk.pwn_trigger();
CREATE TRIGGER del_def BEFORE DELETE ON atk.t2_default FOR EACH ROW EXECUTE FUNCTION atk.pwn_trigger();
CREATE INDEX ON atk.t2 (atk.pwn_text(key));
ALTER TABLE atk.t2 ADD CONSTRAINT c CHECK (atk.pwn_bool('check constraint'));
-- and on every partition
DO $$
DECLARE p regclass;
BEGIN
    FOR p IN SELECT part FROM evstream._partitions('atk.t2') WHERE NOT is_default LOOP
        EXECUTE pg_catalog.format('CREATE TRIGGER b_row_part BEFORE INSERT ON %s FOR EACH ROW EXECUTE FUNCTION atk.pwn_trigger()', p);
        EXECUTE pg_catalog.format('CREATE TRIGGER trunc_part BEFORE TRUNCATE ON %s FOR EACH STATEMENT EXECUTE FUNCTION atk.pwn_trigger()', p);
    END LOOP;
END $$;
-- row-level security with a policy function, forced on the owner too
ALTER TABLE atk.t2 ENABLE ROW LEVEL SECURITY;
ALTER TABLE atk.t2 FORCE ROW LEVEL SECURITY;
CREATE POLICY p_all ON atk.t2 USING (atk.pwn_bool('policy')) WITH CHECK (atk.pwn_bool('policy check'));
:check
:attack
INSERT INTO atk.t2 (key, payload) VALUES ('x', '{}');
:check
:attack
SELECT id, key FROM evstream.consume('atk.t2', 'g') ORDER BY id;
:check
-- events in the default partition: drop the partitions ahead, produce,
-- and let maintenance (as the worker would) move them
:attack
BEGIN;
DO $$
DECLARE p regclass;
BEGIN
    FOR p IN SELECT part FROM evstream._partitions('atk.t2') WHERE NOT is_default LOOP
        EXECUTE pg_catalog.format('DROP TABLE %s', p);
    END LOOP;
END $$;
INSERT INTO atk.t2 (key, payload) VALUES ('y', '{}'), ('z', '{}');
COMMIT;
SELECT count(*) FROM atk.t2;
:check
RESET ROLE;
SELECT evstream.run_maintenance() IS NULL AS maintenance_ok;
:check
-- retention of old partitions (made by the owner) and of the default partition
:attack
SELECT public.sqlstate_of($$SELECT evstream._ensure_partitions('atk.t2', '2000-01-01', '2000-01-02')$$) IS NOT NULL AS asked;
SELECT evstream.set_retention('atk.t2', '1 day');
:check
RESET ROLE;
SELECT evstream.run_maintenance() IS NULL AS maintenance_ok;
:check
:attack
SELECT key FROM atk.t2 ORDER BY id;
:check

------------------------------------------------------------------ internal functions, called directly
-- SECURITY DEFINER helpers and C functions must check what they are given:
-- no reading what the caller may not read, no running a view's code as the
-- definer, no touching other roles' relations.
:attack
SELECT public.leak_of($$SELECT id FROM evstream._edge('public.secret', true)$$) AS edge_secret;
SELECT public.leak_of($$SELECT created_at FROM evstream._edge('public.secret', false)$$) AS edge_secret_time;
SELECT public.leak_of($$SELECT evstream._time_after('public.secret', 0)$$) AS time_after_secret;
:check
:attack
SELECT public.sqlstate_of($$SELECT evstream._edge('atk.v', true)$$) <> 'ok' AS edge_view_refused;
:check
:attack
SELECT public.sqlstate_of($$SELECT evstream._time_after('atk.v', 0)$$) <> 'ok' AS time_after_view_refused;
:check
:attack
SELECT public.sqlstate_of($$SELECT evstream._edge('public.only_super', true)$$) <> 'ok' AS edge_only_super_refused;
:check
:attack
SELECT public.sqlstate_of($$SELECT evstream._next_id('public.only_super')$$) <> 'ok' AS next_id_only_super_refused;
SELECT public.sqlstate_of($$SELECT evstream._next_id('atk.v')$$) <> 'ok' AS next_id_view_refused;
:check
:attack
SELECT public.sqlstate_of($$SELECT evstream._merge_deltas()$$) AS merge_deltas;
SELECT public.sqlstate_of($$SELECT evstream.run_maintenance()$$) AS run_maintenance;
SELECT public.sqlstate_of($$SELECT evstream._rehome_default('atk.t2')$$) AS rehome_default;
:check
:attack
SELECT public.sqlstate_of($$SELECT evstream._invalidate('public.only_super')$$) <> 'ok' AS invalidate_foreign_refused;
SELECT public.sqlstate_of($$SELECT evstream._ensure_partitions('public.only_super', now(), now())$$) <> 'ok' AS ensure_partitions_foreign_refused;
SELECT public.sqlstate_of($$SELECT evstream._ensure_partitions('atk.v', now(), now())$$) <> 'ok' AS ensure_partitions_view_refused;
:check
-- restore mode is for superusers
:attack
SELECT public.sqlstate_of($$SET evstream.restore_mode = on$$) AS restore_mode;
:check

------------------------------------------------------------------ a view, a sequence, a non-topic passed as a topic
:attack
SELECT evstream.stable_id('atk.v');
SELECT * FROM evstream.poll('atk.v', 'g');
SELECT * FROM evstream.consume('atk.v', 'g');
SELECT evstream.commit('atk.v', 'g', 1);
SELECT evstream.seek('atk.v', 'g', 1::bigint);
SELECT evstream.set_retention('atk.v', '1 day');
SELECT evstream.drop_topic('atk.v');
SELECT evstream.create_aggregate('atk.agg_v', 'atk.v');
:check

------------------------------------------------------------------ temporary topics
:attack
SELECT evstream.create_topic('pg_temp.x');
SELECT evstream.create_aggregate('atk.agg_tmp', 'atk.t1', 'key', NULL, 'pg_temp.out_tmp');
:check
RESET ROLE;
SELECT count(*) AS temp_topics FROM evstream._topic t JOIN pg_class c ON c.oid = t.topic WHERE c.relpersistence = 't';
SELECT count(*) AS topics_view_works FROM evstream.topics WHERE topic::text LIKE 'atk.%';

------------------------------------------------------------------ fixed topic shape (SPEC 0.2): 0A000
-- each inside a transaction that rolls back, so that a current version that
-- allows it is not left with a broken topic
:attack
SELECT evstream.create_topic('atk.shape');
RESET ROLE;
SET ROLE attacker;
BEGIN; ALTER TABLE atk.shape ADD COLUMN extra int; ROLLBACK;
BEGIN; ALTER TABLE atk.shape DROP COLUMN payload; ROLLBACK;
BEGIN; ALTER TABLE atk.shape RENAME COLUMN key TO k; ROLLBACK;
BEGIN; ALTER TABLE atk.shape ALTER COLUMN key TYPE varchar(10); ROLLBACK;
BEGIN; ALTER TABLE atk.shape ALTER COLUMN payload TYPE json; ROLLBACK;
BEGIN; ALTER TABLE atk.shape ALTER COLUMN id SET DEFAULT 1; ROLLBACK;
BEGIN; ALTER TABLE atk.shape ALTER COLUMN id DROP DEFAULT; ROLLBACK;
BEGIN; ALTER TABLE atk.shape ALTER COLUMN created_at SET DEFAULT '2000-01-01'; ROLLBACK;
BEGIN; ALTER TABLE atk.shape ALTER COLUMN created_at DROP DEFAULT; ROLLBACK;
BEGIN; ALTER TABLE atk.shape ALTER COLUMN key SET DEFAULT atk.pwn_text('default'); ROLLBACK;
BEGIN; ALTER TABLE atk.shape ALTER COLUMN payload SET DEFAULT '{}'; ROLLBACK;
-- the same on a partition (the default one and a range one); PostgreSQL
-- itself already refuses some of these on partitions (42P16): either is fine
BEGIN; ALTER TABLE atk.shape_default ALTER COLUMN id SET DEFAULT 1; ROLLBACK;
BEGIN; ALTER TABLE atk.shape_default ALTER COLUMN id DROP DEFAULT; ROLLBACK;
BEGIN; ALTER TABLE atk.shape_default ALTER COLUMN key SET DEFAULT atk.pwn_text('default'); ROLLBACK;
BEGIN; ALTER TABLE atk.shape_default ALTER COLUMN created_at SET DEFAULT '2000-01-01'; ROLLBACK;
SELECT public.sqlstate_of($$ALTER TABLE atk.shape_default ADD COLUMN extra int$$) IN ('0A000', '42P16', '42809') AS part_add_refused;
SELECT public.sqlstate_of($$ALTER TABLE atk.shape_default DROP COLUMN payload$$) IN ('0A000', '42P16') AS part_drop_refused;
SELECT public.sqlstate_of($$ALTER TABLE atk.shape_default RENAME COLUMN key TO k$$) IN ('0A000', '42P16') AS part_rename_refused;
SELECT public.sqlstate_of($$ALTER TABLE atk.shape_default ALTER COLUMN key TYPE varchar(10)$$) IN ('0A000', '42P16') AS part_type_refused;
SELECT public.sqlstate_of(pg_catalog.format('ALTER TABLE %s ALTER COLUMN id SET DEFAULT 1', p)) AS range_part_set_default,
       public.sqlstate_of(pg_catalog.format('ALTER TABLE %s ALTER COLUMN created_at DROP DEFAULT', p)) AS range_part_drop_default
  FROM (SELECT part AS p FROM evstream._partitions('atk.shape') WHERE NOT is_default ORDER BY lo LIMIT 1) x;
-- the id sequence
BEGIN; ALTER SEQUENCE atk.shape_id_seq CACHE 10; ROLLBACK;
BEGIN; ALTER SEQUENCE atk.shape_id_seq RESTART; ROLLBACK;
BEGIN; ALTER SEQUENCE atk.shape_id_seq RESTART WITH 1; ROLLBACK;
BEGIN; ALTER SEQUENCE atk.shape_id_seq INCREMENT BY 2; ROLLBACK;
BEGIN; ALTER SEQUENCE atk.shape_id_seq MAXVALUE 10; ROLLBACK;
BEGIN; ALTER SEQUENCE atk.shape_id_seq CYCLE; ROLLBACK;
BEGIN; ALTER SEQUENCE atk.shape_id_seq OWNER TO CURRENT_USER; ROLLBACK;
BEGIN; ALTER SEQUENCE atk.shape_id_seq SET UNLOGGED; ROLLBACK;
BEGIN; ALTER SEQUENCE atk.shape_id_seq RENAME TO shape_seq2; ROLLBACK;
BEGIN; ALTER TABLE atk.shape_id_seq RENAME TO shape_seq2; ROLLBACK;
-- setval: refused as an unsupported change (0A000) or as not permitted (42501)
SELECT s IN ('0A000', '42501') AS setval_refused
  FROM public.sqlstate_of($$SELECT pg_catalog.setval('atk.shape_id_seq', 1)$$) s;
SELECT s IN ('0A000', '42501') AS setval3_refused
  FROM public.sqlstate_of($$SELECT pg_catalog.setval('atk.shape_id_seq', 1, false)$$) s;
RESET ROLE;
RESET search_path;
-- not even the superuser, outside restore
BEGIN; ALTER SEQUENCE atk.shape_id_seq CACHE 10; ROLLBACK;
BEGIN; ALTER TABLE atk.shape ADD COLUMN extra int; ROLLBACK;
SET ROLE attacker;
INSERT INTO atk.shape (key) VALUES ('still works');
SELECT id, key FROM atk.shape ORDER BY id;
:check

------------------------------------------------------------------ tenants (SPEC 0.2: group ownership, owner-only aggregates)
SET ROLE tenant_a;
SET search_path = ta, pg_catalog, public;
SELECT evstream.create_topic('ta.t');
SELECT evstream.create_topic('ta.private');
INSERT INTO ta.t (key, payload) SELECT 'k' || g, '{}' FROM generate_series(1, 5) g;
INSERT INTO ta.private (key, payload) VALUES ('secret key', '{"secret": true}');
SELECT evstream.create_aggregate('ta.private_counts', 'ta.private');
SELECT id, key FROM evstream.consume('ta.t', 'ga', 2) ORDER BY id;
GRANT SELECT ON ta.t TO tenant_b;
RESET ROLE;
SET ROLE tenant_b;
SET search_path = tb, pg_catalog, public;
-- an aggregate's expression runs in every producer's INSERT: owner only
SELECT evstream.create_aggregate('tb.stolen', 'ta.t');
SELECT evstream.create_aggregate('tb.stolen2', 'ta.t', 'key', NULL, 'tb.stolen_out');
-- A's group: B may read it (poll without member), not move it
SELECT id, key FROM evstream.poll('ta.t', 'ga', 10) ORDER BY id;
SELECT id FROM evstream.consume('ta.t', 'ga');
SELECT evstream.commit('ta.t', 'ga', 5);
SELECT evstream.seek('ta.t', 'ga', 5::bigint);
SELECT evstream.seek('ta.t', 'ga', 'infinity'::timestamptz);
SELECT evstream.seek('ta.t', 'ga', 0::bigint);
-- B's own group on A's topic is B's
SELECT id FROM evstream.consume('ta.t', 'gb', 1) ORDER BY id;
-- the topic: not B's to drop or change
SELECT evstream.drop_topic('ta.t');
SELECT evstream.set_retention('ta.t', '1 day');
SELECT evstream.drop_aggregate('ta.private_counts');
-- without SELECT: nothing
SELECT id FROM evstream.poll('ta.private', 'gp');
SELECT id FROM evstream.consume('ta.private', 'gp');
SELECT evstream.seek('ta.private', 'gp', 0::bigint);
SELECT evstream.create_aggregate('tb.stolen3', 'ta.private');
SELECT count(*) FROM ta.private_counts;
-- counts of a topic B cannot read are invisible, however asked
SELECT public.leak_of($$SELECT count(*) FROM evstream._count c JOIN evstream._aggregate a ON a.id = c.agg
                        WHERE a.aggregate = 'ta.private_counts'::regclass$$) AS count_rows;
SELECT public.leak_of($$SELECT count(*) FROM evstream._delta d JOIN evstream._aggregate a ON a.id = d.agg
                        WHERE a.aggregate = 'ta.private_counts'::regclass$$) AS delta_rows;
SELECT public.leak_of($$SELECT evstream._current_count(a.id, 'secret key', NULL) FROM evstream._aggregate a
                        WHERE a.aggregate = 'ta.private_counts'::regclass$$) AS current_count;
SELECT public.leak_of($$SELECT max(groups) FROM evstream.aggregates WHERE name = 'ta.private_counts'::regclass$$) AS aggregates_view_groups;
-- B, a producer with INSERT only: COPY cannot keep a chosen created_at or id
RESET ROLE;
GRANT INSERT ON ta.t TO tenant_b;
SET ROLE tenant_b;
COPY ta.t (key, payload, created_at) FROM stdin;
copied	{}	2001-02-03 04:05:06+00
copied inf	{}	infinity
\.
COPY ta.t (id, key, payload, created_at) FROM stdin;
424242	copied with id	{}	2001-02-03 04:05:06+00
\.
COPY ta.t FROM stdin;
424243	copied all	{}	2001-02-03 04:05:06+00
\.
RESET ROLE;
SELECT count(*) AS copied_rows, count(*) FILTER (WHERE created_at < '2020-01-01' OR created_at = 'infinity') AS kept_supplied_time,
       count(*) FILTER (WHERE id > 1000) AS kept_supplied_id
  FROM ta.t WHERE key LIKE 'copied%';
-- A's group was not moved
SELECT consumer_group, committed_id FROM evstream.consumer_groups WHERE topic = 'ta.t'::regclass ORDER BY 1;
SET ROLE tenant_a;
SELECT id, key FROM evstream.consume('ta.t', 'ga', 2) ORDER BY id;
-- the topic's owner may move any group of its topic
SELECT evstream.seek('ta.t', 'gb', 0::bigint);
RESET ROLE;
SELECT * FROM public.breach();

------------------------------------------------------------------ things that used to crash the server
-- an attacker with a group_by that runs SQL, a group_by re-parsed under a
-- hostile path at backfill, huge group keys: an error or a count, never a crash
SET ROLE attacker;
CREATE FUNCTION atk.gb_sql(text) RETURNS text LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp
    AS $$ BEGIN RETURN (SELECT count(*) FROM pg_catalog.pg_class WHERE relname = $1)::text; END $$;
RESET ROLE;
:attack
SELECT evstream.create_topic('atk.t3');
INSERT INTO atk.t3 (key) VALUES ('k1'), ('k2');
-- (survived: the statement returned, with an error or without)
SELECT public.sqlstate_of($$SELECT evstream.create_aggregate('atk.agg3', 'atk.t3', 'atk.gb_sql(key)')$$) IS NOT NULL AS gb_sql_survived;
SELECT public.sqlstate_of($$INSERT INTO atk.t3 (key) VALUES ('k3')$$) IS NOT NULL AS insert_gb_sql_survived;
SELECT public.sqlstate_of($$SELECT evstream.create_aggregate('atk.agg4', 'atk.t3', 'upper(key) || lower(key)')$$) IN ('ok', '42P17') AS hostile_backfill;
SELECT public.sqlstate_of($$INSERT INTO atk.t3 (key) VALUES ('k4')$$) AS insert_after_hostile;
SELECT public.sqlstate_of($$SELECT evstream.create_aggregate('atk.agg5', 'atk.t3', 'lower(key)', '1 hour', 'atk.out5')$$) AS shadowed_lower;
SELECT public.sqlstate_of($$INSERT INTO atk.t3 (key) VALUES ('K5')$$) AS insert_shadowed_lower;
SELECT group_key, sum(count) AS count FROM atk.agg5 GROUP BY group_key ORDER BY group_key;
SELECT public.sqlstate_of($$INSERT INTO atk.t3 (key) SELECT pg_catalog.repeat('x', 100000)$$) IS NOT NULL AS huge_key_survived;
SELECT public.sqlstate_of($$SELECT evstream.drop_aggregate('atk.agg3')$$) IS NOT NULL AS drop_gb_sql_survived;
-- a shadowed lower() in a windowed aggregate with an output topic that has
-- a trigger, on a topic with another aggregate publishing to a triggered
-- output topic
SELECT evstream.create_aggregate('atk.agg6', 'atk.t1', 'lower(key)', '1 hour', 'atk.out6');
CREATE TRIGGER b_row BEFORE INSERT ON atk.out6 FOR EACH ROW EXECUTE FUNCTION atk.pwn_trigger();
SELECT public.sqlstate_of($$INSERT INTO atk.t1 (key, payload) VALUES ('F', '{}')$$) IS NOT NULL AS insert_lower_survived;
SELECT group_key, sum(count) AS count FROM atk.agg6 GROUP BY group_key ORDER BY group_key;
:check
RESET ROLE;
SELECT 1 AS server_alive;

------------------------------------------------------------------ second round (an outside attack on 0.2)
-- (a) an owner's policy that changes a setting while evstream reads its
-- topic for a view: the setting must not stay in the reader's session
:attack
SELECT evstream.create_topic('atk.gucs');
INSERT INTO atk.gucs (key, payload) VALUES ('x', '{}');
CREATE FUNCTION atk.set_path() RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_catalog.set_config('search_path', 'atk, pg_catalog, public', false); RETURN true; END $$;
ALTER TABLE atk.gucs ENABLE ROW LEVEL SECURITY;
ALTER TABLE atk.gucs FORCE ROW LEVEL SECURITY;
CREATE POLICY p ON atk.gucs USING (atk.set_path());
:check
SET search_path = public;
SELECT count(*) AS listed FROM evstream.topics WHERE topic = 'atk.gucs'::regclass;
SELECT current_setting('search_path') AS search_path_after_the_view;
RESET search_path;
-- (b) a policy that raises does not break the view for everyone
:attack
CREATE OR REPLACE FUNCTION atk.set_path() RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION 'no view for you'; END $$;
:check
SELECT count(*) AS listed, bool_and(last_id IS NULL) AS unreadable_reads_as_null
  FROM evstream.topics WHERE topic = 'atk.gucs'::regclass;
-- (c) group_by code hidden in a domain's CHECK and in constant folding runs
-- as the aggregate's owner, even when a superuser produces
:attack
SELECT evstream.create_topic('atk.dom');
CREATE FUNCTION atk.dom_ok(text) RETURNS boolean LANGUAGE plpgsql IMMUTABLE
    SET search_path = pg_catalog, pg_temp AS $$
BEGIN PERFORM atk.escalate('attacker', 'domain check'); RETURN true; END $$;
CREATE DOMAIN atk.d AS text CHECK (atk.dom_ok(VALUE));
CREATE FUNCTION atk.k1(integer) RETURNS text LANGUAGE plpgsql IMMUTABLE
    SET search_path = pg_catalog, pg_temp AS $$
BEGIN PERFORM atk.escalate('attacker', 'constant folding'); RETURN 'c'; END $$;
SELECT public.sqlstate_of($$SELECT evstream.create_aggregate('atk.dom_counts', 'atk.dom', 'key::atk.d')$$) AS domain_group_by;
SELECT evstream.create_aggregate('atk.fold_counts', 'atk.dom', $$atk.k1(1) OPERATOR(pg_catalog.||) key$$);
:check
DISCARD PLANS;
INSERT INTO atk.dom (key) VALUES ('d1'), ('d2');
:check
SELECT group_key, count FROM atk.fold_counts ORDER BY group_key;
SELECT group_key, count FROM atk.dom_counts ORDER BY group_key;
-- (d) a restore COPY into one's own topic does not stop counting of the
-- events its triggers produce into someone else's topic
SET ROLE tenant_a;
SELECT evstream.create_topic('ta.fwd');
SELECT evstream.create_aggregate('ta.fwd_counts', 'ta.fwd');
GRANT USAGE ON SCHEMA ta TO attacker;
GRANT INSERT ON ta.fwd TO attacker;
:attack
SELECT evstream.create_topic('atk.cp');
CREATE FUNCTION atk.fwd() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN INSERT INTO ta.fwd (key, payload) VALUES ('forged', '{}'); RETURN NEW; END $$;
CREATE TRIGGER fwd AFTER INSERT ON atk.cp FOR EACH ROW EXECUTE FUNCTION atk.fwd();
COPY atk.cp (id, key, payload, created_at) FROM stdin;
1	r1	{}	2026-01-01 00:00:00+00
2	r2	{}	2026-01-01 00:00:00+00
\.
:check
SELECT (SELECT count(*) FROM ta.fwd) AS events,
       (SELECT count FROM ta.fwd_counts WHERE group_key = 'forged') AS counted;
-- (e) a cheap function in the caller's WHERE sees no group of a topic the
-- caller cannot read (the views are security barriers)
:attack
CREATE FUNCTION atk.peek(g text) RETURNS boolean LANGUAGE plpgsql COST 0.0000001 AS $$
BEGIN IF g = 'ga' THEN RAISE NOTICE 'saw group %', g; END IF; RETURN true; END $$;
SELECT count(*) AS visible FROM evstream.consumer_groups WHERE atk.peek(consumer_group) AND consumer_group = 'ga';
:check
SELECT evstream.drop_topic('ta.fwd', true);

-- (f) in a schema both may create in, a tenant who takes another's future
-- partition names does not stop its premake
CREATE SCHEMA shared;
GRANT CREATE, USAGE ON SCHEMA shared TO attacker, tenant_a;
SET ROLE tenant_a;
SELECT evstream.create_topic('shared.vs', partition_interval => '1 hour');
-- a name of 46 bytes but 23 characters: the fallback name is cut by bytes
SELECT evstream.create_topic('shared.' || repeat('ö', 23), partition_interval => '1 hour');
RESET ROLE;
:attack
DO $$
DECLARE
    h timestamptz := pg_catalog.date_bin('1 hour', pg_catalog.now(), 'epoch');
BEGIN
    FOR i IN 5 .. 7 LOOP
        EXECUTE pg_catalog.format('CREATE TABLE shared.%I (x int)',
            'vs_p' || pg_catalog.to_char((h + i * interval '1 hour') AT TIME ZONE 'UTC', 'YYYYMMDD_HH24MISS'));
    END LOOP;
    -- a table's name must be free as a type too (its row type)
    FOR i IN 8 .. 10 LOOP
        EXECUTE pg_catalog.format('CREATE TYPE shared.%I AS ENUM (''x'')',
            'vs_p' || pg_catalog.to_char((h + i * interval '1 hour') AT TIME ZONE 'UTC', 'YYYYMMDD_HH24MISS'));
        EXECUTE pg_catalog.format('CREATE TYPE shared.%I AS ENUM (''x'')',
            pg_catalog.repeat('ö', 23) || '_p' ||
            pg_catalog.to_char((h + i * interval '1 hour') AT TIME ZONE 'UTC', 'YYYYMMDD_HH24MISS'));
    END LOOP;
END $$;
:check
SELECT pg_catalog.strpos(coalesce(evstream.run_maintenance(10), ''), 'topic vs:') AS vs_maintenance_error;
SELECT count(*) >= 10 AS premade_despite_squatting
  FROM evstream._partitions('shared.vs') WHERE NOT is_default AND hi > now();
SELECT count(*) >= 10 AS multibyte_premade_despite_squatting
  FROM evstream._partitions(('shared.' || quote_ident(repeat('ö', 23)))::regclass) WHERE NOT is_default AND hi > now();
SELECT evstream.drop_topic('shared.vs');
DROP SCHEMA shared CASCADE;

-- (g) dead-lettering inserts as the group's owner: tenant_a's topic takes
-- only rows keyed with the inserting role (row security, which does not
-- bind tenant_a itself) and grants INSERT to tenant_b; tenant_b's group
-- dead-letters into it and must not get a row in that tenant_b could not
-- insert itself
RESET ROLE;
SET ROLE tenant_a;
SELECT evstream.create_topic('ta.inbox');
ALTER TABLE ta.inbox ENABLE ROW LEVEL SECURITY;
CREATE POLICY own_key ON ta.inbox FOR INSERT WITH CHECK (key = current_user::text);
CREATE POLICY readable ON ta.inbox FOR SELECT USING (true);
GRANT INSERT, SELECT ON ta.inbox TO tenant_b;
RESET ROLE;
SET ROLE tenant_b;
SELECT evstream.create_topic('tb.work');
INSERT INTO tb.work (key) VALUES ('bob');
SELECT evstream.set_group_options('tb.work', 'g', max_attempts => 1, dead_letter_topic => 'ta.inbox');
BEGIN;
SELECT key FROM evstream.consume('tb.work', 'g', 10);
ROLLBACK;
SELECT public.sqlstate_of($$SELECT * FROM evstream.consume('tb.work', 'g', 10)$$) AS dead_letter_as_tenant_b;
RESET ROLE;
SELECT count(*) AS bob_in_inbox FROM ta.inbox WHERE key = 'bob';
-- ... and only the group's owner chooses where its dead letters go: the
-- topic's owner may move tenant_b's group on her topic, but not make it
-- insert into a third topic as tenant_b
SET ROLE tenant_a;
SELECT evstream.create_topic('ta.feed');
GRANT SELECT ON ta.feed TO tenant_b;
RESET ROLE;
SET ROLE tenant_b;
SELECT evstream.commit('ta.feed', 'bg', 0);
RESET ROLE;
SET ROLE tenant_a;
SELECT public.sqlstate_of($$SELECT evstream.set_group_options('ta.feed', 'bg', max_attempts => 1,
    dead_letter_topic => 'tb.work')$$) AS topic_owner_picks_dead_letters;
SELECT public.sqlstate_of($$SELECT evstream.set_group_options('ta.feed', 'bg', max_attempts => 3)$$)
    AS topic_owner_sets_attempts;
RESET ROLE;
SELECT evstream.drop_topic('ta.feed');
SELECT evstream.drop_topic('tb.work');
SELECT evstream.drop_topic('ta.inbox');

------------------------------------------------------------------ an aggregate writing into another's topic
-- may not keep its owner from dropping it: her drop_topic(cascade) and
-- DROP TABLE ... CASCADE drop the attacker's aggregate, as PostgreSQL's
-- CASCADE drops other roles' dependent views (the attacker needs INSERT
-- on the topic and CREATE on its schema, e.g. a shared one)
CREATE SCHEMA shared;
GRANT CREATE, USAGE ON SCHEMA shared TO attacker, tenant_a;
SET ROLE tenant_a;
SELECT evstream.create_topic('shared.sink');
GRANT INSERT ON shared.sink TO attacker;
SET ROLE attacker;
SELECT evstream.create_topic('atk.src');
SELECT evstream.create_aggregate('atk.into_sink', 'atk.src', output_topic => 'shared.sink');
CREATE VIEW atk.pin AS SELECT * FROM atk.into_sink;  -- nor can a view on it pin it
SET ROLE tenant_a;
SELECT public.sqlstate_of($$SELECT evstream.drop_topic('shared.sink')$$) AS plain_drop_refused;
SELECT public.sqlstate_of($$SELECT evstream.drop_aggregate('atk.into_sink')$$) AS not_hers_to_drop;
SELECT evstream.drop_topic('shared.sink', cascade => true);
RESET ROLE;
SELECT count(*) AS attacker_relations_left FROM pg_class WHERE oid IN (to_regclass('atk.into_sink'), to_regclass('atk.pin'));
SET ROLE tenant_a;
SELECT evstream.create_topic('shared.sink');
GRANT INSERT ON shared.sink TO attacker;
SET ROLE attacker;
SELECT evstream.create_aggregate('atk.into_sink', 'atk.src', output_topic => 'shared.sink');
CREATE VIEW atk.pin AS SELECT * FROM atk.into_sink;
SET ROLE tenant_a;
DROP TABLE shared.sink CASCADE;
RESET ROLE;
SELECT count(*) AS attacker_relations_left FROM pg_class WHERE oid IN (to_regclass('atk.into_sink'), to_regclass('atk.pin'));
SELECT evstream.drop_topic('atk.src');
-- an output topic its aggregate made and then handed to another role is
-- hers: neither a cascade nor drop_aggregate of that aggregate drops it
SET ROLE attacker;
SELECT evstream.create_topic('atk.hand_src');
SELECT evstream.create_aggregate('atk.hand_agg1', 'atk.hand_src', output_topic => 'shared.handover');
SELECT evstream.create_aggregate('atk.hand_agg2', 'atk.hand_src', output_topic => 'shared.handover2');
INSERT INTO atk.hand_src (key) VALUES ('x');
RESET ROLE;
SELECT evstream._merge_deltas() >= 0 AS merged;  -- (by us or by the worker)
ALTER TABLE shared.handover OWNER TO tenant_a;
ALTER TABLE shared.handover2 OWNER TO tenant_a;
SET ROLE attacker;
SELECT evstream.drop_aggregate('atk.hand_agg2');
SELECT evstream.drop_topic('atk.hand_src', cascade => true);
RESET ROLE;
SELECT c.relname, c.relowner::regrole, (SELECT count(*) FROM evstream._topic t WHERE t.topic = c.oid) AS is_topic
  FROM pg_class c WHERE c.oid IN (to_regclass('shared.handover'), to_regclass('shared.handover2')) ORDER BY 1;
SELECT count(*) AS events_kept FROM shared.handover;
SELECT evstream.drop_topic('shared.handover');
SELECT evstream.drop_topic('shared.handover2');
DROP SCHEMA shared;

------------------------------------------------------------------ DROP/ALTER EXTENSION by others
-- refused as PostgreSQL refuses them (42501), before evstream's own check
-- of DROP EXTENSION would list the topics' names (the owner's only) or
-- take the extension's lock, which holds the workers up
SET ROLE attacker;
SELECT public.sqlstate_of('DROP EXTENSION evstream') AS drop_extension,
       public.sqlstate_of('DROP EXTENSION evstream CASCADE') AS drop_cascade,
       public.sqlstate_of('ALTER EXTENSION evstream UPDATE') AS update_extension;
RESET ROLE;
SELECT count(*) AS topics_still_there FROM evstream.topics WHERE topic::text LIKE 'ta.%';

------------------------------------------------------------------ a function created later does not capture an aggregate's calls
-- tenant_a's group_by calls her polymorphic shared.ptag(anyelement), in a
-- schema the attacker may create in too; tenant_b may insert into the
-- topic.  The aggregate's expressions are stored as text and parsed again
-- by each session that loads it: the attacker's more exact overloads
-- shared.ptag(text) and shared.ptag(integer) would be picked by that
-- parse, and run inside tenant_a's and tenant_b's INSERTs as tenant_a (or
-- already while the expression is planned: constant folding of
-- shared.ptag(0)).  Instead every load refuses, before planning, while
-- they exist; dropping them mends the aggregates.
CREATE SCHEMA shared;
GRANT CREATE, USAGE ON SCHEMA shared TO attacker, tenant_a;
GRANT USAGE ON SCHEMA shared TO tenant_b;
SET ROLE tenant_a;
CREATE FUNCTION shared.ptag(v anyelement) RETURNS text LANGUAGE sql IMMUTABLE
    AS $$SELECT 'p:' OPERATOR(pg_catalog.||) v::pg_catalog.text$$;
SELECT evstream.create_topic('ta.tagged');
SELECT evstream.create_aggregate('ta.tag_counts', 'ta.tagged', 'shared.ptag(key)');
SELECT evstream.create_topic('ta.folded');
SELECT evstream.create_aggregate('ta.fold_counts', 'ta.folded', 'shared.ptag(0) || key');
GRANT INSERT ON ta.tagged, ta.folded TO tenant_b;
INSERT INTO ta.tagged (key) VALUES ('a'), ('b');
INSERT INTO ta.folded (key) VALUES ('a');
SELECT a.aggregate, a.group_by, a.functions FROM evstream._aggregate a
 WHERE a.aggregate IN ('ta.tag_counts'::regclass, 'ta.fold_counts'::regclass) ORDER BY a.id;
:attack
-- (who ran it is noted in a table of the attacker's anyone may insert into)
CREATE TABLE shared.caught (who name, via text);
GRANT INSERT ON shared.caught TO PUBLIC;
CREATE FUNCTION shared.note(via text) RETURNS void LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    INSERT INTO shared.caught VALUES (current_user, via);
    PERFORM atk.escalate('attacker', via);
END $$;
GRANT USAGE ON SCHEMA atk TO PUBLIC;
CREATE FUNCTION shared.ptag(v text) RETURNS text LANGUAGE plpgsql IMMUTABLE
    SET search_path = pg_catalog, pg_temp AS $$
BEGIN PERFORM shared.note('ptag(text)'); RETURN 'p:' || v; END $$;
CREATE FUNCTION shared.ptag(v integer) RETURNS text LANGUAGE plpgsql IMMUTABLE
    SET search_path = pg_catalog, pg_temp AS $$
BEGIN PERFORM shared.note('ptag(integer)'); RETURN 'p:' || v; END $$;
RESET ROLE;
-- a new session: the aggregates are loaded (parsed) again
\c
SET client_min_messages = warning;
SET ROLE tenant_a;
\set VERBOSITY default
INSERT INTO ta.tagged (key) VALUES ('a');
INSERT INTO ta.folded (key) VALUES ('a');
\set VERBOSITY sqlstate
SET ROLE tenant_b;
INSERT INTO ta.tagged (key) VALUES ('b');
INSERT INTO ta.folded (key) VALUES ('b');
:check
SELECT count(*) AS attacker_code_ran FROM shared.caught;
SELECT (SELECT count(*) FROM ta.tagged) AS tagged_events, (SELECT count(*) FROM ta.folded) AS folded_events;
:attack
DROP FUNCTION shared.ptag(text), shared.ptag(integer);
RESET ROLE;
\c
SET client_min_messages = warning;
SET ROLE tenant_a;
INSERT INTO ta.tagged (key) VALUES ('a'), ('c');
INSERT INTO ta.folded (key) VALUES ('a');
SET ROLE tenant_b;
INSERT INTO ta.tagged (key) VALUES ('b');
:check
SELECT count(*) AS attacker_code_ran FROM shared.caught;
SELECT group_key, count FROM ta.tag_counts ORDER BY group_key;
SELECT group_key, count FROM ta.fold_counts ORDER BY group_key;
-- A type named like her function turns a call into a cast (PostgreSQL
-- tries a function-style cast to a type of the name before polymorphic
-- matches), and a domain's CHECK may call anything; the list of functions
-- alone did not see it while ptag was still called elsewhere in the
-- expression (round 12).  The parse no longer gives back the stored text:
-- refused too.
SET ROLE tenant_a;
SELECT evstream.create_topic('ta.normed');
SELECT evstream.create_aggregate('ta.norm_counts', 'ta.normed',
       'shared.ptag(key) || shared.ptag(payload ? ''vip'')');
GRANT INSERT ON ta.normed TO tenant_b;
INSERT INTO ta.normed (key, payload) VALUES ('a', '{"vip": 1}');
:attack
CREATE FUNCTION shared.check_note(v text) RETURNS boolean LANGUAGE plpgsql VOLATILE
    SET search_path = pg_catalog, pg_temp AS $$
BEGIN PERFORM shared.note('domain check'); RETURN true; END $$;
CREATE DOMAIN shared.ptag AS text CHECK (shared.check_note(VALUE));
RESET ROLE;
\c
SET client_min_messages = warning;
SET ROLE tenant_b;
\set VERBOSITY default
INSERT INTO ta.normed (key, payload) VALUES ('b', '{"vip": 1}');
\set VERBOSITY sqlstate
SET ROLE tenant_a;
INSERT INTO ta.normed (key, payload) VALUES ('c', '{}');
:check
SELECT count(*) AS attacker_code_ran FROM shared.caught;
:attack
DROP DOMAIN shared.ptag;
RESET ROLE;
\c
SET client_min_messages = warning;
SET ROLE tenant_b;
INSERT INTO ta.normed (key, payload) VALUES ('b', '{"vip": 1}');
:check
SELECT count(*) AS attacker_code_ran FROM shared.caught;
SELECT group_key, count FROM ta.norm_counts ORDER BY group_key;
SELECT evstream.drop_topic('ta.normed', true);
SELECT evstream.drop_topic('ta.tagged', true);
SELECT evstream.drop_topic('ta.folded', true);
DROP SCHEMA shared CASCADE;
REVOKE USAGE ON SCHEMA atk FROM PUBLIC;

------------------------------------------------------------------ clean-up
RESET ROLE;
RESET search_path;
SELECT evstream.drop_topic('ta.t', true);
SELECT evstream.drop_topic('ta.private', true);
DROP SCHEMA ta, tb, atk CASCADE;
DROP TABLE public.only_super, public.secret;
DROP FUNCTION public.breach(), public.sqlstate_of(text), public.leak_of(text);
DROP OWNED BY attacker, tenant_a, tenant_b;
DROP ROLE attacker, tenant_a, tenant_b;
