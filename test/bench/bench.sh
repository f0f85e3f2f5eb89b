#!/usr/bin/env bash
# test/bench/bench.sh — `make bench`: evstream against its baselines, one run.
#
# Owns: the throwaway benchmark cluster.  It initdb's a cluster under $TMPDIR
# (shared_buffers = 1GB, max_wal_size = 4GB, shared_preload_libraries =
# 'evstream', unix socket in $TMPDIR, no TCP), starts it, creates database
# `evbench` with the extensions evstream and pgq, hands over to bench.py, and
# stops the cluster on exit (trap), whatever happened.
#
# How it measures: test/bench/bench.py (read its header) drives pgbench
# (-n -M prepared -c 4 -j 2 -T $BENCH_T, TRUNCATE + CHECKPOINT before every
# run, $BENCH_ROUNDS interleaved rounds) plus psycopg2 clients for COPY,
# consumption, push latency, the parallel / long-poll consumer cases and the
# continuous-transform cases (flatMap throughput, latency, producers) and
# the aggregates v2 cases (measures, hot group, hopping windows, change-event
# latency), and prints ONE markdown table: figures are medians over rounds, each ratio is
# the median of the per-round ratios, all measured in this run, each with its
# target and PASS/MISS.  A case that errors (e.g. a feature not built yet)
# prints ERROR and the others go on.
#
# Called by test/harness.sh (as the postgres OS user when run as root) with
# PATH starting with the server binaries, TMPDIR (private) and BENCH_OUT (the
# directory for result files).  Knobs:
#   BENCH_T=5           seconds per pgbench run
#   BENCH_ROUNDS=3      interleaved rounds
#   BENCH_N=1000000     events per COPY / consume run
#   BENCH_HORIZON_S=60  seconds of the held-horizon consumer case (consumers2)
#   BENCH_CASES=...     comma-separated phases to run (default: all), see bench.py
# Exit status: 0 unless the cluster cannot be created or started.
set -uo pipefail

here=$(cd "$(dirname "$0")" && pwd)
: "${TMPDIR:=/tmp}"
: "${BENCH_OUT:=$here/out}"
export BENCH_T=${BENCH_T:-5} BENCH_ROUNDS=${BENCH_ROUNDS:-3} BENCH_N=${BENCH_N:-1000000}
export BENCH_HORIZON_S=${BENCH_HORIZON_S:-60}
mkdir -p "$BENCH_OUT"

say() { printf '== %s\n' "$*" >&2; }

for b in initdb pg_ctl pgbench psql pg_config; do
  command -v "$b" >/dev/null || { echo "bench: $b not in PATH" >&2; exit 1; }
done
PY=python3
"$PY" -c 'import psycopg2' 2>/dev/null || PY=/usr/bin/python3
"$PY" -c 'import psycopg2' 2>/dev/null || { echo "bench: python3 with psycopg2 needed" >&2; exit 1; }

# ---------------------------------------------------------------- cluster
W=$(mktemp -d "$TMPDIR/evbench.XXXXXX")
PGDATA=$W/data
PORT=$((20000 + $$ % 20000))
export PGHOST=$TMPDIR PGPORT=$PORT PGUSER=$(id -un) PGDATABASE=evbench BENCH_WORK=$W
export PGDATA

stop_cluster() {
  if [ -f "$PGDATA/postmaster.pid" ]; then
    pg_ctl -D "$PGDATA" -m fast -w -t 60 stop >/dev/null 2>&1 ||
      pg_ctl -D "$PGDATA" -m immediate stop >/dev/null 2>&1 || true
  fi
  [ "${KEEP:-0}" = 1 ] && say "kept $W" || rm -rf "$W"
}
trap stop_cluster EXIT
trap 'exit 130' INT TERM

say "initdb in $W"
initdb -D "$PGDATA" -A trust -E UTF8 --locale=C.UTF-8 >"$W/initdb.log" 2>&1 ||
  initdb -D "$PGDATA" -A trust -E UTF8 --no-locale >"$W/initdb.log" 2>&1 ||
  { cat "$W/initdb.log" >&2; exit 1; }

preload=evstream
if [ ! -f "$(pg_config --pkglibdir)/evstream.so" ]; then
  say "WARNING: evstream.so is not installed in $(pg_config --pkglibdir): its cases will print ERROR"
  preload=
fi
cat >>"$PGDATA/postgresql.conf" <<EOF

# ---- evstream bench (test/bench/bench.sh)
shared_buffers = 1GB
max_wal_size = 4GB
shared_preload_libraries = '$preload'
listen_addresses = ''
unix_socket_directories = '$TMPDIR'
port = $PORT
max_connections = 100
log_min_messages = warning
log_line_prefix = '%m [%p] %b '
EOF

say "starting the cluster (port $PORT, socket in $TMPDIR)"
if ! pg_ctl -D "$PGDATA" -l "$W/server.log" -w -t 120 start >/dev/null; then
  echo "bench: the cluster did not start" >&2
  tail -n 40 "$W/server.log" >&2
  exit 1
fi

psql -X -q -d postgres -c 'CREATE DATABASE evbench' || exit 1
for ext in evstream pgq; do
  psql -X -q -v ON_ERROR_STOP=1 -c "CREATE EXTENSION $ext" ||
    say "WARNING: CREATE EXTENSION $ext failed: its cases will print ERROR"
done

# ---------------------------------------------------------------- cases
say "running the cases: BENCH_T=$BENCH_T BENCH_ROUNDS=$BENCH_ROUNDS BENCH_N=$BENCH_N BENCH_HORIZON_S=$BENCH_HORIZON_S"
BENCH_SERVER_LOG=$W/server.log "$PY" "$here/bench.py"
rc=$?
[ $rc = 0 ] || say "bench.py exited with status $rc"

# crashes or panics of the server during the run are worth knowing about
crashes=$(grep -cE 'terminated by signal|PANIC|was terminated by exception' "$W/server.log" || true)
if [ "${crashes:-0}" != 0 ]; then
  say "server log: $crashes crash/PANIC line(s):"
  grep -E 'terminated by signal|PANIC|was terminated by exception' "$W/server.log" | head -n 10 >&2
fi
cp "$W/server.log" "$BENCH_OUT/server.log" 2>/dev/null || true
exit 0
