# Replication (issue 2: the access method delegates to heap, so physical and
# logical replication keep working; SPEC: rows applied by logical
# replication keep the publisher's id and created_at).
#
# Proves:
#   - physical streaming standby: topics, events and aggregates replay; the
#     standby reads them, still refuses UPDATE/DELETE (read-only anyway) and,
#     promoted, produces with ids after the primary's;
#   - logical replication of a topic (publish_via_partition_root) into a topic
#     created the same way on the subscriber: initial sync and streamed
#     changes keep id and created_at, the subscriber's aggregate counts the
#     applied rows (equals GROUP BY), and a consumer on the subscriber reads
#     every replicated event (stable_id covers them).
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
my $primary = evs_node('primary', 'wal_level = logical', 'max_wal_senders = 10', 'max_replication_slots = 10');
$primary->safe_psql('postgres', q{
CREATE EXTENSION evstream;
SELECT evstream.create_topic('ev');
SELECT evstream.create_aggregate('ev_counts', 'ev');
INSERT INTO ev (key, payload) SELECT 'k' || g % 5, jsonb_build_object('g', g) FROM generate_series(1, 100) g;
CREATE PUBLICATION pub FOR TABLE ev WITH (publish_via_partition_root = true);
});

# ---------------------------------------------------------------- physical standby
$primary->backup('b1');
my $standby = PostgreSQL::Test::Cluster->new('standby');
$standby->init_from_backup($primary, 'b1', has_streaming => 1);
$standby->start;
$primary->safe_psql('postgres',
	q{INSERT INTO ev (key, payload) SELECT 'k' || g % 7, '{}' FROM generate_series(1, 50) g});
$primary->wait_for_catchup($standby);
my $ev_sql = q{SELECT md5(string_agg(format('%s|%s|%s|%s', id, key, payload, created_at), ',' ORDER BY id)) FROM ev};
is($standby->safe_psql('postgres', $ev_sql), $primary->safe_psql('postgres', $ev_sql),
	'standby: the events replayed');
is( $standby->safe_psql('postgres',
		sets_equal_sql('SELECT group_key, count FROM ev_counts', 'SELECT key, count(*) FROM ev GROUP BY 1')),
	'0', 'standby: the aggregate equals GROUP BY');
my ($ret, $out, $err) = $standby->psql('postgres', q{DELETE FROM ev});
isnt($ret, 0, 'standby: DELETE fails');
my $pmax = $primary->safe_psql('postgres', q{SELECT max(id) FROM ev});
$standby->promote;
my $sid = $standby->safe_psql('postgres', q{INSERT INTO ev (key) VALUES ('promoted') RETURNING id});
cmp_ok($sid, '>', $pmax, "promoted standby: new ids ($sid) continue after the primary's ($pmax)");
($ret, $out, $err) = $standby->psql('postgres', q{UPDATE ev SET key = 'x'});
like($err, qr/append-only/, 'promoted standby: UPDATE refused');
is( $standby->safe_psql('postgres',
		sets_equal_sql('SELECT group_key, count FROM ev_counts', 'SELECT key, count(*) FROM ev GROUP BY 1')),
	'0', 'promoted standby: the aggregate counts its new event');
$standby->stop;

# ---------------------------------------------------------------- logical replication
my $sub = evs_node('subscriber');
$sub->safe_psql('postgres', q{
CREATE EXTENSION evstream;
SELECT evstream.create_topic('ev');
SELECT evstream.create_aggregate('ev_counts', 'ev');
});
my $connstr = $primary->connstr . ' dbname=postgres';
$sub->safe_psql('postgres', "CREATE SUBSCRIPTION sub CONNECTION '$connstr' PUBLICATION pub");
$sub->wait_for_subscription_sync($primary, 'sub');
$primary->safe_psql('postgres', q{
INSERT INTO ev (key, payload) SELECT 'k' || g % 3, jsonb_build_object('late', g) FROM generate_series(1, 40) g;
INSERT INTO ev (key, payload) VALUES (NULL, '{"null": true}');
});
# a transaction of several statements and a rolled-back one
$primary->safe_psql('postgres', q{
BEGIN; INSERT INTO ev (key) VALUES ('t1'); INSERT INTO ev (key) VALUES ('t2'); COMMIT;
BEGIN; INSERT INTO ev (key) VALUES ('gone'); ROLLBACK;
});
$primary->wait_for_catchup('sub');

is($sub->safe_psql('postgres', $ev_sql), $primary->safe_psql('postgres', $ev_sql),
	'subscriber: every event with the publisher\'s id, key, payload and created_at');
is( $sub->safe_psql('postgres',
		sets_equal_sql('SELECT group_key, count FROM ev_counts', 'SELECT key, count(*) FROM ev GROUP BY 1')),
	'0', "subscriber: its aggregate counts the applied rows (initial sync included)");
is($sub->safe_psql('postgres', q{SELECT string_agg(group_key || '=' || count, ',' ORDER BY group_key) FROM ev_counts}),
	$primary->safe_psql('postgres', q{SELECT string_agg(group_key || '=' || count, ',' ORDER BY group_key) FROM ev_counts}),
	'subscriber: same counts as the publisher');
($ret, $out, $err) = $sub->psql('postgres', q{DELETE FROM ev WHERE key = 't1'});
like($err, qr/append-only/, 'subscriber: DELETE refused');

my $maxid = $sub->safe_psql('postgres', 'SELECT max(id) FROM ev');
cmp_ok($sub->safe_psql('postgres', q{SELECT evstream.stable_id('ev')}), '>=', $maxid,
	"subscriber: stable_id covers the replicated events (max id $maxid)");
is($sub->safe_psql('postgres', q{SELECT count(*) FROM evstream.poll('ev', 'reader', 100000)}),
	$sub->safe_psql('postgres', 'SELECT count(*) FROM ev'),
	'subscriber: a consumer group reads every replicated event');

note sprintf('runtime %.1f s', time - $t0);
$sub->stop;
$primary->stop;
done_testing();
