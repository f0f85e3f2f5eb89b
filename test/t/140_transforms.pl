# Continuous transforms (0.2) against a real server (SPEC "Continuous
# transforms (0.2)"; the pg_regress suite transforms.sql covers the SQL
# surface and bad input).
#
# Proves:
#   1. exactly once across crashes mid-batch: two transforms of one source, a
#      1:1 map and a 1:3 flatMap, whose query sleeps 0.2 s per batch (an
#      uncorrelated subquery calling pg_sleep); pgbench produces; the server
#      is crashed (-m immediate) three times while a batch is running (a
#      transform worker active in pg_stat_activity, lag > 0).  After each
#      restart, in one snapshot: the outputs are exactly the source events up
#      to the transform group's position (1 output per source id for the
#      map, outputs i = 1..3 per source id for the flatMap, same key), and
#      at the end, drained, exactly every source event;
#   2. parallel shards keep per-key order: a source with shards => 4,
#      evstream.max_transform_workers = 4, 200 keys, four pgbench producers;
#      more than one transform worker runs and batches run concurrently
#      (sampled in pg_stat_activity; the output payload carries the pid of
#      the worker that produced it: more than one); every source event comes
#      out once, and per key the output ids increase in source id order;
#   3. pause after errors and resume: a transform dividing by payload n
#      fails on n = 0 and pauses after evstream.transform_max_attempts (3)
#      failures (last_error "division by zero" in evstream.transforms;
#      exactly 3 attempts, counted in the log), nothing of the batch
#      comes out, while producers go on and another transform of the same
#      source keeps running; its owner (not a superuser) seeks the group past
#      the bad event and resumes: it goes on from where it stopped, every
#      other event exactly once;
#   4. a chain: sentences -> split (flatMap words) -> upper -> aggregate with
#      an output topic: the words and the upper-cased words are exactly those
#      of the sentences, the counts equal GROUP BY over the sentences' words,
#      the changelog's latest event per word carries the count and counts
#      never go back in it;
#   5. privileges: a non-superuser owns transforms.  A query reading a table
#      the owner cannot read is refused at creation (42501, nothing
#      created); the query runs as the owner: a function in it records
#      current_user = the owner, who is no superuser, fails to read
#      pg_authid and that table, and cannot SET ROLE / SET SESSION
#      AUTHORIZATION to the worker's session user (session_user stays the
#      worker's, as in REFRESH MATERIALIZED VIEW); REVOKE SELECT on a joined table after
#      creation makes the batches fail with permission denied and the
#      transform pause with that error (no output, nothing recorded), GRANT +
#      resume goes on; REVOKE SELECT on the source pauses it too;
#   6. DROP DATABASE (without FORCE) of a database with transform workers
#      running (mid-batch) succeeds within seconds; they are gone;
#   7. (run before 6) after drop_transform nothing more comes out of it and
#      its group stays dropped, while producers wake the workers.
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
my $node = evs_node('transforms',
	'evstream.max_transform_workers = 4',
	'evstream.transform_max_attempts = 3');

sub sql { return $node->safe_psql('postgres', @_); }

sub wait_for
{
	my ($cond, $what) = @_;
	return ok($node->poll_query_until('postgres', $cond), $what);
}

# SQL: is the number of transform workers matching $where $cmp?
sub tf_workers
{
	my ($where, $cmp) = @_;
	return "SELECT count(*) $cmp FROM pg_stat_activity WHERE backend_type = 'evstream transform worker' AND $where";
}

sql(q{
CREATE EXTENSION evstream;
-- sleeps once per batch (called from an uncorrelated subquery: an InitPlan)
CREATE FUNCTION slow_batch(secs float8) RETURNS boolean LANGUAGE plpgsql
    AS $$BEGIN PERFORM pg_sleep(secs); RETURN true; END$$;
});

