# Sharded consumption under load (issue 9, item 8).
#
# One topic with 8 shards.  Two pgbench producers write keyed events (200
# keys, ~5% NULL keys, now and then an event with a 'poison-…' key) in
# transactions with rolled-back savepoints and ~20% whole rollbacks,
# recording what they produced in `produced` in the same (sub)transaction.
# Meanwhile, on three groups of that topic:
#   - g:    3 pgbench clients run consume (long poll of 20 ms, a second
#           consume in the same transaction half the time) and record the
#           events in `consumed` in the same transaction, ~10% rolled back;
#           one more session consumes in a transaction and is killed
#           (pg_terminate_backend) while it holds its shard;
#   - mg:   3 pgbench members poll with member/lease (long poll of 20 ms),
#           record what they saw in `member_seen`, then commit with member
#           (a lost lease is caught and recorded); one more member polls
#           with lease => '1 s', stalls 2 s, and once another member has
#           claimed its shard its commit must fail with 55000 "lease lost";
#   - dlqg: max_attempts => 2, dead_letter_topic => 'dlq'; 2 pgbench
#           clients consume one event per transaction and roll back every
#           poison event, commit every other one into `dlq_consumed`.
# Proves, after draining:
#   - g: consumed ids = committed ids, none twice, and per key in id order
#     in the order the consuming transactions ran (a bigserial); nothing of
#     the killed transaction stayed;
#   - mg: every committed id seen at least once, nothing else seen;
#   - dlqg: every committed non-poison event consumed exactly once, per key
#     in id order; every committed poison event in the dead-letter topic
#     exactly once, with its key, payload, created_at, topic, group and
#     attempts = 2; consumer_groups.dead_lettered counts them;
#   - every group's shards are at the end (group_shards lag_events 0) and
#     positions never went back while the stalled member was fenced.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/../lib";
use EvsTest;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

my $node = evs_node('shards', "evstream.maintenance_interval = '1s'");
my $LOAD_SECS = 15;
my $SHARDS = 8;

# is() on two id multisets being equal; on failure, the ids in one and not
# the other (with multiplicities) and $detail about them
sub ids_equal
{
	my ($a, $b, $name, $detail) = @_;
	my $ok = is($node->safe_psql('postgres', sets_equal_sql($a, $b)), '0', $name);
	return $ok if $ok;
	for my $d ([ $a, $b, 'only in the first' ], [ $b, $a, 'only in the second' ])
	{
		my $rows = $node->safe_psql('postgres', qq{
SELECT x.id, x.n, ($detail) FROM (SELECT id, count(*) AS n FROM (($d->[0]) EXCEPT ALL ($d->[1])) e(id) GROUP BY id) x
 ORDER BY 1 LIMIT 20});
		diag("$d->[2] (id, times, detail):\n$rows");
	}
	return $ok;
}

