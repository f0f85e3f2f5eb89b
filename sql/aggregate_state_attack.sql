-- (0.2) The functions aggregate views and the merge use to read state,
-- evstream._unpack(bytea), _recv(bytea, anyelement) and _send(anyelement),
-- are callable by everyone (a view runs them with its owner's rights).
-- Attacked as a role with no privileges at all: every malformed input is a
-- clean error (mostly 22P03), never a crash, a huge allocation or a string
-- in a bad encoding.
\set VERBOSITY sqlstate
CREATE ROLE regress_state_attacker;
SELECT evstream.create_topic('secret_events');
SELECT evstream.create_aggregate('secret_counts', 'secret_events', measures => 'max(key) AS top');
INSERT INTO secret_events (key) VALUES ('a'), ('b');
SET ROLE regress_state_attacker;
-- a well-formed value round-trips
SELECT evstream._recv(evstream._send(42::int4), NULL::int4) AS i,
       evstream._recv(evstream._send(12.5::numeric), NULL::numeric) AS n,
       evstream._recv(evstream._send('héllo'::text), NULL::text) AS t,
       evstream._recv(NULL, NULL::int4) IS NULL AS null_in_null_out;
-- wrong lengths and trailing bytes for the type
SELECT evstream._recv('\x0001'::bytea, NULL::int4);
SELECT evstream._recv('\x000000010000'::bytea, NULL::int4);
SELECT evstream._recv('\xffffffffffffffff'::bytea, NULL::numeric);
SELECT evstream._recv('\xc328'::bytea, NULL::text);
SELECT evstream._recv('\x00'::bytea, NULL::record);
-- packed entries: empty, wrong version, truncated, negative and huge
-- lengths, too many states, a key that is not valid UTF-8
SELECT * FROM evstream._unpack(''::bytea);
SELECT * FROM evstream._unpack('\x02'::bytea);
SELECT * FROM evstream._unpack('\x01000000'::bytea);
SELECT * FROM evstream._unpack('\x01fffffffe'::bytea);
SELECT * FROM evstream._unpack('\x017fffffff41'::bytea);
SELECT * FROM evstream._unpack('\x0100000001c300'::bytea);
SELECT * FROM evstream._unpack('\x01ffffffff000000000000000001ffff'::bytea);
SELECT * FROM evstream._unpack('\x01ffffffff0000000000000000010001'::bytea);
SELECT * FROM evstream._unpack('\x01ffffffff00000000000000000100017fffffff'::bytea);
-- a well-formed entry: group 'a', no window, count 2, one NULL state
SELECT * FROM evstream._unpack('\x0100000001610000000000000000020001ffffffff'::bytea);
-- the state tables stay unreadable without SELECT on the aggregate's topic
SELECT count(*) FROM evstream._delta;
SELECT count(*) FROM evstream._count;
RESET ROLE;
-- (they are not empty)
SELECT (SELECT count(*) FROM evstream._delta) + (SELECT count(*) FROM evstream._count) > 0 AS state_rows;
SELECT evstream.drop_topic('secret_events', cascade => true);

-- A topic owner's event_time may be STABLE, and built-in STABLE functions
-- can run user code (table_to_xml reads a view that calls a function): it
-- runs as the aggregate's owner, restricted, never as whoever inserts.
CREATE SCHEMA attack_ns AUTHORIZATION regress_state_attacker;
SET ROLE regress_state_attacker;
SELECT evstream.create_topic('attack_ns.mt');
CREATE TABLE attack_ns.loot (who text);
GRANT USAGE ON SCHEMA attack_ns TO PUBLIC;
GRANT INSERT ON attack_ns.loot, attack_ns.mt TO PUBLIC;
CREATE FUNCTION attack_ns.evil() RETURNS int LANGUAGE sql
    AS $$ INSERT INTO attack_ns.loot VALUES (current_user) RETURNING 1 $$;
CREATE VIEW attack_ns.trap AS SELECT attack_ns.evil() AS x;
GRANT SELECT ON attack_ns.trap TO PUBLIC;
SELECT evstream.create_aggregate('attack_ns.ma', 'attack_ns.mt', bucket => '1 hour',
    event_time => $$created_at + (length(table_to_xml('attack_ns.trap'::regclass, true, false, '')::text) * interval '0 s')$$);
RESET ROLE;
-- the superuser produces: the view's function must not run as the superuser
-- (it runs as the owner under SECURITY_RESTRICTED_OPERATION, where its
-- INSERT is allowed but it is the owner's)
INSERT INTO attack_ns.mt (key) VALUES ('k');
SELECT who, count(*) FROM attack_ns.loot GROUP BY 1;
SELECT sum(count) FROM attack_ns.ma;

-- A grace longer than the calendar closes nothing, and never stores a time
-- out of range in the catalog (which every role reads, and pg_dump dumps)
SET ROLE regress_state_attacker;
SELECT evstream.create_aggregate('attack_ns.far', 'attack_ns.mt', bucket => '1 hour',
    output_topic => 'attack_ns.far_out', emit => 'final', grace => '3000000 days',
    window_retention => '3000000 days');
RESET ROLE;
INSERT INTO attack_ns.mt (key) VALUES ('k');
SELECT evstream._merge_deltas() >= 0 AS merged;
SELECT a.finalized_upto IS NULL AS nothing_final FROM evstream._aggregate a
 WHERE a.aggregate = 'attack_ns.far'::regclass;
SELECT count(*) FROM attack_ns.far_out;

-- An enum's owner may give it a cast to json, which jsonb_build_object
-- calls for a type that is not built in.  The merge builds change events
-- (and final results) of an enum measure as the superuser: the enum must
-- reach jsonb through its output function, never through that cast.
SET ROLE regress_state_attacker;
CREATE TYPE attack_ns.mood AS ENUM ('calm', 'angry');
CREATE FUNCTION attack_ns.mood_json(attack_ns.mood) RETURNS json LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO attack_ns.loot VALUES (current_user);
    RETURN pg_catalog.to_json('cast'::text);
END $$;
CREATE CAST (attack_ns.mood AS json) WITH FUNCTION attack_ns.mood_json(attack_ns.mood);
SELECT evstream.create_topic('attack_ns.et');
SELECT evstream.create_aggregate('attack_ns.ea', 'attack_ns.et', output_topic => 'attack_ns.ea_out',
    measures => $$max(CASE WHEN payload->>'m' = 'angry' THEN 'angry'::attack_ns.mood
                           ELSE 'calm'::attack_ns.mood END) AS worst$$);
INSERT INTO attack_ns.et (key, payload) VALUES ('k', '{"m": "angry"}');
RESET ROLE;
DELETE FROM attack_ns.loot;
INSERT INTO attack_ns.et (key, payload) VALUES ('k', '{"m": "calm"}');
SELECT evstream._merge_deltas() >= 0 AS merged;
SELECT count(*) AS cast_calls FROM attack_ns.loot;
SELECT key, payload FROM attack_ns.ea_out ORDER BY id DESC LIMIT 1;
SELECT * FROM attack_ns.ea;

-- A measure's collation renamed by its owner breaks only that aggregate's
-- merge: the others (here attack_ns.ea) are folded, and the maintenance
-- pass still commits (it reports the failure).
SET ROLE regress_state_attacker;
CREATE COLLATION attack_ns.coll (provider = libc, locale = 'C');
SELECT evstream.create_aggregate('attack_ns.ca', 'attack_ns.et',
    measures => $$max(key COLLATE attack_ns.coll) AS top$$);
INSERT INTO attack_ns.et (key, payload) VALUES ('k2', '{"m": "calm"}');
ALTER COLLATION attack_ns.coll RENAME TO coll2;
RESET ROLE;
SELECT pg_catalog.strpos(evstream.run_maintenance(), 'aggregate ca: collation') > 0 AS reported;
SELECT group_key, count, worst FROM attack_ns.ea ORDER BY 1;
SELECT count(*) AS ea_pending FROM evstream._delta d JOIN evstream._aggregate a ON a.id = d.agg
 WHERE a.aggregate = 'attack_ns.ea'::regclass;
SET ROLE regress_state_attacker;
ALTER COLLATION attack_ns.coll2 RENAME TO coll;
RESET ROLE;
SELECT evstream.drop_topic('attack_ns.et', cascade => true);

SELECT evstream.drop_topic('attack_ns.mt', cascade => true);
DROP SCHEMA attack_ns CASCADE;
DROP ROLE regress_state_attacker;
