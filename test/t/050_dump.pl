# pg_dump -Fc / pg_restore of a database with topics, consumer groups and
# aggregates (SPEC, Lifecycle).
#
# Proves, for a database restored into a new one (CREATE DATABASE;
# pg_restore -d):
#   - pg_dump and pg_restore run without errors;
#   - every event is there with the same id, key, payload and created_at;
#     partitions still use the append-only access method (UPDATE refused);
#   - consumer group positions are kept: consume goes on where it stopped;
#   - ids continue after the last id ever handed out (rolled-back ones
#     included), stable_id is right;
#   - aggregates (plain, expression, windowed, with an output topic) have
#     the same counts, equal GROUP BY, and count new inserts; the output
#     topic keeps publishing;
#   - the restored database gets its worker, which notifies and maintains
#     without errors;
#   - drop_topic and create_topic work on the restored catalog.
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
my $node = evs_node('dump', "evstream.maintenance_interval = '2s'");
$node->safe_psql('postgres', 'CREATE DATABASE src');

$node->safe_psql('src', q{
CREATE EXTENSION evstream;
CREATE SCHEMA app;
SELECT evstream.create_topic('ev', partition_interval => '1 hour');
SELECT evstream.create_topic('app.clicks', retention => '30 days', notify => false);
SELECT evstream.create_topic('spare');
INSERT INTO ev (key, payload)
SELECT 'k' || g % 7, jsonb_build_object('w', 'w' || g % 3, 'g', g) FROM generate_series(1, 1000) g;
INSERT INTO app.clicks (key, payload) SELECT NULL, '{}' FROM generate_series(1, 10);
SELECT evstream.create_aggregate('by_key', 'ev', output_topic => 'key_counts');
SELECT evstream.create_aggregate('app.by_w', 'ev', group_by => $$payload->>'w'$$, bucket => '1 hour');
SELECT evstream.create_aggregate('by_len', 'ev', group_by => 'length(key)');
INSERT INTO ev (key, payload) SELECT 'k' || g % 5, jsonb_build_object('w', 'w' || g % 4) FROM generate_series(1, 200) g;
SELECT count(*) FROM evstream.consume('ev', 'g1', 300);
SELECT evstream.commit('ev', 'g2', 500);
SELECT evstream.seek('ev', 'g3', 100);
SELECT count(*) FROM evstream.consume('app.clicks', 'c1', 4);
});
$node->safe_psql('src', q{COPY ev (key, payload) FROM PROGRAM 'printf "copied\t{\\"w\\": \\"c\\"}\ncopied\t{\\"w\\": \\"c\\"}\n"'});
# ids handed out to a transaction that rolled back are never reused either
$node->safe_psql('src', q{BEGIN; INSERT INTO ev (key) SELECT 'gone' FROM generate_series(1, 5); ROLLBACK;});
my $src_last_handed = $node->safe_psql('src', q{SELECT evstream.stable_id('ev')});
is($src_last_handed, $node->safe_psql('src', 'SELECT max(id) + 5 FROM ev'),
	'src: stable_id counts the rolled-back ids');

my %snap = (
	events => q{SELECT md5(string_agg(format('%s|%s|%s|%s', id, key, payload, created_at), ',' ORDER BY id)) FROM ev},
	clicks => q{SELECT md5(string_agg(format('%s|%s|%s|%s', id, key, payload, created_at), ',' ORDER BY id)) FROM app.clicks},
	groups => q{SELECT string_agg(format('%s/%s=%s', topic, consumer_group, committed_id), ',' ORDER BY topic::text, consumer_group) FROM evstream.consumer_groups},
	by_key => q{SELECT string_agg(format('%s=%s', group_key, count), ',' ORDER BY group_key) FROM by_key},
	by_w => q{SELECT string_agg(format('%s@%s=%s', group_key, bucket_start, count), ',' ORDER BY group_key, bucket_start) FROM app.by_w},
	by_len => q{SELECT string_agg(format('%s=%s', group_key, count), ',' ORDER BY group_key) FROM by_len},
	key_counts => q{SELECT md5(string_agg(format('%s|%s|%s', id, key, payload), ',' ORDER BY id)) FROM key_counts},
	aggregates => q{SELECT string_agg(format('%s|%s|%s|%s|%s|%s|%s', name, topic, group_by, bucket, output_topic, notify, groups), ',' ORDER BY name::text) FROM evstream.aggregates},
	topics => q{SELECT string_agg(format('%s|%s|%s|%s|%s|%s', topic, first_id, last_id, stable_id, retention, notify), ',' ORDER BY topic::text) FROM evstream.topics},
);
# Change events of an output topic are published when deltas are merged:
# merge before the snapshot, so neither database has any left to publish.
$node->safe_psql('src', 'SELECT evstream._merge_deltas()');
my %before = map { $_ => $node->safe_psql('src', $snap{$_}) } keys %snap;

