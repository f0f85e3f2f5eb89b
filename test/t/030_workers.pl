# Background workers (issue 4): lifecycle, SIGHUP, premake and retention with
# 1-second partitions, DROP DATABASE, producers while no worker runs.
#
# Proves:
#   - one launcher; CREATE EXTENSION in two databases gives each exactly one
#     worker within seconds, none for a database without the extension;
#     evstream.workers lists them with the pids of pg_stat_activity;
#   - pg_terminate_backend(worker) and kill -9 of a worker: a new worker (new
#     pid) comes back; the other database's worker is left alone by the
#     terminate;
#   - DROP EXTENSION stops the database's worker within seconds, CREATE
#     EXTENSION again brings it back;
#   - SIGHUP: evstream.maintenance_interval lowered by ALTER SYSTEM +
#     pg_reload_conf makes maintenance run every second; evstream.premake
#     raised the same way makes more partitions ahead;
#   - with partition_interval 1 s, retention 3 s, maintenance every 1 s:
#     partitions are kept ahead of now, old ones are dropped, last_error
#     stays NULL while a producer runs; a group behind retention continues
#     from the oldest retained event, a new group starts there too;
#   - DROP DATABASE of a database with the extension (and its worker) works;
#   - with no worker at all (max_worker_processes = 1: only the launcher
#     fits) producers, consumers and aggregates keep working; events whose
#     partition does not exist land in the default partition; when the
#     worker is back it premakes again without error, the events that were
#     in the default partition stay exactly once with their ids (no
#     redelivery), the aggregate stays exact and notifications resume;
#   (kill -9 needs restart_after_crash = on, set for this node.)
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/../lib";
use EvsTest;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

my $t0 = time;
# restart_after_crash: the kill -9 below must crash-restart the server, not stop it
my $node = evs_node('workers', "evstream.maintenance_interval = '3600s'", 'restart_after_crash = on');

my $evs_pids_sql = q{SELECT string_agg(backend_type || ':' || pid, ',' ORDER BY backend_type, pid)
  FROM pg_stat_activity WHERE backend_type LIKE 'evstream%'};

# ALTER SYSTEM + reload; the launcher and the workers must survive it
sub reload_with
{
	my ($setting) = @_;
	my $before = $node->safe_psql('postgres', $evs_pids_sql);
	$node->safe_psql('postgres', "ALTER SYSTEM SET $setting");
	$node->safe_psql('postgres', 'SELECT pg_reload_conf()');
	# the reload has been processed once the new value is visible to a new session
	my ($name, $value) = $setting =~ /^(\S+)\s*=\s*'?([^']*)'?$/;
	$node->poll_query_until('postgres', "SELECT current_setting('$name') = '$value'")
	  or diag("reload of $setting not seen");
	# and give the background processes a moment to act on SIGHUP
	$node->safe_psql('postgres', 'SELECT pg_sleep(0.5)');
	is($node->safe_psql('postgres', $evs_pids_sql), $before,
		"SIGHUP ($setting): launcher and worker pids unchanged (nothing crashed)");
}

sub worker_pid
{
	my ($db) = @_;
	return $node->safe_psql('postgres',
		"SELECT string_agg(pid::text, ',') FROM pg_stat_activity WHERE backend_type = 'evstream worker' AND datname = '$db'"
	);
}

# ---------------------------------------------------------------- lifecycle
is( $node->safe_psql('postgres',
		"SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'evstream launcher'"),
	'1',
	'one launcher');

$node->safe_psql('postgres', 'CREATE DATABASE db1');
$node->safe_psql('postgres', 'CREATE DATABASE db2');
my $t = time;
$node->safe_psql('db1', 'CREATE EXTENSION evstream');
$node->safe_psql('db2', 'CREATE EXTENSION evstream');
ok( $node->poll_query_until(
		'postgres', q{
SELECT count(*) FILTER (WHERE datname = 'db1') = 1 AND count(*) FILTER (WHERE datname = 'db2') = 1
  FROM pg_stat_activity WHERE backend_type = 'evstream worker'}),
	'CREATE EXTENSION in two databases: one worker each');
my $elapsed = time - $t;
cmp_ok($elapsed, '<', 10, sprintf('the workers came within seconds (%.1f s)', $elapsed));
is(worker_pid('postgres'), '', 'no worker for a database without the extension');
is( $node->safe_psql('db1', q{
SELECT string_agg(w.database || ':' || (w.pid = a.pid), ',' ORDER BY w.database)
  FROM evstream.workers w LEFT JOIN pg_stat_activity a ON a.pid = w.pid AND a.backend_type = 'evstream worker'}),
	'db1:true,db2:true',
	'evstream.workers lists both workers with their pids');

