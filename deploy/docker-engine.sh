#!/usr/bin/env bash
# Make sure a Docker engine answers on this machine.
#
#   deploy/docker-engine.sh ensure [--soft]   engine answers, or (root, Debian) install docker.io and start dockerd
#   deploy/docker-engine.sh start|stop|status  start/stop the dockerd this script started (pid in $PIDFILE)
#
# --soft: when no engine can be had (not root, no apt), say so and exit 0, so the Docker tests
# are skipped with that reason; under CI (CI=true) it is always an error, so they fail instead.
set -euo pipefail

PIDFILE=${NBPOOL_DOCKERD_PIDFILE:-/run/nbpool-dockerd.pid}
LOGFILE=${NBPOOL_DOCKERD_LOG:-/var/log/nbpool-dockerd.log}
DOCKER=${DOCKER:-/usr/bin/docker}
[[ -x $DOCKER ]] || DOCKER=$(command -v docker || echo /usr/bin/docker)

say() { printf '[docker-engine] %s\n' "$*" >&2; }

answers() { "$DOCKER" info >/dev/null 2>&1; }

ours() {
    [[ -f $PIDFILE ]] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null
}

start() {
    if answers; then say "engine already answers"; return 0; fi
    command -v dockerd >/dev/null || { say "dockerd is not installed"; return 1; }
    say "starting dockerd (log: $LOGFILE)"
    # Its own session: it outlives this shell, and nothing else is signalled with it.
    setsid nohup dockerd >>"$LOGFILE" 2>&1 < /dev/null &
    echo $! >"$PIDFILE"
    for _ in $(seq 1 120); do
        if answers; then say "engine up (pid $(cat "$PIDFILE"))"; return 0; fi
        kill -0 "$(cat "$PIDFILE")" 2>/dev/null || { say "dockerd exited; last lines:"; tail -n 20 "$LOGFILE" >&2; return 1; }
        sleep 0.5
    done
    say "dockerd did not answer within 60 s"; return 1
}

stop() {
    if ! ours; then say "no dockerd started by this script is running"; return 1; fi
    local pid; pid=$(cat "$PIDFILE")
    kill "$pid"
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || { rm -f "$PIDFILE"; say "dockerd stopped"; return 0; }; sleep 0.5; done
    say "dockerd did not stop within 30 s"; return 1
}

install() {
    # docker.io for the engine; debootstrap because the notebook image's base is made locally;
    # docker-compose to check compose.yaml.
    local missing=()
    command -v dockerd >/dev/null || missing+=(docker.io)
    command -v debootstrap >/dev/null || missing+=(debootstrap)
    command -v docker-compose >/dev/null || missing+=(docker-compose)
    [[ ${#missing[@]} -eq 0 ]] && return 0
    if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null; then
        say "missing ${missing[*]}, and installing needs root on Debian (apt-get install ${missing[*]})"
        return 1
    fi
    say "installing ${missing[*]} from Debian's packages"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

ensure() {
    if answers; then
        [[ $(id -u) -ne 0 ]] || install
        return 0
    fi
    if [[ $(id -u) -ne 0 ]]; then
        say "no Docker engine answers, and starting one needs root"
        return 1
    fi
    install && start
}

case "${1:-}" in
    ensure)
        if ensure; then exit 0; fi
        if [[ ${2:-} == --soft && ${CI:-} != true ]]; then
            say "continuing without Docker: the Docker tests will be skipped"
            exit 0
        fi
        exit 1 ;;
    start) start ;;
    stop) stop ;;
    status) if answers; then echo "answers"; else echo "down"; exit 1; fi ;;
    *) echo "usage: $0 ensure [--soft] | start | stop | status" >&2; exit 2 ;;
esac
