# ALTER EXTENSION evstream UPDATE from 0.1 to 0.2, in place (SPEC,
# Lifecycle).
#
# The harness installs the 0.1 release (built from git history) into a
# second copy of the same PostgreSQL (EVSTREAM_OLD_BIN).  A cluster is made
# and filled with the 0.1 library and scripts, stopped, and started on the
# same data directory with the 0.2 library (as a DBA does: install the new
# files, restart, since the library is preloaded), then updated.  Proves:
#   - the update runs and extversion is 0.2;
#   - nothing changed: events (ids, keys, payloads, created_at), topics
#     (first/last/stable id, retention, partitions), group positions,
#     aggregate counts and the output topic's events;
#   - groups now belong to their topic's owner;
#   - everything works: new ids continue after the last id ever handed out,
#     consume goes on from the old positions, aggregates stay exact after
#     more inserts and merges, the output topic publishes the changes, a
#     LISTEN session is notified, maintenance runs without errors;
#   - 0.2's protection of the id sequences holds for the updated topics:
#     setval back is refused, the owner has lost UPDATE on the sequence.
use strict;
use warnings;
use File::Basename qw(dirname);
use FindBin;
use lib "$FindBin::Bin/../lib";
use EvsTest;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

my $t0 = time;
die 'EVSTREAM_OLD_BIN is not set: run through test/harness.sh (make test)'
  unless $ENV{EVSTREAM_OLD_BIN} && -x "$ENV{EVSTREAM_OLD_BIN}/postgres";
die 'EVSTREAM_BIN is not set: run through test/harness.sh (make test)'
  unless $ENV{EVSTREAM_BIN} && -x "$ENV{EVSTREAM_BIN}/postgres";
my $old_inst = dirname($ENV{EVSTREAM_OLD_BIN});
my $new_inst = dirname($ENV{EVSTREAM_BIN});

my @conf = (
	"shared_preload_libraries = 'evstream'",
	"max_worker_processes = 16",
	"max_connections = 50",
	"log_line_prefix = '%m [%p] %b '",
	"evstream.maintenance_interval = '2s'");

# ---------------------------------------------------------------- 0.1
my $old = PostgreSQL::Test::Cluster->new('old', install_path => $old_inst);
$old->init;
$old->append_conf('postgresql.conf', join("\n", @conf) . "\n");
$old->start;
$old->safe_psql('postgres', 'CREATE DATABASE upd');

$old->safe_psql('upd', q{
CREATE ROLE alice LOGIN;
GRANT CREATE ON SCHEMA public TO alice;
CREATE EXTENSION evstream;
});
is($old->safe_psql('upd', q{SELECT extversion FROM pg_extension WHERE extname = 'evstream'}),
	'0.1', 'the old install creates evstream 0.1');

# topics of alice (a plain role) and of the superuser
$old->safe_psql('upd', q{
SET ROLE alice;
SELECT evstream.create_topic('ev', partition_interval => '1 hour');
SELECT evstream.create_topic('logs', retention => '30 days', notify => false);
INSERT INTO ev (key, payload)
SELECT 'k' || g % 7, jsonb_build_object('w', 'w' || g % 3, 'g', g) FROM generate_series(1, 1000) g;
INSERT INTO logs (key, payload) SELECT NULL, jsonb_build_object('n', g) FROM generate_series(1, 10) g;
SELECT evstream.create_aggregate('by_key', 'ev', output_topic => 'key_counts');
SELECT evstream.create_aggregate('by_w', 'ev', group_by => $$payload->>'w'$$, bucket => '1 hour');
INSERT INTO ev (key, payload) SELECT 'k' || g % 5, jsonb_build_object('w', 'w' || g % 4) FROM generate_series(1, 200) g;
SELECT count(*) FROM evstream.consume('ev', 'g1', 300);
SELECT evstream.commit('ev', 'g2', 500);
SELECT evstream.seek('ev', 'g3', 100);
SELECT count(*) FROM evstream.consume('logs', 'c1', 4);
RESET ROLE;
SELECT evstream.create_topic('sys');
INSERT INTO sys (key) SELECT 's' || g FROM generate_series(1, 20) g;
SELECT count(*) FROM evstream.consume('sys', 's1', 15);
});
# some deltas merged, the last ones maybe not: counts are exact either way
$old->safe_psql('upd', q{SELECT evstream._merge_deltas()});
$old->safe_psql('upd', q{INSERT INTO ev (key, payload) VALUES ('k1', '{"w": "w1"}'), ('k8', '{"w": "w8"}')});
# ids handed out to a transaction that rolled back are never reused
$old->safe_psql('upd', q{BEGIN; INSERT INTO ev (key) SELECT 'gone' FROM generate_series(1, 5); ROLLBACK;});

