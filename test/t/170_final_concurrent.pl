# Concurrent emitters of final results (issue 10): the worker's
# once-a-second pass and two clients calling evstream._merge_deltas() in a
# loop all emit the final results of closing 1-second windows while
# producers write into them.  The aggregate's row lock orders the
# emitters and the second re-reads finalized_upto (aggregates.c, "Closed
# windows"; a slow trigger on the output topic makes them overlap): every group and window gets exactly one final event, with the
# values of plain SQL over the source.  (Without the row lock, one
# concurrent _merge_deltas() caller was enough to duplicate windows.)
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/../lib";
use EvsTest;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = evs_node('finconc');
$node->safe_psql('postgres', q{
CREATE EXTENSION evstream;
SELECT evstream.create_topic('src');
SELECT evstream.create_aggregate('fin', 'src', bucket => '1 second', emit => 'final',
    output_topic => 'fin_out', measures => $$sum((payload->>'n')::int) AS total$$);
-- emitting takes a while (a slow trigger on the output topic), so emitters overlap
CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN PERFORM pg_sleep(0.05); RETURN NULL; END$$;
CREATE TRIGGER slow AFTER INSERT ON fin_out FOR EACH STATEMENT EXECUTE FUNCTION slow();
});

my @load = (
	start_pgbench($node,
		script => "INSERT INTO src (key, payload) VALUES ('k' || (random() * 4)::int, jsonb_build_object('n', (random() * 100)::int));\n",
		clients => 3, rate => 200, time => 6),
	start_pgbench($node, script => "SELECT evstream._merge_deltas();\n", clients => 2, rate => 50, time => 6));
my @rc = map { (finish_pgbench($_))[0] } @load;
is_deeply(\@rc, [ 0, 0 ], 'producers and concurrent _merge_deltas() callers ran without errors');

# every window of the source closed and emitted
my $windows = q{SELECT count(*) FROM (SELECT DISTINCT key, date_bin('1 second', created_at, 'epoch') FROM src) w};
ok( $node->poll_query_until('postgres',
		"SELECT (SELECT count(*) FROM fin_out) >= ($windows)"),
	'every group and window got its final event');
$node->safe_psql('postgres', 'SELECT evstream._merge_deltas()');

is( $node->safe_psql('postgres', q{
SELECT count(*) FROM (SELECT key, payload->>'bucket_start' FROM fin_out GROUP BY 1, 2 HAVING count(*) > 1) d}),
	'0', 'no group and window was emitted twice');
is( $node->safe_psql('postgres', qq{
SELECT (SELECT count(*) FROM fin_out) = ($windows)}),
	't', 'one final event per group and window');
is( $node->safe_psql('postgres', q{
SELECT count(*) FROM (
  (SELECT key, (payload->>'bucket_start')::timestamptz, (payload->>'count')::bigint, (payload->>'total')::bigint FROM fin_out
   EXCEPT ALL
   SELECT key, date_bin('1 second', created_at, 'epoch'), count(*), sum((payload->>'n')::int) FROM src GROUP BY 1, 2)
  UNION ALL
  (SELECT key, date_bin('1 second', created_at, 'epoch'), count(*), sum((payload->>'n')::int) FROM src GROUP BY 1, 2
   EXCEPT ALL
   SELECT key, (payload->>'bucket_start')::timestamptz, (payload->>'count')::bigint, (payload->>'total')::bigint FROM fin_out)) x}),
	'0', 'each final event carries the values of plain SQL over its window');

done_testing();
