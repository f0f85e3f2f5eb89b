# Stress (issue 2 test (e), issue 3 stress test).
#
# Four pgbench producers write random words in transactions of random
# length (1-30 rows in several statements, a savepoint rolled back ~30% of
# the time, a short sleep inside, ~20% whole-transaction rollbacks), every
# transaction also producing the hot word 'hot'; the test process itself
# produces with COPY in transactions (~20% rolled back).  Every producer
# records the ids it produced in `produced` in the same (sub)transaction.
# Meanwhile two pgbench clients run evstream.consume on one group (~10%
# rollbacks), recording what they got in `consumed` in the same transaction.
# Proves:
#   - consumed ids = committed ids, no duplicates (two concurrent consumers,
#     late commits, rollbacks, savepoints);
#   - every aggregate (by word, by an expression, windowed, all-NULL) equals
#     GROUP BY over the topic at every instant during the load (checked in
#     single statements) and at the end, before and after the worker merged
#     the deltas;
#   - the output topic's latest event per word carries the final count, and
#     per word the counts only grow in id order, while a second merger races
#     the worker's merges.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/../lib";
use EvsTest;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

my $node = evs_node('stress', "evstream.maintenance_interval = '1s'");
my $LOAD_SECS = 15;

my @words = qw(alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu
  nu xi omicron pi rho sigma tau upsilon phi chi psi omega apple banana cherry
  date elder fig grape);
my $wordlist = join(' ', @words);

$node->safe_psql('postgres', qq{
CREATE EXTENSION evstream;
SELECT evstream.create_topic('words', partition_interval => '5 seconds');
CREATE TABLE produced (id bigint NOT NULL, key text);
CREATE TABLE consumed (id bigint NOT NULL);
-- a few events before the aggregates exist: they are backfilled
WITH i AS (INSERT INTO words (key, payload)
           SELECT (string_to_array('$wordlist', ' '))[1 + g % 30], '{"n": 0}' FROM generate_series(1, 100) g
           RETURNING id, key)
INSERT INTO produced SELECT id, key FROM i;
SELECT evstream.create_aggregate('by_word', 'words', output_topic => 'word_counts');
SELECT evstream.create_aggregate('by_len', 'words', group_by => 'length(key)');
SELECT evstream.create_aggregate('by_n', 'words', group_by => \$\$payload->>'n'\$\$,
                                 bucket => '2 seconds');
SELECT evstream.create_aggregate('by_nothing', 'words', group_by => \$\$payload->>'nothing'\$\$);
});

my $words_sql = "(string_to_array('$wordlist', ' '))[1 + floor(random() * 30)::int]";
my $producer = qq{
\\set n random(1, 15)
\\set m random(1, 15)
\\set r random(1, 100)
\\set s random(1, 100)
BEGIN;
WITH i AS (INSERT INTO words (key, payload)
           SELECT CASE WHEN random() < 0.05 THEN NULL ELSE $words_sql END,
                  jsonb_build_object('n', (random() * 9)::int, 'c', :client_id)
             FROM generate_series(1, :n)
           RETURNING id, key)
INSERT INTO produced SELECT id, key FROM i;
SAVEPOINT s1;
WITH i AS (INSERT INTO words (key, payload)
           SELECT $words_sql, jsonb_build_object('n', (random() * 9)::int, 'sp', true)
             FROM generate_series(1, :m)
           RETURNING id, key)
INSERT INTO produced SELECT id, key FROM i;
\\if :s <= 30
ROLLBACK TO SAVEPOINT s1;
\\else
RELEASE SAVEPOINT s1;
\\endif
SELECT pg_sleep(random() * 0.01);
WITH i AS (INSERT INTO words (key, payload) VALUES ('hot', '{"n": 1}') RETURNING id, key)
INSERT INTO produced SELECT id, key FROM i;
\\if :r <= 20
ROLLBACK;
\\else
COMMIT;
\\endif
};

my $consumer = q{
\set r random(1, 100)
BEGIN;
INSERT INTO consumed (id) SELECT id FROM evstream.consume('words', 'g', 100);
\if :r <= 10
ROLLBACK;
\else
COMMIT;
\endif
};

# the aggregates, each with the GROUP BY that must equal it
my %agg_check = (
	by_word => [ 'SELECT group_key, count FROM by_word',
		'SELECT key, count(*) FROM words GROUP BY 1' ],
	by_len => [ 'SELECT group_key, count FROM by_len',
		'SELECT length(key)::text, count(*) FROM words GROUP BY 1' ],
	by_n => [ 'SELECT group_key, bucket_start, count FROM by_n',
		q{SELECT payload->>'n', date_bin('2 seconds', created_at, 'epoch'), count(*) FROM words GROUP BY 1, 2} ],
	by_nothing => [ 'SELECT group_key, count FROM by_nothing',
		q{SELECT payload->>'nothing', count(*) FROM words GROUP BY 1} ],);

# one statement: a single snapshot for the aggregates and the topic
my $all_aggs_sql = 'SELECT ' . join(' + ',
	map { '(' . sets_equal_sql(@{ $agg_check{$_} }) . ')' } sort keys %agg_check);

my $t0 = time;
my @load = (
	start_pgbench($node, script => $producer, clients => 4, time => $LOAD_SECS),
	start_pgbench($node, script => $consumer, clients => 2, time => $LOAD_SECS),
	# merges racing the worker's: change events must still follow commit order
	start_pgbench($node, script => "SELECT evstream._merge_deltas();\n", clients => 1,
		time => $LOAD_SECS, rate => 20));

