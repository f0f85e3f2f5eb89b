# Worker-side privilege paths (issue 7): the maintenance worker moves
# events out of the default partition, applies retention, merges aggregate
# deltas (publishing corrections into output topics) and notifies.  None of
# that may run a user's trigger, default, index expression or constraint as
# a superuser, and one tenant's failing output topic must not stop the
# others being maintained.
#
# Proves:
#   - a non-superuser `mallory` owns a topic with row/statement/TRUNCATE
#     triggers on the topic, on its partitions, on its default partition and
#     on its aggregate's output topic, each trying ALTER ROLE mallory
#     SUPERUSER and an INSERT into a superuser-only table; the worker rehomes
#     the topic's default-partition events, drops/truncates old data by
#     retention and merges the aggregate: mallory never becomes superuser,
#     the table stays empty;
#   - an output topic whose trigger always raises: the failure shows in
#     evstream.workers.last_error, and a second, well-behaved role's
#     aggregate keeps being merged (evstream._count grows) and notified;
#   - the server never restarted (pg_postmaster_start_time unchanged).
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/../lib";
use EvsTest;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

# show why the script stops, also when the run directory is gone afterwards
local $SIG{__DIE__} = sub { diag("died: $_[0]") unless $^S; };
my $node = evs_node('secworker', "evstream.maintenance_interval = '1s'");
my $db = 'postgres';
$node->safe_psql($db, 'CREATE EXTENSION evstream');
$node->poll_query_until($db, 'SELECT count(*) = 1 FROM evstream.workers WHERE pid IS NOT NULL')
  or die 'no worker';
my $started = $node->safe_psql($db, 'SELECT pg_postmaster_start_time()');

# ---------------------------------------------------------------- set-up
$node->safe_psql($db, q{
CREATE TABLE public.only_super (who name, via text);
REVOKE ALL ON public.only_super FROM PUBLIC;
CREATE ROLE mallory LOGIN;
CREATE ROLE honest LOGIN;
CREATE SCHEMA m AUTHORIZATION mallory;
CREATE SCHEMA h AUTHORIZATION honest;
});

# everything below as mallory, with its schema first in search_path
$node->safe_psql($db, q{
SET ROLE mallory;
SET search_path = m, pg_catalog, public;
CREATE TABLE m.ran_as (who name, via text);
GRANT INSERT, SELECT ON m.ran_as TO PUBLIC;
CREATE FUNCTION m.escalate(via text) RETURNS void LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    BEGIN INSERT INTO m.ran_as VALUES (current_user, via); EXCEPTION WHEN OTHERS THEN NULL; END;
    BEGIN ALTER ROLE mallory SUPERUSER; EXCEPTION WHEN OTHERS THEN NULL; END;
    BEGIN INSERT INTO public.only_super VALUES (current_user, via); EXCEPTION WHEN OTHERS THEN NULL; END;
END $$;
CREATE FUNCTION m.trg() RETURNS trigger LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM m.escalate(TG_WHEN || ' ' || TG_OP || ' ' || TG_LEVEL || ' on ' || TG_TABLE_NAME);
    IF TG_LEVEL = 'ROW' THEN RETURN NEW; END IF;
    RETURN NULL;
END $$;
CREATE FUNCTION m.now() RETURNS timestamptz LANGUAGE plpgsql AS
    $$ BEGIN PERFORM m.escalate('now()'); RETURN pg_catalog.now(); END $$;

SELECT evstream.create_topic('m.src', '1 day');
SELECT evstream.create_topic('m.out');
SELECT evstream.create_aggregate('m.counts', 'm.src', 'key', NULL, 'm.out');
});

