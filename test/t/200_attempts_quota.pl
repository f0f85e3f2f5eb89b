# The attempt counts of max_attempts live in one table in shared memory
# for the whole cluster (waits.c).  A user must not be able to turn
# dead-lettering off for other users, of her database or of another, by
# filling it, nor leave entries behind that nothing frees.
#
# Proves, with "filler", a role without privileges beyond its own schema in
# database "other":
#   - entries of groups created in rolled-back subtransactions (2100 of
#     them, more than a role's share) are swept by the database's worker:
#     a group made afterwards in "other" gets counted again;
#   - 8300 committed groups of filler's, each with one counted shard, hold
#     at most a role's share of the table (512 entries), in "other" and in
#     "postgres" together; another role's group in "other" and a group in
#     "postgres" still have their failed deliveries counted, and dead-letter
#     (before the shares the table was full and nothing more was counted);
#   - DROP EXTENSION frees its database's entries: after CREATE EXTENSION
#     again, a group that gets id 1 again starts its count at 1, not at the
#     old group 1's;
#   - the server never restarted.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/../lib";
use EvsTest;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

local $SIG{__DIE__} = sub { diag("died: $_[0]") unless $^S; };
my $node = evs_node('attempts', "evstream.maintenance_interval = '1s'");
my $started = $node->safe_psql('postgres', 'SELECT pg_postmaster_start_time()');

# a delivery of the next event of (topic, group) that does not commit: the
# shard's attempts count afterwards (0: not counted)
my $setup = q{
CREATE EXTENSION evstream;
CREATE FUNCTION fail_once(t regclass, g text) RETURNS int LANGUAGE plpgsql AS $$
BEGIN
    BEGIN
        PERFORM * FROM evstream.consume(t, g, 1);
        RAISE EXCEPTION 'undo';
    EXCEPTION WHEN raise_exception THEN NULL;
    END;
    RETURN (SELECT s.attempts FROM evstream.group_shards s
             WHERE s.topic = t AND s.consumer_group = g AND s.shard = 0);
END $$;
-- n committed groups prefix1..prefixn with max_attempts, each with a
-- failed delivery counted (a creation holds a lock to its commit: not
-- thousands at once)
CREATE PROCEDURE fill(t regclass, prefix text, n int) LANGUAGE plpgsql AS $$
BEGIN
    FOR i IN 1..n LOOP
        PERFORM evstream.set_group_options(t, prefix || i, max_attempts => 3);
        BEGIN
            PERFORM * FROM evstream.consume(t, prefix || i, 1);
            RAISE EXCEPTION 'undo';
        EXCEPTION WHEN raise_exception THEN NULL;
        END;
        IF i % 500 = 0 THEN
            COMMIT;
        END IF;
    END LOOP;
END $$;
};
$node->safe_psql('postgres', 'CREATE DATABASE other');
$node->safe_psql('postgres', $setup);
$node->safe_psql('other', $setup);
$node->safe_psql('other', q{
CREATE ROLE filler;
CREATE SCHEMA f AUTHORIZATION filler;
SET ROLE filler;
SELECT evstream.create_topic('f.t');
INSERT INTO f.t (payload) VALUES ('{}');
RESET ROLE;
-- group 1 of this database, with a count of 1
SELECT evstream.create_topic('p');
INSERT INTO p (payload) VALUES ('{}');
SELECT evstream.set_group_options('p', 'pg', max_attempts => 100);
});
is($node->safe_psql('other', q{SELECT g.id FROM evstream._group g WHERE g.consumer_group = 'pg'}),
	'1', 'the probe group is group 1 of database other');
is($node->safe_psql('other', q{SELECT fail_once('p', 'pg')}), '1', 'its failed delivery counts 1');
$node->poll_query_until('other', 'SELECT count(*) = 1 FROM evstream.workers WHERE database = current_database() AND pid IS NOT NULL')
  or die 'no worker in other';

# 1. groups created and counted in subtransactions that roll back
$node->safe_psql('other', q{
SET ROLE filler;
DO $$
BEGIN
    FOR i IN 1..2100 LOOP
        BEGIN
            PERFORM evstream.set_group_options('f.t', 'r' || i, max_attempts => 3);
            PERFORM * FROM evstream.consume('f.t', 'r' || i, 1);
            RAISE EXCEPTION 'undo';
        EXCEPTION WHEN raise_exception THEN NULL;
        END;
    END LOOP;
END $$;
});
is($node->safe_psql('other', q{SELECT count(*) FROM evstream._group WHERE consumer_group LIKE 'r%'}),
	'0', 'the rolled-back groups are gone');
# their ids were 2 to 2101, each counted at position 0
my $left = q{SELECT count(*) FROM generate_series(2, 2101) g WHERE evstream._attempts(g, 0, 0) > 0};
my $n = $node->safe_psql('other', $left);
ok($n <= 512, "they hold a role's share at most ($n entries left)");
ok($node->poll_query_until('other', "SELECT ($left) = 0"), 'their counts are swept');
$node->safe_psql('other', q{SELECT evstream.set_group_options('p', 'pg2', max_attempts => 100)});
ok( $node->poll_query_until('other', q{SELECT fail_once('p', 'pg2') > 0}),
	'the counts of rolled-back groups are swept: a new group of the database is counted again');