$node->safe_psql('postgres', qq{
CREATE EXTENSION evstream;
SELECT evstream.create_topic('ev', partition_interval => '5 seconds', shards => $SHARDS);
SELECT evstream.set_group_options('ev', 'dlqg', max_attempts => 2, dead_letter_topic => 'dlq');
CREATE TABLE produced (id bigint PRIMARY KEY, key text);
-- seq: the order in which consuming transactions recorded their events
-- (a transaction claims a shard only after the previous holder ended, so
-- per shard, hence per key, seq follows the delivery order)
CREATE TABLE consumed (seq bigserial, id bigint NOT NULL, key text,
                       pid int NOT NULL DEFAULT pg_backend_pid());
CREATE TABLE dlq_consumed (seq bigserial, id bigint NOT NULL, key text);
CREATE TABLE member_seen (member text NOT NULL, id bigint NOT NULL, key text);
CREATE TABLE member_commits (member text NOT NULL, last_id bigint NOT NULL, outcome text NOT NULL);

-- a member's poll: records what it got, returns the last id (0: nothing)
CREATE FUNCTION member_poll(m text, n int, l interval DEFAULT '2 s') RETURNS bigint LANGUAGE plpgsql AS \$\$
DECLARE last bigint;
BEGIN
  WITH p AS (SELECT id, key FROM evstream.poll('ev', 'mg', n, wait => '20 ms', member => m, lease => l)),
       i AS (INSERT INTO member_seen (member, id, key) SELECT m, id, key FROM p RETURNING id)
  SELECT coalesce(max(id), 0) INTO last FROM i;
  RETURN last;
END \$\$;

-- a member's commit; a lost lease (55000) is recorded, not raised
CREATE FUNCTION member_commit(m text, last bigint) RETURNS text LANGUAGE plpgsql AS \$\$
DECLARE outcome text := 'ok';
BEGIN
  BEGIN
    PERFORM evstream.commit('ev', 'mg', last, member => m);
  EXCEPTION WHEN object_not_in_prerequisite_state THEN
    outcome := 'lost: ' || SQLERRM;
  END;
  INSERT INTO member_commits VALUES (m, last, outcome);
  RETURN outcome;
END \$\$;

-- one event of group dlqg: 1 = poison (the caller rolls back),
-- 0 = recorded (the caller commits), -1 = nothing to consume
CREATE FUNCTION consume_dlq(w interval DEFAULT '20 ms') RETURNS int LANGUAGE plpgsql AS \$\$
DECLARE e record; r int := -1;
BEGIN
  FOR e IN SELECT id, key FROM evstream.consume('ev', 'dlqg', 1, wait => w) LOOP
    IF e.key LIKE 'poison%' THEN
      r := 1;
    ELSE
      INSERT INTO dlq_consumed (id, key) VALUES (e.id, e.key);
      r := 0;
    END IF;
  END LOOP;
  RETURN r;
END \$\$;

-- a few poison events for sure
WITH i AS (INSERT INTO ev (key, payload)
           SELECT 'poison-' || g, jsonb_build_object('poison', g) FROM generate_series(1, 3) g
           RETURNING id, key)
INSERT INTO produced SELECT id, key FROM i;
});

my $keys_sql = q{CASE WHEN random() < 0.05 THEN NULL ELSE 'k' || floor(random() * 200)::int END};
my $producer = qq{
\\set n random(1, 10)
\\set m random(1, 5)
\\set r random(1, 100)
\\set s random(1, 100)
\\set p random(1, 100)
BEGIN;
WITH i AS (INSERT INTO ev (key, payload)
           SELECT $keys_sql, jsonb_build_object('c', :client_id, 'n', g)
             FROM generate_series(1, :n) g
           RETURNING id, key)
INSERT INTO produced SELECT id, key FROM i;
SAVEPOINT s1;
WITH i AS (INSERT INTO ev (key, payload)
           SELECT $keys_sql, jsonb_build_object('sp', true)
             FROM generate_series(1, :m)
           RETURNING id, key)
INSERT INTO produced SELECT id, key FROM i;
\\if :s <= 30
ROLLBACK TO SAVEPOINT s1;
\\else
RELEASE SAVEPOINT s1;
\\endif
\\if :p <= 4
WITH i AS (INSERT INTO ev (key, payload)
           VALUES ('poison-' || (1 + floor(random() * 6)::int), jsonb_build_object('poison', :client_id))
           RETURNING id, key)
INSERT INTO produced SELECT id, key FROM i;
\\endif
SELECT pg_sleep(random() * 0.005);
\\if :r <= 20
ROLLBACK;
\\else
COMMIT;
\\endif
};

my $consumer = q{
\set r random(1, 100)
BEGIN;
INSERT INTO consumed (id, key) SELECT id, key FROM evstream.consume('ev', 'g', 50, wait => '20 ms');
\if :r > 50
INSERT INTO consumed (id, key) SELECT id, key FROM evstream.consume('ev', 'g', 20);
\endif
\if :r <= 10
ROLLBACK;
\else
COMMIT;
\endif
};

my $member = q{
\set n random(1, 50)
SELECT member_poll('m' || :client_id, :n) AS last \gset
\if :last > 0
SELECT pg_sleep(random() * 0.01);
SELECT member_commit('m' || :client_id, :last);
\endif
};

my $dlq_consumer = q{
BEGIN;
SELECT consume_dlq() AS r \gset
\if :r = 1
ROLLBACK;
\else
COMMIT;
\endif
};

my $t0 = time;
my @load = (
	start_pgbench($node, script => $producer, clients => 2, time => $LOAD_SECS, rate => 40),
	start_pgbench($node, script => $consumer, clients => 3, time => $LOAD_SECS),
	start_pgbench($node, script => $member, clients => 3, time => $LOAD_SECS),
	start_pgbench($node, script => $dlq_consumer, clients => 2, time => $LOAD_SECS));

