--
-- shards (0.2): sharded topics, shard_of, per-shard positions, consume
-- claiming shards, member leases and fencing, release, drop_group,
-- set_group_options and dead letters, waits, the group_shards view, bad
-- input, and the new functions attacked by a non-superuser.
-- (Concurrency: test/specs/shard_*.spec, lease_fencing, dead_letter,
-- long_poll_wake.)
--
\set VERBOSITY terse
SELECT evstream.create_topic('sh', shards => 4);
SELECT topic, shards FROM evstream.topics WHERE topic = 'sh'::regclass;
-- the shard index: reading one shard is a range scan of it
SELECT count(*) FROM pg_indexes WHERE tablename = 'sh' AND indexdef LIKE '%evstream._shard(key, id, 4)%';

-- the same key, the same shard; NULL has none
SELECT evstream.shard_of('sh', 'a') = evstream.shard_of('sh', 'a') AS stable,
       evstream.shard_of('sh', NULL) AS null_key,
       evstream.shard_of('sh', 'a') BETWEEN 0 AND 3 AS in_range;
SELECT count(DISTINCT evstream.shard_of('sh', 'k' || g)) AS shards_used FROM generate_series(1, 100) g;
-- a one-shard topic: every key is shard 0
SELECT evstream.create_topic('sh1');
SELECT evstream.shard_of('sh1', 'anything');

-- 40 events of 8 keys, 5 each
INSERT INTO sh (key, payload) SELECT 'k' || (g % 8), jsonb_build_object('n', g) FROM generate_series(1, 40) g;
-- NULL keys spread over shards
INSERT INTO sh (key) SELECT NULL FROM generate_series(1, 8);

------------------------------------------------------------------ consume on a sharded topic
-- one consume takes one shard: the one whose next event is the oldest
SELECT evstream.shard_of('sh', key) AS shard, count(*), min(id) = (SELECT min(id) FROM sh) AS oldest_first,
       bool_and(evstream.shard_of('sh', key) = evstream.shard_of('sh', (SELECT key FROM sh ORDER BY id LIMIT 1))) AS one_shard
  FROM evstream.consume('sh', 'c', 100) WHERE key IS NOT NULL GROUP BY 1;
-- draining: every event exactly once, per key in id order
CREATE TABLE got (seq serial, id bigint, key text);
DO $$
BEGIN
    FOR i IN 1..20 LOOP
        INSERT INTO got (id, key) SELECT id, key FROM evstream.consume('sh', 'd', 3);
    END LOOP;
END
$$;
SELECT count(*) AS got, count(DISTINCT id) AS distinct_ids, (SELECT count(*) FROM sh) AS events FROM got;
SELECT count(*) AS out_of_order FROM (
    SELECT id < lag(id) OVER (PARTITION BY key ORDER BY seq) AS bad FROM got WHERE key IS NOT NULL) x WHERE bad;
SELECT consumer_group, committed_id, lag_events FROM evstream.consumer_groups WHERE topic = 'sh'::regclass ORDER BY 1;
SELECT shard, committed_id > 0 AS moved, lag_events, member, attempts FROM evstream.group_shards
 WHERE topic = 'sh'::regclass AND consumer_group = 'd' ORDER BY shard;
-- one transaction that calls consume again continues on its shard
SELECT evstream.seek('sh', 'again', 0);
BEGIN;
CREATE TEMP TABLE a1 AS SELECT * FROM evstream.consume('sh', 'again', 2);
CREATE TEMP TABLE a2 AS SELECT * FROM evstream.consume('sh', 'again', 2);
SELECT count(DISTINCT evstream.shard_of('sh', key)) AS shards FROM (TABLE a1 UNION ALL TABLE a2) x WHERE key IS NOT NULL;
COMMIT;
-- poll without member: every shard's events after its position, in id order
SELECT evstream.seek('sh', 'look', 0);
SELECT count(*), min(id) = (SELECT min(id) FROM sh) AS from_oldest FROM evstream.poll('sh', 'look', 1000);
-- commit without a member on a sharded topic
SELECT evstream.commit('sh', 'look', 3);
\echo :LAST_ERROR_SQLSTATE
-- seek sets every shard
SELECT evstream.seek('sh', 'd', 0);
SELECT count(*) FILTER (WHERE committed_id = 0) AS at_zero FROM evstream.group_shards WHERE topic = 'sh'::regclass AND consumer_group = 'd';
SELECT evstream.seek('sh', 'd', (SELECT max(id) + 1 FROM sh));
SELECT count(*) FROM evstream.consume('sh', 'd', 100);