# ---------------------------------------------------------------- 1. crashes mid-batch
sql(q{
SELECT evstream.create_topic('ev');
SELECT evstream.create_transform('one', 'ev',
    $$SELECT key, jsonb_build_object('src', id) FROM events WHERE (SELECT public.slow_batch(0.2))$$,
    'ev_one', batch => 40);
SELECT evstream.create_transform('three', 'ev',
    $$SELECT key, jsonb_build_object('src', id, 'i', i) FROM events, generate_series(1, 3) i
       WHERE (SELECT public.slow_batch(0.2))$$,
    'ev_three', batch => 40);
});

my $ev_producer = q{INSERT INTO ev (key, payload) SELECT 'k' || (random() * 20)::int, '{}' FROM generate_series(1, 5);};

# In one snapshot: the outputs of each transform are exactly the source
# events up to its group's position ($all: every source event, position at
# the end)
sub check_exactly_once
{
	my ($label, $all) = @_;
	my $pos = sub {
		my $t = shift;
		return $all
		  ? 'true'
		  : "e.id <= (SELECT committed_id FROM evstream.consumer_groups WHERE topic = 'ev'::regclass AND consumer_group = '$t')";
	};
	my $one = sets_equal_sql(
		q{SELECT key, (payload->>'src')::bigint FROM ev_one},
		'SELECT e.key, e.id FROM ev e WHERE ' . $pos->('one'));
	my $three = sets_equal_sql(
		q{SELECT key, (payload->>'src')::bigint, (payload->>'i')::int FROM ev_three},
		'SELECT e.key, e.id, i FROM ev e, generate_series(1, 3) i WHERE ' . $pos->('three'));
	my ($d1, $d3, $n1, $n3, $p1, $p3) = split /\n/, sql(qq{
BEGIN ISOLATION LEVEL REPEATABLE READ;
$one;
$three;
SELECT count(*) FROM ev_one;
SELECT count(*) FROM ev_three;
SELECT committed_id FROM evstream.consumer_groups WHERE topic = 'ev'::regclass AND consumer_group = 'one';
SELECT committed_id FROM evstream.consumer_groups WHERE topic = 'ev'::regclass AND consumer_group = 'three';
COMMIT;});
	is($d1, '0', "$label: map: one output per source event " . ($all ? '(all of them)' : "up to its position $p1") . " ($n1 outputs)");
	is($d3, '0', "$label: flatMap: three outputs per source event " . ($all ? '(all of them)' : "up to its position $p3") . " ($n3 outputs)");
}

for my $round (1 .. 3)
{
	my ($src, $out1, $out3) = split /\|/, sql('SELECT (SELECT count(*) FROM ev), (SELECT count(*) FROM ev_one), (SELECT count(*) FROM ev_three)');
	my $load = start_pgbench($node, script => $ev_producer, clients => 2, rate => 12, time => 60);
	wait_for(qq{
SELECT (SELECT count(*) FROM ev) >= $src + 60
   AND (SELECT count(*) FROM ev_one) > $out1 AND (SELECT count(*) FROM ev_three) > $out3
   AND EXISTS (SELECT 1 FROM pg_stat_activity WHERE backend_type = 'evstream transform worker'
                  AND state = 'active' AND query LIKE 'evstream: transform %')
   AND (SELECT min(lag_events) FROM evstream.transforms WHERE name IN ('one', 'three')) > 0},
		"round $round: both transforms produce, a batch is running and events wait");
	$node->stop('immediate');
	finish_pgbench($load);
	$node->start;
	check_exactly_once("after crash $round", 0);
}
wait_for(q{SELECT bool_and(lag_events = 0) FROM evstream.transforms WHERE name IN ('one', 'three')},
	'after the crashes both transforms drain the source');
check_exactly_once('drained', 1);
is(sql(q{SELECT count(*) FROM evstream.transforms WHERE name IN ('one', 'three') AND (last_error IS NOT NULL OR paused)}),
	'0', 'no batch failed (crashes are not failures)');
note 'source events: ' . sql('SELECT count(*) FROM ev');
sql(q{SELECT evstream.drop_transform('one'); SELECT evstream.drop_transform('three');});

