# test/lib/EvsTest.pm — helpers shared by evstream's TAP tests (test/t/*.pl).
#
#   evs_node($name, @conf)        a started node with evstream preloaded
#   start_pgbench($node, %opt)    a pgbench run in the background
#   finish_pgbench($run)          wait for it; returns (exit code, stdout, stderr)
#   listen_session($node, $db, @channels)
#                                 a background psql that has LISTENed
#   collect_notifications($bg, $done, $timeout)
#                                 pump a LISTEN session until $done->(\@notes)
#   sets_equal_sql($a, $b)        SQL counting the rows that differ between
#                                 two queries (multisets, NULLs equal)
#   wait_until($code, $timeout)   poll a perl condition
package EvsTest;

use strict;
use warnings;

use Exporter 'import';
use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep time);

our @EXPORT = qw(evs_node start_pgbench finish_pgbench stop_pgbench
  listen_session collect_notifications parse_notifications
  sets_equal_sql wait_until check_push);

my $script_no = 0;

# Fail in a minute rather than three when something that should take
# seconds does not happen (poll_query_until, background_psql, ...)
$PostgreSQL::Test::Utils::timeout_default = 60
  unless defined $ENV{PG_TEST_TIMEOUT_DEFAULT};

# A node with evstream preloaded, started.  @conf: more postgresql.conf lines.
sub evs_node
{
	my ($name, @conf) = @_;
	my $node = PostgreSQL::Test::Cluster->new($name);
	$node->init;
	$node->append_conf(
		'postgresql.conf', join("\n",
			"shared_preload_libraries = 'evstream'",
			"max_worker_processes = 16",
			"max_connections = 50",
			"log_line_prefix = '%m [%p] %b '",
			@conf)
		  . "\n");
	$node->start;
	return $node;
}

# Start pgbench in the background.  Options:
#   script => text of the custom script (-f), db => database (postgres),
#   clients => n (1), time => seconds (-T, 10), transactions => n (-t,
#   instead of time), rate => tps (-R), args => [more pgbench args].
sub start_pgbench
{
	my ($node, %o) = @_;
	my $file = $node->basedir . '/pgbench_' . (++$script_no) . '.sql';
	open(my $fh, '>', $file) or die "cannot write $file: $!";
	print $fh $o{script};
	close $fh;
	my $clients = $o{clients} // 1;
	my @cmd = (
		'pgbench', '-n', '-h', $node->host, '-p', $node->port,
		'-c', $clients, '-j', $clients, '-f', $file);
	if (defined $o{transactions}) { push @cmd, '-t', $o{transactions}; }
	else { push @cmd, '-T', $o{time} // 10; }
	push @cmd, '-R', $o{rate} if defined $o{rate};
	push @cmd, @{ $o{args} } if $o{args};
	push @cmd, $o{db} // 'postgres';
	my ($out, $err) = ('', '');
	note "starting: @cmd";
	my $h = IPC::Run::start(\@cmd, '<', \undef, '>', \$out, '2>', \$err);
	return { h => $h, out => \$out, err => \$err, file => $file };
}

# Wait for a background pgbench; returns (exit code, stdout, stderr)
sub finish_pgbench
{
	my ($run) = @_;
	$run->{h}->finish;
	my $rc = $run->{h}->result(0);
	return ($rc, ${ $run->{out} }, ${ $run->{err} });
}

# Interrupt a background pgbench (SIGINT) and reap it
sub stop_pgbench
{
	my ($run) = @_;
	$run->{h}->signal('INT') if $run->{h}->pumpable;
	return finish_pgbench($run);
}

# A background psql session LISTENing on @channels (quoted as identifiers)
sub listen_session
{
	my ($node, $db, @channels) = @_;
	my $bg = $node->background_psql($db, on_error_stop => 0, timeout => 180);
	$bg->query_safe(join('', map { my $c = $_; $c =~ s/"/""/g; qq{LISTEN "$c";} } @channels));
	return $bg;
}

# Notifications in psql output: [ { channel, payload, pid }, ... ]
sub parse_notifications
{
	my ($out) = @_;
	my @n;
	while ($out =~
		/^Asynchronous notification "(.*?)" with payload "(.*)" received from server process with PID (\d+)\.\r?$/mg)
	{
		push @n, { channel => $1, payload => $2, pid => $3 };
	}
	return @n;
}

# Pump a LISTEN session (psql prints notifications after each command) until
# $done->(\@notes) is true or $timeout seconds pass; returns \@notes.
# $on_note->($note), when given, runs for every notification as it arrives.
sub collect_notifications
{
	my ($bg, $done, $timeout, $on_note) = @_;
	my @notes;
	my $deadline = time + ($timeout // 60);
	while (1)
	{
		my $out = $bg->query('SELECT 1');
		for my $n (parse_notifications($out))
		{
			push @notes, $n;
			$on_note->($n) if $on_note;
		}
		last if $done->(\@notes);
		last if time > $deadline;
		usleep(20_000);
	}
	return \@notes;
}

# SQL returning how many rows differ between the results of two queries
# (EXCEPT ALL both ways: duplicates count, NULL equals NULL)
sub sets_equal_sql
{
	my ($a, $b) = @_;
	return "SELECT count(*) FROM ((SELECT * FROM ($a) a_ EXCEPT ALL SELECT * FROM ($b) b_) "
	  . "UNION ALL (SELECT * FROM ($b) b_ EXCEPT ALL SELECT * FROM ($a) a_)) d";
}

# Poll a perl condition every 50 ms; true when it held within $timeout s
sub wait_until
{
	my ($code, $timeout) = @_;
	my $deadline = time + ($timeout // 60);
	while (time < $deadline)
	{
		return 1 if $code->();
		usleep(50_000);
	}
	return $code->() ? 1 : 0;
}


# After an update or upgrade: a LISTEN session gets the topic's ("ev") and
# the aggregate's ("by_key") notifications for a new event of group k2.
# $what names the case in the test names ("updated", "upgraded").
sub check_push
{
	my ($node, $db, $what) = @_;
	my $bg = listen_session($node, $db, 'ev', 'by_key');
	my $id = $node->safe_psql($db, q{SET ROLE alice; INSERT INTO ev (key) VALUES ('k2') RETURNING id});
	my $k2 = $node->safe_psql($db, q{SELECT count FROM by_key WHERE group_key = 'k2'});
	my $topic_note = sub { $_[0]->{channel} eq 'ev' && $_[0]->{payload} =~ /"last_id": $id\}/ };
	my $k2_note = sub { $_[0]->{channel} eq 'by_key' && $_[0]->{payload} =~ /"group_key": "k2", "bucket_start": null, "count": $k2\}/ };
	my $notes = collect_notifications($bg,
		sub { (grep { $topic_note->($_) } @{ $_[0] }) && (grep { $k2_note->($_) } @{ $_[0] }) }, 30);
	ok((grep { $topic_note->($_) } @$notes), "the $what topic notifies a LISTEN session")
	  or diag(explain $notes);
	ok((grep { $k2_note->($_) } @$notes), "the $what aggregate notifies (k2 = $k2)")
	  or diag(explain $notes);
	$bg->quit;
}

1;
