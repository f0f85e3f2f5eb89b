# Restart and crash mid-load (issue 2 test (d), issue 3 crash test).
#
# Four pgbench producers insert events in transactions of random length
# with ~20% rollbacks, recording every id they produce in the heap table
# `produced` in the same transaction; consumers move two groups (g1: two
# concurrent `consume` sessions with ~10% rollbacks; g2: poll + commit)
# and record what they consumed in `consumed`, in the same transaction.
# The server is stopped with -m fast and crashed with -m immediate while
# all of that runs.  After each restart:
#   - every committed event is in the topic exactly once, and nothing else;
#   - each group's position is the last id it consumed (nothing lost, nothing
#     consumed twice), and what it consumed is a gap-free prefix of the log;
#   - stable_id >= max(id); a new event gets an id above every earlier one
#     and stable_id = max(id) once it committed;
#   - every aggregate equals GROUP BY over the topic;
#   - the worker is back.
# A producer terminated mid-transaction does not hold stable_id back.
# Finally the load runs to completion, the groups drain the topic and
# consumed = produced for both.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/../lib";
use EvsTest;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = evs_node('crash', "evstream.maintenance_interval = '1s'");

$node->safe_psql('postgres', q{
CREATE EXTENSION evstream;
SELECT evstream.create_topic('ev', partition_interval => '10 seconds');
CREATE TABLE produced (id bigint NOT NULL, key text);
CREATE TABLE consumed (grp text NOT NULL, id bigint NOT NULL);
CREATE INDEX ON consumed (grp, id);
SELECT evstream.create_aggregate('ev_by_key', 'ev');
SELECT evstream.create_aggregate('ev_by_word', 'ev', group_by => $$payload->>'w'$$,
                                 bucket => '1 second');
});

my $producer = q{
\set n random(1, 20)
\set r random(1, 100)
\set w random(1, 40)
BEGIN;
WITH i AS (INSERT INTO ev (key, payload)
           SELECT CASE WHEN random() < 0.05 THEN NULL ELSE 'k' || (random() * 30)::int END,
                  jsonb_build_object('w', 'w' || (random() * 25)::int, 'c', :client_id)
             FROM generate_series(1, :n)
           RETURNING id, key)
INSERT INTO produced (id, key) SELECT id, key FROM i;
SELECT pg_sleep(random() * 0.005);
WITH i AS (INSERT INTO ev (key, payload) VALUES ('k' || :w, '{"w": "single"}') RETURNING id, key)
INSERT INTO produced (id, key) SELECT id, key FROM i;
\if :r <= 20
ROLLBACK;
\else
COMMIT;
\endif
};

my $consumer_g1 = q{
\set r random(1, 100)
BEGIN;
INSERT INTO consumed (grp, id) SELECT 'g1', id FROM evstream.consume('ev', 'g1', 50);
\if :r <= 10
ROLLBACK;
\else
COMMIT;
\endif
};

my $consumer_g2 = q{
BEGIN;
WITH p AS (SELECT id FROM evstream.poll('ev', 'g2', 70)),
     i AS (INSERT INTO consumed (grp, id) SELECT 'g2', id FROM p RETURNING id)
SELECT coalesce(max(id), -1) AS last FROM i \gset
\if :last >= 0
SELECT evstream.commit('ev', 'g2', :last);
\endif
COMMIT;
};

# Start the whole load: producers and both consumer groups
sub start_load
{
	my ($secs) = @_;
	return [
		start_pgbench($node, script => $producer, clients => 4, time => $secs),
		start_pgbench($node, script => $consumer_g1, clients => 2, time => $secs),
		start_pgbench($node, script => $consumer_g2, clients => 1, time => $secs),
	];
}

# Wait until the load has made progress (so the stop hits it mid-flight)
sub wait_progress
{
	my ($min_produced, $min_consumed) = @_;
	ok( $node->poll_query_until(
			'postgres',
			"SELECT (SELECT count(*) FROM produced) >= $min_produced "
			  . "AND (SELECT count(*) FROM consumed) >= $min_consumed"),
		"load under way (>= $min_produced produced, >= $min_consumed consumed)");
}

sub check_aggregates
{
	my ($label) = @_;
	is( $node->safe_psql(
			'postgres',
			sets_equal_sql(
				'SELECT group_key, count FROM ev_by_key',
				'SELECT key, count(*) FROM ev GROUP BY key')),
		'0',
		"$label: aggregate by key equals GROUP BY");
	is( $node->safe_psql(
			'postgres',
			sets_equal_sql(
				'SELECT group_key, bucket_start, count FROM ev_by_word',
				q{SELECT payload->>'w', date_bin('1 second', created_at, 'epoch'), count(*) FROM ev GROUP BY 1, 2})),
		'0',
		"$label: windowed aggregate equals GROUP BY");
}

