# Push (issue 4): LISTEN/NOTIFY sent by the worker after commits.
#
# Proves:
#   - a LISTENer on a topic's relation name gets {"topic": name, "last_id": N}
#     soon after a commit, N = the stable id; schema-qualified and
#     mixed-case topics notify on their bare relation name; a topic with
#     notify => false sends nothing;
#   - leading and trailing edge, per topic (evstream.notify_interval
#     reloaded with SIGHUP): the first commit after a quiet gap is announced
#     at once; commits within a gap after a notification are coalesced into
#     one at the end of the gap; another topic is not held back meanwhile;
#     a busy topic's gap doubles after a notification of 8 or more events
#     and halves back after one of fewer, and after one whose events came
#     at fewer than 2 per least gap, however many;
#   - an abort that unblocks events others committed behind it announces them;
#   - ordering under load (4 producers, random transaction lengths, ~20%
#     rollbacks): at every notification, consuming from the last position
#     returns every committed event up to last_id (never fewer than
#     announced); last_id never goes back; notifications are coalesced;
#   - aggregate notifications: 500 groups with long keys changed by one
#     statement arrive split over several payloads, each under 8000 bytes,
#     every group with its latest count (also after a second round that
#     changes 1000 groups); bucket_start is null unless windowed; the NULL
#     group is null;
#   - a change merged into the counts by a maintenance pass
#     (evstream.run_maintenance) is still notified;
#   - 270 topics advancing between two pushes (more than the worker's set of
#     advanced topics holds) are all announced;
#   - the worker folds the deltas of an aggregate without notify or output
#     topic within seconds, not at the next maintenance pass;
#   - examples/listener.py, run against the node: catches up, prints every
#     event pushed to it once, in order, commits its group's position, exits
#     as its options say.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/../lib";
use EvsTest;
use IPC::Run;
use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

my $t0 = time;
my $node = evs_node('push', "evstream.maintenance_interval = '10s'");
my $json = JSON::PP->new;

$node->safe_psql('postgres', q{
CREATE EXTENSION evstream;
CREATE SCHEMA app;
SELECT evstream.create_topic('ev');
SELECT evstream.create_topic('quiet', notify => false);
SELECT evstream.create_topic('app.clicks');
SELECT evstream.create_topic('"Mixed Case"');
CREATE TABLE produced (id bigint NOT NULL);
CREATE INDEX ON produced (id);
CREATE TABLE seen (id bigint NOT NULL);
CREATE INDEX ON seen (id);
});

# ---------------------------------------------------------------- payloads
my $bg = listen_session($node, 'postgres', 'ev', 'quiet', 'clicks', 'Mixed Case');

