# Aggregates v2 (issue 10) against a real server: the parts of SPEC
# "Continuous aggregates" (0.2) that need a worker, crashes and concurrent
# producers (the pg_regress suite aggregates_v2.sql covers the SQL surface,
# the isolation specs aggregate_measures_exact and window_close the
# interleavings).
#
# Proves:
#   1. emit => 'final' survives crashes: pgbench producers write events of
#      five groups across many 1-second windows into a topic whose aggregate
#      (with measures) publishes final values to an output topic; the
#      server is killed (-m immediate) three times while the worker is
#      publishing.  After each restart no window was published twice and
#      every published window carries exactly the values of plain SQL over
#      the source; after the last restart every window of the source gets
#      its final event (polled), exactly one per group and window, with its
#      count, sum and max;
#   2. window_retention removes closed windows that ended more than the
#      retention ago, by the worker's maintenance pass alone
#      (evstream.maintenance_interval = 1s): a window is never removed
#      before (checked at every poll, in one snapshot), a window held open
#      by an open transaction is not removed however old it gets, it goes
#      once that transaction commits, and the never-closing window of events
#      without an event time stays;
#   3. the changelog of emit => 'changes' is ordered: four pgbench producers
#      insert into ONE hot group (transactions of several statements, ~20%
#      rolled back) of an aggregate with measures, and of a windowed one,
#      while a fifth client runs evstream._merge_deltas() against the
#      worker; per group (and window) the output events in id order carry a
#      count and a sum that strictly increase, a max that never decreases
#      and a min that never increases, and the latest equals the
#      aggregate's exact values (= plain SQL over the source).
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
my $node = evs_node('aggv2', "evstream.maintenance_interval = '1s'");

sub sql { return $node->safe_psql('postgres', @_); }

sub wait_for
{
	my ($cond, $what) = @_;
	return ok($node->poll_query_until('postgres', $cond), $what);
}

sql(q{CREATE EXTENSION evstream;});

# ---------------------------------------------------------------- 1. emit final across crashes
sql(q{
SELECT evstream.create_topic('src');
SELECT evstream.create_aggregate('fin', 'src', bucket => '1 second', emit => 'final', output_topic => 'fin_out',
    measures => $$sum((payload->>'n')::int) AS total, max((payload->>'n')::int) AS top$$);
});

# the final events: key, window, count, total, top
my $published = q{SELECT key, (payload->>'bucket_start')::timestamptz AS w, (payload->>'count')::bigint,
                         (payload->>'total')::bigint, (payload->>'top')::int FROM fin_out};
# plain SQL over the source, per group and window
my $truth = q{SELECT key, date_bin('1 second', created_at, 'epoch') AS w, count(*),
                     sum((payload->>'n')::int), max((payload->>'n')::int) FROM src GROUP BY 1, 2};

# no window published twice; every published window exact
sub check_published
{
	my ($label) = @_;
	my ($dups, $wrong, $n) = split /\|/, sql(qq{
SELECT (SELECT count(*) - count(DISTINCT (key, payload->>'bucket_start')) FROM fin_out),
       (SELECT count(*) FROM (($published) EXCEPT ALL
                              (SELECT t.* FROM ($truth) t WHERE (t.key, t.w) IN (SELECT key, (payload->>'bucket_start')::timestamptz FROM fin_out))) d),
       (SELECT count(*) FROM fin_out)});
	is($dups, '0', "$label: no window published twice ($n final events)");
	is($wrong, '0', "$label: every published window has the values of plain SQL over the source")
	  or diag("published (key, window, count, total, top) vs the source:\n" . sql(qq{
SELECT p.key, p.w, p.count AS published_count, t.count AS source_count, p.sum AS published_total, t.sum AS source_total
  FROM ($published) p(key, w, count, sum, max) LEFT JOIN ($truth) t(key, w, count, sum, max) USING (key, w)
 WHERE t.count IS DISTINCT FROM p.count OR t.sum IS DISTINCT FROM p.sum OR t.max IS DISTINCT FROM p.max ORDER BY 2, 1}));
}