# Everything that must hold after a stop/crash and restart
sub check_after_restart
{
	my ($label) = @_;

	is( $node->safe_psql('postgres',
			sets_equal_sql('SELECT id FROM ev', 'SELECT id FROM produced')),
		'0',
		"$label: the topic holds exactly the committed events");
	is($node->safe_psql('postgres', 'SELECT count(*) - count(DISTINCT id) FROM ev'),
		'0', "$label: no id twice");

	for my $g (qw(g1 g2))
	{
		my ($pos, $maxc, $dups, $missing, $extra) = split /\|/,
		  $node->safe_psql(
			'postgres', qq{
SELECT coalesce((SELECT committed_id FROM evstream.consumer_groups
                  WHERE topic = 'ev'::regclass AND consumer_group = '$g'), 0),
       (SELECT coalesce(max(id), 0) FROM consumed WHERE grp = '$g'),
       (SELECT count(*) - count(DISTINCT id) FROM consumed WHERE grp = '$g'),
       (SELECT count(*) FROM produced p
         WHERE p.id <= (SELECT coalesce(max(id), 0) FROM consumed WHERE grp = '$g')
           AND NOT EXISTS (SELECT 1 FROM consumed c WHERE c.grp = '$g' AND c.id = p.id)),
       (SELECT count(*) FROM consumed c WHERE c.grp = '$g'
           AND NOT EXISTS (SELECT 1 FROM produced p WHERE p.id = c.id))});
		is($pos, $maxc, "$label: position of $g is the last id it consumed ($pos)");
		is($dups, '0', "$label: $g consumed no event twice");
		is($missing, '0', "$label: $g skipped no committed event below its position");
		is($extra, '0', "$label: $g consumed only committed events");
	}

	check_aggregates($label);

	my ($maxid, $stable) = split /\|/,
	  $node->safe_psql('postgres',
		q{SELECT coalesce(max(id), 0), evstream.stable_id('ev') FROM ev});
	cmp_ok($stable, '>=', $maxid, "$label: stable_id ($stable) >= max(id) ($maxid)");
	my $maxp = $node->safe_psql('postgres', 'SELECT coalesce(max(id), 0) FROM produced');
	my $newid = $node->safe_psql('postgres',
		q{INSERT INTO ev (key, payload) VALUES ('after', '{"w": "after"}') RETURNING id});
	$node->safe_psql('postgres', "INSERT INTO produced VALUES ($newid, 'after')");
	cmp_ok($newid, '>', $maxid, "$label: new id $newid above every earlier id");
	cmp_ok($newid, '>', $stable, "$label: new id above the earlier stable_id");
	is( $node->safe_psql('postgres',
			q{SELECT evstream.stable_id('ev') = max(id) AND max(id) = } . $newid . ' FROM ev'),
		't',
		"$label: stable_id = max(id) after the new commit");

	ok( $node->poll_query_until(
			'postgres',
			"SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'evstream worker' AND datname = 'postgres'"),
		"$label: the worker is back");
}

my $t0 = time;

# ---- 1. clean stop (-m fast) under load
my $load = start_load(60);
wait_progress(1500, 300);
$node->stop('fast');
finish_pgbench($_) for @$load;
$node->start;
check_after_restart('after -m fast');

# ---- 2. crash (-m immediate) under load
$load = start_load(60);
my $before = $node->safe_psql('postgres', 'SELECT count(*) FROM produced');
wait_progress($before + 1500, 600);
$node->stop('immediate');
finish_pgbench($_) for @$load;
$node->start;
check_after_restart('after -m immediate');

# ---- 3. a second crash, right as the load starts (many transactions open)
$load = start_load(60);
$before = $node->safe_psql('postgres', 'SELECT count(*) FROM produced');
wait_progress($before + 200, 0);
$node->stop('immediate');
finish_pgbench($_) for @$load;
$node->start;
check_after_restart('after a second crash');

# ---- a producer terminated mid-transaction does not hold stable_id back
my $held = $node->background_psql('postgres', on_error_stop => 0);
my $held_pid = $held->query_safe(q{BEGIN; INSERT INTO ev (key) VALUES ('never committed'); SELECT pg_backend_pid();});
my $later = $node->safe_psql('postgres',
	q{WITH i AS (INSERT INTO ev (key) VALUES ('later') RETURNING id, key) INSERT INTO produced SELECT id, key FROM i RETURNING id});
cmp_ok($node->safe_psql('postgres', q{SELECT evstream.stable_id('ev')}), '<', $later,
	'an open producer transaction holds stable_id below a later commit');
$node->safe_psql('postgres', "SELECT pg_terminate_backend($held_pid)");
ok($node->poll_query_until('postgres', "SELECT evstream.stable_id('ev') >= $later"),
	'once that producer is terminated, stable_id moves past the later commit');
eval { $held->quit };
# its backend slot is reused by new sessions without holding anything back
my $after = $node->safe_psql('postgres',
	q{WITH i AS (INSERT INTO ev (key) VALUES ('after') RETURNING id, key) INSERT INTO produced SELECT id, key FROM i RETURNING id});
is($node->safe_psql('postgres', q{SELECT evstream.stable_id('ev')}), $after, 'stable_id = the newest commit');

# ---- 4. a load that runs to its end, then the groups drain the topic
$load = start_load(5);
my @rc = map { (finish_pgbench($_))[0] } @$load;
is_deeply(\@rc, [ 0, 0, 0 ], 'undisturbed load: every pgbench client succeeded')
  or diag(join("\n", map { ${ $_->{err} } } @$load));

for my $g (qw(g1 g2))
{
	my $n;
	do
	{
		$n = $node->safe_psql('postgres', qq{
WITH c AS (INSERT INTO consumed (grp, id) SELECT '$g', id FROM evstream.consume('ev', '$g', 5000) RETURNING 1)
SELECT count(*) FROM c});
	} while ($n > 0);
	is( $node->safe_psql('postgres',
			sets_equal_sql("SELECT id FROM consumed WHERE grp = '$g'", 'SELECT id FROM produced')),
		'0',
		"$g consumed every committed event exactly once");
}
check_aggregates('at the end');
note sprintf('produced %s events in %d s',
	$node->safe_psql('postgres', 'SELECT count(*) FROM produced'), time - $t0);

$node->stop;
done_testing();