# the test process produces with COPY and checks the aggregates meanwhile
my $copier = $node->background_psql('postgres', timeout => 180);
my ($copies, $checks, $bad_checks) = (0, 0, 0);
while (time < $t0 + $LOAD_SECS - 1)
{
	my $batch = 'c' . $copies++;
	my $rows = join('', map {
			my $w = rand() < 0.05 ? '\N' : $words[ int(rand(@words)) ];
			sprintf("%s\t{\"n\": %d, \"b\": \"%s\"}\n", $w, int(rand(10)), $batch)
	} 1 .. (1 + int(rand(300))));
	my $end = rand() < 0.2 ? 'ROLLBACK' : 'COMMIT';
	$copier->query_safe("BEGIN;\nCOPY words (key, payload) FROM STDIN;\n$rows\\.\n"
		  . "INSERT INTO produced SELECT id, key FROM words WHERE payload->>'b' = '$batch';\n$end;");
	if ($copies % 5 == 0)
	{
		$checks++;
		my $diff = $node->safe_psql('postgres', $all_aggs_sql);
		if ($diff ne '0') { $bad_checks++; diag("aggregates differ from GROUP BY during the load: $diff rows"); }
	}
}
$copier->quit;
cmp_ok($checks, '>', 0, "checked the aggregates during the load ($copies COPY transactions)");
is($bad_checks, 0, 'every aggregate equalled GROUP BY at every check during the load');

my @rc = map { (finish_pgbench($_))[0] } @load;
is_deeply(\@rc, [ 0, 0, 0 ], 'every producer, consumer and merger transaction succeeded')
  or diag(join("\n", map { ${ $_->{err} } } @load));
note 'producers: ' . ${ $load[0]{out} } =~ s/\n/ /gr;

# the newest ids belong to a rolled-back transaction (the load ends that way
# in about one run of five; make it so every time)
$node->safe_psql('postgres', q{BEGIN; INSERT INTO words (key) VALUES ('rolled back'); ROLLBACK;});

# drain what is left
my $n;
do
{
	$n = $node->safe_psql('postgres', q{
WITH c AS (INSERT INTO consumed SELECT id FROM evstream.consume('words', 'g', 10000) RETURNING 1)
SELECT count(*) FROM c});
} while ($n > 0);

my ($nprod, $ncons) = split /\|/, $node->safe_psql('postgres',
	'SELECT (SELECT count(*) FROM produced), (SELECT count(*) FROM consumed)');
note "produced $nprod, consumed $ncons";
cmp_ok($nprod, '>', 1000, 'the load produced a fair number of events');
is($node->safe_psql('postgres', 'SELECT count(*) - count(DISTINCT id) FROM consumed'),
	'0', 'no event consumed twice');
is($node->safe_psql('postgres', sets_equal_sql('SELECT id FROM consumed', 'SELECT id FROM produced')),
	'0', 'consumed ids = committed ids');
is($node->safe_psql('postgres', sets_equal_sql('SELECT id FROM words', 'SELECT id FROM produced')),
	'0', 'the topic holds exactly the committed events');
is( $node->safe_psql('postgres',
		q{SELECT committed_id = (SELECT max(id) FROM produced) FROM evstream.consumer_groups WHERE consumer_group = 'g'}),
	't', 'the group is at the last event');
is($node->safe_psql('postgres', q{SELECT lag_events FROM evstream.consumer_groups WHERE consumer_group = 'g'}),
	'0', 'its lag_events is 0 (the rolled-back ids after the last event are no lag)');

for my $a (sort keys %agg_check)
{
	is($node->safe_psql('postgres', sets_equal_sql(@{ $agg_check{$a} })),
		'0', "$a equals GROUP BY after the load");
}
ok($node->poll_query_until('postgres', 'SELECT count(*) = 0 FROM evstream._delta'),
	'the worker merged every delta');
for my $a (sort keys %agg_check)
{
	is($node->safe_psql('postgres', sets_equal_sql(@{ $agg_check{$a} })),
		'0', "$a equals GROUP BY after the merge");
}
is($node->safe_psql('postgres', q{SELECT count FROM by_word WHERE group_key = 'hot'}),
	$node->safe_psql('postgres', q{SELECT count(*) FROM words WHERE key = 'hot'}),
	'the hot word is counted exactly');
is( $node->safe_psql('postgres',
		q{SELECT groups FROM evstream.aggregates WHERE name = 'by_word'::regclass}),
	$node->safe_psql('postgres', 'SELECT count(DISTINCT key) + 1 FROM words'),
	'evstream.aggregates.groups counts the groups (NULL included)');

# output topic: the latest event of each word carries the final count
is( $node->safe_psql(
		'postgres',
		sets_equal_sql(
			q{SELECT DISTINCT ON (key) key, (payload->>'count')::bigint FROM word_counts ORDER BY key, id DESC},
			'SELECT group_key, count FROM by_word')),
	'0',
	'output topic: the latest event of every group carries its final count');
is( $node->safe_psql(
		'postgres', q{
SELECT count(*) FROM (
    SELECT (payload->>'count')::bigint AS n,
           lag((payload->>'count')::bigint) OVER (PARTITION BY key ORDER BY id) AS before
      FROM word_counts) x
 WHERE n <= before}),
	'0',
	'output topic: per group, counts only grow in id order (never back, never repeated), with merges racing the worker');

note sprintf('runtime %.1f s', time - $t0);
$node->stop;
done_testing();