is( $old->safe_psql('upd',
		sets_equal_sql('SELECT group_key, count FROM by_key', 'SELECT key, count(*) FROM ev GROUP BY 1')),
	'0', '0.1: by_key = GROUP BY');
is( $old->safe_psql('upd',
		sets_equal_sql('SELECT group_key, bucket_start, count FROM by_w',
			q{SELECT payload->>'w', date_bin('1 hour', created_at, 'epoch'), count(*) FROM ev GROUP BY 1, 2})),
	'0', '0.1: by_w = GROUP BY');
is($old->safe_psql('upd', q{SELECT evstream.stable_id('ev') = max(id) + 5 FROM ev}), 't',
	'0.1: stable_id counts the rolled-back ids');
is($old->safe_psql('upd', q{SET ROLE alice; SELECT has_sequence_privilege('ev_id_seq', 'UPDATE')}), 't',
	'0.1: the topic owner may UPDATE (setval) its id sequence');
ok( $old->poll_query_until('upd',
		q{SELECT last_maintenance IS NOT NULL AND last_error IS NULL FROM evstream.workers WHERE database = 'upd'}),
	'0.1: the worker maintains without errors');

my %snap = (
	events => q{SELECT md5(string_agg(format('%s|%s|%s|%s', id, key, payload, created_at), ',' ORDER BY id)) FROM ev},
	logs => q{SELECT md5(string_agg(format('%s|%s|%s|%s', id, key, payload, created_at), ',' ORDER BY id)) FROM logs},
	sys => q{SELECT md5(string_agg(format('%s|%s|%s|%s', id, key, payload, created_at), ',' ORDER BY id)) FROM sys},
	key_counts => q{SELECT md5(string_agg(format('%s|%s|%s|%s', id, key, payload, created_at), ',' ORDER BY id)) FROM key_counts},
	groups => q{SELECT string_agg(format('%s/%s=%s@%s', topic, consumer_group, committed_id, updated_at), ',' ORDER BY topic::text, consumer_group) FROM evstream.consumer_groups},
	group_view => q{SELECT string_agg(format('%s/%s=%s lag %s', topic, consumer_group, committed_id, lag_events), ',' ORDER BY topic::text, consumer_group) FROM evstream.consumer_groups},
	by_key => q{SELECT string_agg(format('%s=%s', group_key, count), ',' ORDER BY group_key) FROM by_key},
	by_w => q{SELECT string_agg(format('%s@%s=%s', group_key, bucket_start, count), ',' ORDER BY group_key, bucket_start) FROM by_w},
	aggregates => q{SELECT string_agg(format('%s|%s|%s|%s|%s|%s|%s', name, topic, group_by, bucket, output_topic, notify, groups), ',' ORDER BY name::text) FROM evstream.aggregates},
	agg_catalog => q{SELECT string_agg(format('%s|%s|%s|%s|%s|%s|%s|%s', id, aggregate, topic, group_by, bucket, output_topic, output_created, notify), ',' ORDER BY id) FROM evstream._aggregate},
	topics => q{SELECT string_agg(format('%s|%s|%s|%s|%s|%s|%s|%s', topic, partitions, first_id, last_id, stable_id, retention, partition_interval, notify), ',' ORDER BY topic::text) FROM evstream.topics},
	topic_catalog => q{SELECT string_agg(format('%s|%s|%s|%s|%s', topic, partition_interval, retention, notify, created), ',' ORDER BY topic::text) FROM evstream._topic},
	owners => q{SELECT string_agg(format('%s:%s', c.relname, c.relowner::regrole), ',' ORDER BY c.relname) FROM pg_class c WHERE c.relnamespace = 'public'::regnamespace},
	stable => q{SELECT string_agg(format('%s=%s', topic, evstream.stable_id(topic)), ',' ORDER BY topic::text) FROM evstream._topic},
	access_method => q{SELECT string_agg(format('%s:%s', c.relname, a.amname), ',' ORDER BY c.relname) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_am a ON a.oid = c.relam WHERE i.inhparent IN (SELECT topic FROM evstream._topic)},
);
# the worker folds the last deltas within 250 ms (and publishes them to the
# output topic): let it, so that the snapshot is of a settled state
ok($old->poll_query_until('upd', 'SELECT count(*) = 0 FROM evstream._delta'), 'old: the worker merged every delta');
my %before = map { $_ => $old->safe_psql('upd', $snap{$_}) } keys %snap;
my $last_handed = $old->safe_psql('upd', q{SELECT evstream.stable_id('ev')});
my $kc_max = $old->safe_psql('upd', q{SELECT max(id) FROM key_counts});
my %pos = map { $_ => $old->safe_psql('upd', "SELECT committed_id FROM evstream.consumer_groups WHERE consumer_group = '$_'") }
  qw(g1 g2 g3 c1 s1);