sleep 2;

# --- a consumer killed while its transaction holds a shard
my $kc = $node->background_psql('postgres', on_error_stop => 0, timeout => 180);
my $kpid = $kc->query_safe('SELECT pg_backend_pid()');
$kc->query_safe('BEGIN');
my $kgot = 0;
for (1 .. 200)
{
	$kgot = $kc->query_safe(q{
WITH i AS (INSERT INTO consumed (id, key) SELECT id, key FROM evstream.consume('ev', 'g', 50) RETURNING 1)
SELECT count(*) FROM i});
	last if $kgot > 0;
	usleep(20_000);
}
cmp_ok($kgot, '>', 0, "the doomed consumer got events ($kgot) in its transaction");
my $kshard = $node->safe_psql('postgres', qq{
SELECT count(*) FROM pg_stat_activity WHERE pid = $kpid AND state = 'idle in transaction'});
is($kshard, '1', 'it is idle in its transaction');
is($node->safe_psql('postgres', "SELECT pg_terminate_backend($kpid)"), 't', 'killed it');
eval { $kc->quit; };
ok($node->poll_query_until('postgres', "SELECT count(*) = 0 FROM pg_stat_activity WHERE pid = $kpid"),
	'the killed backend is gone');

# --- a member that stalls past its lease
my $st = $node->background_psql('postgres', timeout => 180);
my ($scount, $slast) = (0, 0);
for (1 .. 200)
{
	($scount, $slast) = split /\|/, $st->query_safe(q{
SELECT count(*), coalesce(max(id), 0) FROM evstream.poll('ev', 'mg', 20, member => 'stalled', lease => '1 s')});
	last if $scount > 0;
	usleep(20_000);
}
cmp_ok($scount, '>', 0, "the stalling member got events ($scount, up to id $slast)");
my $sshard = $st->query_safe(q{
SELECT string_agg(shard::text, ',') FROM evstream.group_shards
 WHERE topic = 'ev'::regclass AND consumer_group = 'mg' AND member = 'stalled' AND lease_expires_at > clock_timestamp()});
like($sshard, qr/^\d+$/, "group_shards shows its lease, on one shard ($sshard)");
$sshard = -1 unless $sshard =~ /^\d+$/;
my $spos = $node->safe_psql('postgres', qq{
SELECT committed_id FROM evstream.group_shards WHERE topic = 'ev'::regclass AND consumer_group = 'mg' AND shard = $sshard});
sleep 2;
# the lease is over; wait until another member has claimed the shard (or
# committed past it): the pollers take the free shard with the oldest next
# event, which this one now is
ok( wait_until(
		sub {
			$node->safe_psql('postgres', qq{
SELECT (member IS NOT NULL AND member <> 'stalled') OR committed_id >= $slast
  FROM evstream.group_shards WHERE topic = 'ev'::regclass AND consumer_group = 'mg' AND shard = $sshard}) eq 't';
		},
		30),
	'another member took over the stalled member\'s shard');
my $before = $node->safe_psql('postgres', qq{
SELECT committed_id FROM evstream.group_shards WHERE topic = 'ev'::regclass AND consumer_group = 'mg' AND shard = $sshard});
my $outcome = $st->query_safe("SELECT member_commit('stalled', $slast)");
like($outcome, qr/^lost: .*lease lost/, "the stalled member's commit fails with 55000 lease lost ($outcome)");
my $after = $node->safe_psql('postgres', qq{
SELECT committed_id FROM evstream.group_shards WHERE topic = 'ev'::regclass AND consumer_group = 'mg' AND shard = $sshard});
cmp_ok($after, '>=', $before, "its shard's position did not go back ($spos at its poll, $before before, $after after)");
$st->quit;

my @rc = map { (finish_pgbench($_))[0] } @load;
is_deeply(\@rc, [ 0, 0, 0, 0 ], 'every producer, consumer, member and dead-lettering consumer ran without error')
  or diag(join("\n", map { ${ $_->{err} } } @load));
