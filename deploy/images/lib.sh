# shellcheck shell=bash disable=SC2034
# Helpers shared by the image scripts. Sourced, never executed (hence SC2034: the
# variables below are used by the scripts that source this file).

# The notebook image is built for this Debian release. Its python3 and libc decide which
# wheels fit, so the three values change together (bookworm: CPython 3.11.2, glibc 2.36;
# a stable release keeps these versions). The patch level matters: some releases require
# e.g. Python >=3.11.5 and must not be picked for 3.11.2. build.sh checks the base agrees.
NBPOOL_DEBIAN_SUITE=bookworm
NBPOOL_TARGET_PY=3.11.2
NBPOOL_TARGET_GLIBC=2.36

NBPOOL_BASE_IMAGE="nbpool/debian-base:${NBPOOL_DEBIAN_SUITE}"
NBPOOL_NOTEBOOK_REPO="nbpool/notebook"

log() { printf '[%s] %s\n' "${0##*/}" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# Some machines carry a second, unrelated `docker` client earlier on PATH (for example
# /usr/local/bin/docker); the distribution's client matches the distribution's engine.
# Override with DOCKER=/path/to/docker.
if [[ -z "${DOCKER:-}" ]]; then
    if [[ -x /usr/bin/docker ]]; then
        DOCKER=/usr/bin/docker
    else
        DOCKER="$(command -v docker)" || die "no docker client found; set DOCKER=/path/to/docker"
    fi
fi

image_exists() { "$DOCKER" image inspect "$1" >/dev/null 2>&1; }

# pip flags that select wheels for the image rather than for the host, so the download
# works the same from any host (another distribution, another Python). Only binary wheels:
# the image has no compiler, and neither should it need the host's.
target_pip_platform_flags() {
    local arch minor glibc_minor py_major_minor
    arch="$(uname -m)"            # debootstrap builds the base for the host's architecture
    glibc_minor="${NBPOOL_TARGET_GLIBC#2.}"
    py_major_minor="${NBPOOL_TARGET_PY%.*}"
    printf '%s\n' --only-binary=:all: --implementation cp \
        --python-version "$NBPOOL_TARGET_PY" --abi "cp${py_major_minor/./}"
    # pip only expands the legacy manylinux2014/2010 aliases to older tags, so each
    # manylinux_2_N tag the target libc satisfies is listed explicitly.
    printf '%s\n' --platform "manylinux2014_${arch}"
    for ((minor = 17; minor <= glibc_minor; minor++)); do
        printf '%s\n' --platform "manylinux_2_${minor}_${arch}"
    done
}

# Run the host's pip for downloads. The host's pip configuration stays in force because
# it is how this machine reaches a package index (index URL, proxy, CA); only its
# constraint files are switched off, since an unrelated machine-wide cap must not steer
# what goes into the image. The requirements are fully pinned and hashed anyway.
# (An empty PIP_CONSTRAINT would not do: pip ignores empty settings. An empty file
# replaces the configured list instead.)
# Some hosts list extra local indexes that lack most projects; pip then warns once per
# package ("Location ... is ignored"), burying real messages. Only that line is dropped.
host_pip() {
    PIP_CONSTRAINT=/dev/null PIP_DISABLE_PIP_VERSION_CHECK=1 "${NBPOOL_HOST_PYTHON:-python3}" -m pip "$@" \
        2> >(grep -v "^WARNING: Location '.*' is ignored: it is neither a file nor a directory" >&2)
}

# The sha256 of a folder's files (names, modes and contents), for image tags.
tree_digest() {
    (cd "$1" && {
        find . -type f -print0 | LC_ALL=C sort -z | xargs -0 stat -c '%a %n'
        find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum
    }) | sha256sum | cut -c1-64
}

# The wheels are chosen for the Python, libc and CPU named above; a base that differs would
# fail late and obscurely inside pip, so say it plainly now.
check_base_matches_target() {
    local expected actual
    expected="$NBPOOL_TARGET_PY $NBPOOL_TARGET_GLIBC $(uname -m)"
    actual="$("$DOCKER" run --rm --network=none --entrypoint /usr/bin/python3 "$NBPOOL_BASE_IMAGE" \
        -c 'import platform as p; print(p.python_version(), p.libc_ver()[1], p.machine())')"
    [[ $actual == "$expected" ]] ||
        die "$NBPOOL_BASE_IMAGE has Python/glibc/arch '$actual', lib.sh targets '$expected'"
}

# download_wheels CONTEXT: the wheels pinned (and hashed) by CONTEXT/requirements.txt, for the
# image's platform, into CONTEXT/wheels.
download_wheels() {
    local ctx=$1 platform_flags
    log "downloading wheels on the host (pinned and hashed by requirements.txt)"
    mkdir "$ctx/wheels"
    mapfile -t platform_flags < <(target_pip_platform_flags)
    host_pip download --quiet --no-deps --require-hashes --dest "$ctx/wheels" \
        "${platform_flags[@]}" -r "$ctx/requirements.txt"
    log "wheels: $(find "$ctx/wheels" -name '*.whl' | wc -l) files, $(du -sh "$ctx/wheels" | cut -f1)"
}

# download_debs DIR PACKAGE...: the .deb files that installing PACKAGE... on the base image
# takes (the packages and whatever of their dependencies the base lacks), fetched by the base's
# own apt from the mirror it was made from (the host's), into DIR; for `dpkg -i` in a build
# without network.
download_debs() {
    local dir=$1
    shift
    mkdir -p "$dir"
    log "fetching Debian packages for the image: $*"
    "$DOCKER" run --rm --network=host --user 0 -v "$dir:/out" "$NBPOOL_BASE_IMAGE" sh -ec '
        apt-get update -qq
        mkdir -p /out/cache/partial
        apt-get install -qq --yes --no-install-recommends --download-only -o Dir::Cache::archives=/out/cache "$@" >/dev/null
        mv /out/cache/*.deb /out/
        rm -rf /out/cache' sh "$@" >&2
    log "debs: $(cd "$dir" && echo *.deb)"
}

# build_image TAG CONTEXT TITLE INPUTS_SHA BASE_ID [FROM]: docker build with no network inside,
# on FROM (the Dockerfile's BASE_IMAGE; default the Debian base).
build_image() {
    local tag=$1 ctx=$2 title=$3 inputs_sha=$4 base_id=$5 from=${6:-$NBPOOL_BASE_IMAGE}
    log "building $tag on $from (no network inside the build)"
    # --force-rm: a failed step must not leave its stopped container behind.
    "$DOCKER" build --network=none --force-rm \
        --build-arg "BASE_IMAGE=$from" \
        --label "org.opencontainers.image.title=$title" \
        --label "nbpool.image.inputs-sha256=$inputs_sha" \
        --label "nbpool.image.base-id=$base_id" \
        --tag "$tag" "$ctx" >&2
}

# tag_latest TAG REPO: point REPO:latest at TAG and print TAG (the scripts' only stdout).
tag_latest() {
    "$DOCKER" tag "$1" "$2:latest"
    log "$2:latest -> $1 ($("$DOCKER" image inspect -f '{{.Size}}' "$1") bytes)"
    echo "$1"
}

# hashed_pins WHEEL_DIR: one "name==version \\ --hash=sha256:..." entry per wheel, sorted, for a
# requirements file that pip installs with --require-hashes. Wheel file names are
# "<name>-<version>-<tags>.whl" with '-' escaped in name and version, so the first two fields are exact.
hashed_pins() {
    local whl f name rest version
    for whl in "$1"/*.whl; do
        f="${whl##*/}"
        name="${f%%-*}"; rest="${f#*-}"; version="${rest%%-*}"
        printf '%s==%s %s\n' "$name" "$version" "$(sha256sum "$whl" | cut -d' ' -f1)"
    done | sort -f | while read -r pin digest; do
        printf '%s \\\n    --hash=sha256:%s\n' "$pin" "$digest"
    done
}
