# The worker's maintenance pass holds a topic's locks only while it
# maintains that topic (issue 12: producers unaffected by maintenance).
#
# Making or dropping a partition takes the topic's ACCESS EXCLUSIVE lock;
# the pass used to run every topic in a subtransaction of one transaction,
# so those locks stayed until every later topic and the retention merge
# were done, and the first topic's producers waited for all of it.  Here
# topic a is maintained first (lowest oid), then b1..b4, whose partitions
# cannot be made while a session reads them: each makes the worker wait
# 200 ms (its lock_timeout) and is retried at the next pass.  Proves:
#   - while the worker waits for a b topic, it holds no lock on a (with
#     one transaction per pass it held a's locks through those waits);
#   - an INSERT into a meanwhile takes well under the b topics' waits;
#   - a's upkeep still happens every pass (its partitions are made), and
#     once the reader is gone the b topics get theirs too.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/../lib";
use EvsTest;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

my $node = evs_node('mscope', "evstream.maintenance_interval = '1s'");
$node->safe_psql('postgres', q{
CREATE EXTENSION evstream;
SELECT evstream.create_topic('a', partition_interval => '1 second');
SELECT evstream.create_topic('b' || i, partition_interval => '1 second') FROM generate_series(1, 4) i;
});
my $worker = $node->safe_psql('postgres',
	q{SELECT pid FROM pg_stat_activity WHERE backend_type = 'evstream worker' AND datname = 'postgres'});
ok($worker =~ /^\d+$/, "the database's worker runs (pid $worker)");

my $reader = $node->background_psql('postgres');
$reader->query_safe(q{BEGIN; SELECT count(*) FROM b1, b2, b3, b4});

my $parts_a0 = $node->safe_psql('postgres', q{SELECT count(*) FROM evstream._partitions('a')});
my ($waits, $overlaps, $slowest) = (0, 0, 0);
my $deadline = time + 8;
while (time < $deadline)
{
	my $row = $node->safe_psql('postgres', qq{
SELECT EXISTS (SELECT FROM pg_locks l WHERE l.pid = $worker AND NOT l.granted
               AND l.relation IN ('b1'::regclass, 'b2'::regclass, 'b3'::regclass, 'b4'::regclass)),
       EXISTS (SELECT FROM pg_locks l WHERE l.pid = $worker AND l.granted
               AND l.relation = 'a'::regclass)});
	my ($w, $h) = split /\|/, $row;
	if ($w eq 't')
	{
		$waits++;
		$overlaps++ if $h eq 't';
	}
	my $t = time;
	$node->safe_psql('postgres', q{INSERT INTO a (key) VALUES ('x')});
	$slowest = time - $t if time - $t > $slowest;
	usleep(20_000);
}
cmp_ok($waits, '>=', 3, "the worker was seen waiting for a b topic ($waits samples)");
is($overlaps, 0, "while it waited for a b topic it held no lock on topic a ($overlaps of $waits samples)");
cmp_ok($slowest, '<', 0.5,
	sprintf('an INSERT into a took %.3f s at most (the b topics hold each pass up 800 ms)', $slowest));
my $parts_a1 = $node->safe_psql('postgres', q{SELECT count(*) FROM evstream._partitions('a')});
my $made_a = $node->safe_psql('postgres',
	q{SELECT count(*) FROM evstream._partitions('a') WHERE NOT is_default AND hi > now() + interval '1 second'});
cmp_ok($made_a, '>=', 1, "a's upkeep went on meanwhile: it has partitions ahead ($parts_a0 then $parts_a1 partitions)");

$reader->query_safe('COMMIT');
$reader->quit;
ok( $node->poll_query_until('postgres', q{
SELECT bool_and(EXISTS (SELECT FROM evstream._partitions(t) p WHERE NOT p.is_default AND p.hi > now() + interval '1 second'))
  FROM unnest(ARRAY['b1', 'b2', 'b3', 'b4']::regclass[]) t}),
	'once the reader is gone, the b topics get partitions ahead too');
is($node->safe_psql('postgres', q{SELECT count(*) FROM evstream.workers WHERE last_error IS NOT NULL}),
	'0', 'no maintenance error is left (the waits were retried, not failures)');

$node->stop;
done_testing();
