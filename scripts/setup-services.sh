#!/usr/bin/env bash
# Make sure the services the tests start for themselves are on this machine: a PostgreSQL
# server (initdb + pg_ctl), redis-server, and Debian's chromium at /usr/bin/chromium (which
# tests/test_page.py drives through Playwright's `executable_path`: no `playwright install`,
# no browser download). The tests run their own throwaway instances on loopback ports and stop
# them by PID (localstability.testing.start_postgres, start_redis); nothing is started here.
# Installs the Debian packages that are missing; one line each.
set -euo pipefail

find_initdb() {
    command -v initdb 2>/dev/null && return 0
    ls /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -n 1
}

missing=()
[ -n "$(find_initdb)" ] || missing+=(postgresql)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
[ -x /usr/bin/chromium ] || missing+=(chromium)

if [ "${#missing[@]}" -gt 0 ]; then
    if ! command -v apt-get >/dev/null; then
        echo "services: ${missing[*]} not found and no apt-get to install them" >&2
        exit 1
    fi
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    echo "services: installing the Debian packages ${missing[*]} (a minute or two)"
    log="$(mktemp)"
    install() {
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
    }
    # The package lists may be missing or stale on a fresh machine: update, then try again.
    if ! install >"$log" 2>&1; then
        if ! { $SUDO apt-get update -q && install; } >"$log" 2>&1; then
            cat "$log" >&2
            exit 1
        fi
    fi
    rm -f "$log"
fi
echo "postgres: $("$(find_initdb)" --version)"
echo "redis: $(redis-server --version | cut -d' ' -f1-3)"
echo "browser: $(/usr/bin/chromium --version 2>/dev/null || echo chromium)"