# terminate -> a new pid
my ($pid1, $pid2) = (worker_pid('db1'), worker_pid('db2'));
$node->safe_psql('postgres', "SELECT pg_terminate_backend($pid1)");
ok( $node->poll_query_until(
		'postgres',
		"SELECT count(*) = 1 AND min(pid) <> $pid1 FROM pg_stat_activity WHERE backend_type = 'evstream worker' AND datname = 'db1'"
	),
	'pg_terminate_backend(worker): a new worker comes back');
is(worker_pid('db2'), $pid2, "the other database's worker was left alone");

# DROP EXTENSION -> gone; CREATE EXTENSION -> back
$t = time;
$node->safe_psql('db2', 'DROP EXTENSION evstream');
ok( $node->poll_query_until(
		'postgres',
		"SELECT count(*) = 0 FROM pg_stat_activity WHERE backend_type = 'evstream worker' AND datname = 'db2'"),
	'DROP EXTENSION: the worker stops');
$elapsed = time - $t;
cmp_ok($elapsed, '<', 10, sprintf('within seconds (%.1f s)', $elapsed));
is($node->safe_psql('db1', q{SELECT count(*) FROM evstream.workers WHERE database = 'db2'}),
	'0', 'evstream.workers no longer lists it');
$node->safe_psql('db2', 'CREATE EXTENSION evstream');
ok( $node->poll_query_until(
		'postgres',
		"SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'evstream worker' AND datname = 'db2'"),
	'CREATE EXTENSION again: the worker is back');

# ---------------------------------------------------------------- SIGHUP
my $lm_sql = q{SELECT last_maintenance FROM evstream.workers WHERE database = 'db1'};
ok($node->poll_query_until('db1', "SELECT ($lm_sql) IS NOT NULL"),
	'the worker ran maintenance once at start');
my $lm0 = $node->safe_psql('db1', $lm_sql);
sleep 3;    # a negative check: nothing may happen with a 3600 s interval
is($node->safe_psql('db1', $lm_sql), $lm0,
	'maintenance_interval = 3600s: no further maintenance pass');
reload_with(q{evstream.maintenance_interval = '1s'});
ok($node->poll_query_until('db1', "SELECT ($lm_sql) > '$lm0'"),
	'after ALTER SYSTEM + pg_reload_conf maintenance runs again');
my $lm1 = $node->safe_psql('db1', $lm_sql);
$t = time;
ok($node->poll_query_until('db1', "SELECT ($lm_sql) > '$lm1'"), 'and again');
cmp_ok(time - $t, '<', 5, 'every second or so');

# ---------------------------------------------------------------- premake and retention
$node->safe_psql('db1', q{
SELECT evstream.create_topic('r', partition_interval => '1 second', retention => '3 seconds');
CREATE TABLE produced (id bigint NOT NULL, created_at timestamptz NOT NULL);
});
my $first = $node->safe_psql('db1', q{
WITH i AS (INSERT INTO r (key) VALUES ('first') RETURNING id, created_at) INSERT INTO produced SELECT id, created_at FROM i RETURNING id});
is($node->safe_psql('db1', q{SELECT id FROM evstream.consume('r', 'slow', 1)}),
	$first, 'group slow consumed the first event');

my $prod = start_pgbench(
	$node,
	db => 'db1',
	script => q{WITH i AS (INSERT INTO r (key, payload) VALUES ('k' || :client_id, '{}') RETURNING id, created_at) INSERT INTO produced SELECT id, created_at FROM i;},
	clients => 2,
	rate => 40,
	time => 12);

# sample the state while the producer runs
my ($samples, $not_ahead, $too_old, $errors) = (0, 0, 0, 0);
my $dropped_first = 0;
my $deadline = time + 9;
while (time < $deadline)
{
	my ($ahead, $old, $err, $gone) = split /\|/, $node->safe_psql(
		'db1', qq{
SELECT EXISTS (SELECT 1 FROM evstream._partitions('r') p
                WHERE NOT p.is_default AND p.lo <= now() + interval '1 second' AND p.hi > now() + interval '1 second'),
       (SELECT count(*) FROM evstream._partitions('r') p
         WHERE NOT p.is_default AND p.hi < clock_timestamp() - interval '3 seconds' - interval '3 seconds'),
       (SELECT count(*) FROM evstream.workers WHERE database = 'db1' AND last_error IS NOT NULL),
       NOT EXISTS (SELECT 1 FROM r WHERE id = $first)});
	$samples++;
	$not_ahead++ if $ahead ne 't';
	$too_old++ if $old ne '0';
	$errors++ if $err ne '0';
	$dropped_first = 1 if $gone eq 't';
	usleep(250_000);
}
cmp_ok($samples, '>', 10, "sampled the topic $samples times while producing");
is($not_ahead, 0, 'a partition for now() + 1 s always existed (premake)');
is($too_old, 0, 'no partition older than retention + slack was ever left');
is($errors, 0, 'evstream.workers.last_error stayed NULL');
ok($dropped_first, 'retention dropped the first event');
is( $node->safe_psql('db1', q{SELECT count(*) FROM evstream._partitions('r') p WHERE p.is_default}),
	'1', 'the default partition is kept');

