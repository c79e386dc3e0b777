#!/usr/bin/env bash
# Make sure a Docker engine answers on this machine.
#
#   deploy/docker-engine.sh ensure [--soft]   engine answers, or (root, Debian) install docker.io and start dockerd;
#                                              as root, also gVisor's runsc as the engine's runtime "runsc"
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

has_runsc() { "$DOCKER" info --format '{{json .Runtimes}}' 2>/dev/null | grep -q '"runsc"'; }

# gVisor for profiles with "runtime": "runsc": Debian's runsc, registered in the daemon's
# configuration with the arguments it needs here (ptrace platform; --network=host means the
# container's own network namespace, which Docker sets up: without it runsc refuses to run
# with networking), then the engine reloads its configuration.
register_runsc() {
    has_runsc && return 0
    if ! command -v runsc >/dev/null; then
        say "installing Debian's runsc (gVisor)"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq runsc >/dev/null || return 1
    fi
    local conf=/etc/docker/daemon.json
    python3 - "$conf" "$(command -v runsc)" <<'PY' || return 1
import json, os, sys
path, binary = sys.argv[1], sys.argv[2]
conf = json.load(open(path)) if os.path.exists(path) and os.path.getsize(path) else {}
conf.setdefault("runtimes", {})["runsc"] = {"path": binary, "runtimeArgs": ["--platform=ptrace", "--network=host"]}
os.makedirs(os.path.dirname(path), exist_ok=True)
with open(path + ".tmp", "w") as f:
    json.dump(conf, f, indent=2)
os.replace(path + ".tmp", path)
PY
    if ours; then
        kill -HUP "$(cat "$PIDFILE")"
    elif command -v systemctl >/dev/null && systemctl is-active --quiet docker; then
        systemctl reload docker
    else
        say "registered runsc in $conf; reload the Docker engine to use it"
        return 1
    fi
    for _ in $(seq 1 40); do has_runsc && { say "runtime runsc (gVisor) registered"; return 0; }; sleep 0.25; done
    say "the engine did not pick up runsc from $conf"; return 1
}

ensure() {
    if answers; then
        [[ $(id -u) -ne 0 ]] || { install && register_runsc; }
        return
    fi
    if [[ $(id -u) -ne 0 ]]; then
        say "no Docker engine answers, and starting one needs root"
        return 1
    fi
    install && start && register_runsc
}

case "${1:-}" in
    ensure)
        if ensure; then exit 0; fi
        if [[ ${2:-} == --soft && ${CI:-} != true ]]; then
            say "continuing without Docker: nbpool up runs sandboxes as plain processes, the Docker tests are skipped"
            exit 0
        fi
        exit 1 ;;
    start) start ;;
    stop) stop ;;
    status) if answers; then echo "answers"; else echo "down"; exit 1; fi ;;
    *) echo "usage: $0 ensure [--soft] | start | stop | status" >&2; exit 2 ;;
esac
