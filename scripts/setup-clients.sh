#!/usr/bin/env bash
# Install the real third-party clients that tests/clients drives:
#   * PyPI `stabilityai` 1.0.5 in its own virtualenv, .venv-stabilityai/ at the repo root
#     (it pins aiohttp==3.8.4 and pydantic[email]==1.10.2, which clash with the server's deps);
#   * npm `modelfusion` (Stability v1 client), and the TypeScript MCP SDK with Ajv for the
#     MCP tests (exact versions pinned in tests/clients/js/package.json + lock).
# Idempotent: each step is skipped when its result is already in place.
# Prints one line per step; tool output is shown only when a step fails.
#
# Environment:
#   PYTHON   interpreter used to create the venv (default: python3; must be >= 3.11 and,
#            because aiohttp 3.8.4 ships no wheels past cp311, in practice 3.11)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv-stabilityai"
JS_DIR="$ROOT/tests/clients/js"
PYTHON="${PYTHON:-python3}"
STABILITYAI_VERSION="1.0.5"
# stabilityai pins aiohttp and pydantic itself; the transitive dependencies are pinned here to
# the set this was verified with, so a future yarl/multidict release cannot break aiohttp 3.8.4.
PY_PINS=(
    "stabilityai==$STABILITYAI_VERSION"
    "aiohttp==3.8.4"
    "pydantic[email]==1.10.2"
    "aiosignal==1.4.0"
    "async-timeout==4.0.3"
    "attrs==26.1.0"
    "charset-normalizer==3.5.3"
    "dnspython==2.9.2"
    "email-validator==2.4.0"
    "frozenlist==1.8.0"
    "idna==3.20"
    "multidict==6.9.1"
    "propcache==0.5.4"
    "typing_extensions==4.16.0"
    "yarl==1.25.1"
)

say() { printf 'setup-clients: %s\n' "$*"; }
die() { printf 'setup-clients: ERROR: %s\n' "$*" >&2; exit 1; }

LOG="$(mktemp "${TMPDIR:-/tmp}/setup-clients.XXXXXX.log")"
trap 'rm -f "$LOG"' EXIT

# Run a command with its output captured; on failure show the tail of it and stop.
quietly() {
    if ! "$@" >"$LOG" 2>&1; then
        tail -n 40 "$LOG" >&2
        die "command failed: $*"
    fi
}

stabilityai_ok() {
    [ -x "$VENV/bin/python" ] || return 1
    "$VENV/bin/python" - "$STABILITYAI_VERSION" >/dev/null 2>&1 <<'PY'
import sys
from importlib.metadata import version
import stabilityai.client  # noqa: F401  (also imports aiohttp, pydantic, pkg_resources)
assert version("stabilityai") == sys.argv[1], version("stabilityai")
PY
}

# ---- 1. stabilityai (PyPI) in .venv-stabilityai ------------------------------------------
if stabilityai_ok; then
    say "stabilityai $STABILITYAI_VERSION already installed in .venv-stabilityai"
else
    command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found (set PYTHON=...)"
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
        || die "$PYTHON is $("$PYTHON" -V 2>&1); stabilityai needs Python >= 3.11"
    if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c 'import pip' >/dev/null 2>&1; then
        say "installing stabilityai==$STABILITYAI_VERSION into existing .venv-stabilityai"
    else
        say "creating .venv-stabilityai and installing stabilityai==$STABILITYAI_VERSION"
        quietly "$PYTHON" -m venv --clear "$VENV"
    fi
    quietly "$VENV/bin/python" -m pip install --disable-pip-version-check --no-input \
        "${PY_PINS[@]}"
    stabilityai_ok || die "stabilityai still not importable from $VENV/bin/python"
fi

# ---- 2. npm clients (modelfusion, @modelcontextprotocol/sdk, ajv) in tests/clients/js --------
command -v node >/dev/null 2>&1 || die "node not found"
command -v npm >/dev/null 2>&1 || die "npm not found"
[ -f "$JS_DIR/package.json" ] || die "missing $JS_DIR/package.json"

# `npm ls --all` exits non-zero for missing, invalid or extraneous packages.
if [ -d "$JS_DIR/node_modules" ] \
    && (cd "$JS_DIR" && npm ls --all >/dev/null 2>&1); then
    say "tests/clients/js/node_modules already complete"
elif [ -f "$JS_DIR/package-lock.json" ]; then
    say "running npm ci in tests/clients/js"
    (cd "$JS_DIR" && quietly npm ci --no-audit --no-fund --loglevel=error)
else
    say "running npm install in tests/clients/js (no package-lock.json)"
    (cd "$JS_DIR" && quietly npm install --no-audit --no-fund --loglevel=error)
fi