my $producer = q{
\set n random(1, 100)
\set r random(1, 10)
BEGIN;
INSERT INTO src (key, payload) VALUES ('k' || (:n % 5), jsonb_build_object('n', :n));
INSERT INTO src (key, payload) SELECT 'k' || (g % 5), jsonb_build_object('n', g) FROM generate_series(1, :r) g;
\if :r <= 2
ROLLBACK;
\else
COMMIT;
\endif
};

for my $round (1 .. 3)
{
	my ($src, $out) = split /\|/, sql(q{SELECT (SELECT count(*) FROM src), (SELECT count(DISTINCT payload->>'bucket_start') FROM fin_out)});
	my $load = start_pgbench($node, script => $producer, clients => 3, rate => 30, time => 60);
	# the worker is publishing finals of windows the load wrote
	wait_for(qq{SELECT (SELECT count(*) FROM src) >= $src + 40
                   AND (SELECT count(DISTINCT payload->>'bucket_start') FROM fin_out) >= $out + 2
                   AND EXISTS (SELECT 1 FROM src WHERE created_at > now() - interval '1 second')},
		"round $round: the load produces and the worker publishes final events");
	$node->stop('immediate');
	finish_pgbench($load);
	$node->start;
	check_published("after crash $round");
}

# every window of the source closes and is published, exactly once
wait_for(q{
SELECT NOT EXISTS (SELECT 1 FROM src s
                    WHERE NOT EXISTS (SELECT 1 FROM fin_out o
                                       WHERE o.key = s.key
                                         AND (o.payload->>'bucket_start')::timestamptz = date_bin('1 second', s.created_at, 'epoch')))},
	'after the crashes every window of the source gets its final event');
my ($windows, $events) = split /\|/, sql(q{
SELECT (SELECT count(DISTINCT (key, date_bin('1 second', created_at, 'epoch'))) FROM src), (SELECT count(*) FROM src)});
is(sql(sets_equal_sql($published, $truth)), '0',
	"exactly one final event per group and window ($windows windows of $events events), with the source's count, sum and max");
is(sql('SELECT count(*) FROM fin_out'), $windows, "$windows final events in all");
cmp_ok($windows, '>=', 15, 'the load covered many windows');
# and the aggregate itself is exact
is(sql(sets_equal_sql(q{SELECT group_key, bucket_start, count, total, top FROM fin}, $truth)), '0',
	'the aggregate equals plain SQL over the source');
is(sql(q{SELECT count(*) FROM evstream.workers WHERE last_error IS NOT NULL}), '0', 'no maintenance error');

# ---------------------------------------------------------------- 2. window_retention
sql(q{
SELECT evstream.create_topic('rsrc');
SELECT evstream.create_aggregate('ret', 'rsrc', bucket => '1 second', window_retention => '2 seconds',
    measures => $$sum((payload->>'n')::int) AS total$$);
SELECT evstream.create_aggregate('ret_et', 'rsrc', bucket => '1 second', window_retention => '2 seconds',
    event_time => $$(payload->>'ts')::timestamptz$$);
});
# in one snapshot: the windows that ended less than the retention ago are
# all there, with their values
my $young_ret = q{
SELECT count(*) FROM (
  (SELECT group_key, bucket_start, count, total FROM ret WHERE bucket_start + interval '3 seconds' > now()
   EXCEPT ALL
   SELECT key, date_bin('1 second', created_at, 'epoch') w, count(*), sum((payload->>'n')::int) FROM rsrc
    WHERE date_bin('1 second', created_at, 'epoch') + interval '3 seconds' > now() GROUP BY 1, 2)
  UNION ALL
  (SELECT key, date_bin('1 second', created_at, 'epoch') w, count(*), sum((payload->>'n')::int) FROM rsrc
    WHERE date_bin('1 second', created_at, 'epoch') + interval '3 seconds' > now() GROUP BY 1, 2
   EXCEPT ALL
   SELECT group_key, bucket_start, count, total FROM ret WHERE bucket_start + interval '3 seconds' > now())) d};
