# A tenant's code in the database's worker has a time budget (30 s) that
# it cannot talk its way out of (SPEC Security: no user can stop another
# user's maintenance or notifications).
#
# Proves:
#   - mallory's aggregate has an output topic whose trigger sleeps and
#     catches the budget's cancel (query_canceled) in a loop: the worker
#     exits within the grace period after the budget (FATAL, which no
#     handler catches), the launcher starts a new one, and that one skips
#     mallory's aggregate (evstream.workers.last_error says until when)
#     instead of being caught by the same trigger again, and keeps
#     skipping it (and any work of hers) when she renames it: the
#     quarantine is the owner's;
#   - an honest role's aggregate, whose change event was committed while
#     the worker was held, gets it into its output topic after the restart,
#     and its later events arrive at once (no second hold);
#   - a trigger that sleeps but takes the cancel is only cancelled: the
#     worker is not restarted for it (the budget, as before);
#   - the budget is an owner's per worker pass, not per object: four of
#     mallory's aggregates with 12-second output triggers hold an honest
#     change event about 30 s, not 48;
#   - the server never restarted (pg_postmaster_start_time unchanged).
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/../lib";
use EvsTest;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

local $SIG{__DIE__} = sub { diag("died: $_[0]") unless $^S; };
my $node = evs_node('budget', "evstream.maintenance_interval = '1s'");
my $db = 'postgres';
$node->safe_psql($db, 'CREATE EXTENSION evstream');
$node->poll_query_until($db, 'SELECT count(*) = 1 FROM evstream.workers WHERE pid IS NOT NULL')
  or die 'no worker';
my $started = $node->safe_psql($db, 'SELECT pg_postmaster_start_time()');
sub sql { return $node->safe_psql($db, $_[0]); }

sub wait_for
{
	my ($query, $what, $timeout) = @_;
	$timeout //= 90;
	return ok(wait_until(sub { sql($query) eq 't' }, $timeout), $what)
	  || diag("timed out after $timeout s");
}

sql(q{
CREATE ROLE mallory LOGIN;
CREATE ROLE honest LOGIN;
CREATE SCHEMA m AUTHORIZATION mallory;
CREATE SCHEMA h AUTHORIZATION honest;
SET ROLE honest;
SELECT evstream.create_topic('h.t');
SELECT evstream.create_aggregate('h.agg', 'h.t', output_topic => 'h.out');
RESET ROLE;
SET ROLE mallory;
SELECT evstream.create_topic('m.t');
SELECT evstream.create_aggregate('m.agg', 'm.t', output_topic => 'm.out');
CREATE FUNCTION m.hold() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    LOOP
        BEGIN
            PERFORM pg_catalog.pg_sleep(3600);
        EXCEPTION WHEN query_canceled THEN
            RAISE WARNING 'mallory: caught the cancel, going on';
        END;
    END LOOP;
END $$;
CREATE TRIGGER hold BEFORE INSERT ON m.out FOR EACH ROW EXECUTE FUNCTION m.hold();
});

# ---------------------------------------------------------------- 1. a cancel caught
my $pid0 = sql('SELECT pid FROM evstream.workers');
my $log_offset = -s $node->logfile;
my $t0 = time;
sql(q{SET ROLE mallory; INSERT INTO m.t (key) VALUES ('k')});
wait_for(q{SELECT count(*) = 1 FROM pg_stat_activity
            WHERE backend_type = 'evstream worker' AND wait_event = 'PgSleep'},
	'the worker is held by mallory\'s trigger', 30);
sql(q{SET ROLE honest; INSERT INTO h.t (key) VALUES ('while held')});
wait_for(q{SELECT count(*) = 1 FROM h.out WHERE key = 'while held'},
	'the honest change event committed meanwhile arrives after all');
my $took = time - $t0;
cmp_ok($took, '>=', 30, sprintf('not before the budget (%.1f s)', $took));
cmp_ok($took, '<', 60, 'but soon after budget + grace');
my $log = slurp_file($node->logfile, $log_offset);
like($log, qr/mallory: caught the cancel, going on/, 'the trigger did catch the cancel');
like($log, qr/evstream: aggregate agg went on 5000 ms after its time budget's cancel; the worker exits and skips the work of role "mallory" until/,
	'the worker says why it exits');
wait_for(q{SELECT count(*) = 1 FROM evstream.workers WHERE pid IS NOT NULL}, 'a new worker runs');
my $pid_new = sql('SELECT pid FROM evstream.workers');
isnt($pid_new, $pid0, 'it is a new process');
wait_for(q{SELECT last_error LIKE '%aggregate agg: skipped until %' FROM evstream.workers},
	'the new worker skips mallory\'s aggregate and says so');

# the new worker is not held again: the next honest events arrive at once
my $t1 = time;
sql(q{SET ROLE honest; INSERT INTO h.t (key) VALUES ('after')});
wait_for(q{SELECT count(*) = 1 FROM h.out WHERE key = 'after'}, 'a later honest change event arrives', 10);
cmp_ok(time - $t1, '<', 5, 'within seconds');
is(sql(q{SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'evstream worker' AND wait_event = 'PgSleep'}),
	'0', 'nothing holds the worker');
