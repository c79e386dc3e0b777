#!/usr/bin/env bash
# Build a content profile's image: a folder's (or a git commit's) notebooks, data and packages
# on top of the notebook image, without any image registry and with no network in the build.
#
#   deploy/images/build-profile.sh NAME CONTENT [START]
#
# NAME     the profile (lower case letters, digits, - and _); the image is nbpool/profile-NAME
# CONTENT  a folder, or a local git repository and a commit as PATH@REF (a branch, tag or
#          commit id; the commit's files, not the working tree's)
# START    the notebook, relative to CONTENT, that opens first and whose kernel is pre-started
#
# Two images, each tagged by a sha256 over its inputs, so equal inputs build nothing:
#   nbpool/profile-NAME-packages:<12 hex>  the base + requirements.txt (wheels downloaded on the
#       host for the image's Python, pinned by sha256, installed offline) + apt.txt (Debian
#       packages fetched on the host by the base's own apt). Only when CONTENT has either file.
#   nbpool/profile-NAME:<12 hex>  the packages image + CONTENT's files (one COPY), which every
#       sandbox's home starts with instead of the image's Welcome.ipynb.
# A change of content alone rebuilds the second only; a change of requirements.txt or apt.txt
# both. nbpool/profile-NAME:latest is moved to the result only when everything built, so a
# failed build leaves the previous image serving. The tag goes to stdout, progress to stderr.
#
# CONTENT's rules (checked before anything is built, each failure naming the file or package):
#   - at most NBPOOL_CONTENT_MAX_MB megabytes in all (default 200); .git, .ipynb_checkpoints
#     and __pycache__ folders are left out
#   - requirements.txt: one requirement specifier per line (name, extras, versions, markers),
#     no options, URLs or paths; resolved together with the base image's installed packages
#     (which stay at their versions), binary wheels only
#   - apt.txt: Debian package names of the base's release, one per line
#   - START, if given, is a notebook (.ipynb, valid JSON) in CONTENT
#
# Env:
#   NBPOOL_PROFILE_BASE    the image to build on (default: deploy/images/build.sh's result)
#   NBPOOL_CONTENT_MAX_MB  the content's size limit (default 200)
#   NBPOOL_HOST_PYTHON     python used for `pip download` (default: python3); its pip
#                          configuration (index, proxy, PIP_* variables) is in force
#   DOCKER                 docker client (default: /usr/bin/docker if present)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=SCRIPTDIR/lib.sh
source "$here/lib.sh"

case "${1:-}" in
    -h | --help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