# ---------------------------------------------------------------- dump and restore
my $dump = $node->basedir . '/src.dump';
my ($out, $err) = ('', '');
my $ok = IPC::Run::run([ 'pg_dump', '-Fc', '-f', $dump, '-d', $node->connstr('src') ], '>', \$out, '2>', \$err);
ok($ok, 'pg_dump -Fc succeeds') or diag($err);
is($err, '', 'pg_dump printed no warning');
$node->safe_psql('postgres', 'CREATE DATABASE dst');
($out, $err) = ('', '');
$ok = IPC::Run::run([ 'pg_restore', '-d', $node->connstr('dst'), $dump ], '>', \$out, '2>', \$err);
ok($ok, 'pg_restore -d into a new database succeeds') or diag($err);
is($err, '', 'pg_restore printed no error or warning');

for my $k (sort keys %snap)
{
	is($node->safe_psql('dst', $snap{$k}), $before{$k}, "restored: $k identical");
}
is($node->safe_psql('src', $snap{events}), $before{events}, 'src unchanged by the dump');

# ---------------------------------------------------------------- the restored system works
is( $node->safe_psql('dst', q{
SELECT count(*) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_am a ON a.oid = c.relam
 WHERE i.inhparent IN ('ev'::regclass, 'app.clicks'::regclass, 'key_counts'::regclass) AND a.amname <> 'evstream'}),
	'0',
	'every restored partition uses the evstream access method');
my ($ret, $stdout, $stderr) = $node->psql('dst', q{UPDATE ev SET key = 'x' WHERE id = 1});
like($stderr, qr/append-only/, 'UPDATE of a restored topic is refused');
($ret, $stdout, $stderr) = $node->psql('dst', q{SET session_replication_role = replica; DELETE FROM ev WHERE id = 1});
like($stderr, qr/append-only/, 'DELETE under session_replication_role = replica too');

is($node->safe_psql('dst', q{SELECT evstream.stable_id('ev')}), $src_last_handed,
	'stable_id as in src');
my $newid = $node->safe_psql('dst', q{INSERT INTO ev (key, payload) VALUES ('k1', '{"w": "w1"}'), ('new', '{"w": "w9"}') RETURNING id});
my @newids = split /\n/, $newid;
cmp_ok($newids[0], '>', $src_last_handed, "new ids ($newids[0], ...) continue after the last id ever handed out ($src_last_handed)");
is($node->safe_psql('dst', q{SELECT evstream.stable_id('ev')}), $newids[-1], 'stable_id = the new last id');

my $g1 = $node->safe_psql('src', q{SELECT committed_id FROM evstream.consumer_groups WHERE consumer_group = 'g1'});
is( $node->safe_psql('dst', q{SELECT min(id) FROM evstream.consume('ev', 'g1', 10)}),
	$node->safe_psql('src', "SELECT min(id) FROM ev WHERE id > $g1"),
	'group g1 goes on right after its position');
is( $node->safe_psql('dst', q{SELECT count(*) FROM evstream.poll('ev', 'g3', 100000)}),
	$node->safe_psql('dst', 'SELECT count(*) FROM ev WHERE id >= 100'),
	'group g3 (seek to 100) replays from id 100');
is($node->safe_psql('dst', q{SELECT string_agg(id::text, ',') FROM evstream.consume('app.clicks', 'c1', 100)}),
	'5,6,7,8,9,10', 'group c1 of a schema-qualified topic goes on at 5');

is($node->safe_psql('dst', q{SELECT count FROM by_key WHERE group_key = 'k1'}),
	$node->safe_psql('src', q{SELECT count + 1 FROM by_key WHERE group_key = 'k1'}),
	'the aggregate counts a new insert');
