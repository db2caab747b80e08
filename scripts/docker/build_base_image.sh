#!/usr/bin/env bash
# Build a local Debian bookworm + Python 3.11 base image, a drop-in for
# python:3.11-slim on machines that cannot pull from any container registry.
#
# Usage: scripts/docker/build_base_image.sh [--self-test] [IMAGE_NAME]
#   IMAGE_NAME   default: embench-base:bookworm
#   --self-test  after building (or if the image exists), build a throwaway
#                image FROM it that creates a venv and pip-installs `six`
#                (needs PyPI reachable from containers), then remove it.
#
# Environment:
#   DEBIAN_MIRROR              mirror for debootstrap (default: the host's apt
#                              sources, else http://deb.debian.org/debian)
#   EMBENCH_BASE_REBUILD=1     rebuild even if the image exists
#
# Idempotent: exits at once when the image already exists. A fresh build
# (debootstrap + docker import) takes about 30-60 s.
#
# What the image contains:
#   * debootstrap --variant=minbase bookworm, plus python3 (3.11), python3-venv,
#     python3-pip, python-is-python3, ca-certificates, curl;
#   * the host's CA bundle at /etc/ssl/certs/ca-certificates.crt (also kept in
#     /usr/local/share/ca-certificates so update-ca-certificates keeps it), so
#     HTTPS to PyPI works behind a TLS-intercepting egress proxy;
#   * /etc/pip.conf with `cert = /etc/ssl/certs/ca-certificates.crt` and the
#     host's http(s) index-url / extra-index-url (file:// and localhost URLs
#     are skipped: a container cannot see them);
#   * no EXTERNALLY-MANAGED marker, so a plain `pip install` works as in
#     python:3.11-slim (using a venv is still the better choice);
#   * image config set with `docker import --change`: ENV PATH, LANG, CMD.
#
# Differences from python:3.11-slim that Dockerfiles must allow for:
#   * Python is Debian's: /usr/bin/python3 (python -> python3 via
#     python-is-python3), not /usr/local/bin/python. Write `python3`
#     explicitly (e.g. `python3 -m venv /opt/venv && /opt/venv/bin/pip
#     install ...`) so the Dockerfile works with either base.
#   * An imported image carries only the config given with --change below
#     (no ENV from a Dockerfile); Dockerfiles should set their own ENV
#     (PATH=/opt/venv/bin:$PATH, PYTHONUNBUFFERED, ...).
set -euo pipefail

log() { echo "[docker] $*"; }
die() { echo "[docker] ERROR: $*" >&2; exit 1; }

# Root's tools (dockerd, iptables, debootstrap, chroot) live in sbin dirs that a
# minimal or non-login PATH may lack; dockerd needs iptables on its PATH.
for d in /usr/local/sbin /usr/sbin /sbin; do
    case ":$PATH:" in *":$d:"*) ;; *) PATH="$PATH:$d" ;; esac
done
export PATH

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

IMAGE="embench-base:bookworm"
SELF_TEST=0
for arg in "$@"; do
    case "$arg" in
        --self-test) SELF_TEST=1 ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        -*) die "unknown option: $arg" ;;
        *) IMAGE="$arg" ;;
    esac
done

SUITE=bookworm
CONTAINER_CA=/etc/ssl/certs/ca-certificates.crt

self_test() {
    local ctx tag="embench-base-selftest:$$"
    ctx="$(mktemp -d "${TMPDIR:-/tmp}/embench-selftest.XXXXXX")"
    cat >"$ctx/Dockerfile" <<EOF
FROM $IMAGE
RUN python3 -m venv /opt/venv && /opt/venv/bin/pip install --no-cache-dir six
RUN /opt/venv/bin/python -c "import six, sys; print('six', six.__version__, 'python', sys.version.split()[0])"
EOF
    log "self-test: venv + pip install six in a throwaway image FROM $IMAGE"
    local rc=0
    DOCKER_BUILDKIT=0 docker build --rm -t "$tag" "$ctx" >"$ctx.log" 2>&1 || rc=$?
    [ "$rc" -eq 0 ] || tail -n 20 "$ctx.log" >&2
    rm -rf "$ctx" "$ctx.log"
    docker image rm -f "$tag" >/dev/null 2>&1 || true
    [ "$rc" -eq 0 ] || die "self-test failed: could not pip install inside a container FROM $IMAGE (is PyPI reachable from containers?)"
    log "self-test passed"
}

"$SCRIPT_DIR/ensure_docker.sh"

