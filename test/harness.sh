#!/usr/bin/env bash
# test/harness.sh — the set-up behind `make test`, `make demo`, `make bench`
# and `make test-all`.
#
# PG=15 (the default) runs on the host:
# 1. Installs what is missing (Debian's PostgreSQL server and dev packages,
#    libipc-run-perl, pgbench's pgq baseline, psycopg2 and psycopg 3,
#    Node.js and node-postgres for the examples) with apt-get when run as
#    root; as another user it only says what is missing.  node-postgres is
#    Debian's node-pg, or npm's pg in $NPM_DIR when node-pg cannot be
#    installed (a Node.js that is not Debian's, e.g. NodeSource's, does not
#    satisfy node-pg's dependencies).
# 2. Builds evstream warning-free (-Werror) in the work tree.
# 3. Makes a throwaway, relocated copy of the PostgreSQL installation in a
#    temporary directory and installs evstream into it (make install
#    DESTDIR=...), so nothing is written to the system and several runs can
#    go on at once.  For `test` it also builds the last release, evstream
#    0.1 (git commit OLD_REV below, from the repository's history; patched
#    for the API renames of PostgreSQL 16 and 17), and installs
#    it into a second such copy (EVSTREAM_OLD_BIN), for the update test
#    (test/t/100_update.pl): an honest ALTER EXTENSION UPDATE starts from
#    the old library, since the new one does not run on a 0.1 catalog.
# 4. Checks that every tool the suites need is there (self-check), prints
#    the server version under test (`== PostgreSQL 15.x`) and runs the job —
#    the pg_regress, isolation and TAP suites (test), the word-count demo
#    (demo) or the benchmarks (bench) — as the `postgres` OS user when run
#    as root, since initdb refuses root.
# 5. Removes everything it made (KEEP=1 keeps the directory for debugging).
#
# PG=17 and PG=18 run the same steps inside a minimal Debian chroot (root
# only): Debian 13 "trixie" carries PostgreSQL 17, Debian testing "forky"
# PostgreSQL 18.  The chroot is built once with mmdebstrap and cached in
# /var/cache/evstream/<codename>-pg<N>; the work tree is copied into it
# (the host tree never sees objects built for another version), and /proc,
# /dev and a private /dev/shm are mounted in a private mount namespace, so
# they go away with the run however it ends.  REBUILD_CHROOT=1 rebuilds it.
#
# test-all runs `test` for PG=15, 17 and 18 in turn, prints one summary line
# per version and fails if any failed.
#
# Extra arguments after the mode go to `make installcheck`, e.g.
#   bash test/harness.sh test REGRESS=topics ISOLATION= TAP_TESTS=
#   bash test/harness.sh test REGRESS= ISOLATION= PROVE_TESTS=test/t/010_crash.pl
#   PG=17 bash test/harness.sh test REGRESS=smoke ISOLATION= TAP_TESTS=
set -euo pipefail

mode=${1:-test}
top=$(cd "$(dirname "$0")/.." && pwd)
# the last released version (0.1) for the update test; its install script
# is kept as sql/evstream--$OLD_VERSION.sql
OLD_REV=1405788
OLD_VERSION=0.1
NEW_VERSION=$(sed -n "s/^default_version = '\(.*\)'$/\1/p" "$top/evstream.control")
HOST_PG=15
PG=${PG:-$HOST_PG}
PGMAJOR=$PG
SYS_BIN=/usr/lib/postgresql/$PGMAJOR/bin

say() { printf '== %s\n' "$*"; }

die() { printf 'harness: %s\n' "$*" >&2; exit 1; }

# old_source DIR: the 0.1 source tree (git commit $OLD_REV) into DIR
old_source() {
  git -c safe.directory="$top" -C "$top" cat-file -e "$OLD_REV^{commit}" 2>/dev/null ||
    die "self-check failed: the update test needs evstream $OLD_VERSION (git commit $OLD_REV) from the repository's history, which $top lacks (not a git clone, or a shallow one: git fetch --unshallow)"
  mkdir -p "$1"
  git -c safe.directory="$top" -C "$top" archive "$OLD_REV" | tar -x -C "$1"
}