my $early = 0;
my $poll_ret = sub {
	my ($cond) = @_;
	return wait_until(sub {
		$early++ if sql($young_ret) ne '0';
		return sql($cond) eq 't';
	}, 30);
};

my $w1 = sql(q{INSERT INTO rsrc (key, payload) VALUES ('w1', '{"n": 1}'), ('w1', '{"n": 2}'), ('none', '{"n": 3}')
               RETURNING date_bin('1 second', created_at, 'epoch')});
$w1 = (split /\n/, $w1)[0];
is(sql(q{SELECT count, total FROM ret WHERE group_key = 'w1'}), '2|3', 'a new window is in the aggregate');
# a transaction that begins after w1 ended holds the windows after it open
$node->poll_query_until('postgres', qq{SELECT clock_timestamp() > '$w1'::timestamptz + interval '1 second'});
my $held = $node->background_psql('postgres');
$held->query_safe(q{BEGIN; INSERT INTO rsrc (key, payload) VALUES ('held', '{"n": 10}')});
my $w3 = sql(q{INSERT INTO rsrc (key, payload) VALUES ('w3', '{"n": 5}') RETURNING date_bin('1 second', created_at, 'epoch')});
ok($poll_ret->(qq{SELECT count(*) = 0 FROM ret WHERE bucket_start = '$w1'}),
	'the closed window w1 is removed once it ended more than window_retention ago (by the worker)');
is(sql(qq{SELECT count FROM ret_et WHERE bucket_start IS NULL AND group_key = 'none'}), '1',
	'the window of events without an event time (never closed) stays');
# long past w3's end + retention + the margin, while the transaction is open
$node->poll_query_until('postgres', qq{SELECT clock_timestamp() > '$w3'::timestamptz + interval '5 seconds'});
sql('SELECT evstream._merge_deltas()');
is(sql(qq{SELECT count, total FROM ret WHERE bucket_start = '$w3'}), '1|5',
	'a window held open by an open transaction is not removed, however old');
$held->query_safe('COMMIT');
$held->quit;
ok($poll_ret->(qq{SELECT count(*) = 0 FROM ret WHERE bucket_start <= '$w3'}),
	'after that transaction committed, its windows close and are removed');
is($early, 0, 'no window was removed before it ended more than window_retention ago (checked at every poll)');
is(sql(qq{SELECT count(*), sum(count) FROM ret_et WHERE bucket_start IS NULL}), '4|5', 'the never-closing window still stays (every group)');
is(sql(q{SELECT count(*) FROM ret}), '0', 'nothing else is left');
is(sql(q{SELECT count(*) FROM rsrc}), '5', 'the source keeps its events');

# ---------------------------------------------------------------- 3. ordered changelog
sql(q{
SELECT evstream.create_topic('hsrc');
SELECT evstream.create_aggregate('hot', 'hsrc', output_topic => 'hot_out',
    measures => $$sum((payload->>'n')::int) AS total, min((payload->>'n')::int) AS low, max((payload->>'n')::int) AS high$$);
SELECT evstream.create_aggregate('hotw', 'hsrc', bucket => '1 second', output_topic => 'hotw_out',
    measures => $$sum((payload->>'n')::int) AS total, min((payload->>'n')::int) AS low, max((payload->>'n')::int) AS high$$);
});
my $hot_producer = q{
\set n random(1, 1000)
\set r random(1, 10)
BEGIN;
INSERT INTO hsrc (key, payload) VALUES ('hot', jsonb_build_object('n', :n));
SELECT pg_sleep(random() * 0.005);
INSERT INTO hsrc (key, payload) SELECT 'hot', jsonb_build_object('n', g * :r) FROM generate_series(1, :r) g;
\if :r <= 2
ROLLBACK;
\else
COMMIT;
\endif
};
my @load = (
	start_pgbench($node, script => $hot_producer, clients => 4, time => 6),
	start_pgbench($node, script => "SELECT evstream._merge_deltas();\n", clients => 1, rate => 20, time => 6));
