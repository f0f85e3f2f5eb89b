#!/usr/bin/env bash
# debian/make-deb.sh — behind `make deb`: Debian packages of evstream,
# postgresql-<N>-evstream, for every PostgreSQL server version installed on
# this machine, built with Debian's pg_buildext (postgresql-server-dev-all).
#
# 1. Installs the build dependencies that are missing (dpkg-dev, debhelper,
#    postgresql-server-dev-all, postgresql-server-dev-<N> for each installed
#    server) with apt-get when run as root; as another user it only says
#    what is missing.
# 2. Builds in a copy of the tree (the work tree is left as it is), with
#    debian/control generated for the installed versions
#    (PG_SUPPORTED_VERSIONS=installed pg_buildext updatecontrol).
# 3. Puts the .deb files in dist/; install one with
#      sudo apt install ./dist/postgresql-15-evstream_0.2.0_amd64.deb
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
say() { printf '== %s\n' "$*"; }
die() { printf 'make deb: %s\n' "$*" >&2; exit 1; }

export PG_SUPPORTED_VERSIONS=installed
versions=()
for b in /usr/lib/postgresql/*/bin/postgres; do
  [ -x "$b" ] && versions+=("$(basename "$(dirname "$(dirname "$b")")")")
done
[ ${#versions[@]} -gt 0 ] ||
  die "no PostgreSQL server installed (e.g. apt-get install postgresql-15): nothing to build for"

need=()
command -v dpkg-buildpackage >/dev/null || need+=(dpkg-dev)
command -v dh >/dev/null || need+=(debhelper)
command -v pg_buildext >/dev/null || need+=(postgresql-server-dev-all)
[ -f /usr/share/perl5/Debian/Debhelper/Sequence/pgxs_loop.pm ] || need+=(postgresql-server-dev-all)
command -v make >/dev/null || need+=(make)
command -v gcc >/dev/null || need+=(gcc)
command -v rsync >/dev/null || need+=(rsync)
for v in "${versions[@]}"; do
  [ -f "/usr/include/postgresql/$v/server/postgres.h" ] &&
    [ -x "/usr/lib/postgresql/$v/bin/pg_config" ] || need+=("postgresql-server-dev-$v")
done
if [ ${#need[@]} -gt 0 ]; then
  mapfile -t need < <(printf '%s\n' "${need[@]}" | sort -u)
  if [ "$(id -u)" = 0 ]; then
    say "installing: ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  else
    echo "missing packages: ${need[*]} (run as root, or: sudo apt-get install ${need[*]})" >&2
    exit 1
  fi
fi

version=$(dpkg-parsechangelog -l "$top/debian/changelog" -S Version)
B=$(mktemp -d /tmp/evs-deb.XXXXXX)
trap 'rm -rf "$B"' EXIT
S=$B/evstream-$version
mkdir -p "$S"
rsync -a --exclude .git --exclude results --exclude output_iso --exclude 'tmp_check*' --exclude /log \
  --exclude '*.o' --exclude '*.so' --exclude '*.bc' --exclude /dist --exclude /test/bench/out \
  "$top/" "$S/"
# the built install script of this version is made again by the build
rm -f "$S/sql/evstream--$(sed -n "s/^default_version = '\(.*\)'$/\1/p" "$top/evstream.control").sql"

say "building postgresql-{$(IFS=,; echo "${versions[*]}")}-evstream $version with pg_buildext"
(cd "$S" && pg_buildext updatecontrol && dpkg-buildpackage -b -uc -us) >"$B/build.log" 2>&1 ||
  { tail -n 60 "$B/build.log" >&2; die "dpkg-buildpackage failed (log above)"; }

mkdir -p "$top/dist"
debs=()
for f in "$B"/*.deb; do
  cp "$f" "$top/dist/"
  debs+=("dist/$(basename "$f")")
done
[ ${#debs[@]} -gt 0 ] || die "dpkg-buildpackage made no package"
for d in "${debs[@]}"; do say "built $d"; done
for d in "${debs[@]}"; do
  case "$d" in *-dbgsym_*) ;; *) say "install with: sudo apt install ./$d" ;; esac
done
