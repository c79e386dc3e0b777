#!/usr/bin/env bash
# Default CMD of the notebook image: a Jupyter server (`jupyter server`, started by nbpool_sandbox_server) (JupyterLab is one of its extensions)
# on 0.0.0.0:8888, configured by the spawner through the environment:
#
#   NBPOOL_TOKEN     the sandbox's token. Unset or empty: Jupyter generates a random one and
#                    logs it, which is never "no authentication".
#   NBPOOL_BASE_URL  the URL prefix the proxy routes to this sandbox: / when the sandbox has an
#                    origin of its own (the default), /user/<id>/ with NBPOOL_ROUTING=path.
#   NBPOOL_SHARE_URL where JupyterLab's "Share a snapshot" command POSTs (an absolute http(s) URL,
#                    the gateway's snapshots endpoint for this session). It reaches the page as
#                    the page config option nbpoolShareUrl. Unset or empty: no such command.
#   NBPOOL_HOME_SOURCE  the folder whose files a new home starts with (default /opt/nbpool/home;
#                    a content profile's image sets /opt/nbpool/content).
#   NBPOOL_EMBED_ORIGINS  which other pages may use the server with its token (CORS, websockets,
#                    frame-ancestors): *, none or origins; read by the image's
#                    jupyter_server_config.py (nbpool_sandbox_config). Unset: *.
#   NBPOOL_UI        where the server's / goes: lab (JupyterLab, also when unset) or notebook
#                    (Jupyter Notebook 7's file list). Both are served either way.
#
# Extra arguments are passed on to `jupyter server`, after (so they override) these.
set -euo pipefail

case "${NBPOOL_UI:-lab}" in
    lab) default_url=/lab ;;
    notebook) default_url=/tree ;;
    *)
        echo "nbpool-start-notebook: NBPOOL_UI is lab or notebook, not $NBPOOL_UI" >&2
        exit 2
        ;;
esac
args=(
    --ServerApp.ip=0.0.0.0
    --ServerApp.port=8888
    # The spawner and router know the sandbox by this exact port: fail, never wander.
    --ServerApp.port_retries=0
    --ServerApp.open_browser=False
    --ServerApp.root_dir=/home/jovyan
    # Under `jupyter server` (not `jupyter lab`) "/" has no page of its own.
    --ServerApp.default_url="$default_url"
    # Behind the proxy: the client's address comes in X-Forwarded-For / X-Real-Ip.
    --ServerApp.trust_xheaders=True
    # A throwaway server makes no calls to the internet of its own.
    --LabApp.news_url=None
    --LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate
    --LabApp.extension_manager=readonly
    # Kernel websockets with TCP_NODELAY: without it each execute waits up to 40 ms for ACKs.
    --ServerApp.kernel_websocket_connection_class=nbpool_sandbox_ws.NoDelayKernelConnection
)
if [[ -n "${NBPOOL_BASE_URL:-}" ]]; then
    args+=("--ServerApp.base_url=${NBPOOL_BASE_URL}")
fi
# The home folder starts empty (a fresh tmpfs under the docker runtime): its first contents,
# the image's Welcome.ipynb or, in a content profile's image, NBPOOL_HOME_SOURCE (its files).
# cp -n: a home that already has them (another runtime, a restart) keeps its own.
home_source="${NBPOOL_HOME_SOURCE:-/opt/nbpool/home}"
if [[ -d $home_source ]]; then
    cp -rn "$home_source"/. "$HOME"/ 2>/dev/null || true
    cp -rn /etc/skel/. "$HOME"/ 2>/dev/null || true
fi
# The share endpoint as page config: JupyterLab merges labconfig/page_config.json from every
# Jupyter config folder, so a folder of its own, put first on JUPYTER_CONFIG_PATH, adds it to the
# image's page_config.json. The root filesystem is read-only: the folder is made in /tmp. (The
# visitor can edit it, as they can ~/.jupyter, which takes precedence anyway; it is read when a
# page is served, and holds no secret.)
if [[ -n "${NBPOOL_SHARE_URL:-}" ]]; then
    # Written into JSON as is, so nothing that would need escaping there: no quote, backslash,
    # space or control character.
    share_url_re='^https?://[^[:space:][:cntrl:]"\]+$'
    if [[ ! $NBPOOL_SHARE_URL =~ $share_url_re ]]; then
        echo "nbpool-start-notebook: NBPOOL_SHARE_URL is not an http(s) URL without spaces or" \
            "quotes; sharing is off: $NBPOOL_SHARE_URL" >&2
    elif ! config_dir="$(mktemp -d "${TMPDIR:-/tmp}/nbpool-jupyter-config.XXXXXX")"; then
        echo "nbpool-start-notebook: no writable temporary folder for the page config;" \
            "sharing is off" >&2
    else
        mkdir "$config_dir/labconfig"
        printf '{"nbpoolShareUrl": "%s"}\n' "$NBPOOL_SHARE_URL" \
            >"$config_dir/labconfig/page_config.json"
        export JUPYTER_CONFIG_PATH="$config_dir${JUPYTER_CONFIG_PATH:+:$JUPYTER_CONFIG_PATH}"
    fi
fi
# Hand the token over through Jupyter's own variable rather than the command line: the
# command line of every process is world-readable (ps, /proc/<pid>/cmdline), the environment
# only to the same user. Kernels inherit it; they belong to the token's holder anyway.
if [[ -n "${NBPOOL_TOKEN:-}" ]]; then
    export JUPYTER_TOKEN="$NBPOOL_TOKEN"
fi
unset NBPOOL_TOKEN

# `jupyter server`, without the imports it never uses (nbpool_sandbox_server: shared/sandbox_server.py).
exec python -m nbpool_sandbox_server "${args[@]}" "$@"