$old->stop;

# ---------------------------------------------------------------- 0.2 library, same data directory
# A node of the new installation takes over the data directory (port and
# socket of its own).
my $node = PostgreSQL::Test::Cluster->new('new', install_path => $new_inst);
rename($old->data_dir, $node->data_dir)
  or die "cannot move " . $old->data_dir . " to " . $node->data_dir . ": $!";
$node->append_conf('postgresql.conf',
	"port = " . $node->port . "\nunix_socket_directories = '" . $node->host . "'\n");
$node->start;
like($node->safe_psql('upd', 'SELECT version()'), qr/^PostgreSQL /, 'the new library starts on the 0.1 cluster');
# The DBA runs the update some time after the restart: the new library's
# worker meets the 0.1 catalog first, and says it waits for the update.
$node->wait_for_log(qr/evstream worker: waiting for ALTER EXTENSION evstream UPDATE/);
ok(1, 'the new library\'s worker waits for ALTER EXTENSION UPDATE (logged)');
# a few maintenance intervals (2 s in this test's configuration) pass
$node->poll_query_until('upd', 'SELECT now() > pg_postmaster_start_time() + interval \'5 s\'');
my $window = slurp_file($node->logfile);
my @window_errors = grep { /\b(ERROR|FATAL|PANIC):/ } split /\n/, $window;
is(scalar(@window_errors), 0, 'before the update, the new library on the 0.1 catalog logs no error or crash')
  or diag(join("\n", @window_errors));
{
	# it does not run maintenance or merges against the 0.1 catalog
	my @warnings = grep { /\bWARNING:/ } split /\n/, $window;
	is(scalar(@warnings), 0, 'before the update, the new library\'s worker does not warn')
	  or diag($warnings[0]);
}
is($node->safe_psql('upd', $snap{events}), $before{events}, 'and the events are untouched');
# functions that write the new catalog's columns say what to do
{
	my ($rc, $out, $err) = $node->psql('upd', q{SELECT evstream.create_topic('too_early')});
	like($err, qr/evstream\.create_topic needs the evstream 0\.2 catalog, this database has 0\.1.*HINT:  Run ALTER EXTENSION evstream UPDATE/s,
		'before the update, create_topic refuses with a hint to update');
	# producing to a topic with aggregates would count into the 0.1
	# catalog's layout (it crashed the server): refused, as is consuming
	($rc, $out, $err) = $node->psql('upd', q{SET ROLE alice; INSERT INTO ev (key) VALUES ('too_early')});
	like($err, qr/producing to topic "ev", which has aggregates, needs the evstream 0\.2 catalog, this database has 0\.1.*HINT:  Run ALTER EXTENSION evstream UPDATE/s,
		'before the update, an INSERT into a topic with aggregates is refused with the hint');
	($rc, $out, $err) = $node->psql('upd', "SET ROLE alice;\nCOPY ev (key) FROM STDIN;\ntoo_early\n\\.\n");
	like($err, qr/producing to topic "ev", which has aggregates, needs the evstream 0\.2 catalog/,
		'and so is a COPY');
	($rc, $out, $err) = $node->psql('upd', q{SET ROLE alice; SELECT * FROM evstream.consume('ev', 'too_early')});
	like($err, qr/evstream\.consume needs the evstream 0\.2 catalog, this database has 0\.1/,
		'consume refuses with the hint');
	is($node->safe_psql('upd', 'SELECT 1'), '1', 'the server is up');
	# DROP OWNED / REASSIGN OWNED work: the hooks leave the 0.1 catalog's
	# groups alone (it has no transforms and no group owners)
	($rc, $out, $err) = $node->psql('upd', q{CREATE ROLE upd_nobody; CREATE ROLE upd_heir;
REASSIGN OWNED BY upd_nobody TO upd_heir; DROP OWNED BY upd_nobody; DROP ROLE upd_nobody, upd_heir});
	is($rc, 0, 'before the update, REASSIGN OWNED and DROP OWNED work') or diag($err);
}
my $log_pos = length(slurp_file($node->logfile));

