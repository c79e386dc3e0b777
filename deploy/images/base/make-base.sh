#!/usr/bin/env bash
# Build the local base image nbpool/debian-base:bookworm from Debian packages alone.
#
# Why not `FROM debian:bookworm`: nbpool must build on machines that reach a Debian package
# mirror and a Python package index but no image registry. debootstrap needs only the
# former. The mirror is the one this host's apt already uses, read at run time, so no
# mirror host name lives in the repository.
#
# Idempotent: does nothing when the image exists (delete it to rebuild; the notebook tag
# includes the base image id, so a rebuilt base yields a new notebook tag).
#
# Needs: root, debootstrap, a running Docker engine.
# Env: NBPOOL_DEBIAN_MIRROR / NBPOOL_DEBIAN_SECURITY_MIRROR override what is read from
#      the host's apt sources; NBPOOL_BASE_NO_UPGRADE=1 skips applying updates/security.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=SCRIPTDIR/../lib.sh
source "$here/../lib.sh"

suite="$NBPOOL_DEBIAN_SUITE"
image="$NBPOOL_BASE_IMAGE"
packages=(python3 python3-venv ca-certificates)

if image_exists "$image"; then
    log "$image exists ($("$DOCKER" image inspect -f '{{.Id}}' "$image")); nothing to do"
    exit 0
fi

[[ $EUID -eq 0 ]] || die "debootstrap needs root; run as root (or with sudo)"
command -v debootstrap >/dev/null || die "debootstrap is not installed (apt-get install debootstrap)"

# Two builders starting at once (e.g. two spawners on one host) must not both debootstrap.
exec 8>"${TMPDIR:-/tmp}/nbpool-debian-base.lock"
flock 8
if image_exists "$image"; then
    log "$image was built meanwhile by another run; nothing to do"
    exit 0
fi

# First URI of an enabled "deb" stanza in a deb822 file whose Suites contain $2 exactly.
deb822_uri_for_suite() {
    awk -v want="$2" '
        function flush() {
            if (!found && uris != "" && enabled != "no" &&
                (" " types " ") ~ / deb / && (" " suites " ") ~ (" " want " ")) {
                split(uris, u, " "); print u[1]; found = 1
            }
            types = suites = uris = enabled = ""
        }
        /^[ \t]*#/ { next }
        /^[ \t]*$/ { flush(); next }
        /^[ \t]/   { next }                      # continuation lines: not needed here
        {
            key = tolower($0); sub(/:.*/, "", key)
            val = $0; sub(/^[^:]*:[ \t]*/, "", val)
            if (key == "types") types = val
            else if (key == "uris") uris = val
            else if (key == "suites") suites = val
            else if (key == "enabled") enabled = tolower(val)
        }
        END { flush() }
    ' "$1"
}