note 'producers: ' . ${ $load[0]{out} } =~ s/\n/ /gr;
note 'consumers: ' . ${ $load[1]{out} } =~ s/\n/ /gr;
note 'members: ' . ${ $load[2]{out} } =~ s/\n/ /gr;
note 'dlq consumers: ' . ${ $load[3]{out} } =~ s/\n/ /gr;

my $load_pids = $node->safe_psql('postgres', 'SELECT count(DISTINCT pid) FROM consumed');

# the newest ids belong to a rolled-back transaction
$node->safe_psql('postgres', q{BEGIN; INSERT INTO ev (key) VALUES ('rolled back'); ROLLBACK;});

# --- drain
my $drain_deadline = time + 120;
my $n;
do
{
	$n = $node->safe_psql('postgres', q{
WITH c AS (INSERT INTO consumed (id, key) SELECT id, key FROM evstream.consume('ev', 'g', 10000) RETURNING 1)
SELECT count(*) FROM c});
} while ($n > 0 && time < $drain_deadline);

# members: a pgbench member may have ended between poll and commit; its
# lease (2 s) runs out and the drainer takes over
ok( wait_until(
		sub {
			while ((my $last = $node->safe_psql('postgres', q{SELECT member_poll('drainer', 10000)})) > 0)
			{
				$node->safe_psql('postgres', "SELECT member_commit('drainer', $last)");
			}
			$node->safe_psql('postgres', q{
SELECT coalesce(sum(lag_events), 0) = 0 FROM evstream.group_shards WHERE topic = 'ev'::regclass AND consumer_group = 'mg'})
			  eq 't';
		},
		60),
	'the member group drained');

# dlqg: roll back every poison event until each one is dead-lettered
$node->safe_psql('postgres', q{
DO $$
DECLARE r int;
BEGIN
  FOR i IN 1 .. 1000000 LOOP
    r := consume_dlq('0');
    IF r = 1 THEN ROLLBACK; ELSE COMMIT; END IF;
    IF r = -1 THEN RETURN; END IF;
  END LOOP;
  RAISE EXCEPTION 'dlqg does not drain';
END $$});

my ($nprod, $npoison) = split /\|/, $node->safe_psql('postgres',
	q{SELECT count(*), count(*) FILTER (WHERE key LIKE 'poison%') FROM produced});
note "produced $nprod events, $npoison of them poison";
cmp_ok($nprod, '>', 1000, 'the load produced a fair number of events');
cmp_ok($npoison, '>=', 3, 'and poison events');
is($node->safe_psql('postgres', sets_equal_sql('SELECT id FROM ev', 'SELECT id FROM produced')),
	'0', 'the topic holds exactly the committed events');
is( $node->safe_psql('postgres',
		"SELECT count(DISTINCT evstream.shard_of('ev', key)) FROM produced WHERE key IS NOT NULL"),
	$SHARDS, 'the keys cover every shard');
is($node->safe_psql('postgres', q{SELECT shards FROM evstream.topics WHERE topic = 'ev'::regclass}),
	$SHARDS, "evstream.topics shows $SHARDS shards");

# --- g: exactly once, per key in order
is($node->safe_psql('postgres', 'SELECT count(*) - count(DISTINCT id) FROM consumed'),
	'0', 'g: no event consumed twice');
ids_equal('SELECT id FROM consumed', 'SELECT id FROM produced', 'g: consumed ids = committed ids',
	q{SELECT string_agg(format('seq %s pid %s', c.seq, c.pid), ', ') FROM consumed c WHERE c.id = x.id});
is( $node->safe_psql('postgres', q{
SELECT count(*) FROM (SELECT id, lag(id) OVER (PARTITION BY key ORDER BY seq) AS prev
                        FROM consumed WHERE key IS NOT NULL) x
 WHERE id < prev}),
	'0', 'g: per key, events were consumed in id order');
is($node->safe_psql('postgres', "SELECT count(*) FROM consumed WHERE pid = $kpid"),
	'0', 'g: nothing the killed consumer recorded stayed (its events went to others)');
is($load_pids, '3', 'g: the three pgbench consumers all did work during the load');
is( $node->safe_psql('postgres', q{
SELECT count(*), coalesce(sum(lag_events), -1) FROM evstream.group_shards WHERE topic = 'ev'::regclass AND consumer_group = 'g'}),
	"$SHARDS|0", 'g: group_shards shows every shard, none lagging');