my ($ret, $stdout, $stderr) = $node->psql('upd', 'ALTER EXTENSION evstream UPDATE');
is($ret, 0, 'ALTER EXTENSION evstream UPDATE succeeds') or diag($stderr);
is($node->safe_psql('upd', q{SELECT extversion FROM pg_extension WHERE extname = 'evstream'}),
	'0.2', 'extversion is 0.2');
is($node->safe_psql('upd', q{SELECT default_version FROM pg_available_extensions WHERE name = 'evstream'}),
	'0.2', 'and it is the default version of the new install');

# the update script makes the functions the install script makes: same
# arguments, result, language, body, settings, volatility, strictness,
# security and privileges (a database created fresh with 0.2 to compare;
# it stays: dropping it would stop its worker, a FATAL in the log)
$node->safe_psql('postgres', 'CREATE DATABASE fresh');
$node->safe_psql('fresh', 'CREATE EXTENSION evstream');
my $functions = q{
SELECT string_agg(pg_catalog.format('%s(%s) -> %s: %s %s strict=%s secdef=%s cost=%s rows=%s config=%s acl=%s src=%s bin=%s',
         p.proname, pg_catalog.pg_get_function_identity_arguments(p.oid), pg_catalog.pg_get_function_result(p.oid),
         l.lanname, p.provolatile, p.proisstrict, p.prosecdef, p.procost, p.prorows, p.proconfig, p.proacl,
         pg_catalog.md5(p.prosrc), p.probin), E'\n' ORDER BY p.proname, pg_catalog.pg_get_function_identity_arguments(p.oid))
  FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_language l ON l.oid = p.prolang
 WHERE p.pronamespace = 'evstream'::pg_catalog.regnamespace};
is($node->safe_psql('upd', $functions), $node->safe_psql('fresh', $functions),
	'the updated extension\'s functions are those of a fresh 0.2 install');

# ---------------------------------------------------------------- nothing changed
for my $k (sort keys %snap)
{
	is($node->safe_psql('upd', $snap{$k}), $before{$k}, "updated: $k unchanged");
}
is( $node->safe_psql('upd', q{
SELECT count(*) FROM evstream._group g JOIN pg_class c ON c.oid = g.topic WHERE g.owner::oid <> c.relowner}),
	'0', 'every group belongs to its topic\'s owner');
is( $node->safe_psql('upd', q{SELECT string_agg(format('%s=%s', consumer_group, owner), ',' ORDER BY consumer_group) FROM evstream.consumer_groups}),
	'c1=alice,g1=alice,g2=alice,g3=alice,s1=' . $node->safe_psql('upd', 'SELECT current_user'),
	'consumer_groups shows the owners');