case "$PG" in
  15|17|18) ;;
  *) die "PG=$PG is not supported: PG=15 (host), PG=17 (Debian trixie chroot), PG=18 (Debian forky chroot)" ;;
esac

# ---------------------------------------------------------------- test-all
if [ "$mode" = test-all ]; then
  summary=() rc=0
  for v in 15 17 18; do
    say "test-all: PG=$v"
    log=$(mktemp /tmp/evs-test-all.XXXXXX)
    t0=$SECONDS r=0
    PG=$v bash "$0" test "${@:2}" 2>&1 | tee "$log" || r=$?
    # the version line the run printed from the server under test
    ver=$(grep -m1 -E '^== PostgreSQL [0-9]' "$log" | sed 's/^== //; s/ (.*//') || true
    rm -f "$log"
    if [ $r = 0 ]; then res=passed; else res="FAILED (exit $r)"; rc=1; fi
    summary+=("PG=$v ${ver:-PostgreSQL ?}: $res in $((SECONDS - t0)) s")
  done
  for l in "${summary[@]}"; do say "test-all: $l"; done
  exit $rc
fi

# ---------------------------------------------------------------- chroot (PG != 15)
# Runs this script again inside the cached Debian chroot for $PG.
if [ "$PG" != "$HOST_PG" ] && [ -z "${EVS_IN_CHROOT:-}" ]; then
  case "$PG" in
    17) suite=trixie aptopt=() ;;
    # the testing archive's Release file can be past its Valid-Until here
    18) suite=forky aptopt=(--aptopt='Acquire::Check-Valid-Until "false"') ;;
  esac
  [ "$(id -u)" = 0 ] ||
    die "PG=$PG runs in a Debian $suite chroot, which needs root (mmdebstrap, chroot, mount); run as root or use PG=$HOST_PG"
  CACHE=/var/cache/evstream
  C=$CACHE/$suite-pg$PG
  pkgs="postgresql-$PG,postgresql-server-dev-$PG,make,gcc,libc6-dev,libipc-run-perl,perl,python3-psycopg2,python3-psycopg,nodejs,node-pg,rsync"
  key="$suite $pkgs"
  mkdir -p "$CACHE"
  chroot_ok() {
    [ "$(cat "$C/.evstream-chroot" 2>/dev/null)" = "$key" ] &&
      [ -x "$C/usr/lib/postgresql/$PG/bin/postgres" ] &&
      [ -x "$C/usr/lib/postgresql/$PG/bin/pg_config" ] &&
      [ -f "$C/usr/include/postgresql/$PG/server/postgres.h" ] &&
      [ -x "$C/usr/lib/postgresql/$PG/lib/pgxs/src/test/isolation/pg_isolation_regress" ] &&
      [ -x "$C/usr/sbin/runuser" ] &&
      [ -x "$C/usr/bin/node" ] && [ -d "$C/usr/share/nodejs/pg" ]
  }
  # one builder at a time; runs hold the lock shared so nobody replaces
  # the chroot under them
  exec 9>"$CACHE/.$suite-pg$PG.lock"
  flock 9
  if [ "${REBUILD_CHROOT:-0}" = 1 ] || ! chroot_ok; then
    if ! command -v mmdebstrap >/dev/null; then
      say "installing: mmdebstrap"
      export DEBIAN_FRONTEND=noninteractive
      apt-get update -qq
      apt-get install -y -qq --no-install-recommends mmdebstrap >/dev/null
    fi
    say "building the Debian $suite chroot for PostgreSQL $PG in $C"
    t0=$SECONDS
    rm -rf "$C".new.*
    new=$(mktemp -d "$C.new.XXXXXX")
    # no cluster from the package's postinst; no docs, man pages, locales
    if ! mmdebstrap --variant=minbase "${aptopt[@]}" \
        --setup-hook='mkdir -p "$1/etc/postgresql-common/createcluster.d" && echo "create_main_cluster = false" > "$1/etc/postgresql-common/createcluster.d/evstream.conf"' \
        --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
        --dpkgopt='path-include=/usr/share/doc/*/copyright' --dpkgopt='path-exclude=/usr/share/locale/*' \
        --include="$pkgs" "$suite" "$new" http://deb.debian.org/debian >"$new.log" 2>&1; then
      tail -n 40 "$new.log" >&2
      rm -rf "$new" "$new.log"
      die "mmdebstrap failed for $suite (log above)"
    fi
    rm -f "$new.log"
    echo "$key" >"$new/.evstream-chroot"
    rm -rf "$C"
    mv "$new" "$C"
    chroot_ok || die "the new chroot $C lacks PostgreSQL $PG's server, headers or test tools"
    say "chroot built in $((SECONDS - t0)) s"
  else
    say "reusing the Debian $suite chroot $C"
  fi
  flock -s 9
  # a private copy of the work tree inside the chroot (not a bind mount:
  # objects built for PG $PG must not land in the host's tree)
  R=$(mktemp -d "$C/tmp/evs-run.XXXXXX")
  chmod 755 "$R"
  rsync -a --exclude .git --exclude results --exclude output_iso --exclude 'tmp_check*' --exclude /log \
    --exclude '*.o' --exclude '*.so' --exclude '*.bc' --exclude /test/bench/out "$top/" "$R/src/"
  cp /etc/resolv.conf "$C/etc/resolv.conf" 2>/dev/null || true   # apt inside (pgq3 for bench)
  chroot_cleanup() {
    if [ "$mode" = bench ] && [ -d "$R/src/test/bench/out" ]; then
      mkdir -p "$top/test/bench/out" && cp -a "$R/src/test/bench/out/." "$top/test/bench/out/" &&
        say "bench results copied to $top/test/bench/out" || true
    fi
    if [ "${KEEP:-0}" = 1 ]; then say "kept $R"; else rm -rf "$R"; fi
  }
  trap chroot_cleanup EXIT
  # the chroot has no git (and the copy no .git): the 0.1 tree goes in
  # ready-made
  oldenv=()
  if [ "$mode" = test ]; then
    old_source "$R/old-src"
    oldenv=(EVS_OLD_SRC="${R#"$C"}/old-src")
  fi
  passenv=()
  for v in BENCH_T BENCH_ROUNDS BENCH_N BENCH_CASES BENCH_HORIZON_S; do
    [ -n "${!v:-}" ] && passenv+=("$v=${!v}")
  done
  rc=0
  # The mounts live in a private mount namespace: they vanish when the
  # run's last process exits, also on failure, ^C or kill -9.
  # (9>&-: the servers must not inherit the lock on the chroot)
  unshare --mount --propagation private -- bash -c '
    set -e
    C=$1; shift
    mount --bind /proc "$C/proc"
    mount --rbind /dev "$C/dev"
    mount -t tmpfs -o mode=1777,nosuid,nodev evs-shm "$C/dev/shm"
    trap "umount \"$C/dev/shm\"; umount -R \"$C/dev\"; umount \"$C/proc\"" EXIT
    chroot "$C" "$@"
  ' _ "$C" env -i PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin HOME=/root LANG=C.UTF-8 \
      TERM="${TERM:-dumb}" CI="${CI:-}" KEEP="${KEEP:-0}" PG="$PG" EVS_IN_CHROOT=1 \
      "${passenv[@]}" "${oldenv[@]}" bash "${R#"$C"}/src/test/harness.sh" "$@" 9>&- || rc=$?
  exit $rc
