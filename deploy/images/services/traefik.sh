#!/usr/bin/env bash
# nbpool-traefik CONFIG [traefik options...]: start Traefik with a static configuration file in
# which ${NBPOOL_...} references are replaced by the values of those environment variables.
#
# Traefik reads its static configuration from one source only (a file, or flags, or
# environment), so addresses that vary per deployment (compose's NBPOOL_PUBLISH) cannot be
# given as flags next to a file. The filled-in copy is written to $NBPOOL_TRAEFIK_RENDERED
# (default /tmp/traefik.yml). A reference to a variable that is not set is an error, not an
# empty string.
set -euo pipefail

[[ $# -ge 1 ]] || { echo "usage: nbpool-traefik CONFIG [traefik options...]" >&2; exit 2; }
src="$1"
shift
out="${NBPOOL_TRAEFIK_RENDERED:-/tmp/traefik.yml}"

python3 - "$src" "$out" <<'EOF'
import os
import re
import sys

src, out = sys.argv[1], sys.argv[2]
with open(src, encoding="utf-8") as f:
    text = f.read()
missing = sorted({name for name in re.findall(r"\$\{(NBPOOL_[A-Z0-9_]+)\}", text) if name not in os.environ})
if missing:
    sys.exit(f"nbpool-traefik: {src} refers to {', '.join(missing)}, which is not set")
with open(out, "w", encoding="utf-8") as f:
    f.write(re.sub(r"\$\{(NBPOOL_[A-Z0-9_]+)\}", lambda m: os.environ[m.group(1)], text))
EOF

exec traefik --configFile="$out" "$@"
