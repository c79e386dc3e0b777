#!/usr/bin/env bash
# ENTRYPOINT of the services image: run the command under tini when this script is PID 1.
#
# As PID 1 a process gets no default signal handling and inherits every orphan; tini forwards
# SIGTERM (docker stop, compose down) to the service, which then drains its bus connection and
# exits, and reaps what is left. With `init: true` or without tini in the base, the command runs
# directly.
set -euo pipefail

if [[ $$ -eq 1 ]] && command -v tini >/dev/null; then
    exec tini -- "$@"
fi
exec "$@"