# ---------------------------------------------------------------- 2. parallel shards
sql(q{
SELECT evstream.create_topic('sh', shards => 4);
SELECT evstream.create_transform('par', 'sh',
    $$SELECT key, jsonb_build_object('src', id, 'pid', pg_backend_pid()) FROM events
       WHERE (SELECT public.slow_batch(0.02))$$,
    'sh_out', batch => 25);
});
my $sh_load = start_pgbench($node,
	script => q{INSERT INTO sh (key, payload) SELECT 'k' || (random() * 200)::int, '{}' FROM generate_series(1, 5);},
	clients => 4, rate => 80, time => 6);
wait_for(tf_workers(q{datname = 'postgres'}, '>= 2'),
	'more than one transform worker runs for the 4-shard source');
my ($max_active, $max_workers) = (0, 0);
my $deadline = time + 4;
while (time < $deadline)
{
	my ($a, $w) = split /\|/, sql(qq{
SELECT count(*) FILTER (WHERE state = 'active' AND query = 'evstream: transform par'), count(*)
  FROM pg_stat_activity WHERE backend_type = 'evstream transform worker' AND datname = 'postgres'});
	$max_active = $a if $a > $max_active;
	$max_workers = $w if $w > $max_workers;
	usleep(20_000);
}
my ($rc, $pout, $perr) = finish_pgbench($sh_load);
is($rc, 0, 'the sharded producers never failed') or diag($perr);
note "transform workers seen at once: $max_workers; batches of par running at once: $max_active";
cmp_ok($max_workers, '<=', 4, 'no more transform workers than evstream.max_transform_workers');
cmp_ok($max_active, '>=', 2, "batches of different shards run at the same time ($max_active at most)");
wait_for(q{SELECT lag_events = 0 FROM evstream.transforms WHERE name = 'par'}, 'par drains the sharded source');
is( sql(sets_equal_sql(q{SELECT key, (payload->>'src')::bigint FROM sh_out}, 'SELECT key, id FROM sh')),
	'0', 'every event of the sharded source comes out exactly once, with its key');
is( sql(q{
SELECT count(*) FROM (SELECT (payload->>'src')::bigint AS src,
                             lag((payload->>'src')::bigint) OVER (PARTITION BY key ORDER BY id) AS prev
                        FROM sh_out) s WHERE prev > src}),
	'0', 'per key, output ids increase in source id order');
my ($pids, $keys, $n, $cross) = split /\|/, sql(q{
SELECT count(DISTINCT payload->>'pid'), count(DISTINCT key), count(*),
       (SELECT count(*) FROM (SELECT (payload->>'src')::bigint AS src,
                                     lag((payload->>'src')::bigint) OVER (ORDER BY id) AS prev FROM sh_out) s
         WHERE prev > src)
  FROM sh_out});
cmp_ok($pids, '>=', 2, "the output was produced by $pids different transform workers");
note "$n events, $keys keys, $cross places where the output order differs from the source order across keys";
sql(q{SELECT evstream.drop_transform('par')});

# ---------------------------------------------------------------- 3. pause and resume
sql(q{
CREATE ROLE tf_owner;
CREATE SCHEMA tfo AUTHORIZATION tf_owner;
SELECT evstream.create_topic('nums');
GRANT SELECT ON nums TO tf_owner;
SET ROLE tf_owner;
SELECT evstream.create_transform('inv', 'nums',
    $$SELECT key, jsonb_build_object('src', id, 'inv', 1000 / (payload->>'n')::int) FROM events$$, 'tfo.inv_out');
SELECT evstream.create_transform('copy', 'nums', $$SELECT key, jsonb_build_object('src', id) FROM events$$, 'tfo.copy_out');
RESET ROLE;
INSERT INTO nums (key, payload) SELECT 'k' || g % 3, jsonb_build_object('n', g) FROM generate_series(1, 10) g;
});
wait_for(q{SELECT (SELECT count(*) FROM tfo.inv_out) = 10 AND (SELECT count(*) FROM tfo.copy_out) = 10},
	'both transforms took the first 10 events');