image_exists() { docker image inspect "$IMAGE" >/dev/null 2>&1; }

if image_exists && [ "${EMBENCH_BASE_REBUILD:-0}" != 1 ]; then
    log "base image $IMAGE already exists"
    [ "$SELF_TEST" -eq 0 ] || self_test
    exit 0
fi

[ "$(id -u)" -eq 0 ] || die "building the base image needs root (debootstrap); run as root or with sudo"

# Serialise concurrent builds (e.g. two CI steps); re-check after the lock.
LOCK="${TMPDIR:-/tmp}/embench-base-image.lock"
exec 9>"$LOCK"
flock 9
if image_exists && [ "${EMBENCH_BASE_REBUILD:-0}" != 1 ]; then
    log "base image $IMAGE was built by a concurrent run"
    exit 0
fi

if ! command -v debootstrap >/dev/null 2>&1; then
    log "installing debootstrap with apt-get"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
fi
DEBOOTSTRAP="$(command -v debootstrap)"

# --- Debian mirror: the host's own apt sources -----------------------------
# deb822 stanzas (*.sources) whose Suites contain exactly "$SUITE", then
# one-line "deb [opts] URI $SUITE ..." entries; first match wins.
detect_mirror() {
    local f uri
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -r "$f" ] || continue
        uri="$(awk -v suite="$SUITE" '
            BEGIN { RS = ""; FS = "\n" }
            {
                uris = ""; ok = 0; enabled = 1
                for (i = 1; i <= NF; i++) {
                    line = $i
                    if (line ~ /^[ \t]*#/) continue
                    if (line ~ /^URIs:/)  { sub(/^URIs:[ \t]*/, "", line); uris = line }
                    if (line ~ /^Suites:/) {
                        sub(/^Suites:[ \t]*/, "", line)
                        n = split(line, s, /[ \t]+/)
                        for (j = 1; j <= n; j++) if (s[j] == suite) ok = 1
                    }
                    if (line ~ /^Enabled:[ \t]*[Nn]o/) enabled = 0
                }
                if (ok && enabled && uris != "") { split(uris, u, /[ \t]+/); print u[1]; exit }
            }' "$f")"
        if [ -n "$uri" ]; then echo "$uri"; return; fi
    done
    if [ -r /etc/apt/sources.list ]; then
        uri="$(awk -v suite="$SUITE" '
            $1 == "deb" {
                i = 2
                if ($i ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
                if ($(i + 1) == suite) { print $i; exit }
            }' /etc/apt/sources.list)"
        if [ -n "$uri" ]; then echo "$uri"; return; fi
    fi
    echo "http://deb.debian.org/debian"
}
MIRROR="${DEBIAN_MIRROR:-$(detect_mirror)}"

# --- host pip settings -------------------------------------------------------
PIP_CONFIG="$( (python3 -m pip config list || pip3 config list || pip config list) 2>/dev/null || true)"

# Value of a pip option, highest precedence first (env var, install., global.).
pip_conf_get() {
    local key="$1" section line
    for section in ":env:" "install" "global"; do
        line="$(printf '%s\n' "$PIP_CONFIG" | grep -F -- "$section.$key=" | head -n 1 || true)"
        if [ -n "$line" ]; then
            line="${line#*=}"
            line="${line#\'}"; line="${line%\'}"
            line="${line#\"}"; line="${line%\"}"
            printf '%s\n' "$line"
            return
        fi
    done
}

# Keep only http(s) URLs that a container can reach (not file://, not localhost).
container_urls() {
    local url out=()
    for url in $1; do
        case "$url" in
            http://localhost*|https://localhost*|http://127.*|https://127.*|http://\[::1\]*|https://\[::1\]*)
                log "pip: skipping host-local URL $url" >&2 ;;
            http://*|https://*) out+=("$url") ;;
            *) log "pip: skipping non-http URL $url" >&2 ;;
        esac
    done
    echo "${out[*]:-}"
}

HOST_CA=""
for cand in "$(pip_conf_get cert)" "${PIP_CERT:-}" "${SSL_CERT_FILE:-}" "${REQUESTS_CA_BUNDLE:-}" \
            /etc/ssl/certs/ca-certificates.crt; do
    if [ -n "$cand" ] && [ -f "$cand" ]; then HOST_CA="$cand"; break; fi
done
INDEX_URL="$(container_urls "$(pip_conf_get index-url)")"
EXTRA_INDEX_URLS="$(container_urls "$(pip_conf_get extra-index-url)")"

