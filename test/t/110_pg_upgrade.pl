# pg_upgrade of a cluster with evstream databases (SPEC, Lifecycle).
#
# Same major version (the harness's install as old and new binaries), the
# way PostgreSQL's own src/bin/pg_upgrade/t/002_pg_upgrade.pl drives it:
# old cluster stopped, a fresh initdb'd new cluster with the same settings
# (evstream preloaded: the extension's script checks it), pg_upgrade
# --check, then the real run.  Proves:
#   - pg_upgrade --check and pg_upgrade accept the cluster (evstream's
#     catalog: regclass / regrole columns, config tables, the table access
#     method, the event trigger, the revoked sequence privileges);
#   - the upgraded cluster has the same events (ids, keys, payloads,
#     created_at), topics, group positions, counts and output-topic events,
#     in two databases;
#   - it works: ids continue after the last one ever handed out, groups
#     consume on from their positions, aggregates stay exact after new
#     inserts and a merge, the output topic publishes, a LISTEN session is
#     notified, the worker maintains without errors, UPDATE and setval back
#     are still refused.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/../lib";
use EvsTest;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

my $t0 = time;
die 'EVSTREAM_BIN is not set: run through test/harness.sh (make test)'
  unless $ENV{EVSTREAM_BIN} && -x "$ENV{EVSTREAM_BIN}/pg_upgrade";
my $bindir = $ENV{EVSTREAM_BIN};

my @conf = (
	"shared_preload_libraries = 'evstream'",
	"max_worker_processes = 16",
	"max_connections = 50",
	"log_line_prefix = '%m [%p] %b '",
	"evstream.maintenance_interval = '2s'");

my $old = evs_node('old', "evstream.maintenance_interval = '2s'");
my @dbs = ('app', 'other');
$old->safe_psql('postgres', "CREATE DATABASE $_") for @dbs;

$old->safe_psql('app', q{
CREATE ROLE alice LOGIN;
GRANT CREATE ON SCHEMA public TO alice;
CREATE EXTENSION evstream;
CREATE SCHEMA s AUTHORIZATION alice;
SET ROLE alice;
SELECT evstream.create_topic('ev', partition_interval => '1 hour');
SELECT evstream.create_topic('s.logs', retention => '30 days', notify => false);
INSERT INTO ev (key, payload)
SELECT 'k' || g % 7, jsonb_build_object('w', 'w' || g % 3, 'g', g) FROM generate_series(1, 1000) g;
INSERT INTO s.logs (key, payload) SELECT NULL, jsonb_build_object('n', g) FROM generate_series(1, 10) g;
SELECT evstream.create_aggregate('by_key', 'ev', output_topic => 'key_counts');
SELECT evstream.create_aggregate('s.by_w', 'ev', group_by => $$payload->>'w'$$, bucket => '1 hour');
INSERT INTO ev (key, payload) SELECT 'k' || g % 5, jsonb_build_object('w', 'w' || g % 4) FROM generate_series(1, 200) g;
SELECT count(*) FROM evstream.consume('ev', 'g1', 300);
SELECT evstream.commit('ev', 'g2', 500);
SELECT evstream.seek('ev', 'g3', 100);
SELECT count(*) FROM evstream.consume('s.logs', 'c1', 4);
RESET ROLE;
SELECT evstream.create_topic('sys');
INSERT INTO sys (key) SELECT 's' || g FROM generate_series(1, 20) g;
SELECT count(*) FROM evstream.consume('sys', 's1', 15);
});
$old->safe_psql('app', q{SELECT evstream._merge_deltas()});
# rolled-back ids go through the upgrade too
$old->safe_psql('app', q{SET ROLE alice; INSERT INTO ev (key, payload) VALUES ('k1', '{"w": "w1"}'), ('k8', '{"w": "w8"}')});
$old->safe_psql('app', q{BEGIN; INSERT INTO ev (key) SELECT 'gone' FROM generate_series(1, 5); ROLLBACK;});
$old->safe_psql('other', q{
CREATE EXTENSION evstream;
SELECT evstream.create_topic('o');
INSERT INTO o (key) SELECT 'o' || g % 3 FROM generate_series(1, 50) g;
SELECT evstream.create_aggregate('o_counts', 'o');
SELECT count(*) FROM evstream.consume('o', 'og', 20);
});