my $log_offset = -s $node->logfile;
my $t = time;
my $bad = sql(q{INSERT INTO nums (key, payload) VALUES ('bad', '{"n": 0}') RETURNING id});
sql(q{INSERT INTO nums (key, payload) SELECT 'k' || g % 3, jsonb_build_object('n', g) FROM generate_series(11, 15) g});
wait_for(q{SELECT paused FROM evstream.transforms WHERE name = 'inv'}, 'inv pauses on the event n = 0');
note sprintf('paused %.1f s after the bad event', time - $t);
is(sql(q{SELECT last_error FROM evstream.transforms WHERE name = 'inv'}), 'division by zero',
	'last_error says why');
my $failures = sql(q{SELECT failures FROM evstream._transform WHERE name = 'inv'});
cmp_ok($failures, '>=', 3, "after evstream.transform_max_attempts = 3 failures ($failures)");
is(sql(q{SELECT count(*) FROM tfo.inv_out}), '10', 'nothing of the failing batch came out');

# producers are unaffected, and so is the other transform of the source
my $nums_load = start_pgbench($node,
	script => q{INSERT INTO nums (key, payload) SELECT 'k' || g % 3, jsonb_build_object('n', 100 + g) FROM generate_series(1, 3) g;},
	clients => 2, transactions => 20);
($rc, $pout, $perr) = finish_pgbench($nums_load);
is($rc, 0, 'producers insert while the transform is paused') or diag($perr);
wait_for(q{SELECT count(*) = (SELECT count(*) FROM nums) FROM tfo.copy_out},
	'the other transform of the source goes on (also past the bad event)');
is( sql(q{SELECT paused AND lag_events = (SELECT count(*) FROM nums) - 10 FROM evstream.transforms WHERE name = 'inv'}),
	't', 'inv stays paused, every event after the first 10 waiting');
is(sql(q{SELECT count(*) FROM tfo.inv_out}), '10', 'and produces nothing');
my $failed = () = slurp_file($node->logfile, $log_offset) =~ /evstream transform "inv": batch failed: division by zero/g;
is($failures, '3', 'failures = transform_max_attempts when it pauses');
is($failed, 3, 'the failing batch ran 3 times in all (transform_max_attempts), not more');
# retried with backoff: 100 ms after the first failure, 200 ms after the
# second (0.1 s * 2^failures; a precedence slip once made it 1 s, 0.2 s,
# 0.04 s, ..., shrinking)
{
	my @at = map {
		my ($h, $m, $s) = /^\S+ (\d+):(\d+):([\d.]+)/;
		$h * 3600 + $m * 60 + $s
	} grep { /evstream transform "inv": batch failed/ } split /\n/, slurp_file($node->logfile, $log_offset);
	my ($g1, $g2) = ($at[1] - $at[0], $at[2] - $at[1]);
	note sprintf('gaps between the failures: %.3f s, %.3f s', $g1, $g2);
	cmp_ok($g1, '<', 0.8, 'the first retry comes after about 100 ms');
	cmp_ok($g2, '>=', 0.15, 'the second after about 200 ms: the wait grows');
}

# the owner moves its group past the bad event and resumes
$node->safe_psql('postgres', qq{
SET ROLE tf_owner;
SELECT evstream.seek('nums', 'inv', $bad + 1);
SELECT evstream.resume_transform('inv');});
wait_for(q{SELECT NOT paused AND lag_events = 0 FROM evstream.transforms WHERE name = 'inv'},
	'after seek and resume_transform (as its owner) inv catches up');
is( sql(sets_equal_sql(
			q{SELECT key, (payload->>'src')::bigint, (payload->>'inv')::int FROM tfo.inv_out},
			qq{SELECT key, id, 1000 / (payload->>'n')::int FROM nums WHERE id <> $bad})),
	'0', 'every event but the bad one came out exactly once, nothing lost or repeated');