# --- debootstrap -------------------------------------------------------------
ROOTFS="$(mktemp -d "${TMPDIR:-/tmp}/embench-rootfs.XXXXXX")"
cleanup() {
    # debootstrap may leave proc/sys mounted in the target if it fails.
    local m
    awk -v r="$ROOTFS/" 'index($2, r) == 1 { print $2 }' /proc/mounts | sort -r |
        while IFS= read -r m; do umount -l "$m" 2>/dev/null || true; done
    rm -rf --one-file-system "$ROOTFS"
}
trap cleanup EXIT

log "debootstrap $SUITE from $MIRROR into $ROOTFS (about 30 s)"
t0=$SECONDS
if ! "$DEBOOTSTRAP" --variant=minbase \
        --include=python3,python3-venv,python3-pip,python-is-python3,ca-certificates,curl \
        "$SUITE" "$ROOTFS" "$MIRROR" >"$ROOTFS.debootstrap.log" 2>&1; then
    echo "[docker] ERROR: debootstrap failed; last lines of its log:" >&2
    tail -n 30 "$ROOTFS.debootstrap.log" >&2 || true
    tail -n 30 "$ROOTFS/debootstrap/debootstrap.log" >&2 2>/dev/null || true
    rm -f "$ROOTFS.debootstrap.log"
    exit 1
fi
rm -f "$ROOTFS.debootstrap.log"
log "debootstrap done in $((SECONDS - t0)) s"

# --- customise the root filesystem ------------------------------------------
if [ -n "$HOST_CA" ]; then
    log "copying host CA bundle $HOST_CA into the image"
    install -m 0644 "$HOST_CA" "$ROOTFS$CONTAINER_CA"
    # Survives update-ca-certificates (run e.g. when a Dockerfile apt-installs
    # something that triggers ca-certificates).
    install -m 0644 "$HOST_CA" "$ROOTFS/usr/local/share/ca-certificates/embench-host-ca-bundle.crt"
else
    log "no host CA bundle found; keeping Debian's"
fi

{
    echo "[global]"
    echo "cert = $CONTAINER_CA"
    [ -z "$INDEX_URL" ] || echo "index-url = $INDEX_URL"
    [ -z "$EXTRA_INDEX_URLS" ] || echo "extra-index-url = $EXTRA_INDEX_URLS"
} >"$ROOTFS/etc/pip.conf"
log "wrote /etc/pip.conf: $(tr '\n' ' ' <"$ROOTFS/etc/pip.conf")"

# python:3.11-slim lets `pip install` write to the system Python; so do we.
rm -f "$ROOTFS"/usr/lib/python3*/EXTERNALLY-MANAGED

# Like Docker's official Debian images: never start services from apt in a build.
printf '#!/bin/sh\nexit 101\n' >"$ROOTFS/usr/sbin/policy-rc.d"
chmod 0755 "$ROOTFS/usr/sbin/policy-rc.d"

# Slim it down: downloaded .debs, apt lists (derived images run apt-get update
# first, as with any official image), docs, man pages.
rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/cache/apt/*.bin \
       "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/usr/share/doc/* "$ROOTFS"/usr/share/man/* \
       "$ROOTFS"/usr/share/info/* "$ROOTFS"/var/log/*.log "$ROOTFS"/root/.cache
mkdir -p "$ROOTFS/var/lib/apt/lists/partial"

# --- import -------------------------------------------------------------------
log "importing root filesystem as $IMAGE"
OLD_ID="$(docker image inspect -f '{{.Id}}' "$IMAGE" 2>/dev/null || true)"
tar --numeric-owner -C "$ROOTFS" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    --message "embench base: debootstrap $SUITE minbase + python3 from $MIRROR" \
    - "$IMAGE" >/dev/null

docker run --rm "$IMAGE" python3 -c 'import ssl, venv, ensurepip, sys; print(sys.version.split()[0])' >/dev/null \
    || die "imported image $IMAGE cannot run python3"
# On a rebuild, drop the previous image if nothing else uses it (no error if so).
if [ -n "$OLD_ID" ] && [ "$OLD_ID" != "$(docker image inspect -f '{{.Id}}' "$IMAGE")" ]; then
    docker image rm "$OLD_ID" >/dev/null 2>&1 || true
fi
log "built $IMAGE ($(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1/1e6}')) in $((SECONDS - t0)) s"

[ "$SELF_TEST" -eq 0 ] || self_test