$node->safe_psql('postgres', q{INSERT INTO quiet (key) VALUES ('q')});
my $id = $node->safe_psql('postgres', q{INSERT INTO ev (key) SELECT 'a' FROM generate_series(1, 3) RETURNING id});
my $t = time;
my $last = (split /\n/, $id)[-1];
my $notes = collect_notifications($bg, sub { grep { $_->{channel} eq 'ev' } @{ $_[0] } }, 30);
my $elapsed = time - $t;
my ($ev) = grep { $_->{channel} eq 'ev' } @$notes;
ok($ev, 'a notification on channel ev');
is_deeply($json->decode($ev->{payload} // '{}'), { topic => 'ev', last_id => $last },
	"payload is {\"topic\": \"ev\", \"last_id\": $last}");
like($ev->{payload}, qr/^\{"topic": "ev", "last_id": \d+\}$/, 'payload text as specified');
cmp_ok($elapsed, '<', 2, sprintf('it arrived soon after the commit (%.3f s)', $elapsed));
is(scalar(grep { $_->{channel} eq 'quiet' } @$notes), 0, 'nothing for a topic with notify => false');
is(scalar(grep { $_->{channel} eq 'ev' } @$notes), 1, 'one notification for one transaction');

$node->safe_psql('postgres', q{INSERT INTO app.clicks (key) VALUES ('c'); INSERT INTO "Mixed Case" (key) VALUES ('m');});
$notes = collect_notifications($bg,
	sub { (grep { $_->{channel} eq 'clicks' } @{ $_[0] }) && (grep { $_->{channel} eq 'Mixed Case' } @{ $_[0] }) }, 30);
my ($clicks) = grep { $_->{channel} eq 'clicks' } @$notes;
my ($mixed) = grep { $_->{channel} eq 'Mixed Case' } @$notes;
is_deeply($json->decode($clicks->{payload} // '{}'), { topic => 'clicks', last_id => 1 },
	'app.clicks notifies on channel clicks');
is_deeply($json->decode($mixed->{payload} // '{}'), { topic => 'Mixed Case', last_id => 1 },
	'"Mixed Case" notifies on channel "Mixed Case"');
is(scalar(grep { $_->{channel} eq 'quiet' } @$notes), 0, 'still nothing for quiet');

# Leading and trailing edge (issue 12), evstream.notify_interval reloaded
# with SIGHUP: 10 s, so a topic's notifications are at least 1 s apart
# (a tenth of the interval).  After a quiet second the first commit is
# announced at once; commits within the second after a notification are
# coalesced into one notification at its end; another topic is not held
# back by this one's gap.
$node->safe_psql('postgres', q{ALTER SYSTEM SET evstream.notify_interval = '10s'; SELECT pg_reload_conf();});
$node->poll_query_until('postgres', q{SELECT current_setting('evstream.notify_interval') = '10s'});
$node->safe_psql('postgres', 'SELECT pg_sleep(1.2)');    # the worker saw the SIGHUP; ev is quiet for > 1 s
$t = time;
my $ida = $node->safe_psql('postgres', q{INSERT INTO ev (key) VALUES ('a') RETURNING id});
$notes = collect_notifications($bg, sub { grep { $_->{payload} =~ /"last_id": $ida\}/ } @{ $_[0] } }, 30);
my $ta = time;
cmp_ok($ta - $t, '<', 0.6,
	sprintf('leading edge: the first commit after a quiet second is announced at once (%.3f s; the gap is 1 s)', $ta - $t));
$node->safe_psql('postgres', q{INSERT INTO ev (key) VALUES ('b')});
my $idc = $node->safe_psql('postgres', q{INSERT INTO ev (key) VALUES ('c') RETURNING id});
my $tc0 = time;
my $idk = $node->safe_psql('postgres', q{INSERT INTO app.clicks (key) VALUES ('k') RETURNING id});
my $tk;
$notes = collect_notifications($bg, sub { grep { $_->{payload} =~ /"last_id": $idc\}/ } @{ $_[0] } }, 30,
	sub { $tk //= time if $_[0]->{channel} eq 'clicks' });
my $tc = time;
is(scalar(grep { $_->{channel} eq 'ev' } @$notes), 1,
	'trailing edge: two commits within the gap after a notification give one notification')
  or diag(explain $notes);
ok((grep { $_->{channel} eq 'ev' && $_->{payload} =~ /"last_id": $idc\}/ } @$notes), "announcing both (last_id $idc)");
cmp_ok($tc - $ta, '>', 0.9,
	sprintf('sent at the end of the gap, not before (%.2f s after the previous one)', $tc - $ta));
cmp_ok($tc - $ta, '<', 4, sprintf('and not much later (%.2f s)', $tc - $ta));
ok(defined $tk && $tk - $tc0 < 0.6,
	sprintf('another topic committed meanwhile is announced at once (%.3f s)', defined $tk ? $tk - $tc0 : -1));

# A busy topic's gap grows: a notification that announced 8 or more events
# doubles the gap before the next (2 s here), one that announced fewer
# halves it back (1 s).
my $arrival = sub {
	my ($id) = @_;
	collect_notifications($bg, sub { grep { $_->{payload} =~ /"last_id": $id\}/ } @{ $_[0] } }, 30);
	return time;
};
$node->safe_psql('postgres', 'SELECT pg_sleep(1.2)');
my $idb = (split /\n/, $node->safe_psql('postgres',
	q{INSERT INTO ev (key) SELECT 'burst' FROM generate_series(1, 10) RETURNING id}))[-1];
my $tb = $arrival->($idb);
my $id1 = $node->safe_psql('postgres', q{INSERT INTO ev (key) VALUES ('after burst') RETURNING id});
my $t1n = $arrival->($id1);
cmp_ok($t1n - $tb, '>', 1.9,
	sprintf('after a notification of 10 events the next waits for a doubled gap (%.2f s)', $t1n - $tb));
my $id2 = $node->safe_psql('postgres', q{INSERT INTO ev (key) VALUES ('quiet again') RETURNING id});
my $t2n = $arrival->($id2);
ok($t2n - $t1n > 0.9 && $t2n - $t1n < 1.9,
	sprintf('after a notification of 1 event the gap is halved back (%.2f s)', $t2n - $t1n));

# A flood's gap grows up to the whole interval, not beyond (issue 12: each
# notification costs every listener; the interval is the longest wait).
# With notify_interval = 1 s, ev's gap (grown to 1 s above) is capped at
# the interval and stays there while every notification announces 8 or
# more events; a background session commits 10 events every 50 ms for
# about 5 s.  (With the gap bounded at half the interval, they were 0.5 s
# apart.)
$node->safe_psql('postgres', q{ALTER SYSTEM SET evstream.notify_interval = '1s'; SELECT pg_reload_conf();});
$node->poll_query_until('postgres', q{SELECT current_setting('evstream.notify_interval') = '1s'});
$node->safe_psql('postgres', 'SELECT pg_sleep(1.2)');
my $flood_end = $node->safe_psql('postgres', q{SELECT max(id) + 1000 FROM ev});
my $flood_last = 0;
my ($fout, $ferr) = ('', '');
my $flood = IPC::Run::start(
	[ 'psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-d', $node->connstr('postgres'), '-c',
	  q{DO $$ BEGIN FOR i IN 1..100 LOOP INSERT INTO ev (key) SELECT 'flood' FROM generate_series(1, 10); COMMIT; PERFORM pg_sleep(0.05); END LOOP; END $$} ],
	'<', \undef, '>', \$fout, '2>', \$ferr);
my @arrivals;
collect_notifications($bg,
	sub { grep { $_->{channel} eq 'ev' && ($json->decode($_->{payload})->{last_id} // 0) >= $flood_end } @{ $_[0] } },
	60,
	sub {
		return unless $_[0]->{channel} eq 'ev';
		push @arrivals, time;
		$flood_last = $json->decode($_[0]->{payload})->{last_id};
	});
$flood->finish;
is($flood->result(0), 0, 'the flood committed 100 times 10 events') or diag($ferr);
my @gaps = map { $arrivals[$_] - $arrivals[ $_ - 1 ] } 1 .. $#arrivals;
my $gaps_text = join(', ', map { sprintf('%.2f', $_) } @gaps);
cmp_ok(scalar(@gaps), '>=', 5, "a flood of about 5 s gave a few notifications ($gaps_text)");
my @late = @gaps > 2 ? @gaps[ -3 .. -2 ] : @gaps;    # the last may announce the flood's tail early
ok((grep { $_ > 0.85 } @late) == @late,
	"a flood's notifications are the whole interval apart once its gap has grown ($gaps_text)");
ok((grep { $_ > 1.6 } @gaps) == 0, "and never much more than the interval apart ($gaps_text)");

# A grown gap comes back down once the topic is slow, however many events
# each notification announces: right after the flood (ev's gap is the
# whole 1 s), one event every 75 ms (about 13 a second: 13 per 1 s
# notification, more than 8, but about 1.3 per least gap of 100 ms, fewer
# than 2) for about 4 s.  The gap halves at each notification, 1 s, 0.5,
# 0.25, down to 0.1 s.  (With the count checked before the rate, the gap
# stayed at 1 s: bench 4.3 had a round at 1000 events/s stuck at the
# longest gap, 10.8 events per notification.)
my $trickle_end = $node->safe_psql('postgres', q{SELECT max(id) + 50 FROM ev});
($fout, $ferr) = ('', '');
my $trickle = IPC::Run::start(
	[ 'psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-d', $node->connstr('postgres'), '-c',
	  q{DO $$ BEGIN FOR i IN 1..50 LOOP INSERT INTO ev (key) VALUES ('trickle'); COMMIT; PERFORM pg_sleep(0.075); END LOOP; END $$} ],
	'<', \undef, '>', \$fout, '2>', \$ferr);
@arrivals = ();
collect_notifications($bg,
	sub { grep { $_->{channel} eq 'ev' && ($json->decode($_->{payload})->{last_id} // 0) >= $trickle_end } @{ $_[0] } },
	60,
	sub {
		return unless $_[0]->{channel} eq 'ev';
		push @arrivals, time;
		$flood_last = $json->decode($_[0]->{payload})->{last_id};
	});
$trickle->finish;
is($trickle->result(0), 0, 'the trickle committed 50 times 1 event') or diag($ferr);
@gaps = map { $arrivals[$_] - $arrivals[ $_ - 1 ] } 1 .. $#arrivals;
$gaps_text = join(', ', map { sprintf('%.2f', $_) } @gaps);
@late = @gaps > 4 ? @gaps[ -4 .. -2 ] : @gaps;
ok(@gaps >= 8 && (grep { $_ < 0.6 } @late) == @late,
	"a slow topic's grown gap halves back, though each notification announced more than 8 events ($gaps_text)");

$node->safe_psql('postgres', q{ALTER SYSTEM RESET evstream.notify_interval; SELECT pg_reload_conf();});
$node->poll_query_until('postgres', q{SELECT current_setting('evstream.notify_interval') = '10ms'});
$node->safe_psql('postgres', 'SELECT pg_sleep(0.2)');
$last = $flood_last;

# an abort that unblocks a committed event: T1 holds a lower id and rolls
# back after T2 committed; T2's event must be announced
my $t1 = $node->background_psql('postgres');
$t1->query_safe(q{BEGIN; INSERT INTO ev (key) VALUES ('late')});
my $t2id = $node->safe_psql('postgres', q{INSERT INTO ev (key) VALUES ('early') RETURNING id});
$t1->query_safe('ROLLBACK');
$t1->quit;
$notes = collect_notifications($bg,
	sub { grep { $_->{channel} eq 'ev' && $json->decode($_->{payload})->{last_id} >= $t2id } @{ $_[0] } }, 5);
ok((grep { $_->{channel} eq 'ev' && $json->decode($_->{payload})->{last_id} >= $t2id } @$notes),
	"an abort that unblocks a committed event notifies it (last_id >= $t2id)")
  or diag('got: ' . join(', ', map { $_->{payload} } @$notes));
is(scalar(grep { $_->{channel} eq 'ev' && $json->decode($_->{payload})->{last_id} < $last } @$notes), 0,
	'no notification announces an id already announced');

# ---------------------------------------------------------------- ordering under load
my $producer = q{
\set n random(1, 10)
\set r random(1, 100)
BEGIN;
WITH i AS (INSERT INTO ev (key) SELECT 'p' FROM generate_series(1, :n) RETURNING id) INSERT INTO produced SELECT id FROM i;
SELECT pg_sleep(random() * 0.02);
WITH i AS (INSERT INTO ev (key) VALUES ('p') RETURNING id) INSERT INTO produced SELECT id FROM i;
\if :r <= 20
ROLLBACK;
\else
COMMIT;
\endif
};
# the events so far are not tracked in produced: start the checking group after them
$node->safe_psql('postgres', q{SELECT evstream.seek('ev', 'chk', evstream.stable_id('ev') + 1)});

my $load_end = time + 8;
my $load = start_pgbench($node, script => $producer, clients => 4, time => 8);
my $rc;
my ($nnotes, $fewer, $backwards, $prev) = (0, 0, 0, 0);
my @queue;
# run a query in the LISTEN session; queue the notifications psql printed
# after it, return the rest of its output
my $lq = sub {
	my ($sql) = @_;
	my $out = $bg->query_safe($sql);
	push @queue, grep { $_->{channel} eq 'ev' } parse_notifications($out);
	return join("\n", grep { !/^Asynchronous notification/ } split /\n/, $out);
};
my $deadline = time + 40;
my $target;
while (time < $deadline)
{
	$lq->('SELECT 1');
	while (my $n = shift @queue)
	{
		my $l = $json->decode($n->{payload})->{last_id};
		$nnotes++;
		$backwards++ if $l < $prev;
		$prev = $l if $l > $prev;
		$lq->(q{INSERT INTO seen SELECT id FROM evstream.consume('ev', 'chk', 1000000)});
		my $missing = $lq->(
			"SELECT count(*) FROM produced p WHERE p.id <= $l AND NOT EXISTS (SELECT 1 FROM seen s WHERE s.id = p.id)");
		if ($missing ne '0')
		{
			$fewer++;
			diag("after the notification of last_id $l, $missing committed events up to it were not returned");
		}
	}
	if (!defined $target && time > $load_end)
	{
		($rc) = finish_pgbench($load);
		# the load is over: wait for the notification covering its last commit
		$target = $node->safe_psql('postgres', 'SELECT max(id) FROM produced');
		$deadline = time + 10;
	}
	last if defined $target && $prev >= $target;
	usleep(10_000);
}
is($rc, 0, 'producers succeeded');
my $ntx = $node->safe_psql('postgres', 'SELECT count(*) FROM produced');
cmp_ok($nnotes, '>', 10, "many notifications under load ($nnotes for $ntx committed events)");
is($fewer, 0, 'at every notification, consume returned every committed event up to last_id');
is($backwards, 0, 'last_id never went back');
cmp_ok($prev, '>=', $target // 0, "a notification announced the last committed event ($target)");
$bg->query_safe(q{INSERT INTO seen SELECT id FROM evstream.consume('ev', 'chk', 1000000)});
is($node->safe_psql('postgres', sets_equal_sql('SELECT id FROM seen', 'SELECT id FROM produced')),
	'0', 'the listener consumed exactly the committed events');
$bg->quit;

# ---------------------------------------------------------------- aggregate notifications
$node->safe_psql('postgres', q{
SELECT evstream.create_topic('big');
SELECT evstream.create_aggregate('big_counts', 'big');
SELECT evstream.create_topic('small');
SELECT evstream.create_aggregate('small_win', 'small', bucket => '1 hour');
});
$bg = listen_session($node, 'postgres', 'big_counts', 'small_win');

my $key_sql = q{'key-' || lpad(g::text, 4, '0') || '-' || repeat('x', 100)};
my %latest;     # group_key -> latest count seen
my @sizes;
my $bad_json = 0;
my $on_note = sub {
	my ($n) = @_;
	return unless $n->{channel} eq 'big_counts';
	push @sizes, length($n->{payload});
	my $p = eval { $json->decode($n->{payload}) };
	if (!$p || ($p->{aggregate} // '') ne 'big_counts' || ref($p->{changes}) ne 'ARRAY')
	{
		$bad_json++;
		return;
	}
	for my $c (@{ $p->{changes} })
	{
		$bad_json++ if !exists $c->{bucket_start} || defined $c->{bucket_start};
		$latest{ $c->{group_key} // '<NULL>' } = $c->{count};
	}
};

sub check_latest
{
	my ($label) = @_;
	my %want = map { my ($k, $v) = split /\|/; ($k => $v) }
	  split /\n/, $node->safe_psql('postgres', 'SELECT group_key, count FROM big_counts');
	my $notes = collect_notifications(
		$bg,
		sub {
			for my $k (keys %want) { return 0 unless ($latest{$k} // -1) == $want{$k}; }
			return 1;
		},
		60,
		$on_note);
	my @wrong = grep { ($latest{$_} // -1) != $want{$_} } keys %want;
	is(scalar(@wrong), 0, "$label: every group arrived with its latest count (" . scalar(keys %want) . ' groups)')
	  or diag("e.g. $wrong[0]: got " . ($latest{ $wrong[0] } // 'nothing') . ", want $want{$wrong[0]}");
	return $notes;
}

$node->safe_psql('postgres', "INSERT INTO big (key) SELECT $key_sql FROM generate_series(1, 500) g");
my $n1 = scalar(@{ check_latest('500 groups in one statement') });
cmp_ok($n1, '>', 1, "split over several notifications ($n1)");
@sizes = sort { $a <=> $b } @sizes;
cmp_ok($sizes[-1], '<', 8000, "every payload is under 8000 bytes (largest $sizes[-1])");
is($bad_json, 0, 'every payload is {"aggregate": "big_counts", "changes": [...]}, bucket_start null');

$node->safe_psql('postgres', "INSERT INTO big (key) SELECT $key_sql FROM generate_series(1, 1000) g");
check_latest('1000 groups, 500 of them at count 2');
@sizes = sort { $a <=> $b } @sizes;
cmp_ok($sizes[-1], '<', 8000, 'still under 8000 bytes');
is($bad_json, 0, 'still well-formed');

# windowed aggregate and the NULL group
$node->safe_psql('postgres', q{INSERT INTO small (key) VALUES ('a'), ('a'), (NULL)});
my %win;
collect_notifications(
	$bg,
	sub { exists $win{a} && exists $win{'<NULL>'} },
	30,
	sub {
		my ($n) = @_;
		return unless $n->{channel} eq 'small_win';
		my $p = eval { $json->decode($n->{payload}) } or return;
		$win{ $_->{group_key} // '<NULL>' } = $_ for @{ $p->{changes} };
	});
is($win{a}{count}, 2, 'windowed aggregate: count of a');
is($win{'<NULL>'}{count}, 1, 'the NULL group arrives as group_key null');
ok(defined $win{a}{bucket_start}, 'changes of a windowed aggregate carry bucket_start');
is( $node->safe_psql('postgres',
		"SELECT bucket_start = '" . ($win{a}{bucket_start} // 'infinity') . "'::timestamptz FROM small_win WHERE group_key = 'a'"),
	't',
	'bucket_start is the bucket of the group');

# a maintenance pass that merges the deltas before the worker's push must
# not swallow the changes: with notify_interval = 4s the push after the
# first one waits ~2 s, and run_maintenance() (what the worker runs every
# maintenance_interval) comes in between
$node->safe_psql('postgres', q{ALTER SYSTEM SET evstream.notify_interval = '4s'; SELECT pg_reload_conf();});
$node->poll_query_until('postgres', q{SELECT current_setting('evstream.notify_interval') = '4s'});
$node->safe_psql('postgres', 'SELECT pg_sleep(0.2)');
$node->safe_psql('postgres', q{INSERT INTO big (key) VALUES ('first push')});
collect_notifications($bg, sub { exists $latest{'first push'} }, 30, $on_note);
$node->safe_psql('postgres', q{INSERT INTO big (key) VALUES ('merged by maintenance')});
$node->safe_psql('postgres', q{SELECT evstream.run_maintenance()});
collect_notifications($bg, sub { exists $latest{'merged by maintenance'} }, 8, $on_note);
is($latest{'merged by maintenance'}, 1, 'a change merged by a maintenance pass is still notified');
$node->safe_psql('postgres', q{ALTER SYSTEM RESET evstream.notify_interval; SELECT pg_reload_conf();});
$node->poll_query_until('postgres', q{SELECT current_setting('evstream.notify_interval') = '10ms'});
$bg->quit;

# ---------------------------------------------------------------- many topics at once
# more topics advance between two pushes than the worker's set of advanced
# topics holds (256): every one of them is still announced
my $ntopics = 270;
# one transaction per topic (a topic takes a handful of locks)
$node->safe_psql('postgres', join('', map { "SELECT evstream.create_topic('m$_');\n" } 1 .. $ntopics));
$node->safe_psql('postgres', q{ALTER SYSTEM SET evstream.notify_interval = '4s'; SELECT pg_reload_conf();});
$node->poll_query_until('postgres', q{SELECT current_setting('evstream.notify_interval') = '4s'});
$node->safe_psql('postgres', 'SELECT pg_sleep(0.2)');
$bg = listen_session($node, 'postgres', 'ev', map { "m$_" } 1 .. $ntopics);
# one push now, so the next one waits ~2 s while all topics advance
$id = $node->safe_psql('postgres', q{INSERT INTO ev (key) VALUES ('push') RETURNING id});
collect_notifications($bg, sub { grep { $_->{channel} eq 'ev' && $_->{payload} =~ /"last_id": $id\}/ } @{ $_[0] } }, 30);
$node->safe_psql('postgres', join('',
	map { my $lo = $_ * 30 + 1; my $hi = $lo + 29; $hi = $ntopics if $hi > $ntopics;
		"BEGIN;\n" . join('', map { "INSERT INTO m$_ (key) VALUES ('x');\n" } $lo .. $hi) . "COMMIT;\n" }
	  0 .. int(($ntopics - 1) / 30)));
my %m;
collect_notifications($bg, sub { scalar(keys %m) >= $ntopics }, 30,
	sub { my ($n) = @_; $m{ $n->{channel} } = $n->{payload} if $n->{channel} =~ /^m\d+$/ });
is(scalar(keys %m), $ntopics, "all $ntopics topics that advanced together were announced");
is(scalar(grep { $m{"m$_"} ne qq({"topic": "m$_", "last_id": 1}) } grep { exists $m{"m$_"} } 1 .. $ntopics), 0,
	'each with its own payload');
$node->safe_psql('postgres', q{ALTER SYSTEM RESET evstream.notify_interval; SELECT pg_reload_conf();});
$node->poll_query_until('postgres', q{SELECT current_setting('evstream.notify_interval') = '10ms'});
$bg->quit;

# ---------------------------------------------------------------- examples/listener.py
my $top = $ENV{EVSTREAM_TOP} // "$FindBin::Bin/../..";
my $listener = "$top/examples/listener.py";
SKIP:
{
	skip 'examples/listener.py is not there', 12 unless -f $listener;

	$node->safe_psql('postgres', q{
SELECT evstream.create_topic('lt');
SELECT evstream.create_aggregate('lt_counts', 'lt');
});
	# events before the listener starts (catch-up); make sure their
	# notification has gone out, so it cannot count for the listener
	my $pre = listen_session($node, 'postgres', 'lt');
	my $ids_before = $node->safe_psql('postgres',
		q{INSERT INTO lt (key, payload) VALUES ('before', '{"n": 1}'), ('before', '{"n": 2}'), ('before', '{"n": 3}') RETURNING id});
	collect_notifications($pre, sub { scalar @{ $_[0] } }, 30);
	$pre->quit;

	my $dsn = sprintf('host=%s port=%d dbname=postgres', $node->host, $node->port);
	my ($out, $err) = ('', '');
	my $timer = IPC::Run::timeout(60);
	my $h = IPC::Run::start(
		[ 'python3', $listener, '--dsn', $dsn, '--group', 'py', '--json',
		  '--max-notifications', '2', '--timeout', '50', 'lt' ],
		'<', \undef, '>', \$out, '2>', \$err, $timer);
	my $wait_out = sub {
		my ($re) = @_;
		$h->pump until $out =~ $re || $timer->is_expired || !$h->pumpable;
		return $out =~ $re;
	};
	ok($wait_out->(qr/"reason": "catch-up"/), 'listener.py started and caught up') or diag($err);
	my $ids_a = $node->safe_psql('postgres',
		q{INSERT INTO lt (key, payload) VALUES ('a', '{"n": 4}'), ('a', '{"n": 5}') RETURNING id});
	ok($wait_out->(qr/"reason": "notification"/), 'it got a notification and consumed') or diag($err);
	my $ids_b = $node->safe_psql('postgres',
		q{INSERT INTO lt (key, payload) VALUES ('b', '{"n": 6}'), ('b', '{"n": 7}') RETURNING id});
	$h->finish;
	is($h->result(0), 0, 'it exited with status 0 after --max-notifications 2') or diag($err);

	my @lines = map { eval { $json->decode($_) } // { type => 'unparsable', text => $_ } } split /\n/, $out;
	my @expected = map { 0 + $_ } split /\n/, "$ids_before\n$ids_a\n$ids_b";
	my @got = map { $_->{id} } grep { $_->{type} eq 'event' } @lines;
	is_deeply(\@got, \@expected, 'it printed every event exactly once, in id order');
	is_deeply([ map { $_->{payload}{n} } grep { $_->{type} eq 'event' } @lines ],
		[ 1 .. 7 ], 'with their payloads');
	is(scalar(grep { $_->{type} eq 'unparsable' } @lines), 0, 'every output line is JSON');
	my @nl = grep { $_->{type} eq 'notification' } @lines;
	is(scalar(@nl), 2, 'two notifications');
	is_deeply($nl[-1]{payload}, { topic => 'lt', last_id => $expected[-1] },
		'the last notification announced the last event');
	my ($exit) = grep { $_->{type} eq 'exit' } @lines;
	is_deeply([ $exit->{reason}, $exit->{events} ], [ 'max-notifications', 7 ], 'exit line: reason and event count');
	is( $node->safe_psql('postgres',
			q{SELECT committed_id FROM evstream.consumer_groups WHERE topic = 'lt'::regclass AND consumer_group = 'py'}),
		$expected[-1],
		"the listener's group is at the last event");

	# an aggregate channel (earlier changes folded first, so that the one
	# notification the listener waits for is the next insert's)
	$node->safe_psql('postgres', 'SELECT count(*) FROM evstream._merge_deltas()');
	($out, $err) = ('', '');
	$timer = IPC::Run::timeout(60);
	$h = IPC::Run::start(
		[ 'python3', $listener, '--dsn', $dsn, '--json', '--max-notifications', '1', '--timeout', '50', 'lt_counts' ],
		'<', \undef, '>', \$out, '2>', \$err, $timer);
	$wait_out->(qr/"type": "listening"/);
	$node->safe_psql('postgres', q{INSERT INTO lt (key) VALUES ('a')});
	$h->finish;
	my ($an) = grep { $_->{type} eq 'notification' } map { eval { $json->decode($_) } // {} } split /\n/, $out;
	is_deeply($an && $an->{payload}, { aggregate => 'lt_counts', changes => [ { group_key => 'a', bucket_start => undef, count => 3 } ] },
		'listener.py on an aggregate prints its changes') or diag($out . $err);

	# --timeout before --max-notifications: exit status 3
	my ($o3, $e3) = ('', '');
	IPC::Run::run([ 'python3', $listener, '--dsn', $dsn, '--max-notifications', '5', '--timeout', '1', 'lt' ],
		'<', \undef, '>', \$o3, '2>', \$e3);
	is($? >> 8, 3, 'exit status 3 when --timeout expires first');
}

# ---------------------------------------------------------------- folding
# The worker folds every aggregate's committed deltas soon, also one with
# neither notify nor an output topic (a read of the view costs time in
# proportion to what is not folded), not only at the maintenance pass:
# with the pass an hour away, the deltas are folded within seconds.
$node->safe_psql('postgres', q{
SELECT evstream.create_topic('lazy');
SELECT evstream.create_aggregate('lazy_counts', 'lazy'::regclass, notify => false);
SELECT count(*) FROM evstream._merge_deltas();
});
my $reloaded = $node->safe_psql('postgres',
	q{ALTER SYSTEM SET evstream.maintenance_interval = '1h'; SELECT pg_reload_conf(); SELECT pg_catalog.clock_timestamp();});
$reloaded = (split /\n/, $reloaded)[-1];
$node->poll_query_until('postgres', q{SELECT current_setting('evstream.maintenance_interval') = '1h'});
# the pass scheduled before the reload runs (within 10 s); the next is an hour away
ok($node->poll_query_until('postgres',
		"SELECT last_maintenance > '$reloaded' FROM evstream.workers WHERE database = current_database()"),
	'a maintenance pass after the reload');
$t = time;
$node->safe_psql('postgres', q{INSERT INTO lazy (key) SELECT 'k' || (g % 7) FROM generate_series(1, 100) g});
my $agg_id = $node->safe_psql('postgres',
	q{SELECT id FROM evstream._aggregate WHERE aggregate = 'lazy_counts'::regclass});
ok($node->poll_query_until('postgres',
		"SELECT NOT EXISTS (SELECT FROM evstream._delta WHERE agg = $agg_id)"),
	'the deltas of an aggregate without notify or output topic are folded');
cmp_ok(time - $t, '<', 10, sprintf('within seconds, not at the next maintenance pass (%.2f s)', time - $t));
is($node->safe_psql('postgres', q{SELECT sum(count) FROM lazy_counts}), '100', 'and the counts are exact');
$node->safe_psql('postgres', q{ALTER SYSTEM RESET evstream.maintenance_interval; SELECT pg_reload_conf();});

note sprintf('runtime %.1f s', time - $t0);
$node->stop;
done_testing();
