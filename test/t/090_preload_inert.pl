# Preloading evstream is harmless where it is not installed (issue 7,
# SPEC 0.2 Install), and the worker gets out of the way of ALTER DATABASE.
#
# Proves:
#   - in a database `plain` without the extension, on a preloaded server,
#     ordinary DDL/DML on partitioned tables (CREATE TABLE ... PARTITION BY,
#     PARTITION OF, INSERT, COPY, UPDATE, DELETE, MERGE, TRUNCATE, ALTER
#     TABLE, ATTACH/DETACH) succeed and give plain PostgreSQL's results;
#     so do CREATE DATABASE ... TEMPLATE plain, ALTER DATABASE plain RENAME
#     and DROP DATABASE;
#   - a schema `evstream` with a table `_topic` made by a normal user there
#     changes nothing (no errors, and the table is never read);
#   - in a database with the extension: ALTER DATABASE ... RENAME TO and
#     ALTER DATABASE ... SET TABLESPACE succeed (the worker steps aside);
#   - a non-owner's DROP DATABASE fails with 42501 and does not stop that
#     database's worker (same pid).
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/../lib";
use EvsTest;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = evs_node('inert', "evstream.maintenance_interval = '1s'");
my $started = $node->safe_psql('postgres', 'SELECT pg_postmaster_start_time()');

$node->safe_psql('postgres', 'CREATE ROLE joe LOGIN CREATEDB');
$node->safe_psql('postgres', 'CREATE DATABASE plain OWNER joe');

# psql as joe in plain; returns (rc, stdout, stderr)
sub joe
{
	my ($sql, $db) = @_;
	my ($out, $err) = ('', '');
	my $rc = $node->psql($db // 'plain', $sql,
		stdout => \$out, stderr => \$err,
		extra_params => [ '-U', 'joe', '-v', 'ON_ERROR_STOP=1' ]);
	return ($rc, $out, $err);
}

sub joe_ok
{
	my ($sql, $expect, $name) = @_;
	my ($rc, $out, $err) = joe($sql);
	is($rc, 0, "$name: succeeds") or diag($err);
	is($out, $expect, "$name: result") if defined $expect;
}

# ---------------------------------------------------------------- partitioned tables
joe_ok(q{
CREATE TABLE m (id bigint NOT NULL, key text, created_at timestamptz NOT NULL DEFAULT now())
  PARTITION BY RANGE (created_at);
CREATE TABLE m_2000 PARTITION OF m FOR VALUES FROM ('2000-01-01') TO ('2001-01-01');
CREATE TABLE m_2001 PARTITION OF m FOR VALUES FROM ('2001-01-01') TO ('2002-01-01');
CREATE TABLE m_def PARTITION OF m DEFAULT;
INSERT INTO m VALUES (1, 'a', '2000-06-01'), (2, 'b', '2001-06-01'), (3, 'c', '2030-01-01');
SELECT id, key, created_at::date, tableoid::regclass FROM m ORDER BY id;
}, "1|a|2000-06-01|m_2000\n2|b|2001-06-01|m_2001\n3|c|2030-01-01|m_def", 'CREATE ... PARTITION OF, INSERT keeps the given values');

joe_ok(q{
COPY m (id, key, created_at) FROM stdin;
4	d	2000-07-01
\.
SELECT id, key, created_at::date FROM m WHERE id = 4;
}, "4|d|2000-07-01", 'COPY keeps the given values');

joe_ok(q{
UPDATE m SET key = 'A' WHERE id = 1;
DELETE FROM m WHERE id = 2;
MERGE INTO m USING (VALUES (3, 'C'), (5, 'e')) v(id, key) ON m.id = v.id
  WHEN MATCHED THEN UPDATE SET key = v.key
  WHEN NOT MATCHED THEN INSERT (id, key, created_at) VALUES (v.id, v.key, '2001-02-02');
SELECT string_agg(id || ':' || key, ',' ORDER BY id) FROM m;
}, '1:A,3:C,4:d,5:e', 'UPDATE, DELETE, MERGE');

joe_ok(q{
ALTER TABLE m ADD COLUMN extra int DEFAULT 7;
ALTER TABLE m RENAME COLUMN key TO k;
ALTER TABLE m ALTER COLUMN id SET DEFAULT 42;
CREATE SEQUENCE s CACHE 10;
ALTER SEQUENCE s INCREMENT BY 2 RESTART;
SELECT setval('s', 100);
ALTER TABLE m DETACH PARTITION m_2000;
CREATE TABLE m_2002 (LIKE m);
ALTER TABLE m ATTACH PARTITION m_2002 FOR VALUES FROM ('2002-01-01') TO ('2003-01-01');
INSERT INTO m (k, created_at) VALUES ('x', '2002-05-05');
SELECT count(*), sum(extra), max(id) FROM m;
}, "100\n3|21|42", 'ALTER TABLE, ALTER SEQUENCE, setval, ATTACH/DETACH');

joe_ok(q{
CREATE TABLE public.reads (n int);
CREATE FUNCTION public.spy() RETURNS trigger LANGUAGE plpgsql AS
  $$ BEGIN INSERT INTO public.reads VALUES (1); RETURN NEW; END $$;
CREATE TRIGGER spy BEFORE INSERT ON m FOR EACH ROW EXECUTE FUNCTION public.spy();
INSERT INTO m (k, created_at) VALUES ('y', '2001-03-03');
TRUNCATE m;
TRUNCATE m_2000;
SELECT count(*) FROM m;
SELECT count(*) FROM public.reads;
DROP TABLE m, m_2000;
}, "0\n1", 'TRUNCATE, DROP; the user trigger fires as in plain PostgreSQL');