------------------------------------------------------------------ members and leases
SELECT evstream.seek('sh', 'm', 0);
CREATE TEMP TABLE b1 AS SELECT * FROM evstream.poll('sh', 'm', 100, member => 'w1', lease => '1 hour');
SELECT count(DISTINCT evstream.shard_of('sh', key)) FILTER (WHERE key IS NOT NULL) AS shards, count(*) > 0 AS got FROM b1;
-- poll does not move the position; a re-poll within the lease: the same shard, same events
SELECT count(*) = (SELECT count(*) FROM b1) AS same FROM evstream.poll('sh', 'm', 100, member => 'w1', lease => '1 hour');
SELECT member, lease_expires_at > now() AS live FROM evstream.group_shards
 WHERE topic = 'sh'::regclass AND consumer_group = 'm' AND member IS NOT NULL;
-- another member gets another shard
CREATE TEMP TABLE b2 AS SELECT * FROM evstream.poll('sh', 'm', 100, member => 'w2', lease => '1 hour');
SELECT count(*) AS overlap FROM b1 JOIN b2 USING (id);
-- consume does not take leased shards
CREATE TEMP TABLE b3 AS SELECT * FROM evstream.consume('sh', 'm', 100);
SELECT count(*) AS overlap FROM b3 WHERE id IN (SELECT id FROM b1 UNION SELECT id FROM b2);
-- commit with the member moves its shard and ends the lease
SELECT evstream.commit('sh', 'm', (SELECT max(id) FROM b1), member => 'w1');
SELECT count(*) AS w1_live FROM evstream.group_shards WHERE topic = 'sh'::regclass AND consumer_group = 'm' AND member = 'w1';
-- a repeated commit while nobody took the shard is fine
SELECT evstream.commit('sh', 'm', (SELECT max(id) FROM b1), member => 'w1');
-- w2 committing an id of w1's shard: lease lost
SELECT evstream.commit('sh', 'm', (SELECT max(id) FROM b1), member => 'w2');
\echo :LAST_ERROR_SQLSTATE
-- release ends w2's lease; a consume then takes the shard and fences w2
SELECT evstream.release('sh', 'm', 'w2');
SELECT count(*) AS w2_live FROM evstream.group_shards WHERE topic = 'sh'::regclass AND consumer_group = 'm' AND member = 'w2';
CREATE TEMP TABLE b4 AS SELECT * FROM evstream.consume('sh', 'm', 100);
SELECT count(*) > 0 AS took_w2s_events FROM b4 WHERE id IN (SELECT id FROM b2);
SELECT evstream.commit('sh', 'm', (SELECT max(id) FROM b2), member => 'w2');
\echo :LAST_ERROR_SQLSTATE
-- a member that was never there
SELECT evstream.commit('sh', 'm', (SELECT max(id) FROM b1), member => 'nobody');
\echo :LAST_ERROR_SQLSTATE
SELECT evstream.commit('sh', 'no_such_group', 1, member => 'w1');
\echo :LAST_ERROR_SQLSTATE
SELECT evstream.release('sh', 'm', 'nobody');
-- a lease that expired: others may take it; the old member is fenced
SELECT evstream.seek('sh', 'x', 0);
CREATE TEMP TABLE e1 AS SELECT * FROM evstream.poll('sh', 'x', 100, member => 'slow', lease => '1 ms');
SELECT pg_sleep(0.01);
CREATE TEMP TABLE e2 AS SELECT * FROM evstream.poll('sh', 'x', 100, member => 'fast', lease => '1 hour');
SELECT count(*) > 0 AS fast_took_slows_shard FROM e2 WHERE id IN (SELECT id FROM e1);
SELECT evstream.commit('sh', 'x', (SELECT max(id) FROM e1), member => 'slow');
\echo :LAST_ERROR_SQLSTATE
SELECT evstream.commit('sh', 'x', (SELECT max(id) FROM e2), member => 'fast');

------------------------------------------------------------------ poison events
SELECT evstream.create_topic('pz', shards => 2);
INSERT INTO pz (key, payload) VALUES ('p', '{"poison": true}'), ('p', '{"n": 2}'), ('p', '{"n": 3}');
SELECT evstream.set_group_options('pz', 'g', max_attempts => 2, dead_letter_topic => 'pz_dlq');
SELECT topic, shards FROM evstream.topics WHERE topic = 'pz_dlq'::regclass;
BEGIN; SELECT id FROM evstream.consume('pz', 'g', 1); ROLLBACK;
SELECT shard, attempts FROM evstream.group_shards WHERE topic = 'pz'::regclass AND consumer_group = 'g' AND attempts > 0;
BEGIN; SELECT id FROM evstream.consume('pz', 'g', 1); ROLLBACK;
-- the third delivery: the poison event goes to the dead-letter topic first
SELECT id, payload FROM evstream.consume('pz', 'g', 1);
SELECT key, payload - 'created_at' AS payload, (payload->>'created_at')::timestamptz = (SELECT created_at FROM pz WHERE id = 1) AS created_at
  FROM pz_dlq;