my @rc = map { (finish_pgbench($_))[0] } @load;
is_deeply(\@rc, [ 0, 0 ], 'the four producers and the merging client succeeded');

wait_for(q{
SELECT (SELECT (o.payload->>'count')::bigint FROM hot_out o ORDER BY o.id DESC LIMIT 1) = (SELECT count FROM hot)},
	'the changelog catches up with the hot group');
my ($nout, $ncount) = split /\|/, sql(q{SELECT (SELECT count(*) FROM hot_out), (SELECT count FROM hot)});
cmp_ok($nout, '>', 10, "many change events ($nout for $ncount events of the hot group)");

# per group (and window), in id order: count and sum strictly increase,
# max never decreases, min never increases
for my $t ('hot_out', 'hotw_out')
{
	my ($bad_count, $bad_total, $bad_high, $bad_low) = split /\|/, sql(qq{
SELECT count(*) FILTER (WHERE c <= pc), count(*) FILTER (WHERE t <= pt), count(*) FILTER (WHERE h < ph),
       count(*) FILTER (WHERE l > pl)
  FROM (SELECT (payload->>'count')::bigint c, (payload->>'total')::bigint t, (payload->>'high')::int h, (payload->>'low')::int l,
               lag((payload->>'count')::bigint) OVER w pc, lag((payload->>'total')::bigint) OVER w pt,
               lag((payload->>'high')::int) OVER w ph, lag((payload->>'low')::int) OVER w pl
          FROM $t WINDOW w AS (PARTITION BY key, payload->>'bucket_start' ORDER BY id)) s});
	is($bad_count, '0', "$t: per group and window the count strictly increases in id order (never repeats or goes back)");
	is($bad_total, '0', "$t: the sum strictly increases");
	is($bad_high, '0', "$t: the max never decreases");
	is($bad_low, '0', "$t: the min never increases");
}
my $truth_hot = q{SELECT key, count(*), sum((payload->>'n')::int), min((payload->>'n')::int), max((payload->>'n')::int) FROM hsrc GROUP BY 1};
is(sql(sets_equal_sql(q{SELECT group_key, count, total, low, high FROM hot}, $truth_hot)), '0',
	'the hot group is exact');
is( sql(sets_equal_sql(q{
SELECT key, (payload->>'count')::bigint, (payload->>'total')::bigint, (payload->>'low')::int, (payload->>'high')::int
  FROM hot_out o WHERE id = (SELECT max(id) FROM hot_out)}, $truth_hot)),
	'0', 'the latest change event carries the exact values');
my $truth_hotw = q{SELECT key, date_bin('1 second', created_at, 'epoch'), count(*), sum((payload->>'n')::int),
                          min((payload->>'n')::int), max((payload->>'n')::int) FROM hsrc GROUP BY 1, 2};
is(sql(sets_equal_sql(q{SELECT group_key, bucket_start, count, total, low, high FROM hotw}, $truth_hotw)), '0',
	'the windowed aggregate is exact');
wait_for('SELECT (' . sets_equal_sql(q{
SELECT key, (payload->>'bucket_start')::timestamptz, (payload->>'count')::bigint, (payload->>'total')::bigint,
       (payload->>'low')::int, (payload->>'high')::int
  FROM hotw_out o
 WHERE id = (SELECT max(id) FROM hotw_out l WHERE l.key = o.key AND l.payload->'bucket_start' = o.payload->'bucket_start')},
		$truth_hotw) . ') = 0',
	'per window, the latest change event carries the exact values');
is(sql(q{SELECT count(*) FROM evstream.workers WHERE last_error IS NOT NULL}), '0', 'no maintenance error');

note sprintf('150_aggregates_v2 took %.1f s', time - $t0);
$node->stop;
done_testing();