is( sql(sets_equal_sql(q{SELECT key, (payload->>'src')::bigint FROM tfo.copy_out}, 'SELECT key, id FROM nums')),
	'0', 'the other transform: every event exactly once');
sql(q{SELECT evstream.drop_transform('inv'); SELECT evstream.drop_transform('copy');});

# ---------------------------------------------------------------- 4. a chain
sql(q{
SELECT evstream.create_topic('sentences');
SELECT evstream.create_transform('split', 'sentences',
    $$SELECT w, jsonb_build_object('word', w, 'from', id) FROM events,
             regexp_split_to_table(lower(payload->>'text'), '[^a-z]+') AS w WHERE w <> ''$$,
    'words');
SELECT evstream.create_transform('upper', 'words', $$SELECT upper(key), payload FROM events$$, 'uwords');
SELECT evstream.create_aggregate('ucounts', 'uwords', output_topic => 'ucount_changes');
});
my $sentences = start_pgbench($node,
	script => q{
INSERT INTO sentences (key, payload)
SELECT 's' || :client_id,
       jsonb_build_object('text', string_agg((ARRAY['The', 'quick', 'brown', 'fox', 'jumps', 'over', 'the', 'lazy',
                                                   'dog', 'Hello', 'world', 'again'])[1 + (random() * 11)::int], ', ') || '!')
  FROM generate_series(1, 1 + (random() * 6)::int);
},
	clients => 2, rate => 60, time => 4);
($rc, $pout, $perr) = finish_pgbench($sentences);
is($rc, 0, 'sentence producers succeeded') or diag($perr);
my $words_sql = q{SELECT upper(w) AS word, s.id FROM sentences s,
  regexp_split_to_table(lower(s.payload->>'text'), '[^a-z]+') AS w WHERE w <> ''};
wait_for(q{SELECT bool_and(lag_events = 0) FROM evstream.transforms WHERE name IN ('split', 'upper')}
	  . qq{ AND (SELECT count(*) FROM uwords) = (SELECT count(*) FROM ($words_sql) w)},
	'the chain drains');
is(sql(sets_equal_sql(q{SELECT upper(key), (payload->>'from')::bigint FROM words}, $words_sql)),
	'0', 'split: every word of every sentence exactly once');
is(sql(sets_equal_sql(q{SELECT key, (payload->>'from')::bigint FROM uwords}, $words_sql)),
	'0', 'upper: every word exactly once, upper-cased');
is(sql(sets_equal_sql(q{SELECT group_key, count FROM ucounts}, "SELECT word, count(*) FROM ($words_sql) w GROUP BY 1")),
	'0', 'the aggregate at the end of the chain equals GROUP BY over the sentences');
wait_for('SELECT (' . sets_equal_sql(q{SELECT group_key, count FROM ucounts},
		q{SELECT DISTINCT ON (key) key, (payload->>'count')::bigint FROM ucount_changes ORDER BY key, id DESC}) . ') = 0',
	"the aggregate's output topic: the latest change of each word carries its count");
is( sql(q{
SELECT count(*) FROM (SELECT (payload->>'count')::bigint AS c,
                             lag((payload->>'count')::bigint) OVER (PARTITION BY key ORDER BY id) AS prev
                        FROM ucount_changes) s WHERE prev >= c}),
	'0', 'counts only grow in the changelog');
note 'sentences: ' . sql('SELECT count(*) FROM sentences') . ', words: ' . sql('SELECT count(*) FROM uwords');
is(sql(q{SELECT count(*) FROM evstream.transforms WHERE last_error IS NOT NULL AND name IN ('split', 'upper', 'par')}),
	'0', 'no batch of the chain or of par failed');
sql(q{SELECT evstream.drop_transform('split'); SELECT evstream.drop_transform('upper');});