SELECT consumer_group, dead_lettered FROM evstream.consumer_groups WHERE topic = 'pz'::regclass;
-- without a dead-letter topic: skipped and counted
SELECT evstream.set_group_options('pz', 'h', max_attempts => 1);
BEGIN; SELECT id FROM evstream.consume('pz', 'h', 1); ROLLBACK;
SELECT id FROM evstream.consume('pz', 'h', 1);
SELECT consumer_group, dead_lettered FROM evstream.consumer_groups WHERE topic = 'pz'::regclass ORDER BY 1;
-- expired leases count too
SELECT evstream.set_group_options('pz', 'l', max_attempts => 2);
SELECT id FROM evstream.poll('pz', 'l', 1, member => 'a', lease => '1 ms');
SELECT pg_sleep(0.01);
SELECT id FROM evstream.poll('pz', 'l', 1, member => 'b', lease => '1 ms');
SELECT pg_sleep(0.01);
SELECT id FROM evstream.poll('pz', 'l', 1, member => 'c', lease => '1 hour');
SELECT dead_lettered FROM evstream.consumer_groups WHERE topic = 'pz'::regclass AND consumer_group = 'l';
-- options: bad values
SELECT evstream.set_group_options('pz', 'g', max_attempts => 0);
\echo :LAST_ERROR_SQLSTATE
SELECT evstream.set_group_options('pz', 'g', dead_letter_topic => 'pz');
\echo :LAST_ERROR_SQLSTATE
CREATE TABLE not_a_topic (x int);
SELECT evstream.set_group_options('pz', 'g', dead_letter_topic => 'not_a_topic');
\echo :LAST_ERROR_SQLSTATE

------------------------------------------------------------------ waits
-- nothing to return: a wait returns empty when it is over
SELECT count(*) FROM evstream.consume('pz', 'g', 10);
SELECT count(*) FROM evstream.consume('pz', 'g', 10, wait => '50 ms');
SELECT count(*) FROM evstream.poll('pz', 'g', 10, wait => '0');
SELECT count(*) FROM evstream.consume('pz', 'g', 10, wait => '-1 s');
\echo :LAST_ERROR_SQLSTATE
-- absurd intervals do not overflow (clamped to 100 years)
SET statement_timeout = '50ms';
SELECT count(*) FROM evstream.consume('pz', 'g', 10, wait => '100000000 years');
\echo :LAST_ERROR_SQLSTATE
RESET statement_timeout;
SELECT count(*) FROM evstream.poll('pz', 'huge', 1, member => 'm', lease => '100000000 years');
SELECT lease_expires_at > now() + interval '99 years' AS clamped FROM evstream.group_shards
 WHERE topic = 'pz'::regclass AND consumer_group = 'huge' AND member = 'm';
SELECT evstream.release('pz', 'huge', 'm');
-- statement_timeout ends a wait
SET statement_timeout = '100ms';
SELECT count(*) FROM evstream.consume('pz', 'g', 10, wait => '1 hour');
\echo :LAST_ERROR_SQLSTATE
RESET statement_timeout;
-- with events, a wait returns at once
INSERT INTO pz (key) VALUES ('w');
SELECT count(*) FROM evstream.consume('pz', 'g', 10, wait => '1 hour');

------------------------------------------------------------------ drop_group
SELECT evstream.drop_group('sh', 'm');
SELECT count(*) FROM evstream.consumer_groups WHERE topic = 'sh'::regclass AND consumer_group = 'm';
SELECT count(*) FROM evstream._lease l WHERE NOT EXISTS (SELECT FROM evstream._group g WHERE g.id = l.group_id);
SELECT evstream.drop_group('sh', 'm');
\echo :LAST_ERROR_SQLSTATE

------------------------------------------------------------------ bad input
SELECT evstream.create_topic('sh_bad', shards => 0);
\echo :LAST_ERROR_SQLSTATE
SELECT evstream.create_topic('sh_bad', shards => 257);
\echo :LAST_ERROR_SQLSTATE
SELECT evstream.create_topic('sh_bad', shards => NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT to_regclass('sh_bad');
SELECT evstream.shard_of(NULL, 'a');
\echo :LAST_ERROR_SQLSTATE
SELECT evstream.shard_of('not_a_topic', 'a');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM evstream.poll('sh', 'g', 1, member => '');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM evstream.poll('sh', 'g', 1, member => 'x', lease => '0');
\echo :LAST_ERROR_SQLSTATE
SELECT evstream.release('sh', 'g', NULL);
\echo :LAST_ERROR_SQLSTATE
-- a group that does not exist: 42704, for release and a member's commit
SELECT evstream.release('sh', 'never_existed', 'm');
\echo :LAST_ERROR_SQLSTATE
SELECT evstream.commit('sh', 'never_existed', 1, member => 'm');
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) FROM evstream.consumer_groups WHERE consumer_group = 'never_existed';
SELECT evstream.commit('sh', 'm', 999999, member => 'w1');
\echo :LAST_ERROR_SQLSTATE