# ---------------------------------------------------------------- a normal user's look-alike schema
joe_ok(q{
CREATE SCHEMA evstream;
CREATE TABLE evstream._topic (topic regclass PRIMARY KEY, partition_interval interval, retention interval, notify boolean);
}, undef, 'look-alike evstream schema');

# register a partitioned table in the look-alike catalog: evstream must not
# treat it as a topic (ids and times kept, UPDATE allowed, any ATTACH)
joe_ok(q{
CREATE TABLE m2 (id bigint NOT NULL, key text, payload jsonb, created_at timestamptz NOT NULL DEFAULT now())
  PARTITION BY RANGE (created_at);
CREATE TABLE m2_def PARTITION OF m2 DEFAULT;
INSERT INTO evstream._topic VALUES ('m2', '1 day', NULL, true);
CREATE TABLE m2_2000 PARTITION OF m2 FOR VALUES FROM ('2000-01-01') TO ('2001-01-01');
INSERT INTO m2 VALUES (77, 'a', NULL, '2000-06-01');
COPY m2 (id, key, created_at) FROM stdin;
78	b	2000-07-01
\.
UPDATE m2 SET key = 'A' WHERE id = 77;
CREATE TABLE m2_2001 (LIKE m2);
ALTER TABLE m2 ATTACH PARTITION m2_2001 FOR VALUES FROM ('2001-01-01') TO ('2002-01-01');
SELECT string_agg(id || ':' || key || ':' || created_at::date, ',' ORDER BY id) FROM m2;
DROP TABLE m2;
}, '77:A:2000-06-01,78:b:2000-07-01', 'a table in a look-alike evstream._topic is not a topic');

my ($rc, $out, $err) = joe('SELECT 1');
unlike($err, qr/evstream/, 'no evstream message in plain');

# ---------------------------------------------------------------- databases
is($node->psql('postgres', 'CREATE DATABASE plain_copy TEMPLATE plain', extra_params => [ '-U', 'joe' ]),
	0, 'CREATE DATABASE ... TEMPLATE plain');
is($node->psql('postgres', 'ALTER DATABASE plain_copy RENAME TO plain_copy2', extra_params => [ '-U', 'joe' ]),
	0, 'ALTER DATABASE plain_copy RENAME');
is($node->psql('postgres', 'DROP DATABASE plain_copy2', extra_params => [ '-U', 'joe' ]),
	0, 'DROP DATABASE of a plain database');

# ---------------------------------------------------------------- a database with the extension
$node->safe_psql('postgres', 'CREATE DATABASE evs');
$node->safe_psql('evs', "CREATE EXTENSION evstream; SELECT evstream.create_topic('t'); INSERT INTO t (key) VALUES ('a')");
my $pid_sql = "SELECT pid FROM evstream.workers WHERE database = current_database() AND pid IS NOT NULL";
ok($node->poll_query_until('evs', "SELECT count(*) = 1 FROM evstream.workers WHERE database = current_database() AND pid IS NOT NULL"),
	'evs has a worker');

# a non-owner's DROP DATABASE: 42501, and the worker stays
my $pid = $node->safe_psql('evs', $pid_sql);
my ($drc, $dout, $derr) = ('', '', '');
$drc = $node->psql('postgres', "\\set VERBOSITY verbose\nDROP DATABASE evs",
	stdout => \$dout, stderr => \$derr, extra_params => [ '-U', 'joe' ]);
like($derr, qr/42501/, "a non-owner's DROP DATABASE fails with 42501");
$node->safe_psql('evs', 'SELECT pg_sleep(0.5)');
is($node->safe_psql('evs', $pid_sql), $pid,
	"and the database's worker was not stopped (same pid)");

# ALTER DATABASE ... RENAME TO on a database with the extension and a worker
my ($arc, $aout, $aerr) = ('', '', '');
$arc = $node->psql('postgres', 'ALTER DATABASE evs RENAME TO evs2', stdout => \$aout, stderr => \$aerr);
is($arc, 0, 'ALTER DATABASE ... RENAME on a database with the extension') or diag($aerr);
my $db = $arc == 0 ? 'evs2' : 'evs';
ok($node->poll_query_until($db, "SELECT count(*) = 1 FROM evstream.workers WHERE database = current_database() AND pid IS NOT NULL"),
	'the worker is back after the rename');

# ALTER DATABASE ... SET TABLESPACE
my $tsdir = PostgreSQL::Test::Utils::tempdir();
$node->safe_psql('postgres', "CREATE TABLESPACE evs_ts LOCATION '$tsdir'");
$arc = $node->psql('postgres', "ALTER DATABASE $db SET TABLESPACE evs_ts", stdout => \$aout, stderr => \$aerr);
is($arc, 0, 'ALTER DATABASE ... SET TABLESPACE on a database with the extension') or diag($aerr);
ok($node->poll_query_until($db, "SELECT count(*) = 1 FROM evstream.workers WHERE database = current_database() AND pid IS NOT NULL"),
	'the worker is back after SET TABLESPACE');
is($node->safe_psql($db, 'SELECT count(*) FROM t'), '1', 'the topic is intact');

is($node->safe_psql('postgres', 'SELECT pg_postmaster_start_time()'), $started, 'the server did not restart');

done_testing();
