#!/usr/bin/env bash
# Make sure a PostgreSQL server (initdb + pg_ctl) is on this machine for the tests, which
# start their own throwaway cluster on a loopback port (localstability.testing.start_postgres).
# Installs the Debian package when it is missing; prints one line either way.
set -euo pipefail

find_initdb() {
    command -v initdb 2>/dev/null && return 0
    ls /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -n 1
}

if [ -n "$(find_initdb)" ]; then
    echo "postgres: $("$(find_initdb)" --version)"
    exit 0
fi
if ! command -v apt-get >/dev/null; then
    echo "postgres: initdb not found and no apt-get to install it; install PostgreSQL >= 13" >&2
    exit 1
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "postgres: installing the Debian package (about 30 s)"
log="$(mktemp)"
if ! { $SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends postgresql; } >"$log" 2>&1; then
    cat "$log" >&2
    exit 1
fi
rm -f "$log"
echo "postgres: $("$(find_initdb)" --version)"