my %snap = (
	events => q{SELECT md5(string_agg(format('%s|%s|%s|%s', id, key, payload, created_at), ',' ORDER BY id)) FROM ev},
	logs => q{SELECT md5(string_agg(format('%s|%s|%s|%s', id, key, payload, created_at), ',' ORDER BY id)) FROM s.logs},
	key_counts => q{SELECT md5(string_agg(format('%s|%s|%s|%s', id, key, payload, created_at), ',' ORDER BY id)) FROM key_counts},
	groups => q{SELECT string_agg(format('%s/%s=%s@%s by %s', topic, consumer_group, committed_id, updated_at, owner), ',' ORDER BY topic::text, consumer_group) FROM evstream.consumer_groups},
	by_key => q{SELECT string_agg(format('%s=%s', group_key, count), ',' ORDER BY group_key) FROM by_key},
	by_w => q{SELECT string_agg(format('%s@%s=%s', group_key, bucket_start, count), ',' ORDER BY group_key, bucket_start) FROM s.by_w},
	deltas => q{SELECT count(*) FROM evstream._delta},
	aggregates => q{SELECT string_agg(format('%s|%s|%s|%s|%s|%s|%s', name, topic, group_by, bucket, output_topic, notify, groups), ',' ORDER BY name::text) FROM evstream.aggregates},
	topics => q{SELECT string_agg(format('%s|%s|%s|%s|%s|%s|%s|%s', topic, partitions, first_id, last_id, stable_id, retention, partition_interval, notify), ',' ORDER BY topic::text) FROM evstream.topics},
	topic_catalog => q{SELECT string_agg(format('%s|%s|%s|%s|%s', topic, partition_interval, retention, notify, created), ',' ORDER BY topic::text) FROM evstream._topic},
	seq_acl => q{SELECT string_agg(format('%s:%s', c.relname, c.relacl), ',' ORDER BY c.relname) FROM pg_class c WHERE c.relkind = 'S' AND c.relname LIKE '%id_seq'},
);
my %osnap = (
	events => q{SELECT md5(string_agg(format('%s|%s|%s|%s', id, key, payload, created_at), ',' ORDER BY id)) FROM o},
	groups => q{SELECT string_agg(format('%s/%s=%s', topic, consumer_group, committed_id), ',' ORDER BY consumer_group) FROM evstream.consumer_groups},
	counts => q{SELECT string_agg(format('%s=%s', group_key, count), ',' ORDER BY group_key) FROM o_counts},
);
# the worker folds the last deltas within 250 ms (and publishes them to the
# output topic): let it, so that the snapshot is of a settled state
ok($old->poll_query_until('app', 'SELECT count(*) = 0 FROM evstream._delta'), 'old: the worker merged every delta');
my %before = map { $_ => $old->safe_psql('app', $snap{$_}) } keys %snap;
my %obefore = map { $_ => $old->safe_psql('other', $osnap{$_}) } keys %osnap;
my $last_handed = $old->safe_psql('app', q{SELECT evstream.stable_id('ev')});
is($last_handed, $old->safe_psql('app', 'SELECT max(id) + 5 FROM ev'), 'old: stable_id counts the rolled-back ids');
my $kc_max = $old->safe_psql('app', q{SELECT max(id) FROM key_counts});
my $g1 = $old->safe_psql('app', q{SELECT committed_id FROM evstream.consumer_groups WHERE consumer_group = 'g1'});
$old->stop;

# ---------------------------------------------------------------- pg_upgrade
my $new = PostgreSQL::Test::Cluster->new('new');
$new->init;
$new->append_conf('postgresql.conf', join("\n", @conf) . "\n");