fi

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
/usr/bin/python3 -c 'import psycopg' 2>/dev/null || need+=(python3-psycopg)
# the examples' Node.js client: node-postgres from Debian (node-pg) or, when
# that cannot be installed, from npm into $NPM_DIR (NODE_PATH for the tests)
NPM_DIR=/var/cache/evstream/npm
node_pg_ok() { NODE_PATH=$NPM_DIR/node_modules node -e 'require("pg")' 2>/dev/null; }
command -v node >/dev/null || need+=(nodejs)
need_pg=0
node_pg_ok || need_pg=1
if [ "$mode" = bench ]; then
  [ -f /usr/share/postgresql/$PGMAJOR/extension/pgq.control ] || need+=(postgresql-$PGMAJOR-pgq3)
fi
if [ ${#need[@]} -gt 0 ] || [ $need_pg = 1 ]; then
  if [ "$(id -u)" = 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    if [ ${#need[@]} -gt 0 ]; then
      say "installing: ${need[*]}"
      # the server package must not start a system cluster we do not use
      mkdir -p /etc/postgresql-common/createcluster.d
      echo 'create_main_cluster = false' > /etc/postgresql-common/createcluster.d/evstream-test.conf
      apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    fi
    if ! node_pg_ok; then
      # Debian's node-pg when apt can install it without removing anything
      # (it cannot next to a non-Debian Node.js), else npm's pg
      if apt-get install -s --no-install-recommends node-pg 2>/dev/null | grep -q '^Inst node-pg ' &&
         ! apt-get install -s --no-install-recommends node-pg 2>/dev/null | grep -q '^Remv '; then
        say "installing: node-pg"
        apt-get install -y -qq --no-install-recommends node-pg >/dev/null
      else
        command -v npm >/dev/null ||
          die "node-postgres: Debian's node-pg cannot be installed next to this Node.js ($(command -v node)), and there is no npm to install pg with"
        say "installing: pg (npm) into $NPM_DIR"
        mkdir -p "$NPM_DIR"
        npm install --prefix "$NPM_DIR" --no-audit --no-fund --no-package-lock --omit=dev --loglevel=error 'pg@8' >/dev/null
      fi
      node_pg_ok || die "node-postgres installed but node cannot load it (NODE_PATH=$NPM_DIR/node_modules)"
    fi
  else
    [ ${#need[@]} -gt 0 ] &&
      echo "missing packages: ${need[*]} (run as root, or: sudo apt-get install ${need[*]})" >&2
    [ $need_pg = 1 ] &&
      echo "missing node-postgres for examples/node-consumer.js (run as root, or: sudo apt-get install node-pg, or with another Node.js: sudo npm install --prefix $NPM_DIR pg)" >&2
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

# ---------------------------------------------------------------- the old release
# evstream 0.1 built with the same pg_config and installed into a second
# copy of the same PostgreSQL, for test/t/100_update.pl
OLD_BIN=
if [ "$mode" = test ]; then
  say "building evstream $OLD_VERSION (git $OLD_REV) for the update test"
  O=$W/old-src
  if [ -n "${EVS_OLD_SRC:-}" ]; then
    mkdir -p "$O" && cp -a "$EVS_OLD_SRC/." "$O/"
  else
    old_source "$O"
  fi
  grep -Eq "^default_version = '$OLD_VERSION'" "$O/evstream.control" ||
    die "git commit $OLD_REV is not evstream $OLD_VERSION: $(grep default_version "$O/evstream.control")"
  cmp -s "$O/sql/evstream.sql" "$top/sql/evstream--$OLD_VERSION.sql" ||
    die "sql/evstream--$OLD_VERSION.sql differs from the install script of the $OLD_VERSION release (git $OLD_REV)"
  # 0.1 was written for PostgreSQL 15: the API renames of 16 and 17, the
  # only changes it needs, patched in (HEAD has them in src/compat.h)
  if [ "$PGMAJOR" -ge 16 ]; then
    sed -i -E \
      -e 's|^#include "postgres.h"$|#include "postgres.h"\n#include "catalog/pg_class_d.h"\n#include "catalog/pg_namespace_d.h"\n#include "miscadmin.h"\n#include "storage/proc.h"|' \
      -e 's/pg_class_ownercheck\(/object_ownercheck(RelationRelationId, /g' \
      -e 's/pg_namespace_aclcheck\(/object_aclcheck(NamespaceRelationId, /g' \
      -e 's/stringToQualifiedNameList\(([^()]*)\)/stringToQualifiedNameList(\1, NULL)/g' \
      "$O"/src/*.c
  fi
  if [ "$PGMAJOR" -ge 17 ]; then
    sed -i -e 's/MyProc->pgprocno/MyProcNumber/g' "$O"/src/*.c
  fi
  # not -Werror: newer compilers warn about code 0.1 was released with
  make -s -C "$O" PG_CONFIG="$PG_CONFIG" PG_CFLAGS= >"$W/old-build.log" 2>&1 ||
    { tail -n 40 "$W/old-build.log" >&2; die "evstream $OLD_VERSION does not build against PostgreSQL $PGMAJOR (log above)"; }
  TO=$W/inst-old
  mkdir -p "$TO/usr/lib/postgresql" "$TO/usr/share/postgresql"
  cp -a "/usr/lib/postgresql/$PGMAJOR" "$TO/usr/lib/postgresql/"
  cp -a "/usr/share/postgresql/$PGMAJOR" "$TO/usr/share/postgresql/"
  make -s -C "$O" install DESTDIR="$TO" PG_CONFIG="$PG_CONFIG" >/dev/null
  OLD_BIN=$TO/usr/lib/postgresql/$PGMAJOR/bin
fi

# ---------------------------------------------------------------- self-check
# Everything the suites use, checked in the installation they will use, so
# that a missing tool fails here instead of a suite being skipped.
selfcheck() {
  local miss=() pgxs inc
  pgxs=$(dirname "$("$BIN/pg_config" --pgxs)")/../..
  inc=$("$PG_CONFIG" --includedir-server)   # the build uses the system pg_config
  [ -f "$inc/postgres.h" ] || miss+=("server headers: $inc/postgres.h (postgresql-server-dev-$PGMAJOR)")
  [ -x "$pgxs/src/test/regress/pg_regress" ] || miss+=("pg_regress (postgresql-server-dev-$PGMAJOR)")
  [ -x "$pgxs/src/test/isolation/pg_isolation_regress" ] ||
    miss+=("pg_isolation_regress (postgresql-server-dev-$PGMAJOR)")
  [ -x "$pgxs/src/test/isolation/isolationtester" ] || miss+=("isolationtester (postgresql-server-dev-$PGMAJOR)")
  [ -f "$pgxs/src/test/perl/PostgreSQL/Test/Cluster.pm" ] ||
    miss+=("PostgreSQL::Test::Cluster (postgresql-server-dev-$PGMAJOR)")
  grep -Eq '^enable_tap_tests[[:space:]]*=[[:space:]]*yes' "$pgxs/src/Makefile.global" ||
    miss+=("TAP support: enable_tap_tests is not yes in $pgxs/src/Makefile.global, PGXS would skip the TAP suite")
  command -v prove >/dev/null || miss+=("prove (perl)")
  perl -MIPC::Run -e1 2>/dev/null || miss+=("IPC::Run (libipc-run-perl)")
  perl -MTest::More -e1 2>/dev/null || miss+=("Test::More (perl)")
  /usr/bin/python3 -c 'import psycopg2' 2>/dev/null ||
    miss+=("psycopg2 for examples/listener.py (python3-psycopg2)")
  [ -f "$top/examples/listener.py" ] || miss+=("examples/listener.py (040_push.pl would skip it)")
  /usr/bin/python3 -c 'import psycopg' 2>/dev/null ||
    miss+=("psycopg 3 for examples/worker_pool.py (python3-psycopg)")
  command -v node >/dev/null || miss+=("node for examples/node-consumer.js (nodejs)")
  node_pg_ok || miss+=("node-postgres for examples/node-consumer.js (node-pg, or npm's pg in $NPM_DIR)")
  [ -x "$BIN/postgres" ] && [ -x "$BIN/initdb" ] && [ -x "$BIN/pg_ctl" ] || miss+=("server binaries in $BIN")
  [ -x "$BIN/pg_upgrade" ] || miss+=("pg_upgrade in $BIN (110_pg_upgrade.pl)")
  if [ "$mode" = test ]; then
    local oext
    oext=$(dirname "$OLD_BIN")/../../../share/postgresql/$PGMAJOR/extension
    [ -x "$OLD_BIN/postgres" ] && [ -f "$(dirname "$OLD_BIN")/lib/evstream.so" ] &&
      grep -Eq "^default_version = '$OLD_VERSION'" "$oext/evstream.control" 2>/dev/null ||
      miss+=("evstream $OLD_VERSION installed in $(dirname "$OLD_BIN") (100_update.pl)")
    [ -f "$(dirname "$BIN")/../../../share/postgresql/$PGMAJOR/extension/evstream--$OLD_VERSION--$NEW_VERSION.sql" ] ||
      miss+=("the update script evstream--$OLD_VERSION--$NEW_VERSION.sql in the new install")
  fi
  if [ ${#miss[@]} -gt 0 ]; then
    printf 'harness: self-check failed, missing:\n' >&2
    printf '  - %s\n' "${miss[@]}" >&2
    exit 1
  fi
}
selfcheck

# the server under test says which it is: its binary now, its log after the
# suites
server_version=$("$BIN/postgres" --version)
case "$server_version" in
  "postgres (PostgreSQL) $PGMAJOR".*) ;;
  *) die "asked for PostgreSQL $PGMAJOR but $BIN/postgres says: $server_version" ;;
esac
build_version=$("$PG_CONFIG" --version)
case "$build_version" in
  "PostgreSQL $PGMAJOR".*) ;;
  *) die "built with $PG_CONFIG ($build_version) but testing PostgreSQL $PGMAJOR" ;;
esac
where=host
[ -n "${EVS_IN_CHROOT:-}" ] && where="Debian $(. /etc/os-release; echo "${VERSION_CODENAME:-?}") chroot"
say "PostgreSQL ${server_version#postgres (PostgreSQL) } ($where, $BIN/postgres)"

# a private copy of the tree the job can write to (results, tmp_check, ...)
rsync -a --exclude .git --exclude results --exclude output_iso --exclude 'tmp_check*' "$top/" "$W/src/"

RUN=()
if [ "$(id -u)" = 0 ]; then
  chown -R postgres:postgres "$W"
  RUN=(runuser -u postgres --)
fi
ENV=(env PATH="$BIN:/usr/local/bin:/usr/bin:/bin" TMPDIR="$W/tmp" PG_CONFIG="$BIN/pg_config"
     EVSTREAM_BIN="$BIN" EVSTREAM_OLD_BIN="$OLD_BIN" EVSTREAM_TOP="$W/src" NODE_PATH="$NPM_DIR/node_modules" PGHOST= PGPORT= PGUSER= PGDATABASE= LANG=C.UTF-8)

rc=0
case "$mode" in
  test)
    say "running the pg_regress, isolation and TAP suites"
    (cd "$W/src" && "${RUN[@]}" "${ENV[@]}" make -s installcheck EVSTREAM_TEMP_INSTANCE=1 PG_CONFIG="$BIN/pg_config" "${@:2}") || rc=$?
    # what the test servers themselves logged at start-up
    started=$(grep -h -m1 -o 'starting PostgreSQL .*' "$W/src/log/postmaster.log" \
              "$W/src/output_iso/log/postmaster.log" 2>/dev/null | sort -u) || true
    [ -n "$started" ] && printf '%s\n' "$started" | sed 's/^/== test server: /'
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
  *) echo "usage: $0 test|demo|bench|test-all" >&2; rc=2 ;;
esac
exit $rc
