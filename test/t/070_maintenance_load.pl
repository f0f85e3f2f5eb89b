# Maintenance under load (issue 4: "never takes locks that make producers or
# consumers wait for long; no deadlocks with concurrent inserts, poll, or
# DDL").
#
# Worker every second, evstream.premake = 0 and 1-second partitions: each
# new second's events first land in the default partition and maintenance
# keeps creating partitions (and whatever it does with the default
# partition's rows) while 4 producers (random transaction lengths, ~20%
# rollbacks) and consumers run; a second topic has a 2-second retention, so
# partitions are dropped under the consumers' feet too.
# Proves:
#   - no producer or consumer transaction fails (no deadlock, no lock
#     timeout, no error) and pg_stat_database counts no deadlock;
#   - topic without retention: consumed = committed, no duplicates, the
#     aggregate equals GROUP BY;
#   - topic with retention: no event consumed twice, only committed events
#     consumed, old partitions dropped;
#   - maintenance kept up: last_error NULL;
#   - consumer_groups.lag_seconds is the age of the oldest unconsumed event.
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
my $node = evs_node('mload', "evstream.maintenance_interval = '1s'", 'evstream.premake = 0');
$node->safe_psql('postgres', q{
CREATE EXTENSION evstream;
SELECT evstream.create_topic('s', partition_interval => '1 second');
SELECT evstream.create_topic('sr', partition_interval => '1 second', retention => '2 seconds');
SELECT evstream.create_aggregate('s_counts', 's');
CREATE TABLE produced (id bigint NOT NULL);
CREATE TABLE produced_sr (id bigint NOT NULL);
CREATE TABLE consumed (id bigint NOT NULL);
CREATE TABLE consumed_sr (id bigint NOT NULL);
});

my $producer = q{
\set n random(1, 20)
\set r random(1, 100)
BEGIN;
WITH i AS (INSERT INTO s (key) SELECT 'k' || (random() * 20)::int FROM generate_series(1, :n) RETURNING id)
INSERT INTO produced SELECT id FROM i;
SELECT pg_sleep(random() * 0.02);
WITH i AS (INSERT INTO sr (key) VALUES ('x') RETURNING id) INSERT INTO produced_sr SELECT id FROM i;
WITH i AS (INSERT INTO s (key) VALUES ('k0') RETURNING id) INSERT INTO produced SELECT id FROM i;
\if :r <= 20
ROLLBACK;
\else
COMMIT;
\endif
};
my $consumer = q{
BEGIN;
INSERT INTO consumed SELECT id FROM evstream.consume('s', 'g', 200);
COMMIT;
BEGIN;
INSERT INTO consumed_sr SELECT id FROM evstream.consume('sr', 'g', 50);
COMMIT;
};

my $secs = 15;
my @load = (
	start_pgbench($node, script => $producer, clients => 4, time => $secs),
	start_pgbench($node, script => $consumer, clients => 2, time => $secs));
# sample the default partition meanwhile: events do land there
my ($samples, $in_default) = (0, 0);
while (time < $t0 + $secs)
{
	$samples++;
	$in_default++ if $node->safe_psql('postgres', 'SELECT count(*) > 0 FROM s_default') eq 't';
	Time::HiRes::usleep(200_000);
}
my @res = map { [ finish_pgbench($_) ] } @load;
cmp_ok($in_default, '>', 0, "events landed in the default partition during the load ($in_default of $samples samples)");
is($res[0][0], 0, 'no producer transaction failed') or diag($res[0][2]);
is($res[1][0], 0, 'no consumer transaction failed') or diag($res[1][2]);
note 'producers: ' . ($res[0][1] =~ s/\n/ /gr);

my $n;
do
{
	$n = $node->safe_psql('postgres', q{
WITH c AS (INSERT INTO consumed SELECT id FROM evstream.consume('s', 'g', 10000) RETURNING 1) SELECT count(*) FROM c});
} while ($n > 0);

is($node->safe_psql('postgres', q{SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()}),
	'0', 'no deadlock');
cmp_ok($node->safe_psql('postgres', 'SELECT count(*) FROM produced'), '>', 1000, 'the load produced events');
is($node->safe_psql('postgres', 'SELECT count(*) - count(DISTINCT id) FROM consumed'), '0',
	's: no event consumed twice');
is($node->safe_psql('postgres', sets_equal_sql('SELECT id FROM consumed', 'SELECT id FROM produced')),
	'0', 's: consumed = committed');
is($node->safe_psql('postgres', sets_equal_sql('SELECT id FROM s', 'SELECT id FROM produced')),
	'0', 's: the topic holds exactly the committed events');
is( $node->safe_psql('postgres',
		sets_equal_sql('SELECT group_key, count FROM s_counts', 'SELECT key, count(*) FROM s GROUP BY 1')),
	'0', 's: the aggregate equals GROUP BY');
cmp_ok($node->safe_psql('postgres', q{SELECT count(*) FROM evstream._partitions('s') WHERE NOT is_default}),
	'>', 5, 'maintenance made partitions during the load');

is($node->safe_psql('postgres', 'SELECT count(*) - count(DISTINCT id) FROM consumed_sr'), '0',
	'sr: no event consumed twice');
is($node->safe_psql('postgres', 'SELECT count(*) FROM consumed_sr c WHERE NOT EXISTS (SELECT 1 FROM produced_sr p WHERE p.id = c.id)'),
	'0', 'sr: only committed events consumed');
ok( $node->poll_query_until(
		'postgres', q{
SELECT count(*) = 0 FROM evstream._partitions('sr') p
 WHERE NOT p.is_default AND p.hi < now() - interval '2 seconds' - interval '2 seconds'}),
	'sr: old partitions dropped');
is($node->safe_psql('postgres', q{SELECT count(*) FROM evstream.workers WHERE last_error IS NOT NULL}),
	'0', 'no maintenance error');

# lag_seconds: the age of the oldest unconsumed event
$node->safe_psql('postgres', q{SELECT evstream.seek('s', 'idle', 0)});
is( $node->safe_psql('postgres', q{
SELECT abs(g.lag_seconds - extract(epoch FROM now() - (SELECT created_at FROM s ORDER BY id LIMIT 1))) < 1
  FROM evstream.consumer_groups g WHERE g.topic = 's'::regclass AND g.consumer_group = 'idle'}),
	't', 'lag_seconds of a group that consumed nothing = age of the oldest event');
cmp_ok($node->safe_psql('postgres', q{SELECT lag_seconds FROM evstream.consumer_groups WHERE topic = 's'::regclass AND consumer_group = 'idle'}),
	'>', 10, 'which is the age of the load');
is($node->safe_psql('postgres', q{SELECT lag_seconds FROM evstream.consumer_groups WHERE topic = 's'::regclass AND consumer_group = 'g'}),
	'0', 'lag_seconds of the group that consumed everything = 0');

note sprintf('runtime %.1f s', time - $t0);
$node->stop;
done_testing();