# ---------------------------------------------------------------- 5. privileges
my $superuser = sql('SELECT current_user');
sql(q{
CREATE ROLE alice;
CREATE SCHEMA alice AUTHORIZATION alice;
CREATE TABLE secret (k text, v int);
INSERT INTO secret VALUES ('x', 1);
CREATE TABLE lookup (k text PRIMARY KEY, v text);
INSERT INTO lookup SELECT 'k' || g, 'v' || g FROM generate_series(0, 4) g;
GRANT SELECT ON lookup TO alice;
SELECT evstream.create_topic('psrc');
GRANT SELECT ON psrc TO alice;
SET ROLE alice;
CREATE TABLE alice.who (cur text, sess text, is_super text, rolsuper boolean, authid text, secret text,
                        set_role text, set_session text);
-- records who runs it, and what that role may do
CREATE FUNCTION alice.record_who() RETURNS text LANGUAGE plpgsql AS $$
DECLARE a text := 'read'; s text := 'read'; r text := 'set'; ss text := 'set';
BEGIN
    BEGIN PERFORM count(*) FROM pg_catalog.pg_authid; EXCEPTION WHEN insufficient_privilege THEN a := 'denied'; END;
    BEGIN PERFORM count(*) FROM public.secret; EXCEPTION WHEN insufficient_privilege THEN s := 'denied'; END;
    -- become the session's role (a superuser, if the session is one's)
    BEGIN PERFORM pg_catalog.set_config('role', session_user, true); EXCEPTION WHEN OTHERS THEN r := 'refused'; END;
    BEGIN EXECUTE format('SET SESSION AUTHORIZATION %I', session_user); EXCEPTION WHEN OTHERS THEN ss := 'refused'; END;
    INSERT INTO alice.who VALUES (current_user, session_user, current_setting('is_superuser'),
        (SELECT r.rolsuper FROM pg_catalog.pg_roles r WHERE r.rolname = current_user), a, s, r, ss);
    RETURN current_user;
END $$;
});
my ($ret, $stdout, $stderr) = $node->psql('postgres', q{
SET ROLE alice;
\set VERBOSITY verbose
SELECT evstream.create_transform('a_secret', 'psrc',
    $$SELECT key, jsonb_build_object('n', (SELECT count(*) FROM public.secret)) FROM events$$, 'alice.secret_out');});
isnt($ret, 0, 'a transform reading a table its creator cannot read is refused');
like($stderr, qr/42501: permission denied for table secret/, 'with 42501 permission denied') or diag($stderr);
is( sql(q{SELECT to_regclass('alice.secret_out') IS NULL AND NOT EXISTS (SELECT 1 FROM evstream._transform WHERE name = 'a_secret')}),
	't', 'nothing was created');

sql(q{
SET ROLE alice;
SELECT evstream.create_transform('a_look', 'psrc',
    $$SELECT e.key, jsonb_build_object('src', e.id, 'v', l.v, 'who', alice.record_who())
        FROM events e JOIN public.lookup l ON l.k = e.key$$, 'alice.look_out');
SELECT evstream.create_transform('a_plain', 'psrc', $$SELECT key, payload FROM events$$, 'alice.plain_out');
RESET ROLE;
INSERT INTO psrc (key) SELECT 'k' || g FROM generate_series(0, 4) g;
});
wait_for(q{SELECT count(*) = 5 FROM alice.look_out}, "alice's transform ran");
is(sql(q{SELECT string_agg(DISTINCT payload->>'who', ',') FROM alice.look_out}), 'alice',
	'its query ran as alice (current_user)');
is( sql(q{SELECT string_agg(DISTINCT format('%s rolsuper=%s pg_authid:%s secret:%s', cur, rolsuper::text, authid, secret), '; ') FROM alice.who}),
	'alice rolsuper=false pg_authid:denied secret:denied',
	'as alice, no superuser: pg_authid and the table alice cannot read were denied');
is( sql(q{SELECT string_agg(DISTINCT format('SET ROLE %s, SET SESSION AUTHORIZATION %s', set_role, set_session), '; ') FROM alice.who}),
	'SET ROLE refused, SET SESSION AUTHORIZATION refused',
	"its code cannot switch to the worker session's role");