# premake through SIGHUP
reload_with(q{evstream.premake = 6});
ok( $node->poll_query_until(
		'db1', q{
SELECT EXISTS (SELECT 1 FROM evstream._partitions('r') p
                WHERE NOT p.is_default AND p.lo <= now() + interval '5 seconds' AND p.hi > now() + interval '5 seconds')}),
	'evstream.premake = 6 after reload: partitions 5 s ahead');

# a group behind retention continues from the oldest retained event; a new
# group starts there.  min(id) and consume run in one transaction, which
# keeps retention from dropping partitions in between.
my $out = $node->safe_psql('db1', q{
BEGIN;
SELECT min(id) FROM r;
SELECT id FROM evstream.consume('r', 'slow', 1);
SELECT id FROM evstream.poll('r', 'fresh', 1);
COMMIT;});
my ($oldest, $slow_next, $fresh_next) = split /\n/, $out;
cmp_ok($oldest, '>', $first, "retention dropped events up to $oldest");
is($slow_next, $oldest, 'the group behind retention continues from the oldest retained event');
is($fresh_next, $oldest, 'a new group starts at the oldest retained event');
is( $node->safe_psql('db1',
		q{SELECT committed_id FROM evstream.consumer_groups WHERE topic = 'r'::regclass AND consumer_group = 'slow'}),
	$oldest, 'its position moved there');

my ($rc, $pout, $perr) = finish_pgbench($prod);
is($rc, 0, 'the producer never failed while maintenance ran every second') or diag($perr);
my ($missing_new, $missing_old) = split /\|/, $node->safe_psql('db1', q{
SELECT count(*) FILTER (WHERE p.created_at >= b.lo), count(*) FILTER (WHERE p.created_at < b.lo)
  FROM produced p,
       (SELECT min(lo) AS lo FROM evstream._partitions('r') WHERE NOT is_default) b
 WHERE NOT EXISTS (SELECT 1 FROM r WHERE r.id = p.id)});
is($missing_new, '0', 'retention dropped whole partitions only: every event of a retained partition is there');
cmp_ok($missing_old, '>', 0, "and only events older than the oldest partition are gone ($missing_old)");
is($node->safe_psql('db1', q{SELECT count(*) FROM evstream.workers WHERE last_error IS NOT NULL}),
	'0', 'no maintenance error');

# ---------------------------------------------------------------- kill -9 of a worker
$pid1 = worker_pid('db1');
kill 'KILL', $pid1;
ok( $node->poll_query_until(
		'postgres',
		"SELECT count(*) = 1 AND min(pid) <> $pid1 FROM pg_stat_activity WHERE backend_type = 'evstream worker' AND datname = 'db1'"
	),
	'kill -9 of a worker (crash restart): a new worker comes back');

# ---------------------------------------------------------------- DROP DATABASE
$node->safe_psql('db2', q{SELECT evstream.create_topic('t'); INSERT INTO t (key) VALUES ('x');});
ok( $node->poll_query_until(
		'postgres',
		"SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'evstream worker' AND datname = 'db2'"),
	'db2 has its worker');
my ($ret, $stdout, $stderr) = $node->psql('postgres', 'DROP DATABASE db2');
is($ret, 0, 'DROP DATABASE of a database with the extension and a worker succeeds')
  or diag($stderr);
ok( $node->poll_query_until(
		'postgres',
		"SELECT count(*) = 0 FROM pg_stat_activity WHERE backend_type = 'evstream worker' AND datname = 'db2'"),
	'its worker is gone');
is($node->safe_psql('db1', 'SELECT count(*) FROM evstream.workers'), '1',
	'evstream.workers lists only db1');
is(worker_pid('db1') ne '', 1, 'the worker of db1 still runs');

# ---------------------------------------------------------------- no worker at all
$node->safe_psql('postgres', q{ALTER SYSTEM SET evstream.premake = 2});
$node->safe_psql('postgres', q{ALTER SYSTEM SET max_worker_processes = 1});
# else the logical replication launcher may take the only slot
$node->safe_psql('postgres', q{ALTER SYSTEM SET max_logical_replication_workers = 0});
$node->restart;
ok( $node->poll_query_until('postgres',
		"SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'evstream launcher'"),
	'max_worker_processes = 1 (no logical replication): the launcher runs');
# give the launcher a few tries at starting a worker
ok( $node->poll_query_until(
		'postgres', q{SELECT now() - pg_postmaster_start_time() > interval '3 seconds'}),
	'waited 3 s after start');
is(worker_pid('db1'), '', 'and no worker can start');

