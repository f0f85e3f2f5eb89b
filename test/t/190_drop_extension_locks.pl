# DROP EXTENSION evstream never deadlocks with the database's workers
# (extension.c, EvsWorkerLockExtension): the drop takes the extension's
# lock before any member's, and every worker transaction takes it (shared)
# before any lock of its own, so one waits for the other and there is no
# cycle.  The drops run with deadlock_timeout = 10ms while the worker merges
# deltas without pause: a drop waiting for the worker then checked for a
# cycle within milliseconds.  (Before: the worker's 200 ms lock_timeout
# was the only guard, and a refused DROP EXTENSION sometimes said
# "deadlock detected" instead of naming the dependent objects — seen in CI.)
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/../lib";
use EvsTest;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = evs_node('droplocks', 'evstream.maintenance_interval = 1');

my $setup = q{
CREATE EXTENSION evstream;
SELECT evstream.create_topic('src' || i) FROM generate_series(1, 3) i;
SELECT evstream.create_aggregate('cnt' || i, 'src' || i, output_topic => 'out' || i,
    measures => $$sum((payload->>'n')::int) AS total$$) FROM generate_series(1, 3) i;
SELECT evstream.create_aggregate('win' || i, 'src' || i, bucket => '1 second')
  FROM generate_series(1, 3) i;
};
$node->safe_psql('postgres', $setup);

# the worker merges all the time: producers into every topic
my $producers = start_pgbench($node,
	script => "\\set t random(1, 3)\n"
	  . "INSERT INTO src:t (key, payload) SELECT 'k' || (random() * 20)::int, jsonb_build_object('n', g) FROM generate_series(1, 20) g;\n",
	clients => 3, rate => 150, time => 10);

my ($refused, $deadlocks, $other) = (0, 0, '');
my $until = time() + 8;
while (time() < $until)
{
	my ($rc, $out, $err) = $node->psql('postgres',
		"SET deadlock_timeout = '10ms'; DROP EXTENSION evstream;");
	if ($err =~ /cannot drop extension evstream because other objects depend on it/) { $refused++; }
	elsif ($err =~ /deadlock detected/) { $deadlocks++; }
	else { $other .= "rc $rc: $err\n"; }
}
my ($prc) = finish_pgbench($producers);
note "refused drops: $refused, deadlocks: $deadlocks";
cmp_ok($refused, '>', 20, 'DROP EXTENSION without CASCADE was refused again and again while the worker merged');
is($deadlocks, 0, 'none of them ended in a deadlock with the worker');
is($other, '', 'and none ended otherwise');
is($prc, 0, 'the producers ran without errors meanwhile');

# DROP EXTENSION ... CASCADE while the worker folds a backlog of deltas
my $cascade_errors = '';
for my $round (1 .. 5)
{
	$node->safe_psql('postgres', q{
INSERT INTO src1 (key, payload) SELECT 'k' || (g % 50), jsonb_build_object('n', g) FROM generate_series(1, 20000) g;
INSERT INTO src2 (key, payload) SELECT 'k' || (g % 50), jsonb_build_object('n', g) FROM generate_series(1, 20000) g;});
	my ($rc, $out, $err) = $node->psql('postgres',
		"SET deadlock_timeout = '10ms'; SET client_min_messages = warning; DROP EXTENSION evstream CASCADE;");
	$cascade_errors .= "round $round: $err\n" if $rc != 0;
	$node->safe_psql('postgres', 'DROP EXTENSION IF EXISTS evstream CASCADE') if $rc != 0;
	$node->safe_psql('postgres', $setup);
}
is($cascade_errors, '', 'DROP EXTENSION CASCADE during merges succeeded each time');

# the workers still work after all this
$node->safe_psql('postgres', "INSERT INTO src3 (key) VALUES ('after')");
ok( $node->poll_query_until('postgres',
		"SELECT count FROM cnt3 WHERE group_key = 'after'", '1'),
	'the worker merges again after the drops');

# A user's drop_topic of a topic whose aggregate the worker is merging:
# the worker checks for deadlocks after 10 ms (evs_bound_lock_waits), so
# in a cycle it is the one that gives way, not the user's DDL (whose
# check here comes after 100 ms; before, any worker wait that began
# within the DDL's first 100 ms of waiting ended in the DDL's deadlock).
my ($drops, $drop_errors) = (0, '');
my $feed = start_pgbench($node,
	script => "INSERT INTO src1 (key, payload) SELECT 'k' || (random() * 20)::int, jsonb_build_object('n', g) FROM generate_series(1, 20) g;\n",
	clients => 2, rate => 100, time => 12);
$until = time() + 10;
while (time() < $until)
{
	my ($rc, $out, $err) = $node->psql('postgres', q{
SET deadlock_timeout = '100ms';
SELECT evstream.create_topic('churn');
SELECT evstream.create_aggregate('churn_cnt', 'churn', output_topic => 'churn_out',
    measures => $$sum((payload->>'n')::int) AS total$$);
INSERT INTO churn (key, payload) SELECT 'k' || (g % 30), jsonb_build_object('n', g) FROM generate_series(1, 3000) g;
SELECT pg_sleep(0.05);
SELECT evstream.drop_topic('churn', cascade => true);});
	$drops++;
	$drop_errors .= "rc $rc: $err\n" if $rc != 0 || $err =~ /ERROR/;
	$node->safe_psql('postgres', q{SELECT evstream.drop_topic(t, cascade => true) FROM unnest(ARRAY['churn', 'churn_out']) t
 WHERE to_regclass(t) IS NOT NULL AND EXISTS (SELECT FROM evstream._topic x WHERE x.topic = to_regclass(t))})
	  if $rc != 0;
}
($prc) = finish_pgbench($feed);
note "drop_topic rounds: $drops";
cmp_ok($drops, '>', 10, 'drop_topic ran again and again while the worker merged');
is($drop_errors, '', 'none failed (no deadlock with the worker)');

# The lock the workers wait for is evstream's own: PostgreSQL's lock on the
# extension, which any role can take and keep with ALTER FUNCTION ...
# DEPENDS ON EXTENSION on a function of its own, does not hold them up.
$node->safe_psql('postgres', 'CREATE ROLE mallory LOGIN');
my $holder = $node->background_psql('postgres', extra_params => [ '-U', 'mallory' ]);
$holder->query_safe(q{CREATE FUNCTION pg_temp.f() RETURNS int LANGUAGE sql AS 'SELECT 1'});
$holder->query_safe(q{BEGIN; ALTER FUNCTION pg_temp.f() DEPENDS ON EXTENSION evstream});
is( $node->safe_psql('postgres', q{
SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
 WHERE l.locktype = 'object' AND l.classid = 'pg_extension'::regclass
   AND l.mode = 'AccessExclusiveLock' AND l.granted AND a.usename = 'mallory'}),
	'1', "a role holds PostgreSQL's AccessExclusiveLock on the extension");
$node->safe_psql('postgres', "INSERT INTO src3 (key) VALUES ('while held')");
ok( $node->poll_query_until('postgres',
		"SELECT count(*) > 0 FROM out3 WHERE key = 'while held'"),
	'the worker still merges: the change event reaches the output topic');
$holder->query_safe('ROLLBACK');
$holder->quit;

done_testing();