# triggers of every kind on a relation
sub hang_triggers
{
	my ($rel, $tag) = @_;
	$node->safe_psql($db, qq{
SET ROLE mallory;
CREATE TRIGGER ${tag}_br BEFORE INSERT ON $rel FOR EACH ROW EXECUTE FUNCTION m.trg();
CREATE TRIGGER ${tag}_ar AFTER INSERT ON $rel FOR EACH ROW EXECUTE FUNCTION m.trg();
CREATE TRIGGER ${tag}_bs BEFORE INSERT ON $rel FOR EACH STATEMENT EXECUTE FUNCTION m.trg();
CREATE TRIGGER ${tag}_as AFTER INSERT ON $rel FOR EACH STATEMENT EXECUTE FUNCTION m.trg();
CREATE TRIGGER ${tag}_bt BEFORE TRUNCATE ON $rel FOR EACH STATEMENT EXECUTE FUNCTION m.trg();
CREATE TRIGGER ${tag}_bd BEFORE DELETE ON $rel FOR EACH ROW EXECUTE FUNCTION m.trg();
});
}
hang_triggers('m.src', 'src');
hang_triggers('m.src_default', 'srcdef');
hang_triggers('m.out', 'out');
hang_triggers('m.out_default', 'outdef');
for my $p (split /\n/, $node->safe_psql($db,
	"SELECT part FROM evstream._partitions('m.src') WHERE NOT is_default"))
{
	hang_triggers($p, 'part');
}
# an index expression and a CHECK constraint that escalate, too
$node->safe_psql($db, q{
SET ROLE mallory;
CREATE FUNCTION m.pwn_text(t text) RETURNS text LANGUAGE plpgsql IMMUTABLE
    SET search_path = pg_catalog, pg_temp AS $$ BEGIN PERFORM m.escalate('index expression'); RETURN t; END $$;
CREATE FUNCTION m.pwn_bool() RETURNS boolean LANGUAGE plpgsql IMMUTABLE
    SET search_path = pg_catalog, pg_temp AS $$ BEGIN PERFORM m.escalate('check constraint'); RETURN true; END $$;
CREATE INDEX ON m.src (m.pwn_text(key));
ALTER TABLE m.src ADD CONSTRAINT c CHECK (m.pwn_bool());
});

sub assert_not_escalated
{
	my ($what) = @_;
	is($node->safe_psql($db, "SELECT rolsuper FROM pg_roles WHERE rolname = 'mallory'"),
		'f', "$what: mallory is not a superuser");
	is($node->safe_psql($db, 'SELECT count(*) FROM public.only_super'),
		'0', "$what: the superuser-only table is empty");
	is($node->safe_psql($db, "SELECT string_agg(DISTINCT who || ': ' || via, '; ' ORDER BY who || ': ' || via) FROM m.ran_as WHERE who <> 'mallory'"),
		'', "$what: mallory's code ran as no other role");
	is($node->safe_psql($db, 'SELECT pg_postmaster_start_time()'),
		$started, "$what: the server did not restart");
	# undo an escalation, so that each path is judged on its own
	$node->safe_psql($db, 'ALTER ROLE mallory NOSUPERUSER; TRUNCATE public.only_super, m.ran_as');
}

# ---------------------------------------------------------------- rehome
# drop the partitions ahead (in one transaction with the INSERT, so the
# worker cannot premake in between): events land in the default partition
$node->safe_psql($db, q{
SET ROLE mallory;
SET search_path = m, pg_catalog, public;
BEGIN;
DO $$
DECLARE p regclass;
BEGIN
    FOR p IN SELECT part FROM evstream._partitions('m.src') WHERE NOT is_default LOOP
        EXECUTE pg_catalog.format('DROP TABLE %s', p);
    END LOOP;
END $$;
INSERT INTO m.src (key, payload) SELECT 'k' || (g % 3), '{}' FROM generate_series(1, 30) g;
COMMIT;
});
ok( $node->poll_query_until($db,
		"SELECT count(*) = 0 FROM m.src_default"),
	'the worker moved the events out of the default partition');
is($node->safe_psql($db, 'SELECT count(*) FROM m.src'), '30', 'all 30 events are still there');
assert_not_escalated('rehome');

# ---------------------------------------------------------------- merge + output topic
$node->safe_psql($db, q{SET ROLE mallory; INSERT INTO m.src (key) SELECT 'k' || (g % 3) FROM generate_series(1, 30) g;});
ok( $node->poll_query_until($db,
		q{SELECT count(*) = 0 FROM evstream._delta d JOIN evstream._aggregate a ON a.id = d.agg
		   WHERE a.aggregate = 'm.counts'::regclass}),
	'the worker merged the aggregate deltas');
assert_not_escalated('merge');

# ---------------------------------------------------------------- retention
# an old partition (made by the owner) and old rows in the default partition:
# retention must drop / truncate them without firing triggers as a superuser
$node->safe_psql($db, q{
SET ROLE mallory;
SELECT evstream._ensure_partitions('m.src', '2000-01-01', '2000-01-02');
});
my ($old) = $node->safe_psql($db,
	"SELECT count(*) FROM evstream._partitions('m.src') WHERE hi < now() - interval '1 year'");
