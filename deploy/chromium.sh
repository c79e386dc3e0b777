#!/usr/bin/env bash
# Make sure Debian's Chromium is installed, for the browser tests (Playwright drives it:
# its own browser download cannot work offline).
#
#   deploy/chromium.sh ensure [--soft]
#
# --soft: when it cannot be installed (not root, no apt), say so and exit 0, so the browser
# tests are skipped with that reason; under CI (CI=true) it is always an error.
set -euo pipefail

say() { printf '[chromium] %s\n' "$*" >&2; }

if [[ -x /usr/bin/chromium ]]; then exit 0; fi
if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    say "installing Debian's chromium"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    exit 0
fi
say "chromium is missing, and installing it needs root on Debian (apt-get install chromium)"
if [[ ${2:-} == --soft && ${CI:-} != true ]]; then
    say "continuing without it: the browser tests will be skipped"
    exit 0
fi
exit 1
