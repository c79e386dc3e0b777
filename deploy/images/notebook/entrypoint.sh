#!/usr/bin/env bash
# ENTRYPOINT of the notebook image: run the command under tini when this script is PID 1.
#
# As PID 1, the Jupyter server would inherit every orphaned process its kernels leave
# behind and never reap them, and it would not get default signal handling. tini does both.
# If the container already has an init (docker run --init) or the base image was built
# without tini, the command runs directly.
set -euo pipefail

if [[ $$ -eq 1 ]] && command -v tini >/dev/null; then
    # -g: signals go to the whole process group, so kernels stop with the server.
    exec tini -g -- "$@"
fi
exec "$@"
