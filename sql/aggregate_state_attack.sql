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
DROP ROLE regress_state_attacker;
