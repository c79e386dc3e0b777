#!/usr/bin/env bash
# Build the nbpool services image (gateway, spawner, router, culler, nats-server and Traefik in
# one image, for compose.yaml), without any image registry.
#
#   deploy/images/build-services.sh              build if needed; print the image tag on stdout
#   deploy/images/build-services.sh --print-tag  print the tag a build would produce; build nothing
#
# The tag is nbpool/services:<12 hex>, a sha256 over every input: the files of the build
# context (Dockerfile, requirements.txt, scripts), nbpool's sources as they go into its wheel
# (pyproject.toml and every file under shared/ and services/ but __pycache__), and the id of
# the base image. Equal inputs give an equal tag, so an existing tag is never rebuilt; any
# change gives a new one. nbpool/services:latest is moved to the result. Progress goes to
# stderr, so `tag=$(build-services.sh)` works.
#
# README.md is not an input: the wheel gets a one-line stub instead, so documentation edits do
# not rebuild the image. services/requirements.txt (the pinned, hashed dependencies) is
# re-locked first by services/lock.sh when constraints.txt or pyproject.toml's dependency
# lists changed since it was written.
#
# Env:
#   NBPOOL_HOST_PYTHON  python used for `pip wheel` and `pip download` (default: python3)
#   DOCKER              docker client (default: /usr/bin/docker if present)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=SCRIPTDIR/lib.sh
source "$here/lib.sh"
repo="$(cd "$here/../.." && pwd)"
services_repo="nbpool/services"
# Debian packages on top of the base: iptables, for a sandbox host's firewall rules (the
# spawner adds them under compose's deploy/compose/host.yaml, with NET_ADMIN). Fetched by the
# base image's own apt (so exactly what the base lacks) into the build context, and installed
# there without network. The list is an input of the tag.
debian_packages=(iptables)

print_tag=0
case "${1:-}" in
    "") ;;
    --print-tag) print_tag=1 ;;
    -h | --help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
    *) die "unknown argument '$1' (usage: build-services.sh [--print-tag])" ;;
esac

if ((print_tag)); then
    image_exists "$NBPOOL_BASE_IMAGE" ||
        die "$NBPOOL_BASE_IMAGE does not exist yet, so the tag is not known; run build-services.sh once"
else
    # Concurrent runs build once; the others wait and then find the tag.
    exec 9>"${TMPDIR:-/tmp}/nbpool-services-build.lock"
    flock 9
    "$here/base/make-base.sh"
fi
base_id="$("$DOCKER" image inspect -f '{{.Id}}' "$NBPOOL_BASE_IMAGE")"

lock="$here/services/requirements.txt"
want="$("$here/services/lock.sh" --inputs)"
have="$(sed -n 's/^# inputs: //p' "$lock" 2>/dev/null || true)"
if [[ $want != "$have" ]]; then
    ((print_tag)) &&
        die "services/requirements.txt is out of date (constraints.txt or pyproject.toml's dependencies changed); run build-services.sh or services/lock.sh"
    log "constraints.txt or pyproject.toml's dependencies changed since services/requirements.txt was written: re-locking"
    "$here/services/lock.sh"
fi

tmp="$(mktemp -d "${TMPDIR:-/tmp}/nbpool-services-build.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
ctx="$tmp/context"
src="$tmp/src"
mkdir "$ctx" "$src"
# Fixed modes: the hash, and the files' modes in the image, must not depend on the umask or
# on how the repository was checked out.
install -m 0644 "$here/services/Dockerfile" "$lock" "$ctx/"
install -m 0755 "$here/services/entrypoint.sh" "$ctx/entrypoint.sh"
install -m 0755 "$here/services/traefik.sh" "$ctx/traefik.sh"
install -m 0755 "$here/services/healthcheck.py" "$ctx/healthcheck.py"

# nbpool's sources, copied: the wheel is built from exactly the files that are hashed, and the
# build (setuptools' build/ and *.egg-info) leaves nothing in the work tree.
(cd "$repo" && find pyproject.toml shared services -type f ! -path '*/__pycache__/*' ! -name '*.py[co]' -print0) |
    tar -C "$repo" --null -T - -cf - | tar -C "$src" -xf -
printf '# nbpool\n\nInstant, temporary Jupyter servers from a warm pool. See the repository README.\n' >"$src/README.md"

# wheels/, debs/ and project/ are left out of the hash on purpose: requirements.txt pins each wheel
# by its sha256 (the Dockerfile installs with --require-hashes), and the nbpool wheel is made
# from the hashed sources; so --print-tag needs no download and no wheel build.
inputs_sha="$( { tree_digest "$ctx"; tree_digest "$src"; echo "base-image $base_id";
                  echo "debian-packages ${debian_packages[*]}"; } | sha256sum | cut -c1-64)"
tag="$services_repo:${inputs_sha:0:12}"

if ((print_tag)); then
    echo "$tag"
    exit 0
fi

if image_exists "$tag"; then
    log "$tag exists; nothing to build"
else
    started=$SECONDS
    check_base_matches_target
    log "building the nbpool wheel from the sources (pip wheel --no-deps)"
    host_pip wheel --quiet --no-deps --wheel-dir "$ctx/project" "$src"
    log "project: $(cd "$ctx/project" && echo *.whl)"

    download_wheels "$ctx"
    download_debs "$ctx/debs" "${debian_packages[@]}"
    build_image "$tag" "$ctx" "nbpool services (gateway, spawner, router, culler, NATS, Traefik)" "$inputs_sha" "$base_id"
    log "built $tag in $((SECONDS - started))s"
fi

tag_latest "$tag" "$services_repo"
