# Client examples (issue 9, item 7): examples/node-consumer.js
# (node-postgres) and examples/worker_pool.py (psycopg 3), run against a
# node while producers write to a topic with 8 shards.
#
# Not skipped when Node.js, node-postgres or psycopg 3 is missing: it fails
# (test/harness.sh installs them).
#
# Proves:
#   - node-consumer.js, 3 workers, consume(..., wait => '1 s') and the work
#     (an INSERT) in one transaction: every committed event is processed
#     exactly once, with its key, by at least two workers in parallel, and
#     per key in id order; a worker whose connection is killed with
#     pg_terminate_backend in mid-run, inside its transaction after consume
#     handed it events, reconnects and goes on (its events are delivered
#     again); SIGTERM stops it cleanly (exit 0);
#   - worker_pool.py, two pools of 2 members (host:pid:n) each, member poll
#     with a 2 s lease and commit with member, the work recorded in its own
#     transaction: every event is processed at least once, none is lost or
#     invented; every batch is one shard's, in id order; a pool stalled
#     (SIGSTOP) while holding leases loses them to the other pool, which
#     processes those events again, and on resuming its commits fail with
#     "lease lost" and it goes on; a member whose connection is killed
#     reconnects; SIGTERM: members release and the pool exits 0; both groups
#     end with no lag.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/../lib";
use EvsTest;
use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

my $t0 = time;
my $top = $ENV{EVSTREAM_TOP} // "$FindBin::Bin/../..";
my $node_js = "$top/examples/node-consumer.js";
my $pool_py = "$top/examples/worker_pool.py";

# ---------------------------------------------------------------- the clients' runtimes
my ($out, $err) = ('', '');
my $have_node = -f $node_js
  && IPC::Run::run([ 'node', '-e', 'require("pg")' ], '<', \undef, '>', \$out, '2>', \$err);
