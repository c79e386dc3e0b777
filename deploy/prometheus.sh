#!/usr/bin/env bash
# Make sure Debian's Prometheus is installed, for the metrics test (it scrapes a running nbpool).
#
#   deploy/prometheus.sh ensure [--soft]
#
# Only the binary is wanted: the package's own service is not started (a policy-rc.d refuses it
# during the install), the test runs its own Prometheus with its own configuration.
# --soft: when it cannot be installed (not root, no apt), say so and exit 0, so the metrics test
# is skipped with that reason; under CI (CI=true) it is always an error.
set -euo pipefail

say() { printf '[prometheus] %s\n' "$*" >&2; }

if [[ -x /usr/bin/prometheus ]]; then exit 0; fi
if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    say "installing Debian's prometheus (its service not started)"
    policy=/usr/sbin/policy-rc.d
    made=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        made=1
    fi
    trap '[[ $made -eq 1 ]] && rm -f "$policy"' EXIT
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
    exit 0
fi
say "prometheus is missing, and installing it needs root on Debian (apt-get install prometheus)"
if [[ ${2:-} == --soft && ${CI:-} != true ]]; then
    say "continuing without it: the metrics test will be skipped"
    exit 0
fi
exit 1