esac
(($# >= 2 && $# <= 3)) || die "usage: build-profile.sh NAME CONTENT [START]"
name=$1 content=$2 start=${3:-}
[[ $name =~ ^[a-z0-9][a-z0-9_-]{0,39}$ ]] ||
    die "profile name '$name': lower case letters, digits, '-' and '_' (40 at most)"
max_mb="${NBPOOL_CONTENT_MAX_MB:-200}"
[[ $max_mb =~ ^[0-9]+$ ]] || die "NBPOOL_CONTENT_MAX_MB must be a whole number of megabytes: $max_mb"

work="$(mktemp -d "${TMPDIR:-/tmp}/nbpool-profile-$name.XXXXXX")"
trap 'rm -rf "$work"' EXIT
home="$work/content/home"
mkdir -p "$home" "$work/packages/wheels" "$work/packages/debs"

# ---- the content, as files ----------------------------------------------------------------
if [[ ! -e $content && $content == *@* ]]; then
    repo="${content%@*}" ref="${content##*@}"
    [[ -d $repo ]] || die "content: no such folder: $repo"
    git -C "$repo" rev-parse --git-dir >/dev/null 2>&1 ||
        die "content: $repo is not a git repository (the '@$ref' asks for a commit of one)"
    commit="$(git -C "$repo" rev-parse --verify --quiet "$ref^{commit}")" ||
        die "content: the git repository $repo has no branch, tag or commit '$ref'"
    log "content: $repo at $ref (commit ${commit:0:12})"
    git -C "$repo" archive --format=tar "$commit" | tar -x -C "$home"
else
    [[ -d $content ]] || die "content: no such folder: $content"
    log "content: the folder $content"
    tar -C "$content" -c --exclude=.git --exclude=.ipynb_checkpoints --exclude=__pycache__ . | tar -x -C "$home"
fi
# Readable by the sandbox's user whatever the modes were; the modes are part of the tag.
chmod -R u+rwX,go+rX,go-w "$home"

size="$(du -sb "$home" | cut -f1)"
if ((size > max_mb * 1000 * 1000)); then
    largest="$(cd "$home" && find . -type f -printf '%s %P\n' | sort -rn | head -3 |
        awk '{ printf "%s%s (%.1f MB)", sep, substr($0, index($0, " ") + 1), $1 / 1e6; sep = ", " }')"
    die "content: $((size / 1000000)) MB, over the limit of $max_mb MB (NBPOOL_CONTENT_MAX_MB); the largest files: $largest"
fi

if [[ -n $start ]]; then
    [[ $start == *.ipynb && $start != /* && "/$start/" != */../* ]] ||
        die "start: '$start' must be a notebook (.ipynb) given relative to the content, without '..'"
    [[ -f $home/$start ]] || die "start: the notebook '$start' is not in the content"
    python3 -c 'import json, sys; json.load(open(sys.argv[1], encoding="utf-8"))' "$home/$start" 2>/dev/null ||
        die "start: '$start' is not a notebook (not valid JSON)"
fi

requirements="$home/requirements.txt" apt="$home/apt.txt"
if [[ -f $requirements ]]; then
    lineno=0
    while IFS= read -r line || [[ -n $line ]]; do
        lineno=$((lineno + 1))
        line="${line%%#*}"
        line="${line#"${line%%[![:space:]]*}"}"
        [[ -z $line ]] && continue
        [[ $line == -* ]] &&
            die "requirements.txt line $lineno: options are not supported ('$line'); give requirement specifiers only"
        [[ $line =~ ^[A-Za-z0-9][A-Za-z0-9._-]*[[:space:]]*(\[[^]]*\])?[[:space:]]*([\<\>=!~;,].*)?$ && $line != *://* ]] ||
            die "requirements.txt line $lineno: '$line' is not a package name with optional versions; URLs and paths are not supported"
    done <"$requirements"
fi
apt_packages=()
if [[ -f $apt ]]; then
    while IFS= read -r line || [[ -n $line ]]; do
        line="${line%%#*}"
        for word in $line; do
            [[ $word =~ ^[a-z0-9][a-z0-9+.-]+$ ]] || die "apt.txt: '$word' is not a Debian package name"
            apt_packages+=("$word")
        done
    done <"$apt"
fi

# ---- the base ------------------------------------------------------------------------------
if [[ -n ${NBPOOL_PROFILE_BASE:-} ]]; then
    base="$NBPOOL_PROFILE_BASE"
    image_exists "$base" || die "NBPOOL_PROFILE_BASE: no image $base on this engine"
else
    base="$("$here/build.sh")"
fi
base_id="$("$DOCKER" image inspect -f '{{.Id}}' "$base")"

# Concurrent builds of one profile (several spawners on one host) build once.
exec 9>"${TMPDIR:-/tmp}/nbpool-profile-$name.lock"
flock 9

digest() { if [[ -f $1 ]]; then sha256sum <"$1" | cut -c1-64; else echo none; fi; }
# inputs_sha LINE...: the sha256 of an image's inputs, one per line (its tag is the first 12 hex).
inputs_sha() { printf '%s\n' "$@" | sha256sum | cut -c1-64; }

# build TAG CONTEXT DOCKERFILE FROM FROM_ID TITLE INPUTS_SHA: lib.sh's build_image, of DOCKERFILE on FROM.
build() {
    cp "$3" "$2/Dockerfile"
    build_image "$1" "$2" "$6" "$7" "$5" "$4"
}

# ---- the packages layer --------------------------------------------------------------------
packages="$base"
if [[ -f $requirements || ${#apt_packages[@]} -gt 0 ]]; then
    sha="$(inputs_sha "base-image $base_id" "requirements $(digest "$requirements")" "apt ${apt_packages[*]}" \
        "dockerfile $(digest "$here/profile/packages.Dockerfile")")"
    packages="nbpool/profile-$name-packages:${sha:0:12}"
    if image_exists "$packages"; then
        log "$packages exists (requirements.txt and apt.txt unchanged); nothing to build"
    else
        ctx="$work/packages"
        : >"$ctx/requirements.lock"
        if [[ -f $requirements ]]; then
            # What the base has stays as it is: its installed versions constrain the resolution.
            "$DOCKER" run --rm --network=none --entrypoint /opt/notebook/bin/python "$base" \
                -m pip freeze --all 2>/dev/null | grep '==' >"$work/base-constraints.txt" ||
                die "the base image $base has no /opt/notebook/bin/python with pip (is it built from nbpool/notebook?)"
            mapfile -t platform_flags < <(target_pip_platform_flags)
            log "requirements.txt: resolving and downloading wheels on the host"
            # pip itself rather than host_pip: its message is read back from the file below.
            if ! PIP_CONSTRAINT=/dev/null PIP_DISABLE_PIP_VERSION_CHECK=1 "${NBPOOL_HOST_PYTHON:-python3}" -m pip download --quiet --dest "$ctx/wheels" "${platform_flags[@]}" \
                -r "$requirements" -c "$work/base-constraints.txt" 2>"$work/pip.err"; then
                cat "$work/pip.err" >&2
                errors="$(grep '^ERROR' "$work/pip.err" | sed 's/^ERROR: //' | tr '\n' ' ')"
                die "requirements.txt: ${errors:-pip could not download them (see above)}"
            fi
            shopt -s nullglob
            others=("$ctx"/wheels/*.tar.gz "$ctx"/wheels/*.zip)
            shopt -u nullglob
            ((${#others[@]} == 0)) || die "requirements.txt: no binary wheel for ${others[*]##*/} (the image has no compiler)"
            hashed_pins "$ctx/wheels" >"$ctx/requirements.lock"
            log "wheels: $(find "$ctx/wheels" -name '*.whl' | wc -l) files, $(du -sh "$ctx/wheels" | cut -f1)"
        fi
        if ((${#apt_packages[@]})); then
            # (In a condition, download_debs would carry on past a failed apt: its files are checked.)
            download_debs "$ctx/debs" "${apt_packages[@]}" 2>"$work/apt.err" || true
            cat "$work/apt.err" >&2
            unknown="$(sed -n 's/^E: Unable to locate package \(.*\)$/\1/p' "$work/apt.err" | tr '\n' ' ')"
            [[ -z $unknown ]] || die "apt.txt: no Debian package named ${unknown% } in $NBPOOL_DEBIAN_SUITE"
            for package in "${apt_packages[@]}"; do
                compgen -G "$ctx/debs/${package}_*.deb" >/dev/null ||
                    die "apt.txt: apt could not fetch the Debian package '$package' (see apt's message above)"
            done
        fi
        build "$packages" "$ctx" "$here/profile/packages.Dockerfile" "$base" "$base_id" "nbpool profile $name: packages" "$sha" ||
            die "the packages of profile $name did not install together (see pip's or dpkg's message above)"
    fi
fi
packages_id="$("$DOCKER" image inspect -f '{{.Id}}' "$packages")"

# ---- the content layer ---------------------------------------------------------------------
sha="$(inputs_sha "packages-image $packages_id" "content $(tree_digest "$home")" "start $start" \
    "dockerfile $(digest "$here/profile/content.Dockerfile")")"
tag="nbpool/profile-$name:${sha:0:12}"
if image_exists "$tag"; then
    log "$tag exists; nothing to build"
else
    started=$SECONDS
    build "$tag" "$work/content" "$here/profile/content.Dockerfile" "$packages" "$packages_id" "nbpool profile $name" "$sha" ||
        die "the content of profile $name did not build (see above)"
    log "built $tag in $((SECONDS - started))s"
fi
tag_latest "$tag" "nbpool/profile-$name"