is(sql(q{SELECT count(*) FROM m.out}), '0', 'mallory got nothing out of it');

# the quarantine is mallory's, not the object's name: renamed, it is still
# skipped (and so is any other work of hers), nothing holds the worker again
sql(q{SET ROLE mallory; ALTER VIEW m.agg RENAME TO agg_renamed; INSERT INTO m.t (key) VALUES ('again')});
wait_for(q{SELECT last_error LIKE '%aggregate agg_renamed: skipped until %' FROM evstream.workers},
	'a renamed aggregate of hers is skipped too');
my $t2 = time;
sql(q{SET ROLE honest; INSERT INTO h.t (key) VALUES ('after rename')});
wait_for(q{SELECT count(*) = 1 FROM h.out WHERE key = 'after rename'}, 'and honest events arrive', 10);
cmp_ok(time - $t2, '<', 5, 'within seconds');
is(sql('SELECT pid FROM evstream.workers'), $pid_new, 'the worker did not have to exit again');

# ---------------------------------------------------------------- 2. a cancel taken
sql(q{
CREATE ROLE trudy LOGIN;
GRANT USAGE, CREATE ON SCHEMA m TO trudy;
SET ROLE trudy;
SELECT evstream.create_topic('m.t2');
SELECT evstream.create_aggregate('m.agg2', 'm.t2', output_topic => 'm.out2');
CREATE FUNCTION m.slow() RETURNS trigger LANGUAGE plpgsql AS
    $$ BEGIN PERFORM pg_catalog.pg_sleep(3600); RETURN NEW; END $$;
CREATE TRIGGER slow BEFORE INSERT ON m.out2 FOR EACH ROW EXECUTE FUNCTION m.slow();
});
my $pid1 = sql('SELECT pid FROM evstream.workers');
$log_offset = -s $node->logfile;
sql(q{SET ROLE trudy; INSERT INTO m.t2 (key) VALUES ('k')});
wait_for(q{SELECT last_error LIKE '%aggregate agg2: canceling statement due to statement timeout%' FROM evstream.workers},
	'a trigger that takes the cancel fails with it', 60);
is(sql('SELECT pid FROM evstream.workers'), $pid1, 'and the worker was not restarted for it');
unlike(slurp_file($node->logfile, $log_offset), qr/after its time budget's cancel/, 'nothing was quarantined');

# ---------------------------------------------------------------- 3. many slow objects
# four of victor's aggregates whose output triggers each take 12 s: the
# budget is her objects' together in a pass (30 s), not 30 s each, so the
# honest aggregate, merged after hers, waits about 30 s, not 48
# (as a third role: trudy's work was slow in the last passes, so hers now
# goes after the others', which is not what this part measures)
sql(q{
SET ROLE trudy;
DROP TRIGGER slow ON m.out2;
SELECT evstream.drop_topic('m.t2', cascade => true);
RESET ROLE;
CREATE ROLE victor LOGIN;
GRANT USAGE, CREATE ON SCHEMA m TO victor;
SET ROLE victor;
SELECT evstream.create_topic('m.t3');
CREATE FUNCTION m.twelve() RETURNS trigger LANGUAGE plpgsql AS
    $$ BEGIN PERFORM pg_catalog.pg_sleep(12); RETURN NEW; END $$;
});
for my $i (1 .. 4)
{
	sql(qq{
SET ROLE victor;
SELECT evstream.create_aggregate('m.slow$i', 'm.t3', output_topic => 'm.slow${i}_out');
CREATE TRIGGER twelve BEFORE INSERT ON m.slow${i}_out FOR EACH ROW EXECUTE FUNCTION m.twelve();});
}
sql(q{SET ROLE honest; SELECT evstream.create_aggregate('h.late', 'h.t', output_topic => 'h.late_out');});
wait_for(q{SELECT count(*) = 0 FROM pg_stat_activity WHERE backend_type = 'evstream worker' AND wait_event = 'PgSleep'},
	'the worker is idle', 60);
my $t3 = time;
sql(q{SET ROLE victor; INSERT INTO m.t3 (key) VALUES ('k')});
sql(q{SET ROLE honest; INSERT INTO h.t (key) VALUES ('behind mallory')});
wait_for(q{SELECT count(*) = 1 FROM h.late_out WHERE key = 'behind mallory'},
	'the honest change event behind victor\'s four slow ones arrives', 90);
my $waited = time - $t3;
cmp_ok($waited, '<', 42, sprintf('after about one budget (%.1f s), not four slow triggers (48 s)', $waited));
wait_for(q{SELECT last_error LIKE '%used its 30000 ms budget in this pass%' FROM evstream.workers},
	'the skipped one says why', 60);

is(sql('SELECT pg_postmaster_start_time()'), $started, 'the server never restarted');
$node->stop;
done_testing();