ok($have_node, 'node and node-postgres are installed, examples/node-consumer.js is there')
  or diag("NODE_PATH=" . ($ENV{NODE_PATH} // '') . ": $err");
($out, $err) = ('', '');
my $have_py = -f $pool_py
  && IPC::Run::run([ 'python3', '-c', 'import psycopg' ], '<', \undef, '>', \$out, '2>', \$err);
ok($have_py, 'psycopg 3 is installed, examples/worker_pool.py is there') or diag($err);
unless ($have_node && $have_py)
{
	done_testing();
	exit 1;
}

my $node = evs_node('clients');
$node->safe_psql('postgres', q{
CREATE EXTENSION evstream;
SELECT evstream.create_topic('ev', shards => 8);
-- node-consumer.js's work, in its consuming transactions (seq: the order
-- the work was done in)
CREATE TABLE processed (seq bigserial PRIMARY KEY, id bigint NOT NULL, key text, worker text NOT NULL);
CREATE INDEX ON processed (id);
-- worker_pool.py's work, in transactions of its own
CREATE TABLE delivered (seq bigserial PRIMARY KEY, id bigint NOT NULL, key text,
                        member text NOT NULL, batch int NOT NULL);
CREATE INDEX ON delivered (id);
});

# the clients connect with the libpq environment
$ENV{PGHOST} = $node->host;
$ENV{PGPORT} = $node->port;
$ENV{PGDATABASE} = 'postgres';
$ENV{PGUSER} = $node->safe_psql('postgres', 'SELECT current_user');

my $dir = $node->basedir;
my %log;

sub slurp_log
{
	my ($name) = @_;
	open(my $fh, '<', $log{$name}) or return '';
	local $/;
	my $text = <$fh>;
	close $fh;
	return $text;
}

# start a client in the background, stdout and stderr to $dir/$name.log
sub start_client
{
	my ($name, @cmd) = @_;
	$log{$name} = "$dir/$name.log";
	note "starting $name: @cmd";
	my $timer = IPC::Run::timeout(600);
	my $h = IPC::Run::start(\@cmd, '<', \undef, '>', $log{$name}, '2>&1', $timer);
	return { h => $h, timer => $timer, name => $name };
}

# SIGTERM, then wait (30 s at most) for the exit; returns the exit code
sub stop_client
{
	my ($c) = @_;
	$c->{h}->signal('TERM');
	$c->{timer}->start(30);
	my $ok = eval { $c->{h}->finish; 1 };
	unless ($ok)
	{
		diag("$c->{name} did not exit within 30 s after SIGTERM: $@");
		$c->{h}->kill_kill;
		return -1;
	}
	return $c->{h}->result(0);
}

sub q_lit { my ($s) = @_; $s =~ s/'/''/g; return "'$s'"; }

# ---------------------------------------------------------------- start everything
my $nodec;
{
	local $ENV{EVS_TABLE} = 'processed';
	local $ENV{EVS_BATCH} = '20';
	local $ENV{EVS_WAIT} = '1 s';
	$nodec = start_client('node', 'node', $node_js, 'ev', 'nodegrp', '3');
}
my @pool_args = ('ev', 'pygrp', '--workers', '2', '--batch', '20', '--wait', '1 s', '--lease', '2 s',
	'--table', 'delivered', '--work-ms', '30');
my $pool_a = start_client('pool_a', 'python3', $pool_py, @pool_args);
my $pool_b = start_client('pool_b', 'python3', $pool_py, @pool_args);

ok( $node->poll_query_until('postgres', q{
SELECT count(*) FILTER (WHERE application_name LIKE 'node-consumer %') = 3
   AND count(*) FILTER (WHERE application_name LIKE 'worker_pool %') = 4
  FROM pg_stat_activity}), 'the 3 Node workers and the 4 pool members are connected')
  or diag(slurp_log('node') . slurp_log('pool_a') . slurp_log('pool_b'));
my ($pid_a) = slurp_log('pool_a') =~ /worker_pool: pid (\d+):/;
ok($pid_a, "pool A says its pid ($pid_a)") or diag(slurp_log('pool_a'));

# producers: 2 pgbench clients, transactions of 1-6 events over several keys
# (a NULL key now and then), 10% rolled back
my $producer = start_pgbench($node, clients => 2, time => 120, rate => 40, script => q{
\set k random(0, 29)
\set n random(1, 6)
\set r random(1, 10)
BEGIN;
INSERT INTO ev (key, payload)
SELECT CASE WHEN g = 6 THEN NULL ELSE 'k' || ((:k + g * 7) % 30) END,
       jsonb_build_object('c', :client_id, 'g', g)
  FROM generate_series(1, :n) g;
SELECT pg_sleep(random() * 0.01);
\if :r = 1
ROLLBACK;
\else
COMMIT;
\endif
});

ok( $node->poll_query_until('postgres', q{
SELECT (SELECT count(*) FROM processed) > 50 AND (SELECT count(*) FROM delivered) > 50}),
	'both clients are processing events');

# ---------------------------------------------------------------- Node: kill a connection
# mid-transaction: a lock on processed holds the Node workers in their work
# (the INSERT), after consume() handed them events; one of them is killed
# there, so its transaction, events and work roll back together
my $locker = $node->background_psql('postgres');
$locker->query_safe('BEGIN; LOCK TABLE processed IN EXCLUSIVE MODE');
ok( $node->poll_query_until('postgres', q{
SELECT count(*) > 0 FROM pg_stat_activity
 WHERE application_name LIKE 'node-consumer %' AND wait_event_type = 'Lock' AND query LIKE 'INSERT INTO%'}),
	'a Node worker is doing its work inside its consuming transaction');
my ($victim, $victim_app) = split /\|/, $node->safe_psql('postgres', q{
SELECT pid, application_name FROM pg_stat_activity
 WHERE application_name LIKE 'node-consumer %' AND wait_event_type = 'Lock' AND query LIKE 'INSERT INTO%'
 ORDER BY backend_start LIMIT 1});
my ($victim_worker) = $victim_app =~ /^node-consumer (.*)$/;
my $before = $node->safe_psql('postgres', "SELECT count(*) FROM processed WHERE worker = " . q_lit($victim_worker));
is($node->safe_psql('postgres', "SELECT pg_terminate_backend($victim, 10000)"), 't',
	"pg_terminate_backend of Node worker $victim_worker (backend $victim) in its transaction");
$locker->query_safe('COMMIT');
$locker->quit;
ok( $node->poll_query_until('postgres',
		"SELECT count(*) = 1 FROM pg_stat_activity WHERE application_name = " . q_lit($victim_app) . " AND pid <> $victim"),
	'the Node worker reconnected')
  or diag(slurp_log('node'));
ok(wait_until(sub { slurp_log('node') =~ /\Q$victim_worker\E: .*reconnecting in \d+ ms/ }, 30),
	'and logged that it was reconnecting');
ok( $node->poll_query_until('postgres',
		"SELECT count(*) > $before FROM processed WHERE worker = " . q_lit($victim_worker)),
	'and processes events again');

# ---------------------------------------------------------------- Python: stall pool A
# Stop pool A while one of its members holds a live lease.  Once its
# connections have been idle for a moment, nothing of it is in flight and the
# server's leases are stable.
my $a_members = "member LIKE " . q_lit("%:$pid_a:%");
my @held;
my %held_pos;
for my $try (1 .. 10)
{
	$node->poll_query_until('postgres', qq{
SELECT count(*) > 0 FROM evstream.group_shards
 WHERE topic::text = 'ev' AND consumer_group = 'pygrp' AND $a_members AND lease_expires_at > now()});
	$pool_a->{h}->signal('STOP');
	$node->poll_query_until('postgres', qq{
SELECT bool_and(state = 'idle' AND clock_timestamp() - state_change > interval '0.2 s')
  FROM pg_stat_activity WHERE application_name LIKE 'worker_pool %:$pid_a:%'});
	my $rows = $node->safe_psql('postgres', qq{
SELECT shard, committed_id FROM evstream.group_shards
 WHERE topic::text = 'ev' AND consumer_group = 'pygrp' AND $a_members AND lease_expires_at > now()});
	for (split /\n/, $rows)
	{
		my ($s, $pos) = split /\|/;
		push @held, $s;
		$held_pos{$s} = $pos eq '' ? 0 : $pos;
	}
	last if @held;
	note "try $try: pool A held no lease once stopped; again";
	$pool_a->{h}->signal('CONT');
}
ok(scalar(@held), 'pool A stopped (SIGSTOP) while holding leases on shards ' . join(', ', @held));
my $moved = join(' OR ', map { "(shard = $_ AND committed_id > $held_pos{$_})" } @held) || 'false';
ok( $node->poll_query_until('postgres', qq{
SELECT count(*) = ${\ scalar(@held)} FROM evstream.group_shards
 WHERE topic::text = 'ev' AND consumer_group = 'pygrp' AND ($moved)}),
	'its leases expired and pool B took over those shards and committed on them')
  or diag($node->safe_psql('postgres', q{SELECT * FROM evstream.group_shards WHERE consumer_group = 'pygrp'}));
$pool_a->{h}->signal('CONT');
ok(wait_until(sub { my @l = slurp_log('pool_a') =~ /lease lost/g; @l >= @held }, 30),
	'resumed, pool A logs "lease lost" for each of its stale batches')
  or diag(slurp_log('pool_a'));
ok( $node->poll_query_until('postgres', qq{
SELECT count(*) > 0 FROM evstream.group_shards
 WHERE topic::text = 'ev' AND consumer_group = 'pygrp' AND $a_members AND lease_expires_at > now()}),
	'and then goes on: one of its members holds a lease again');

# ---------------------------------------------------------------- Python: kill a connection
my ($pvictim, $pvictim_app) = split /\|/, $node->safe_psql('postgres', q{
SELECT pid, application_name FROM pg_stat_activity
 WHERE application_name LIKE 'worker_pool %' ORDER BY backend_start DESC LIMIT 1});
is($node->safe_psql('postgres', "SELECT pg_terminate_backend($pvictim, 10000)"), 't',
	"pg_terminate_backend of pool member backend $pvictim");
ok( $node->poll_query_until('postgres',
		"SELECT count(*) = 1 FROM pg_stat_activity WHERE application_name = " . q_lit($pvictim_app) . " AND pid <> $pvictim"),
	'the pool member reconnected')
  or diag(slurp_log('pool_a') . slurp_log('pool_b'));

# ---------------------------------------------------------------- stop producing, drain
my ($prc, $pout, $perr) = stop_pgbench($producer);
note "producers: $pout";
# a producer's COMMIT in flight when pgbench stopped lands (or not) before
# its backend goes
ok( $node->poll_query_until('postgres', q{SELECT count(*) = 0 FROM pg_stat_activity WHERE application_name = 'pgbench'}),
	'the producers are gone');
my $events = $node->safe_psql('postgres', 'SELECT count(*) FROM ev');
cmp_ok($events, '>', 200, "$events events produced");
ok( $node->poll_query_until('postgres', q{
SELECT lag_events = 0 FROM evstream.consumer_groups WHERE topic::text = 'ev' AND consumer_group = 'nodegrp'}),
	'the Node group drained')
  or diag($node->safe_psql('postgres', q{SELECT * FROM evstream.consumer_groups}));
ok( $node->poll_query_until('postgres', q{
SELECT lag_events = 0 FROM evstream.consumer_groups WHERE topic::text = 'ev' AND consumer_group = 'pygrp'}),
	'the pool group drained')
  or diag($node->safe_psql('postgres', q{SELECT * FROM evstream.group_shards WHERE consumer_group = 'pygrp'}));

is(stop_client($nodec), 0, 'node-consumer.js exits 0 on SIGTERM') or diag(slurp_log('node'));
like(slurp_log('node'), qr/SIGTERM: finishing/, 'after finishing its transactions');
is(stop_client($pool_a), 0, 'pool A exits 0 on SIGTERM') or diag(slurp_log('pool_a'));
is(stop_client($pool_b), 0, 'pool B exits 0 on SIGTERM') or diag(slurp_log('pool_b'));
my @released = (slurp_log('pool_a') . slurp_log('pool_b')) =~ /: released$/mg;
is(scalar(@released), 4, 'every member released its leases on the way out');
is($node->safe_psql('postgres', q{
SELECT count(*) FROM evstream.group_shards
 WHERE topic::text = 'ev' AND consumer_group = 'pygrp' AND lease_expires_at > now()}), '0',
	'no live lease is left');

# ---------------------------------------------------------------- Node: exactly once
is($node->safe_psql('postgres', sets_equal_sql('SELECT id FROM ev', 'SELECT id FROM processed')), '0',
	'Node: every committed event processed exactly once')
  or diag($node->safe_psql('postgres', q{
SELECT 'duplicates', count(*) FROM (SELECT id FROM processed GROUP BY id HAVING count(*) > 1) d
UNION ALL SELECT 'missing', count(*) FROM ev WHERE NOT EXISTS (SELECT FROM processed p WHERE p.id = ev.id)}));
is($node->safe_psql('postgres', q{
SELECT count(*) FROM processed p JOIN ev USING (id) WHERE p.key IS DISTINCT FROM ev.key}), '0',
	'Node: with their keys');
is($node->safe_psql('postgres', q{
SELECT count(*) FROM (SELECT id, lag(id) OVER (PARTITION BY key ORDER BY seq) AS prev
                        FROM processed WHERE key IS NOT NULL) s WHERE prev > id}), '0',
	'Node: per key in id order');
cmp_ok($node->safe_psql('postgres', 'SELECT count(DISTINCT worker) FROM processed'), '>=', 2,
	'Node: by several workers in parallel');

# ---------------------------------------------------------------- Python: at least once
is($node->safe_psql('postgres', q{
SELECT count(*) FROM ev WHERE NOT EXISTS (SELECT FROM delivered d WHERE d.id = ev.id)}), '0',
	'pool: every event processed at least once, none lost');
is($node->safe_psql('postgres', q{
SELECT count(*) FROM delivered d WHERE NOT EXISTS (SELECT FROM ev WHERE ev.id = d.id AND ev.key IS NOT DISTINCT FROM d.key)}),
	'0', 'pool: none invented, with their keys');
is($node->safe_psql('postgres', q{
SELECT count(*) FROM (SELECT id, lag(id) OVER (PARTITION BY member, batch ORDER BY seq) AS prev
                        FROM delivered) s WHERE prev >= id}), '0',
	'pool: each batch in id order (so per key too)');
is($node->safe_psql('postgres', q{
SELECT count(*) FROM (SELECT member, batch FROM delivered WHERE key IS NOT NULL GROUP BY 1, 2
                      HAVING count(DISTINCT evstream.shard_of('ev', key)) > 1) s}), '0',
	"pool: each batch is one shard's");
my $dups = $node->safe_psql('postgres', q{SELECT count(*) - count(DISTINCT id) FROM delivered});
cmp_ok($dups, '>', 0, "pool: the stalled pool's batches were processed twice ($dups events): at least once, not exactly once");
cmp_ok($node->safe_psql('postgres', 'SELECT count(DISTINCT member) FROM delivered'), '>=', 3,
	'pool: by members of both pools');

note sprintf('120_clients: %.1f s', time - $t0);
$node->stop;
done_testing();