# pg_upgrade writes its scripts and logs into the current directory
chdir ${PostgreSQL::Test::Utils::tmp_check};
my @upgrade = (
	'pg_upgrade', '--no-sync',
	'-d', $old->data_dir, '-D', $new->data_dir,
	'-b', $bindir, '-B', $bindir,
	'-s', $new->host, '-p', $old->port, '-P', $new->port);

sub upgrade_logs
{
	my $dir = $new->data_dir . '/pg_upgrade_output.d';
	return '' unless -d $dir;
	my $out = '';
	for my $f (split /\n/, `find '$dir' -type f \\( -name '*.log' -o -name '*.txt' \\)`)
	{
		$out .= "=== $f\n" . slurp_file($f) . "\n";
	}
	return $out;
}

my ($stdout, $stderr) = ('', '');
my $ok = IPC::Run::run([ @upgrade, '--check' ], '>', \$stdout, '2>', \$stderr);
ok($ok, 'pg_upgrade --check accepts the cluster')
  or diag("stdout:\n$stdout\nstderr:\n$stderr\n" . upgrade_logs());
like($stdout, qr/Clusters are compatible/, 'pg_upgrade --check: "Clusters are compatible"');

($stdout, $stderr) = ('', '');
$ok = IPC::Run::run(\@upgrade, '>', \$stdout, '2>', \$stderr);
ok($ok, 'pg_upgrade succeeds')
  or diag("stdout:\n$stdout\nstderr:\n$stderr\n" . upgrade_logs());
ok(!-d $new->data_dir . '/pg_upgrade_output.d', 'pg_upgrade removed its output directory (success)')
  or diag(upgrade_logs());
BAIL_OUT('pg_upgrade failed, nothing to check') unless $ok;

$new->start;

# ---------------------------------------------------------------- same data
for my $k (sort keys %snap)
{
	is($new->safe_psql('app', $snap{$k}), $before{$k}, "upgraded: $k identical");
}
for my $k (sort keys %osnap)
{
	is($new->safe_psql('other', $osnap{$k}), $obefore{$k}, "upgraded, database other: $k identical");
}
is($new->safe_psql('app', q{SELECT extversion FROM pg_extension WHERE extname = 'evstream'}),
	'0.2', 'extension version kept');
is( $new->safe_psql('app', q{
SELECT count(*) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_am a ON a.oid = c.relam
 WHERE i.inhparent IN (SELECT topic FROM evstream._topic) AND a.amname <> 'evstream'}),
	'0', 'every partition still uses the evstream access method');

# ---------------------------------------------------------------- it works
ok( $new->poll_query_until(
		'postgres',
		q{SELECT count(*) = 2 FROM pg_stat_activity WHERE backend_type = 'evstream worker' AND datname IN ('app', 'other')}),
	'both databases have their worker');

is($new->safe_psql('app', q{SELECT evstream.stable_id('ev')}), $last_handed, 'stable_id as before');
my @newids = split /\n/,
  $new->safe_psql('app', q{SET ROLE alice; INSERT INTO ev (key, payload) VALUES ('k1', '{"w": "w1"}'), ('new', '{"w": "w9"}') RETURNING id});
cmp_ok($newids[0], '>', $last_handed,
	"new ids ($newids[0], ...) continue after the last id ever handed out ($last_handed)");

is( $new->safe_psql('app', q{SET ROLE alice; SELECT min(id) FROM evstream.consume('ev', 'g1', 10)}),
	$new->safe_psql('app', "SELECT min(id) FROM ev WHERE id > $g1"),
	"group g1 goes on right after its position ($g1)");
is( $new->safe_psql('app', q{SET ROLE alice; SELECT count(*) FROM evstream.poll('ev', 'g3', 100000)}),
	$new->safe_psql('app', 'SELECT count(*) FROM ev WHERE id >= 100'),
	'group g3 (seek to 100) replays from id 100');
