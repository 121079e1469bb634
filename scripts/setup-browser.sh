#!/usr/bin/env bash
# Make sure the browser that tests/test_page.py drives is on this machine: Debian's chromium
# at /usr/bin/chromium. Playwright (a dev dependency) drives it through `executable_path`;
# nothing is downloaded by Playwright itself (no `playwright install`). Installs the Debian
# package when it is missing, with one line of output; quiet otherwise.
set -euo pipefail

BROWSER=/usr/bin/chromium
[ -x "$BROWSER" ] && exit 0

if ! command -v apt-get >/dev/null; then
    echo "browser: $BROWSER not found and no apt-get to install chromium" >&2
    exit 1
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "browser: installing the Debian package chromium (a minute or two)"
log="$(mktemp)"
install() {
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends chromium
}
# The package lists may be missing or stale on a fresh machine: update, then try again.
if ! install >"$log" 2>&1; then
    if ! { $SUDO apt-get update -q && install; } >"$log" 2>&1; then
        cat "$log" >&2
        exit 1
    fi
fi
rm -f "$log"