my $sess = sql(q{SELECT string_agg(DISTINCT format('session_user=%s is_superuser=%s', sess, is_super), '; ') FROM alice.who});
# design (README): like REFRESH MATERIALIZED VIEW, the session stays the
# worker's (session_user is the bootstrap superuser); the query runs as its
# owner (current_user, privileges) under SECURITY_RESTRICTED_OPERATION,
# which refuses SET ROLE and SET SESSION AUTHORIZATION (checked above).
note "inside the transform: $sess (bootstrap superuser: $superuser)";

my $who = sql(q{SELECT count(*) FROM alice.who});
sql(q{REVOKE SELECT ON lookup FROM alice; INSERT INTO psrc (key) VALUES ('k1');});
wait_for(q{SELECT paused FROM evstream.transforms WHERE name = 'a_look'},
	'after REVOKE SELECT on the joined table the transform pauses');
is(sql(q{SELECT last_error FROM evstream.transforms WHERE name = 'a_look'}), 'permission denied for table lookup',
	'with permission denied as last_error');
is( sql(q{SELECT (SELECT count(*) FROM alice.look_out) = 5 AND (SELECT count(*) FROM alice.who) = } . $who),
	't', 'the failed batches produced and recorded nothing');
wait_for(q{SELECT count(*) = 6 FROM alice.plain_out}, 'her other transform of the source goes on');
sql(q{GRANT SELECT ON lookup TO alice; SET ROLE alice; SELECT evstream.resume_transform('a_look');});
wait_for(q{SELECT count(*) = 6 FROM alice.look_out}, 'GRANT again and resume: it goes on');
is(sql(sets_equal_sql(q{SELECT key, (payload->>'src')::bigint FROM alice.look_out}, 'SELECT key, id FROM psrc')),
	'0', 'every event once');

sql(q{REVOKE SELECT ON psrc FROM alice; INSERT INTO psrc (key) VALUES ('k2');});
wait_for(q{SELECT count(*) = 2 FROM evstream.transforms WHERE name IN ('a_look', 'a_plain') AND paused
            AND last_error = 'permission denied for table psrc'},
	'after REVOKE SELECT on the source both of her transforms pause with permission denied');
is(sql(q{SELECT (SELECT count(*) FROM alice.look_out) || ',' || (SELECT count(*) FROM alice.plain_out)}), '6,6',
	'and read nothing of it');

# ---------------------------------------------------------------- 7. drop_transform
sql(q{
SELECT evstream.create_topic('d');
INSERT INTO d (key) SELECT 'k' || g FROM generate_series(1, 5) g;
SELECT evstream.create_transform('dt', 'd', $$SELECT key, payload FROM events$$, 'd_out');
});
wait_for(q{SELECT count(*) = 5 FROM d_out}, 'dt took the 5 events');
sql(q{SELECT evstream.drop_transform('dt')});
# producing commits wake the transform workers during the next two seconds
my $d_load = start_pgbench($node, script => q{INSERT INTO d (key) VALUES ('after drop');}, rate => 20, time => 2);
($rc, $pout, $perr) = finish_pgbench($d_load);
is($rc, 0, 'producers insert into the source of the dropped transform') or diag($perr);
is(sql(q{SELECT count(*) FROM d_out}), '5', 'after drop_transform nothing more comes out');
is(sql(q{SELECT count(*) FROM evstream.consumer_groups WHERE topic = 'd'::regclass}), '0',
	'and its group stays dropped');