is($new->safe_psql('app', q{SET ROLE alice; SELECT string_agg(id::text, ',') FROM evstream.consume('s.logs', 'c1', 100)}),
	'5,6,7,8,9,10', 'group c1 of a schema-qualified topic goes on at 5');
is($new->safe_psql('app', q{SELECT string_agg(key, ',' ORDER BY id) FROM evstream.consume('sys', 's1', 100)}),
	's16,s17,s18,s19,s20', 'group s1 goes on at 16');
is($new->safe_psql('other', q{SELECT min(id) FROM evstream.consume('o', 'og', 100)}), '21',
	'group og in the other database goes on at 21');

$new->safe_psql('app', q{SET ROLE alice; INSERT INTO ev (key, payload) SELECT 'k' || g % 9, jsonb_build_object('w', 'w' || g % 2) FROM generate_series(1, 300) g});
$new->safe_psql('app', q{SELECT evstream._merge_deltas()});
is($new->safe_psql('app', q{SELECT count(*) FROM evstream._delta}), '0', 'the merge folds every delta');
is( $new->safe_psql('app',
		sets_equal_sql('SELECT group_key, count FROM by_key', 'SELECT key, count(*) FROM ev GROUP BY 1')),
	'0', 'by_key = GROUP BY after new inserts and a merge');
is( $new->safe_psql('app',
		sets_equal_sql('SELECT group_key, bucket_start, count FROM s.by_w',
			q{SELECT payload->>'w', date_bin('1 hour', created_at, 'epoch'), count(*) FROM ev GROUP BY 1, 2})),
	'0', 's.by_w = GROUP BY after new inserts and a merge');
is($new->safe_psql('app', q{SELECT payload->>'count' FROM key_counts WHERE key = 'new' ORDER BY id DESC LIMIT 1}),
	'1', 'the output topic publishes the new group');
cmp_ok($new->safe_psql('app', q{SELECT min(id) FROM key_counts WHERE key = 'new'}), '>', $kc_max,
	'and its ids continue after the old ones');
is( $new->safe_psql('app', sets_equal_sql(
		q{SELECT DISTINCT ON (key) key, (payload->>'count')::bigint FROM key_counts ORDER BY key, id DESC},
		'SELECT group_key, count FROM by_key')),
	'0', 'the output topic\'s latest event of every group = the count');
$new->safe_psql('other', q{INSERT INTO o (key) VALUES ('o1'), ('o9')});
is( $new->safe_psql('other',
		sets_equal_sql('SELECT group_key, count FROM o_counts', 'SELECT key, count(*) FROM o GROUP BY 1')),
	'0', 'o_counts in the other database = GROUP BY');

# push
check_push($new, 'app', 'upgraded');

# maintenance, guards
for my $db (@dbs)
{
	my $lm = $new->safe_psql($db, qq{SELECT coalesce(last_maintenance, '-infinity') FROM evstream.workers WHERE database = '$db'});
	ok( $new->poll_query_until($db,
			"SELECT last_maintenance > '$lm' AND last_error IS NULL FROM evstream.workers WHERE database = '$db'"),
		"maintenance runs in $db without errors")
	  or diag($new->safe_psql($db, 'SELECT * FROM evstream.workers'));
}
my ($ret, $out, $err) = $new->psql('app', q{UPDATE ev SET key = 'x' WHERE id = 1});
like($err, qr/append-only/, 'UPDATE of an upgraded topic is refused');
($ret, $out, $err) = $new->psql('app', q{SELECT setval('ev_id_seq', 1)});
like($err, qr/cannot set the id sequence of topic "ev" back/, 'setval back is refused');
$new->safe_psql('app', q{SELECT evstream.create_topic('fresh')});
is($new->safe_psql('app', q{INSERT INTO fresh (key) VALUES ('x') RETURNING id}), '1',
	'create_topic works in the upgraded cluster');

note sprintf('runtime %.1f s', time - $t0);
$new->stop;
done_testing();