# --- mg: at least once, never lost
is( $node->safe_psql('postgres',
		'SELECT count(*) FROM produced p WHERE NOT EXISTS (SELECT FROM member_seen s WHERE s.id = p.id)'),
	'0', 'mg: every committed event was seen by a member');
is( $node->safe_psql('postgres',
		'SELECT count(*) FROM member_seen s WHERE NOT EXISTS (SELECT FROM produced p WHERE p.id = s.id)'),
	'0', 'mg: members saw nothing that was not committed');
my ($mok, $mlost, $mseen, $mdistinct) = split /\|/, $node->safe_psql('postgres', q{
SELECT (SELECT count(*) FROM member_commits WHERE outcome = 'ok'),
       (SELECT count(*) FROM member_commits WHERE outcome <> 'ok'),
       (SELECT count(*) FROM member_seen), (SELECT count(DISTINCT id) FROM member_seen)});
note "mg: $mok commits, $mlost lost leases, $mseen events seen, $mdistinct distinct";
cmp_ok($mok, '>', 10, 'mg: members committed');
cmp_ok($node->safe_psql('postgres', q{SELECT count(DISTINCT member) FROM member_commits WHERE outcome = 'ok' AND member ~ '^m\d$'}),
	'==', 3, 'mg: all three pgbench members committed');

# --- dlqg: dead letters accounted for
is($node->safe_psql('postgres', 'SELECT count(*) - count(DISTINCT id) FROM dlq_consumed'),
	'0', 'dlqg: no event consumed twice');
ids_equal('SELECT id FROM dlq_consumed', q{SELECT id FROM produced WHERE key IS NULL OR key NOT LIKE 'poison%'},
	'dlqg: consumed ids = committed non-poison ids',
	q{SELECT format('key %s shard %s', e.key, evstream.shard_of('ev', e.key)) FROM ev e WHERE e.id = x.id});
is( $node->safe_psql('postgres', q{
SELECT count(*) FROM (SELECT id, lag(id) OVER (PARTITION BY key ORDER BY seq) AS prev
                        FROM dlq_consumed WHERE key IS NOT NULL) x
 WHERE id < prev}),
	'0', 'dlqg: per key, events were consumed in id order');
ids_equal(q{SELECT (payload->>'id')::bigint FROM dlq}, q{SELECT id FROM produced WHERE key LIKE 'poison%'},
	'dlqg: the dead-letter topic holds every committed poison event exactly once',
	q{SELECT format('key %s shard %s, dead letters: %s', e.key, evstream.shard_of('ev', e.key),
	                (SELECT string_agg(d.id || ' ' || d.payload::text, '; ') FROM dlq d WHERE (d.payload->>'id')::bigint = x.id))
	    FROM ev e WHERE e.id = x.id});
is( $node->safe_psql('postgres', q{
SELECT count(*) FROM dlq d LEFT JOIN ev o ON o.id = (d.payload->>'id')::bigint
 WHERE o.id IS NULL OR d.key IS DISTINCT FROM o.key OR d.payload->'payload' IS DISTINCT FROM o.payload
    OR (d.payload->>'created_at')::timestamptz IS DISTINCT FROM o.created_at
    OR d.payload->>'topic' IS DISTINCT FROM 'ev' OR d.payload->>'consumer_group' IS DISTINCT FROM 'dlqg'
    OR d.payload->>'attempts' IS DISTINCT FROM '2'}),
	'0', 'dlqg: each dead letter carries key, payload, created_at, topic, group and attempts = 2');
is( $node->safe_psql('postgres', q{
SELECT consumer_group || ':' || dead_lettered FROM evstream.consumer_groups
 WHERE topic = 'ev'::regclass ORDER BY consumer_group}),
	"dlqg:$npoison\ng:0\nmg:0", 'consumer_groups.dead_lettered counts the poison events of dlqg only');
is( $node->safe_psql('postgres', q{
SELECT coalesce(sum(lag_events), -1) FROM evstream.group_shards WHERE topic = 'ev'::regclass AND consumer_group = 'dlqg'}),
	'0', 'dlqg: drained');
is($node->safe_psql('postgres', q{SELECT shards FROM evstream.topics WHERE topic = 'dlq'::regclass}),
	'1', 'the dead-letter topic was created with one shard');

note sprintf('runtime %.1f s', time - $t0);
$node->stop;
done_testing();
