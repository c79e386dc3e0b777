#!/usr/bin/env bash
# Fetch thebe, pinned, from the npm registry, for the embedding tests and the benchmark: a page
# on another origin runs code on nbpool with it, as an author's page would. Its package carries
# a prebuilt bundle (lib/index.js and its chunks), so nothing is installed or built.
#
#   deploy/thebe.sh ensure [--soft]   fetch it once into the cache
#   deploy/thebe.sh path              fetch it if need be, print the folder of the bundle
#
# The cache is ${NBPOOL_NPM_CACHE:-${XDG_CACHE_HOME:-~/.cache}/nbpool}/thebe-<version>. npm
# checks the tarball against the registry's integrity hash. --soft: when it cannot be fetched,
# say so and exit 0 (the tests that need it then fail under CI, and are skipped elsewhere).
set -euo pipefail

THEBE_VERSION=0.9.3

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
say() { printf '[thebe] %s\n' "$*" >&2; }

cache_root="${NBPOOL_NPM_CACHE:-${XDG_CACHE_HOME:-${HOME:?set NBPOOL_NPM_CACHE or HOME}/.cache}/nbpool}"
dest="$cache_root/thebe-$THEBE_VERSION"

fetch() {
    [[ -f $dest/lib/index.js ]] && return 0
    # shellcheck source=node.sh
    source "$here/node.sh"
    nbpool_ensure_node "${NBPOOL_HOST_PYTHON:-$repo/.venv/bin/python}" "$cache_root" || return 1
    mkdir -p "$cache_root"
    local tmp
    tmp="$(mktemp -d "$cache_root/.thebe.XXXXXX")"
    # shellcheck disable=SC2064 # the folder is known now
    trap "rm -rf '$tmp'" RETURN
    say "npm pack thebe@$THEBE_VERSION into $dest"
    (cd "$tmp" && npm pack "thebe@$THEBE_VERSION" --silent --ignore-scripts >/dev/null) || return 1
    tar -xzf "$tmp/thebe-$THEBE_VERSION.tgz" -C "$tmp" || return 1
    [[ -f $tmp/package/lib/index.js ]] || { say "thebe@$THEBE_VERSION has no lib/index.js"; return 1; }
    # Renamed into place: an interrupted fetch is never taken for a finished one.
    mv -T "$tmp/package" "$dest" 2>/dev/null || [[ -f $dest/lib/index.js ]]
}

case "${1:-}" in
ensure)
    if ! fetch; then
        say "could not fetch thebe@$THEBE_VERSION from npm"
        [[ ${2:-} == --soft && ${CI:-} != true ]] && { say "continuing: the thebe tests will be skipped"; exit 0; }
        exit 1
    fi
    ;;
path)
    fetch
    echo "$dest/lib"
    ;;
*)
    echo "usage: deploy/thebe.sh ensure [--soft] | path" >&2
    exit 2
    ;;
esac