is($node->safe_psql('dst', q{SELECT count FROM by_key WHERE group_key = 'new'}), '1', 'and a new group');
is( $node->safe_psql('dst',
		sets_equal_sql('SELECT group_key, count FROM by_key', 'SELECT key, count(*) FROM ev GROUP BY 1')),
	'0', 'by_key = GROUP BY');
is( $node->safe_psql('dst',
		sets_equal_sql('SELECT group_key, bucket_start, count FROM app.by_w',
			q{SELECT payload->>'w', date_bin('1 hour', created_at, 'epoch'), count(*) FROM ev GROUP BY 1, 2})),
	'0', 'app.by_w = GROUP BY');
is( $node->safe_psql('dst',
		sets_equal_sql('SELECT group_key, count FROM by_len', 'SELECT length(key)::text, count(*) FROM ev GROUP BY 1')),
	'0', 'by_len = GROUP BY');
is( $node->safe_psql('dst',
		q{SELECT payload->>'count' FROM key_counts WHERE key = 'new' ORDER BY id DESC LIMIT 1}),
	'1', 'the output topic publishes the new count');
cmp_ok($node->safe_psql('dst', q{SELECT min(id) FROM key_counts WHERE key = 'new'}), '>',
	$node->safe_psql('src', q{SELECT max(id) FROM key_counts}),
	'and its ids continue too');

# worker, notifications, maintenance
ok( $node->poll_query_until(
		'postgres',
		q{SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'evstream worker' AND datname = 'dst'}),
	'the restored database has its worker');
my $bg = listen_session($node, 'dst', 'ev', 'by_key');
my $id = $node->safe_psql('dst', q{INSERT INTO ev (key) VALUES ('k2') RETURNING id});
my $k2 = $node->safe_psql('dst', q{SELECT count FROM by_key WHERE group_key = 'k2'});
my $k2_note = sub { $_[0]->{channel} eq 'by_key' && $_[0]->{payload} =~ /"group_key": "k2", "bucket_start": null, "count": $k2\}/ };
my $notes = collect_notifications($bg,
	sub { (grep { $_->{channel} eq 'ev' && $_->{payload} =~ /"last_id": $id\}/ } @{ $_[0] })
		  && (grep { $k2_note->($_) } @{ $_[0] }) }, 30);
ok((grep { $_->{channel} eq 'ev' && $_->{payload} =~ /"last_id": $id\}/ } @$notes),
	'the restored topic notifies');
ok((grep { $k2_note->($_) } @$notes), "the restored aggregate notifies (k2 = $k2)")
  or diag(explain $notes);
$bg->quit;
my $lm = $node->safe_psql('dst', q{SELECT last_maintenance FROM evstream.workers WHERE database = 'dst'});
ok( $node->poll_query_until('dst',
		"SELECT last_maintenance > '$lm' AND last_error IS NULL FROM evstream.workers WHERE database = 'dst'"),
	'maintenance runs in the restored database without errors');

# the catalog is consistent
($ret, $stdout, $stderr) = $node->psql('dst', q{SELECT evstream.drop_topic('ev')});
like($stderr, qr/aggregate/, 'drop_topic refuses while restored aggregates read the topic');
$node->safe_psql('dst', q{SELECT evstream.drop_topic('spare')});
is($node->safe_psql('dst', q{SELECT count(*) FROM evstream.topics WHERE topic::text = 'spare'}),
	'0', 'drop_topic of a restored topic works');
$node->safe_psql('dst', q{SELECT evstream.create_topic('fresh')});
is($node->safe_psql('dst', q{INSERT INTO fresh (key) VALUES ('x') RETURNING id}),
	'1', 'create_topic works in the restored database');
$node->safe_psql('dst', q{SELECT evstream.create_aggregate('fresh_counts', 'fresh')});
is($node->safe_psql('dst', q{SELECT string_agg(group_key || '=' || count, ',') FROM fresh_counts}),
	'x=1', 'create_aggregate too (backfilled)');
is($node->safe_psql('dst', q{SELECT count(DISTINCT id) = count(*) FROM evstream._aggregate}),
	't', 'the new aggregate got an id of its own (aggregate id sequence restored)');

note sprintf('runtime %.1f s', time - $t0);
$node->stop;
done_testing();
