# Bounded memory for unbounded input (issue 10): a COPY of 1M events with
# unique group keys into a topic with an aggregate of measures (and a
# hopping one: 2 windows per event, 2M groups x windows) runs in bounded
# memory: the statement writes its pending entries as it goes instead of
# holding one per group until it ends.  The backend's peak resident size is
# read from log_statement_stats ("max resident size"), which covers the
# whole statement; before the flush-as-you-go it grew with the number of
# groups (hundreds of MB here).  The counts are exact afterwards.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/../lib";
use EvsTest;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = evs_node('aggmem', "log_min_messages = log");
$node->safe_psql('postgres', q{
CREATE EXTENSION evstream;
SELECT evstream.create_topic('uniq');
SELECT evstream.create_aggregate('uniq_m', 'uniq',
    measures => $$sum((payload->>'n')::int) AS total, max(key) AS top$$);
SELECT evstream.create_aggregate('uniq_h', 'uniq', bucket => '2 seconds', hop => '1 second',
    measures => $$avg((payload->>'n')::int) AS mean$$);
});

my $n = 1_000_000;
my $log_pos = -s $node->logfile;
my ($ret, $out, $err) = $node->psql('postgres', qq{
SET log_statement_stats = on;
SET client_min_messages = warning;
COPY uniq (key, payload) FROM PROGRAM 'seq 1 $n | sed "s/.*/u&\t{\\"n\\": &}/"';
});
is($ret, 0, "COPY of $n events with unique keys succeeds") or diag($err);

my $log = substr(slurp_file($node->logfile), $log_pos);
my @kb = $log =~ /(\d+) kB max resident size/g;
ok(@kb, 'log_statement_stats reported the peak resident size') or diag(substr($log, 0, 2000));
my $peak_mb = (@kb ? $kb[-1] : 1e9) / 1024;
diag("peak resident size of the COPY backend: $peak_mb MB");
# shared_buffers (128 MB) counts once touched; the pending entries of 3M
# groups and windows alone took about 500 MB before
cmp_ok($peak_mb, '<', 300, 'the COPY ran in bounded memory (peak resident size < 300 MB)');

is( $node->safe_psql('postgres', q{
SELECT count(*), sum(count), sum(total), max(top) FROM uniq_m}),
	"$n|$n|" . ($n * ($n + 1) / 2) . "|u999999",
	'every unique key counted once, with its measures');
is( $node->safe_psql('postgres', q{SELECT sum(count) FROM uniq_h}),
	2 * $n, 'the hopping aggregate counted every event in 2 windows');

done_testing();