# 2. committed groups, more than the whole table
$node->safe_psql('other', q{SET ROLE filler; CALL fill('f.t', 'c', 8300);});
my $held = $node->safe_psql('other',
	q{SELECT count(*) FROM evstream.group_shards WHERE consumer_group LIKE 'c%' AND attempts > 0});
ok($held >= 500 && $held <= 512, "filler's 8300 groups hold a role's share at most ($held entries)");
# the share is the role's in every database
$node->safe_psql('postgres', q{
CREATE SCHEMA f AUTHORIZATION filler;
SET ROLE filler;
SELECT evstream.create_topic('f.t');
INSERT INTO f.t (payload) VALUES ('{}');
CALL fill('f.t', 'c', 100);
});
my $more = $node->safe_psql('postgres',
	q{SELECT count(*) FROM evstream.group_shards WHERE consumer_group LIKE 'c%' AND attempts > 0});
ok($held + $more <= 512, "and in another database together ($more more entries)");
# another role of the same database
$node->safe_psql('other', q{
CREATE ROLE tenant;
CREATE SCHEMA tn AUTHORIZATION tenant;
SET ROLE tenant;
SELECT evstream.create_topic('tn.t');
INSERT INTO tn.t (payload) VALUES ('{}');
SELECT evstream.set_group_options('tn.t', 'tg', max_attempts => 2);
});
is($node->safe_psql('other', q{SELECT fail_once('tn.t', 'tg')}),
	'1', "another role of filler's database still has its failed deliveries counted");
$node->safe_psql('postgres', q{
SELECT evstream.create_topic('victim');
INSERT INTO victim (payload) VALUES ('{}');
SELECT evstream.set_group_options('victim', 'vg', max_attempts => 2);
});
is($node->safe_psql('postgres', q{SELECT fail_once('victim', 'vg')}),
	'1', 'another database still has its failed deliveries counted');
is($node->safe_psql('postgres', q{SELECT fail_once('victim', 'vg')}), '2', 'and counted again');
$node->safe_psql('postgres', q{SELECT count(*) FROM evstream.consume('victim', 'vg', 1)});
is($node->safe_psql('postgres',
		q{SELECT dead_lettered FROM evstream.consumer_groups WHERE consumer_group = 'vg'}),
	'1', 'and its poison event is dead-lettered after two attempts');

# 3. DROP EXTENSION frees the database's entries; group ids start again
$node->safe_psql('other', q{
DROP EXTENSION evstream CASCADE;
CREATE EXTENSION evstream;
SELECT evstream.create_topic('p');
INSERT INTO p (payload) VALUES ('{}');
SELECT evstream.set_group_options('p', 'pg', max_attempts => 100);
});
is($node->safe_psql('other', q{SELECT g.id FROM evstream._group g WHERE g.consumer_group = 'pg'}),
	'1', 'after DROP and CREATE EXTENSION the probe group is group 1 again');
is($node->safe_psql('other', q{SELECT fail_once('p', 'pg')}), '1',
	'and its first failed delivery counts 1, not on top of the old group 1');

# 4. A user's open transaction holding position rows (an open drop_group
# of her own group) neither holds up the prune of everyone's superseded
# positions nor the sweep (they skip the rows she holds)
$node->safe_psql('postgres', q{
CREATE ROLE holder;
CREATE SCHEMA ho AUTHORIZATION holder;
SET ROLE holder;
SELECT evstream.create_topic('ho.t');
INSERT INTO ho.t (payload) SELECT '{}' FROM generate_series(1, 3);
SELECT count(*) FROM evstream.consume('ho.t', 'hg', 1);
SELECT count(*) FROM evstream.consume('ho.t', 'hg', 1);
});
my $hold = $node->background_psql('postgres');
$hold->query_safe(q{SET ROLE holder; BEGIN; SELECT evstream.drop_group('ho.t', 'hg')});
$node->safe_psql('postgres', q{
INSERT INTO victim (payload) SELECT '{}' FROM generate_series(1, 30);
DO $$
BEGIN
    FOR i IN 1..30 LOOP
        PERFORM * FROM evstream.consume('victim', 'pruned', 1);
        COMMIT;
    END LOOP;
END $$;
});
ok( $node->poll_query_until('postgres', q{
SELECT count(*) <= 1 FROM evstream._position p JOIN evstream._group g ON g.id = p.group_id
 WHERE g.consumer_group = 'pruned'}),
	"an open drop_group does not hold up the prune of another group's positions");
$node->safe_psql('postgres', q{
DO $$
BEGIN
    PERFORM evstream.set_group_options('victim', 'gone', max_attempts => 3);
    PERFORM * FROM evstream.consume('victim', 'gone', 1);
    RAISE EXCEPTION 'undo';
EXCEPTION WHEN raise_exception THEN NULL;
END $$;
});
my $gone = $node->safe_psql('postgres', q{SELECT last_value FROM evstream._group_id_seq});
ok( $node->poll_query_until('postgres', "SELECT evstream._attempts($gone, 0, 0) = 0"),
	'nor the sweep of a rolled-back group');
$hold->query_safe('ROLLBACK');
$hold->quit;

is($node->safe_psql('postgres', 'SELECT pg_postmaster_start_time()'), $started, 'the server never restarted');
done_testing();
