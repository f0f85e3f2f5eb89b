#!/usr/bin/env bash
# test/harness.sh — the set-up behind `make test`, `make demo` and `make bench`.
#
# 1. Installs what is missing (Debian's PostgreSQL 15 server and dev
#    packages, libipc-run-perl, pgbench's pgq baseline, psycopg2) with
#    apt-get when run as root; as another user it only says what is missing.
# 2. Builds evstream warning-free (-Werror) in the work tree.
# 3. Makes a throwaway, relocated copy of the PostgreSQL 15 installation in a
#    temporary directory and installs evstream into it (make install
#    DESTDIR=...), so nothing is written to the system and several runs can
#    go on at once.
# 4. Runs the job — the pg_regress, isolation and TAP suites (test), the
#    word-count demo (demo) or the benchmarks (bench) — as the `postgres` OS
#    user when run as root, since initdb refuses root.
# 5. Removes everything it made (KEEP=1 keeps the directory for debugging).
#
# Extra arguments after the mode go to `make installcheck`, e.g.
#   bash test/harness.sh test REGRESS=topics ISOLATION= TAP_TESTS=
#   bash test/harness.sh test REGRESS= ISOLATION= PROVE_TESTS=test/t/010_crash.pl
set -euo pipefail

mode=${1:-test}
top=$(cd "$(dirname "$0")/.." && pwd)
PGMAJOR=15
SYS_BIN=/usr/lib/postgresql/$PGMAJOR/bin

say() { printf '== %s\n' "$*"; }

# ---------------------------------------------------------------- packages
need=()
[ -x "$SYS_BIN/postgres" ] || need+=(postgresql-$PGMAJOR)
# what the build and the suites really use, not a file some other package
# ships (pgxs.mk comes with postgresql-client-NN on Debian)
[ -f "/usr/include/postgresql/$PGMAJOR/server/postgres.h" ] &&
  [ -f "/usr/lib/postgresql/$PGMAJOR/lib/pgxs/src/makefiles/pgxs.mk" ] &&
  [ -x "/usr/lib/postgresql/$PGMAJOR/lib/pgxs/src/test/isolation/pg_isolation_regress" ] &&
  [ -f "/usr/lib/postgresql/$PGMAJOR/lib/pgxs/src/test/perl/PostgreSQL/Test/Cluster.pm" ] ||
  need+=(postgresql-server-dev-$PGMAJOR)
perl -MIPC::Run -e1 2>/dev/null || need+=(libipc-run-perl)
command -v make >/dev/null || need+=(make)
command -v gcc >/dev/null || need+=(gcc)
command -v prove >/dev/null || need+=(perl)
command -v rsync >/dev/null || need+=(rsync)
/usr/bin/python3 -c 'import psycopg2' 2>/dev/null || need+=(python3-psycopg2)
if [ "$mode" = bench ]; then
  [ -f /usr/share/postgresql/$PGMAJOR/extension/pgq.control ] || need+=(postgresql-$PGMAJOR-pgq3)
fi
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    say "installing: ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # the server package must not start a system cluster we do not use
    mkdir -p /etc/postgresql-common/createcluster.d
    echo 'create_main_cluster = false' > /etc/postgresql-common/createcluster.d/evstream-test.conf
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  else
    echo "missing packages: ${need[*]} (run as root, or: sudo apt-get install ${need[*]})" >&2
    exit 1
  fi
fi

# ---------------------------------------------------------------- build
PG_CONFIG=$SYS_BIN/pg_config
say "building evstream"
make -s -C "$top" PG_CONFIG="$PG_CONFIG" >/dev/null

# ---------------------------------------------------------------- throwaway install
W=$(mktemp -d /tmp/evs.XXXXXX)
cleanup() {
  # stop any server left behind by an interrupted run
  for pidf in "$W"/*/postmaster.pid "$W"/tmp/*/*/postmaster.pid "$W"/tmp/*/postmaster.pid \
              "$W"/src/tmp_check*/data/postmaster.pid "$W"/src/tmp_check/t_*/pgdata/postmaster.pid; do
    [ -f "$pidf" ] && kill -QUIT "$(head -1 "$pidf")" 2>/dev/null || true
  done
  if [ "${KEEP:-0}" = 1 ]; then say "kept $W"; else rm -rf "$W"; fi
}
trap cleanup EXIT
TI=$W/inst
mkdir -p "$TI/usr/lib/postgresql" "$TI/usr/share/postgresql" "$W/tmp"
cp -a "/usr/lib/postgresql/$PGMAJOR" "$TI/usr/lib/postgresql/"
cp -a "/usr/share/postgresql/$PGMAJOR" "$TI/usr/share/postgresql/"
make -s -C "$top" install DESTDIR="$TI" PG_CONFIG="$PG_CONFIG" >/dev/null
BIN=$TI/usr/lib/postgresql/$PGMAJOR/bin

# a private copy of the tree the job can write to (results, tmp_check, ...)
rsync -a --exclude .git --exclude results --exclude output_iso --exclude 'tmp_check*' "$top/" "$W/src/"

RUN=()
if [ "$(id -u)" = 0 ]; then
  chown -R postgres:postgres "$W"
  RUN=(runuser -u postgres --)
fi
ENV=(env PATH="$BIN:/usr/local/bin:/usr/bin:/bin" TMPDIR="$W/tmp" PG_CONFIG="$BIN/pg_config"
     EVSTREAM_BIN="$BIN" EVSTREAM_TOP="$W/src" PGHOST= PGPORT= PGUSER= PGDATABASE= LANG=C.UTF-8)

rc=0
case "$mode" in
  test)
    say "running the pg_regress, isolation and TAP suites"
    (cd "$W/src" && "${RUN[@]}" "${ENV[@]}" make -s installcheck EVSTREAM_TEMP_INSTANCE=1 PG_CONFIG="$BIN/pg_config" "${@:2}") || rc=$?
    if [ $rc != 0 ]; then
      for f in "$W/src/regression.diffs" "$W/src/output_iso/regression.diffs"; do
        [ -f "$f" ] && { say "$f"; head -c 20000 "$f"; }
      done
      for f in "$W"/src/tmp_check/log/regress_log_*; do
        [ -f "$f" ] && { say "$f (tail)"; tail -n 60 "$f"; }
      done
      for f in "$W"/src/tmp_check_reg/log/postmaster.log "$W"/src/tmp_check_iso/log/postmaster.log; do
        [ -f "$f" ] && { say "$f (tail)"; tail -n 40 "$f"; }
      done
    fi
    ;;
  demo)
    (cd "$W/src" && "${RUN[@]}" "${ENV[@]}" bash test/demo/demo.sh) || rc=$?
    ;;
  bench)
    mkdir -p "$top/test/bench/out"
    [ "$(id -u)" = 0 ] && chown postgres:postgres "$top/test/bench/out"
    (cd "$W/src" && "${RUN[@]}" "${ENV[@]}" BENCH_OUT="$top/test/bench/out" bash test/bench/bench.sh) || rc=$?
    ;;
  *) echo "usage: $0 test|demo|bench" >&2; rc=2 ;;
esac
exit $rc