# Same for one-line sources.list files: "deb [options] URI suite components...".
oneline_uri_for_suite() {
    awk -v want="$2" '
        $1 == "deb" {
            i = 2
            if ($i ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
            if ($(i + 1) == want) { print $i; exit }
        }
    ' "$1"
}

# Look for the suite in the host's apt sources: the deb822 file first (Debian 12's default),
# then any one-line lists.
host_mirror_for_suite() {
    local f uri
    for f in /etc/apt/sources.list.d/debian.sources /etc/apt/sources.list.d/*.sources; do
        [[ -r $f ]] || continue
        uri="$(deb822_uri_for_suite "$f" "$1")"
        [[ -n $uri ]] && { echo "$uri"; return 0; }
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [[ -r $f ]] || continue
        uri="$(oneline_uri_for_suite "$f" "$1")"
        [[ -n $uri ]] && { echo "$uri"; return 0; }
    done
    return 1
}

mirror="${NBPOOL_DEBIAN_MIRROR:-$(host_mirror_for_suite "$suite" || true)}"
[[ -n $mirror ]] || die "no Debian mirror for '$suite' in /etc/apt/sources.list.d/debian.sources" \
    "(or other apt sources); set NBPOOL_DEBIAN_MIRROR"
security_mirror="${NBPOOL_DEBIAN_SECURITY_MIRROR:-$(host_mirror_for_suite "$suite-security" || true)}"

keyring=/usr/share/keyrings/debian-archive-keyring.gpg
keyring_opt=()
[[ -r $keyring ]] && keyring_opt=(--keyring="$keyring")

# tini reaps zombies and forwards signals as PID 1; the image uses it when present.
if command -v apt-cache >/dev/null && apt-cache show tini >/dev/null 2>&1; then
    packages+=(tini)
else
    log "tini not found in this host's apt indexes; the image will run without it"
fi

# /var/tmp rather than /tmp: /tmp is often tmpfs or mounted nodev/noexec, which breaks a chroot.
work="$(mktemp -d /var/tmp/nbpool-debian-base.XXXXXX)"
rootfs="$work/rootfs"
cleanup() {
    # Never delete through a live mount into the host.
    if mountpoint -q "$rootfs/proc" 2>/dev/null; then umount "$rootfs/proc" || umount -l "$rootfs/proc"; fi
    rm -rf --one-file-system "$work"
}
trap cleanup EXIT

log "debootstrap $suite (minbase; ${packages[*]}) from the host's mirror into $rootfs"
started=$SECONDS
debootstrap --variant=minbase "${keyring_opt[@]}" --include="$(IFS=,; echo "${packages[*]}")" \
    "$suite" "$rootfs" "$mirror" >&2

# apt sources inside the image: the same mirror(s), so derived images can apt-get install.
{
    printf 'Types: deb\nURIs: %s\nSuites: %s %s-updates\nComponents: main\nSigned-By: %s\n' \
        "$mirror" "$suite" "$suite" "$keyring"
    if [[ -n $security_mirror ]]; then
        printf '\nTypes: deb\nURIs: %s\nSuites: %s-security\nComponents: main\nSigned-By: %s\n' \
            "$security_mirror" "$suite" "$keyring"
    fi
} >"$rootfs/etc/apt/sources.list.d/debian.sources"
rm -f "$rootfs/etc/apt/sources.list"

# debootstrap installs the release as of its last point release; -updates and -security
# carry the fixes published since. Applying them here keeps the base current.
if [[ "${NBPOOL_BASE_NO_UPGRADE:-0}" != 1 ]]; then
    log "applying $suite-updates${security_mirror:+ and $suite-security}"
    # No daemons may start inside the chroot during upgrades. (Dpkg::Use-Pty=0 below: the
    # chroot has no /dev/pts, and apt would otherwise print a harmless "E:" about it.)
    printf '#!/bin/sh\nexit 101\n' >"$rootfs/usr/sbin/policy-rc.d"
    chmod 755 "$rootfs/usr/sbin/policy-rc.d"
    mount -t proc proc "$rootfs/proc"
    chroot "$rootfs" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive \
        sh -c 'apt-get update -qq && apt-get -y -qq -o Dpkg::Use-Pty=0 \
            -o Dpkg::Options::=--force-confold upgrade' >&2
    umount "$rootfs/proc"
    rm -f "$rootfs/usr/sbin/policy-rc.d"
fi

log "trimming caches, docs and host traces"
# Like Debian's official slim images: keep copyright files, drop other docs, man pages and
# translations, now and for packages installed later by derived images.
cat >"$rootfs/etc/dpkg/dpkg.cfg.d/nbpool-nodoc" <<'CFG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
CFG
find "$rootfs/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
find "$rootfs/usr/share/doc" -mindepth 1 -type d -empty -delete
rm -rf "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* \
    "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb \
    "$rootfs"/var/cache/debconf/*-old "$rootfs"/var/lib/dpkg/*-old "$rootfs"/var/log/*.log \
    "$rootfs"/var/log/apt/* "$rootfs"/debootstrap
find "$rootfs/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias -exec rm -rf {} +
# debootstrap copies the host's resolver config and hostname; Docker supplies both at run time.
: >"$rootfs/etc/resolv.conf"
echo localhost >"$rootfs/etc/hostname"

log "importing as $image"
tar --numeric-owner --xattrs -C "$rootfs" -c . |
    "$DOCKER" import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["/bin/bash"]' \
        --message "debootstrap --variant=minbase $suite + ${packages[*]}" \
        - "$image" >/dev/null
log "built $image ($("$DOCKER" image inspect -f '{{.Id}} {{.Size}} bytes' "$image")) in $((SECONDS - started))s"
