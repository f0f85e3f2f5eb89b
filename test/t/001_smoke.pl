# Smoke: a node with evstream preloaded starts, its worker runs.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('smoke');
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'evstream'");
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION evstream');
ok($node->poll_query_until('postgres',
	"SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'evstream worker'"),
	'one worker for the database');
$node->stop;
done_testing();