# 0.1's aggregates never recorded the functions their expressions call
# (0.2's _aggregate.functions, catalog.c): NULL, so loads do not check them
is($node->safe_psql('upd', q{SELECT string_agg(format('%s=%s', aggregate, functions IS NULL), ',' ORDER BY id) FROM evstream._aggregate}),
	'by_key=t,by_w=t', 'the updated aggregates have no recorded functions');

# ---------------------------------------------------------------- everything works
my @newids = split /\n/,
  $node->safe_psql('upd', q{SET ROLE alice; INSERT INTO ev (key, payload) VALUES ('k1', '{"w": "w1"}'), ('new', '{"w": "w9"}') RETURNING id});
cmp_ok($newids[0], '>', $last_handed,
	"new ids ($newids[0], $newids[1]) continue after the last id ever handed out ($last_handed)");
is($node->safe_psql('upd', q{SELECT evstream.stable_id('ev')}), $newids[-1], 'stable_id = the new last id');

is( $node->safe_psql('upd', q{SET ROLE alice; SELECT min(id) FROM evstream.consume('ev', 'g1', 10)}),
	$node->safe_psql('upd', "SELECT min(id) FROM ev WHERE id > $pos{g1}"),
	"group g1 goes on right after its position ($pos{g1})");
is( $node->safe_psql('upd', q{SET ROLE alice; SELECT count(*) FROM evstream.poll('ev', 'g3', 100000)}),
	$node->safe_psql('upd', 'SELECT count(*) FROM ev WHERE id >= 100'),
	'group g3 (seek to 100) replays from id 100');
is($node->safe_psql('upd', q{SET ROLE alice; SELECT string_agg(id::text, ',') FROM evstream.consume('logs', 'c1', 100)}),
	'5,6,7,8,9,10', 'group c1 of the topic with retention goes on at 5');
is($node->safe_psql('upd', q{SELECT string_agg(key, ',' ORDER BY id) FROM evstream.consume('sys', 's1', 100)}),
	's16,s17,s18,s19,s20', 'group s1 of the superuser\'s topic goes on at 16');
($ret, $stdout, $stderr) = $node->psql('upd', q{SET ROLE alice; SELECT evstream.commit('sys', 's1', 1)});
isnt($ret, 0, 'alice cannot move the superuser\'s group');

is($node->safe_psql('upd', q{SELECT count FROM by_key WHERE group_key = 'new'}), '1',
	'the aggregate counts a new group');
$node->safe_psql('upd', q{SET ROLE alice; INSERT INTO ev (key, payload) SELECT 'k' || g % 9, jsonb_build_object('w', 'w' || g % 2) FROM generate_series(1, 300) g});
$node->safe_psql('upd', q{SELECT evstream._merge_deltas()});
$node->safe_psql('upd', q{SET ROLE alice; INSERT INTO ev (key) VALUES ('new'), ('k3')});
$node->safe_psql('upd', q{SELECT evstream._merge_deltas()});
is( $node->safe_psql('upd',
		sets_equal_sql('SELECT group_key, count FROM by_key', 'SELECT key, count(*) FROM ev GROUP BY 1')),
	'0', 'by_key = GROUP BY after more inserts and merges');
is( $node->safe_psql('upd',
		sets_equal_sql('SELECT group_key, bucket_start, count FROM by_w',
			q{SELECT payload->>'w', date_bin('1 hour', created_at, 'epoch'), count(*) FROM ev GROUP BY 1, 2})),
	'0', 'by_w = GROUP BY after more inserts and merges');
is( $node->safe_psql('upd', q{SELECT count(*) FROM evstream._delta}), '0',
	'the merge folded every delta');
is( $node->safe_psql('upd',
		q{SELECT payload->>'count' FROM key_counts WHERE key = 'new' ORDER BY id DESC LIMIT 1}),
	'2', 'the output topic publishes the new count after the merge');
cmp_ok($node->safe_psql('upd', q{SELECT min(id) FROM key_counts WHERE key = 'new'}), '>', $kc_max,
	'and its ids continue after the old ones');
is( $node->safe_psql('upd', sets_equal_sql(
		q{SELECT DISTINCT ON (key) key, (payload->>'count')::bigint FROM key_counts ORDER BY key, id DESC},
		'SELECT group_key, count FROM by_key')),
	'0', 'the output topic\'s latest event of every group = the count');

