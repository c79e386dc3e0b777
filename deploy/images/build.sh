#!/usr/bin/env bash
# Build the nbpool notebook sandbox image, without any image registry.
#
#   deploy/images/build.sh              build if needed; print the image tag on stdout
#   deploy/images/build.sh --print-tag  print the tag a build would produce; build nothing
#
# The tag is nbpool/notebook:<12 hex>, a sha256 over every input: the files of the build
# context (Dockerfile, requirements.txt, scripts, Welcome.ipynb, extra CA), the sources of the
# JupyterLab extension (notebook/share-extension/ and notebook/build-extension.sh) and the id of
# the base image. Equal inputs give an equal tag, so an existing tag is never rebuilt, and
# any change gives a new tag that sandboxes can be rolled over to. nbpool/notebook:latest
# is moved to the result. Progress goes to stderr, so `tag=$(build.sh)` works.
#
# Env:
#   NBPOOL_WELCOME_NOTEBOOK  notebook placed in the user's home
#                            (default: <repo>/shared/assets/Welcome.ipynb)
#   NBPOOL_BUILD_CA_BUNDLE   PEM file of extra CA certificates to trust, in the build and in
#                            the image (for networks with a TLS-intercepting proxy)
#   NBPOOL_HOST_PYTHON       python used for `pip download` (default: python3)
#   NBPOOL_LAB_PYTHON        python with jupyter_builder, which builds the JupyterLab extension
#                            (default: <repo>/.venv/bin/python); the build also needs Node.js
#                            20.19+ and npm (notebook/build-extension.sh says more)
#   DOCKER                   docker client (default: /usr/bin/docker if present)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=SCRIPTDIR/lib.sh
source "$here/lib.sh"
repo="$(cd "$here/../.." && pwd)"

print_tag=0
case "${1:-}" in
    "") ;;
    --print-tag) print_tag=1 ;;
    -h | --help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
    *) die "unknown argument '$1' (usage: build.sh [--print-tag])" ;;
esac

welcome="${NBPOOL_WELCOME_NOTEBOOK:-$repo/shared/assets/Welcome.ipynb}"
[[ -f $welcome ]] || die "welcome notebook not found: $welcome (set NBPOOL_WELCOME_NOTEBOOK)"
ca_bundle="${NBPOOL_BUILD_CA_BUNDLE:-}"
if [[ -n $ca_bundle ]]; then
    [[ -r $ca_bundle ]] || die "NBPOOL_BUILD_CA_BUNDLE is not a readable file: $ca_bundle"
    # Checked here too (the Dockerfile checks again) to fail before downloading anything.
    grep -q -- '-----BEGIN CERTIFICATE-----' "$ca_bundle" ||
        die "NBPOOL_BUILD_CA_BUNDLE must be PEM (-----BEGIN CERTIFICATE-----): $ca_bundle"
fi

if ((print_tag)); then
    # The tag depends on the base image id, which exists only once the base is built.
    image_exists "$NBPOOL_BASE_IMAGE" ||
        die "$NBPOOL_BASE_IMAGE does not exist yet, so the tag is not known; run build.sh once"
else
    "$here/base/make-base.sh"
fi
base_id="$("$DOCKER" image inspect -f '{{.Id}}' "$NBPOOL_BASE_IMAGE")"

work="$(mktemp -d "${TMPDIR:-/tmp}/nbpool-notebook-context.XXXXXX")"
trap 'rm -rf "$work"' EXIT
ctx="$work/context"
mkdir "$ctx"
# Fixed modes: the hash, and the files' modes in the image, must not depend on the umask
# or on how the repository was checked out.
install -m 0644 "$here/notebook/Dockerfile" "$here/notebook/requirements.txt" "$ctx/"
install -m 0755 "$here/notebook/entrypoint.sh" "$here/notebook/start-notebook.sh" "$ctx/"
install -m 0644 "$welcome" "$ctx/Welcome.ipynb"
install -m 0644 "$here/notebook/page_config.json" "$ctx/page_config.json"
install -m 0644 "$repo/shared/sandbox_ws.py" "$ctx/nbpool_sandbox_ws.py"
install -m 0644 "$repo/shared/sandbox_config.py" "$ctx/nbpool_sandbox_config.py"
install -m 0644 "$repo/shared/sandbox_server.py" "$ctx/nbpool_sandbox_server.py"
install -m 0644 "$here/notebook/jupyter_server_config.py" "$ctx/jupyter_server_config.py"
if [[ -n $ca_bundle ]]; then
    install -m 0644 "$ca_bundle" "$ctx/extra-ca.pem"
else
    install -m 0644 /dev/null "$ctx/extra-ca.pem"   # the Dockerfile always COPYs it
fi

# The extension's sources, copied with fixed modes like the context's files. Its build
# (share-extension/ in the context, made below) is left out of the hash, so that --print-tag
# needs no Node.js; the sources and build-extension.sh determine it, up to the versions npm
# picks for the build tools' own dependencies.
ext="$work/share-extension-sources"
(cd "$here/notebook/share-extension" &&
    find . -type f ! -path './node_modules/*' ! -path './labextension/*' -print0 |
    xargs -0 -I{} install -D -m 0644 {} "$ext/{}")
install -m 0755 "$here/notebook/build-extension.sh" "$ext/build-extension.sh"

# wheels/ is left out of the hash on purpose: requirements.txt pins each wheel by its
# sha256 and the Dockerfile installs with --require-hashes, so the wheels are fully
# determined by a hashed input, and --print-tag needs no download.
inputs_sha="$( {
    tree_digest "$ctx"
    echo "share-extension $(tree_digest "$ext")"
    echo "base-image $base_id"
} | sha256sum | cut -c1-64)"
tag="$NBPOOL_NOTEBOOK_REPO:${inputs_sha:0:12}"

if ((print_tag)); then
    echo "$tag"
    exit 0
fi

# Concurrent runs (several spawners starting on one host) build once; the others wait
# and then find the tag.
exec 9>"${TMPDIR:-/tmp}/nbpool-notebook-build.lock"
flock 9

if image_exists "$tag"; then
    log "$tag exists; nothing to build"
else
    started=$SECONDS
    check_base_matches_target
    "$here/notebook/build-extension.sh" "$ctx/share-extension"
    download_wheels "$ctx"
    build_image "$tag" "$ctx" "nbpool notebook sandbox" "$inputs_sha" "$base_id"
    log "built $tag in $((SECONDS - started))s"
fi

tag_latest "$tag" "$NBPOOL_NOTEBOOK_REPO"