------------------------------------------------------------------ attacks (a non-superuser)
CREATE ROLE regress_sh_owner;
CREATE ROLE regress_sh_attacker;
GRANT SELECT ON sh TO regress_sh_attacker;
SET ROLE regress_sh_owner;
SELECT evstream.set_group_options('sh', 'owned', max_attempts => 3);
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
GRANT SELECT ON sh TO regress_sh_owner;
SET ROLE regress_sh_owner;
SELECT count(*) > 0 FROM evstream.consume('sh', 'owned', 1);
RESET ROLE;
SET ROLE regress_sh_attacker;
-- another role's group: not to claim, move, release, drop or reconfigure
SELECT count(*) FROM evstream.consume('sh', 'owned', 1);
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) FROM evstream.poll('sh', 'owned', 1, member => 'evil');
\echo :LAST_ERROR_SQLSTATE
SELECT evstream.release('sh', 'owned', 'evil');
\echo :LAST_ERROR_SQLSTATE
SELECT evstream.drop_group('sh', 'owned');
\echo :LAST_ERROR_SQLSTATE
SELECT evstream.set_group_options('sh', 'owned', max_attempts => 1);
\echo :LAST_ERROR_SQLSTATE
SELECT evstream.seek('sh', 'owned', 0);
\echo :LAST_ERROR_SQLSTATE
-- reading without claiming is allowed with SELECT
SELECT count(*) > 0 AS can_look FROM evstream.poll('sh', 'owned', 1);
-- a dead-letter topic one cannot insert into
SELECT evstream.set_group_options('sh', 'mine', dead_letter_topic => 'pz_dlq');
\echo :LAST_ERROR_SQLSTATE
-- dead-lettering into another role's topic stops with the privilege
RESET ROLE;
SELECT evstream.create_topic('sh_victim_dl');
GRANT INSERT ON sh_victim_dl TO regress_sh_attacker;
CREATE SCHEMA sh_atk_s AUTHORIZATION regress_sh_attacker;
SET ROLE regress_sh_attacker;
SELECT evstream.create_topic('sh_atk_s.sh_atk');
SET search_path = sh_atk_s, public;
INSERT INTO sh_atk (key, payload) VALUES ('forged', '{"evil": true}');
SELECT evstream.set_group_options('sh_atk', 'g', max_attempts => 1, dead_letter_topic => 'public.sh_victim_dl');
RESET ROLE;
REVOKE INSERT ON sh_victim_dl FROM regress_sh_attacker;
SET ROLE regress_sh_attacker;
BEGIN; SELECT count(*) FROM evstream.consume('sh_atk', 'g'); ROLLBACK;
SELECT count(*) FROM evstream.consume('sh_atk', 'g');
\echo :LAST_ERROR_SQLSTATE
SELECT evstream.drop_topic('sh_atk');
RESET search_path;
RESET ROLE;
DROP SCHEMA sh_atk_s;
SELECT count(*) AS forged_rows FROM sh_victim_dl;
SELECT evstream.drop_topic('sh_victim_dl');
SET ROLE regress_sh_attacker;
-- positions and leases cannot be forged
INSERT INTO evstream._position VALUES (1, 0, 1000, 0);
\echo :LAST_ERROR_SQLSTATE
INSERT INTO evstream._lease VALUES (1, 0, 'evil', 'infinity');
\echo :LAST_ERROR_SQLSTATE
-- the internal functions: nothing to learn about other topics
SELECT evstream._lag('pz', ARRAY[0]::bigint[], NULL);
SELECT evstream._shard('x', 1, 4) BETWEEN 0 AND 3 AS shard_fn_ok;
RESET ROLE;
-- the attacker's own group: theirs
SET ROLE regress_sh_attacker;
SELECT count(*) > 0 FROM evstream.consume('sh', 'attackers', 1);
RESET ROLE;
SELECT consumer_group, owner FROM evstream.consumer_groups WHERE topic = 'sh'::regclass AND consumer_group IN ('owned', 'attackers') ORDER BY 1;
REVOKE ALL ON sh FROM regress_sh_attacker, regress_sh_owner;
DROP ROLE regress_sh_owner, regress_sh_attacker;

------------------------------------------------------------------ clean up
SELECT evstream.drop_topic('sh');
SELECT evstream.drop_topic('sh1');
SELECT evstream.drop_topic('pz');
SELECT evstream.drop_topic('pz_dlq');
DROP TABLE got, not_a_topic;
SELECT count(*) FROM evstream._position p WHERE NOT EXISTS (SELECT FROM evstream._group g WHERE g.id = p.group_id);