# ---------------------------------------------------------------- 6. DROP DATABASE
sql('CREATE DATABASE tdb');
$node->safe_psql('tdb', q{
CREATE EXTENSION evstream;
CREATE FUNCTION slow_batch(secs float8) RETURNS boolean LANGUAGE plpgsql
    AS $$BEGIN PERFORM pg_sleep(secs); RETURN true; END$$;
SELECT evstream.create_topic('t', shards => 2);
SELECT evstream.create_transform('tt', 't',
    $$SELECT key, payload FROM events WHERE (SELECT public.slow_batch(0.2))$$, 't_out');
INSERT INTO t (key) SELECT 'k' || g FROM generate_series(1, 10) g;
});
ok($node->poll_query_until('tdb', q{SELECT count(*) = 10 FROM t_out}), 'the transform runs in database tdb');
wait_for(tf_workers(q{datname = 'tdb'}, '= 2'), 'two transform workers are connected to tdb');
wait_for(tf_workers(q{datname = 'tdb' AND state = 'active'}, '>= 1'), 'one of them runs a batch');
$t = time;
($ret, $stdout, $stderr) = $node->psql('postgres', 'DROP DATABASE tdb');
my $elapsed = time - $t;
is($ret, 0, 'DROP DATABASE (without FORCE) of a database with transform workers succeeds') or diag($stderr);
cmp_ok($elapsed, '<', 5, sprintf('within seconds (%.1f s)', $elapsed));
is(sql(q{SELECT count(*) FROM pg_stat_activity WHERE datname = 'tdb'}), '0', 'no process of tdb is left');
is(sql(q{SELECT count(*) FROM pg_database WHERE datname = 'tdb'}), '0', 'tdb is gone');

# ---------------------------------------------------------------- 7. a name with the victim's hash
# hashtext('mx_xxml1oa') = hashtext('alice_tx'): a transform's lock was
# keyed by the hash of its name alone, so holding one's own transform's
# lock (an open drop_transform) held up the victim's.  Now the key has the
# creation time too.
sql(q{
SELECT evstream.create_topic('hv');
SELECT evstream.create_transform('alice_tx', 'hv', $$SELECT key, payload FROM events$$, 'hv_out');
SELECT evstream.create_topic('hm');
SELECT evstream.create_transform('mx_xxml1oa', 'hm', $$SELECT key, payload FROM events$$, 'hm_out');
});
is(sql(q{SELECT hashtext('mx_xxml1oa') = hashtext('alice_tx')}), 't', 'the two names share a 32-bit hash');
my $holder = $node->background_psql('postgres');
$holder->query_safe(q{BEGIN; SELECT evstream.drop_transform('mx_xxml1oa')});
sql(q{INSERT INTO hv (key) VALUES ('while the other is held')});
ok($node->poll_query_until('postgres', q{SELECT count(*) = 1 FROM hv_out}),
	"the victim's transform runs while the other's lock is held");
$holder->query_safe('ROLLBACK');
$holder->quit;

# ---------------------------------------------------------------- 8. idle transforms sleep
# A transform with nothing to do must not keep its worker busy: an empty
# batch's claim of a shard once woke the worker itself (and every long
# poll of the source) at its commit, and the worker never slept (~90% of a
# CPU).  Over 3 s with the idle transforms of section 7, the transform
# workers together use less than a tenth of a CPU (clock ticks of
# /proc/<pid>/stat, utime + stime).
sleep(1.5);    # the batches of section 7 are done
my @tw = split /\n/, sql(q{SELECT pid FROM pg_stat_activity WHERE application_name = 'evstream transform worker'});
my $ticks = sub {
	my $sum = 0;
	for my $pid (@tw)
	{
		open(my $fh, '<', "/proc/$pid/stat") or next;
		my @f = split / /, (<$fh> =~ s/^.*\) //r);
		close $fh;
		$sum += $f[11] + $f[12];    # utime, stime (fields 14 and 15)
	}
	return $sum;
};
cmp_ok(scalar(@tw), '>', 0, 'transform workers run');
my $c0 = $ticks->();
sleep(3);
my $used = $ticks->() - $c0;
cmp_ok($used, '<', 30, "idle transforms: their workers used $used clock ticks in 3 s");

note sprintf('runtime %.1f s', time - $t0);
$node->stop;
done_testing();