note "old partitions made by the owner: $old";
$node->safe_psql($db, q{SET ROLE mallory; SELECT evstream.set_retention('m.src', '1 second');});
ok( $node->poll_query_until($db,
		"SELECT count(*) = 0 FROM evstream._partitions('m.src') WHERE NOT is_default AND hi < now() - interval '1 year'"),
	'retention dropped the old partition');
# (read through evstream's view, which reads the topic as its owner: a
# superuser's own SELECT on m.src would let the planner fold mallory's
# IMMUTABLE check-constraint function in the superuser's session -- plain
# PostgreSQL behaviour, not evstream's doing)
ok( $node->poll_query_until($db,
		q{SELECT coalesce(oldest >= now() - interval '3 days', true) FROM evstream.topics WHERE topic = 'm.src'::regclass}),
	'retention left nothing old');
assert_not_escalated('retention');

# ---------------------------------------------------------------- one tenant's failure is confined
note 'honest tenant set-up';
$node->safe_psql($db, q{
SET ROLE honest;
SELECT evstream.create_topic('h.src');
SELECT evstream.create_aggregate('h.counts', 'h.src', 'key', NULL, 'h.out');
});
my $listen = listen_session($node, $db, 'counts');
# m.out refuses every insert except a producer's (which sets mallory.allow):
# whatever the worker inserts there fails
$node->safe_psql($db, q{
SET ROLE mallory;
CREATE FUNCTION m.boom() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF pg_catalog.current_setting('mallory.allow', true) IS DISTINCT FROM 'on' THEN
        RAISE EXCEPTION 'mallory output topic refuses everything';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER zz_boom BEFORE INSERT ON m.out FOR EACH ROW EXECUTE FUNCTION m.boom();
});
# two producers of one group commit concurrently: both publish count n + 1,
# so the merge must publish a correction into m.out -- and that fails
note 'concurrent producers';
my $bg = $node->background_psql($db, on_error_stop => 1);
$bg->query_safe("SET ROLE mallory; SET mallory.allow = on; BEGIN; INSERT INTO m.src (key) VALUES ('race')");
$node->safe_psql($db, "SET ROLE mallory; SET mallory.allow = on; INSERT INTO m.src (key) VALUES ('race')");
$bg->query_safe('COMMIT');
$bg->quit;
note 'honest rounds';
my $merged_sql = q{SELECT coalesce(sum(c.count), 0) FROM evstream._count c
  JOIN evstream._aggregate a ON a.id = c.agg WHERE a.aggregate = 'h.counts'::regclass};
for my $round (1 .. 3)
{
	my $before = $node->safe_psql($db, $merged_sql);
	$node->safe_psql($db, "SET ROLE honest; INSERT INTO h.src (key) SELECT 'h' || g FROM generate_series(1, 10) g");
	ok($node->poll_query_until($db, "SELECT ($merged_sql) > $before"),
		"round $round: honest's aggregate keeps being merged");
}
my $notes = collect_notifications($listen, sub { scalar @{ $_[0] } > 0 }, 30);
ok(scalar(@$notes) > 0, "honest's aggregate keeps being notified");
$listen->quit;
ok( $node->poll_query_until($db,
		"SELECT bool_or(last_error LIKE '%mallory%' OR last_error LIKE '%m.out%' OR last_error LIKE '%refuses everything%') FROM evstream.workers"),
	'evstream.workers.last_error names the failing one');
# ... to the superuser: errors name every tenant's objects and carry their
# code's messages, so other roles see NULL (as with others' queries in
# pg_stat_activity), unless they have pg_read_all_stats
is( $node->safe_psql($db,
		'SET ROLE honest; SELECT count(*) FROM evstream.workers WHERE last_error IS NOT NULL'),
	'0', 'honest does not see the error text of mallory\'s code');
$node->safe_psql($db, 'CREATE ROLE monitor IN ROLE pg_read_all_stats');
is( $node->safe_psql($db,
		'SET ROLE monitor; SELECT count(*) FROM evstream.workers WHERE last_error IS NOT NULL'),
	'1', 'a pg_read_all_stats member does');
assert_not_escalated('failing output topic');

done_testing();