# push
check_push($node, 'upd', 'updated');

# maintenance
my $lm = $node->safe_psql('upd', q{SELECT last_maintenance FROM evstream.workers WHERE database = 'upd'});
ok( $node->poll_query_until('upd',
		"SELECT last_maintenance > coalesce(nullif('$lm', '')::timestamptz, '-infinity') AND last_error IS NULL FROM evstream.workers WHERE database = 'upd'"),
	'maintenance runs after the update without errors')
  or diag($node->safe_psql('upd', 'SELECT * FROM evstream.workers'));
is($node->safe_psql('upd', q{SELECT evstream.run_maintenance()}), '', 'run_maintenance returns no error');

# 0.2's protection of the id sequences covers the updated topics
($ret, $stdout, $stderr) = $node->psql('upd', q{SELECT setval('ev_id_seq', 1)});
like($stderr, qr/cannot set the id sequence of topic "ev" back/, 'setval(ev_id_seq, 1) is refused after the update');
is($node->safe_psql('upd', q{SET ROLE alice; SELECT has_sequence_privilege('ev_id_seq', 'UPDATE') OR has_sequence_privilege('ev_id_seq', 'USAGE')}),
	'f', 'the topic owner has no UPDATE or USAGE on the id sequence any more');
# (a sequence named by a constant is refused by the guard whatever the
# value; named by a column, the privilege check refuses it)
($ret, $stdout, $stderr) = $node->psql('upd', q{SET ROLE alice; SELECT setval(s, 1) FROM (VALUES ('ev_id_seq'::regclass)) v(s)});
like($stderr, qr/permission denied for sequence ev_id_seq/, 'so it cannot setval a sequence it names at run time either');
my $id = $node->safe_psql('upd', q{SELECT max(id) FROM ev});
my $nid = $node->safe_psql('upd', q{SET ROLE alice; INSERT INTO ev (key) VALUES ('after') RETURNING id});
cmp_ok($nid, '>', $id, 'inserts still get increasing ids');

# the catalog is consistent
$node->safe_psql('upd', q{SELECT evstream.create_topic('fresh')});
is($node->safe_psql('upd', q{INSERT INTO fresh (key) VALUES ('x') RETURNING id}), '1',
	'create_topic works after the update');
# an aggregate made after the update records its functions, and counts
$node->safe_psql('upd', q{SELECT evstream.create_aggregate('fresh_by_w', 'fresh', group_by => $$payload->>'w'$$)});
is($node->safe_psql('upd', q{SELECT functions FROM evstream._aggregate WHERE aggregate = 'fresh_by_w'::regclass}),
	'{"operator pg_catalog.->>(pg_catalog.jsonb,pg_catalog.text)","pg_catalog.jsonb_object_field_text(pg_catalog.jsonb,pg_catalog.text)"}',
	'an aggregate created after the update records the functions it calls');
$node->safe_psql('upd', q{INSERT INTO fresh (key, payload) VALUES ('y', '{"w": "a"}'), ('z', '{"w": "a"}')});
is($node->safe_psql('upd', q{SELECT count FROM fresh_by_w WHERE group_key = 'a'}), '2', 'and counts');
$node->safe_psql('upd', q{SELECT evstream.drop_topic('sys')});
is($node->safe_psql('upd', q{SELECT count(*) FROM evstream._group WHERE consumer_group = 's1'}), '0',
	'drop_topic of an updated topic drops its groups');

# the errors the checks above provoke on purpose aside, none
my $log = substr(slurp_file($node->logfile), $log_pos);
my @errors = grep {
	/\b(ERROR|FATAL|PANIC|WARNING):/
	  && !/ERROR:  (cannot set the id sequence of topic "ev" back|permission denied for (table sys|sequence ev_id_seq))$/
} split /\n/, $log;
is(scalar(@errors), 0, 'after the update the server logged no unexpected error, warning or crash')
  or diag(join("\n", @errors));

note sprintf('runtime %.1f s', time - $t0);
$node->stop;
done_testing();