$node->safe_psql('db1', q{
SELECT evstream.create_topic('down', partition_interval => '1 second');
SELECT evstream.create_aggregate('down_counts', 'down');
CREATE TABLE down_produced (id bigint NOT NULL);
});
ok( $node->poll_query_until(
		'db1', q{SELECT clock_timestamp() > (SELECT max(hi) FROM evstream._partitions('down')) + interval '200 ms'
                    AND clock_timestamp() > (SELECT max(hi) FROM evstream._partitions('r')) + interval '200 ms'}),
	'time moved past the partitions made ahead');
my $ids = $node->safe_psql('db1', q{
WITH i AS (INSERT INTO down (key) SELECT 'k' || g % 3 FROM generate_series(1, 30) g RETURNING id)
INSERT INTO down_produced SELECT id FROM i RETURNING id});
my @ids = split /\n/, $ids;
is(scalar(@ids), 30, 'INSERT with no partition for now() and no worker succeeds');
$node->safe_psql('db1', qq{COPY down (key, payload) FROM PROGRAM 'printf "a\\t{}\\nb\\t{}\\n"'});
$node->safe_psql('db1',
	q{INSERT INTO down_produced SELECT id FROM down WHERE id NOT IN (SELECT id FROM down_produced)});
is( $node->safe_psql('db1', q{SELECT string_agg(DISTINCT tableoid::regclass::text, ',') FROM down}),
	'down_default', 'the events landed in the default partition');
is( $node->safe_psql('db1',
		sets_equal_sql('SELECT group_key, count FROM down_counts', 'SELECT key, count(*) FROM down GROUP BY 1')),
	'0',
	'the aggregate is exact without the worker (unmerged deltas)');
is($node->safe_psql('db1', q{SELECT count(*) FROM evstream.consume('down', 'g', 1000)}),
	'32', 'consume returns all of them');
is( $node->safe_psql('db1', q{SELECT evstream.stable_id('down') = max(id) FROM down}),
	't', 'stable_id = max(id)');
$node->safe_psql('db1', q{INSERT INTO r (key) VALUES ('no worker')});
is( $node->safe_psql('db1', q{SELECT tableoid::regclass FROM r WHERE key = 'no worker'}),
	'r_default', 'the 1-second retention topic takes events too');

# the worker comes back
$node->safe_psql('postgres', q{ALTER SYSTEM RESET max_worker_processes});
$node->safe_psql('postgres', q{ALTER SYSTEM RESET max_logical_replication_workers});
$node->restart;
ok( $node->poll_query_until(
		'postgres',
		"SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'evstream worker' AND datname = 'db1'"),
	'max_worker_processes back: the worker starts');
ok( $node->poll_query_until(
		'db1', q{
SELECT EXISTS (SELECT 1 FROM evstream._partitions('down') p
                WHERE NOT p.is_default AND p.lo <= now() + interval '1 second' AND p.hi > now() + interval '1 second')}),
	'it premakes partitions for the topic again');
is($node->safe_psql('db1', q{SELECT count(*) FROM evstream.workers WHERE last_error IS NOT NULL}),
	'0', 'without maintenance errors');
# whatever maintenance does with the events in the default partition, they
# stay exactly once, with their ids, and nobody gets them twice
$node->poll_query_until('db1', q{SELECT count(*) = 0 FROM down_default})
  and note 'maintenance moved the events out of the default partition';
is( $node->safe_psql('db1', sets_equal_sql('SELECT id FROM down', 'SELECT id FROM down_produced')),
	'0', 'after maintenance every event is still there exactly once with its id');
is($node->safe_psql('db1', q{SELECT count(*) FROM evstream.consume('down', 'g', 1000)}),
	'0', 'the group that consumed them gets none of them again');
is($node->safe_psql('db1', q{SELECT count(*) FROM evstream.poll('down', 'new group', 1000)}),
	'32', 'a new group reads each of them once');
my $listener = listen_session($node, 'db1', 'down');
my $newid = $node->safe_psql('db1', q{INSERT INTO down (key) VALUES ('back') RETURNING id});
my $notes = collect_notifications($listener, sub { grep { $_->{payload} =~ /"last_id": $newid\b/ } @{ $_[0] } }, 30);
ok((grep { $_->{payload} =~ /"last_id": $newid\b/ } @$notes), 'notifications resume')
  or diag(explain $notes);
$listener->quit;
ok( $node->poll_query_until('db1', q{SELECT count(*) = 0 FROM evstream._delta}),
	'the worker merges the deltas written while it was away');
is( $node->safe_psql('db1',
		sets_equal_sql('SELECT group_key, count FROM down_counts', 'SELECT key, count(*) FROM down GROUP BY 1')),
	'0',
	'and the aggregate is still exact');

note sprintf('runtime %.1f s', time - $t0);
$node->stop;
done_testing();
