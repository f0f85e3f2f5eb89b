# The transform workers are shared by every role's transforms: one role's
# many slow transforms must not hold up another role's for a batch each
# (attacker round 7, F2).  A worker's pass gives each owner a turn
# (transforms.c): once an owner's batches took a second in the pass, its
# other transforms wait for the next pass.
#
# Proves, with one transform worker:
#   - mallory's eight transforms, named to come first, each sleeping 4 s a
#     batch (32 s a pass before turns), hold each of honest's events up by
#     about one of their batches, not eight: every one of four events,
#     committed 3 s apart, reaches honest's output within 12 s (without
#     turns the last waited 23 s or more);
#   - mallory's transforms all still make progress (each took batches).
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/../lib";
use EvsTest;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

local $SIG{__DIE__} = sub { diag("died: $_[0]") unless $^S; };
my $node = evs_node('turns', 'evstream.max_transform_workers = 1');
my $db = 'postgres';
sub sql { return $node->safe_psql($db, $_[0]); }

sql(q{
CREATE EXTENSION evstream;
CREATE ROLE mallory;
CREATE ROLE honest;
CREATE SCHEMA m AUTHORIZATION mallory;
CREATE SCHEMA h AUTHORIZATION honest;
SET ROLE mallory;
SELECT evstream.create_topic('m.src');
INSERT INTO m.src (key) SELECT 'k' FROM generate_series(1, 200);
RESET ROLE;
SET ROLE honest;
SELECT evstream.create_topic('h.src');
SELECT evstream.create_transform('z_honest', 'h.src',
    $$SELECT e.key, e.payload FROM events e$$, 'h.out');
});
for my $i (1 .. 8)
{
	sql(qq{
SET ROLE mallory;
SELECT evstream.create_transform('a_slow$i', 'm.src',
    \$\$SELECT e.key, e.payload FROM events e, LATERAL (SELECT pg_catalog.pg_sleep(4)) s\$\$,
    'm.out', batch => 1);
});
}
# the worker runs mallory's batches
ok( $node->poll_query_until($db, q{SELECT count(*) >= 2 FROM m.out}),
	"mallory's transforms run");

my @latency;
for my $i (1 .. 4)
{
	sql(qq{INSERT INTO h.src (key) VALUES ('e$i')});
	my $t0 = time;
	my $seen = 0;
	while (time - $t0 < 60)
	{
		if (sql(qq{SELECT count(*) FROM h.out WHERE key = 'e$i'}) eq '1')
		{
			$seen = 1;
			last;
		}
		usleep(100_000);
	}
	push @latency, $seen ? time - $t0 : 60;
	my $left = 3 - (time - $t0);
	usleep($left * 1_000_000) if $left > 0;	# the next one 3 s later
}
my $max = (sort { $b <=> $a } @latency)[0];
note(sprintf('latencies of honest\'s events: %s s', join(', ', map { sprintf('%.1f', $_) } @latency)));
cmp_ok($max, '<', 12, "each of honest's events waited for about one of mallory's batches, not eight");

# each of mallory's transforms has had batches (the turns rotate)
ok( $node->poll_query_until($db,
		q{SELECT count(DISTINCT consumer_group) = 8 FROM evstream.consumer_groups
           WHERE topic = 'm.src'::regclass AND consumer_group LIKE 'a_slow%' AND committed_id > 0}),
	"every one of mallory's transforms makes progress");
done_testing();
