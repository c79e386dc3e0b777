#!/usr/bin/env bash
# Make sure programs on this machine resolve *.localhost names (the sandboxes' and the admin's
# origins under `nbpool up`: <id>.sb.localhost, admin.localhost) to loopback.
#
#   deploy/localhost-names.sh ensure [--soft]
#
# Browsers and curl resolve *.localhost by themselves; programs that use the C library's
# resolver (Python's httpx and websockets among them) do only with the myhostname NSS module,
# which Debian's libnss-myhostname installs and adds to /etc/nsswitch.conf. It answers ::1
# first, so nbpool up's Traefik listens on [::1] as well as on 127.0.0.1.
#
# --soft: when it cannot be installed (not root, no apt), say so and exit 0; the URLs nbpool
# hands out then open in browsers and curl but not in such programs. Under CI it is an error.
set -euo pipefail

say() { printf '[localhost-names] %s\n' "$*" >&2; }
resolves() { getent hosts nbpool-check.sb.localhost >/dev/null 2>&1; }

if resolves; then exit 0; fi
if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    say "installing Debian's libnss-myhostname, so that *.localhost resolves to loopback for every program"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libnss-myhostname >/dev/null
    # The package's postinst adds it to the hosts line; make sure, on a machine whose file was edited.
    if ! grep -qE '^hosts:.*\bmyhostname\b' /etc/nsswitch.conf; then
        sed -i -E 's/^(hosts:.*)$/\1 myhostname/' /etc/nsswitch.conf
    fi
    if resolves; then exit 0; fi
    say "libnss-myhostname is installed but *.localhost still does not resolve; see /etc/nsswitch.conf"
    exit 1
fi
say "*.localhost does not resolve for programs here, and fixing it needs root on Debian (apt-get install libnss-myhostname)"
if [[ ${2:-} == --soft && ${CI:-} != true ]]; then
    say "continuing: sandbox URLs open in browsers and curl, not in Python programs"
    exit 0
fi
exit 1
