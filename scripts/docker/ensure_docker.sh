#!/usr/bin/env bash
# Make sure a Docker daemon is up and answering `docker info`.
#
# Idempotent and quick when Docker already works. Otherwise (fresh Debian 12
# machine, no systemd):
#   1. install Debian's docker.io (engine 20.10) and debootstrap with apt-get
#      if dockerd is missing (a docker *client* in /usr/local/bin may exist
#      without a daemon, so we check for dockerd itself);
#   2. start dockerd in the background (nohup + setsid, so it outlives the
#      calling shell / CI step), logging to $DOCKERD_LOG;
#   3. wait up to $DOCKER_WAIT_SECS seconds for `docker info`.
#
# Environment:
#   DOCKERD_LOG       dockerd log file (default ${TMPDIR:-/tmp}/dockerd.log)
#   DOCKER_WAIT_SECS  how long to wait for the daemon (default 60)
#
# Must run as root (or with passwordless sudo) when it has to install or start
# the daemon.
set -euo pipefail

log() { echo "[docker] $*"; }
die() { echo "[docker] ERROR: $*" >&2; exit 1; }

# Root's tools (dockerd, iptables, debootstrap, chroot) live in sbin dirs that a
# minimal or non-login PATH may lack; dockerd needs iptables on its PATH.
for d in /usr/local/sbin /usr/sbin /sbin; do
    case ":$PATH:" in *":$d:"*) ;; *) PATH="$PATH:$d" ;; esac
done
export PATH

DOCKERD_LOG="${DOCKERD_LOG:-${TMPDIR:-/tmp}/dockerd.log}"
DOCKER_WAIT_SECS="${DOCKER_WAIT_SECS:-60}"

docker_ok() {
    command -v docker >/dev/null 2>&1 && timeout 20 docker info >/dev/null 2>&1
}

if docker_ok; then
    log "docker daemon is already running"
    exit 0
fi

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO=(sudo -n)
    else
        die "docker is not usable and this script needs root (or passwordless sudo) to install/start dockerd"
    fi
fi

find_dockerd() { command -v dockerd 2>/dev/null || true; }

DOCKERD="$(find_dockerd)"
if [ -z "$DOCKERD" ] || ! command -v docker >/dev/null 2>&1 \
        || ! command -v debootstrap >/dev/null 2>&1; then
    log "installing docker.io and debootstrap with apt-get (this takes a minute)"
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        --no-install-recommends docker.io debootstrap >/dev/null
    DOCKERD="$(find_dockerd)"
    [ -n "$DOCKERD" ] || die "dockerd still not found after installing docker.io"
fi

# A dockerd may already be running but still starting up (or started by a
# concurrent run of this script): then only wait for it, don't start another.
dockerd_running() {
    local pid
    pid="$(cat /var/run/docker.pid 2>/dev/null || true)"
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null
}

# Serialise concurrent runs: the first starts dockerd, the others wait here
# and then find it answering. (The lock fd is closed for dockerd itself.)
exec 9>"${TMPDIR:-/tmp}/embench-dockerd.lock"
flock -w $((DOCKER_WAIT_SECS + 30)) 9 || die "timed out waiting for another run of $0"
if docker_ok; then
    log "docker daemon was started by a concurrent run"
    exit 0
fi

if dockerd_running; then
    log "dockerd is running (pid $(cat /var/run/docker.pid)) but not answering yet; waiting"
else
    log "starting dockerd (log: $DOCKERD_LOG)"
    mkdir -p "$(dirname "$DOCKERD_LOG")"
    # setsid: own session, so the daemon is not killed with the caller's
    # process group; </dev/null and the redirect detach it from our stdio.
    "${SUDO[@]}" setsid nohup "$DOCKERD" >"$DOCKERD_LOG" 2>&1 </dev/null 9>&- &
    started_pid=$!
fi

start=$SECONDS
why="did not answer 'docker info' within ${DOCKER_WAIT_SECS} s"
while [ $((SECONDS - start)) -lt "$DOCKER_WAIT_SECS" ]; do
    if docker_ok; then
        log "docker daemon is up after $((SECONDS - start)) s"
        exit 0
    fi
    if [ -n "${started_pid:-}" ] && ! kill -0 "$started_pid" 2>/dev/null; then
        docker_ok && { log "docker daemon is up"; exit 0; }
        why="exited during start-up"
        break
    fi
    sleep 1
done

echo "[docker] ERROR: dockerd $why." >&2
if [ -r "$DOCKERD_LOG" ]; then
    echo "[docker] last lines of $DOCKERD_LOG:" >&2
    tail -n 30 "$DOCKERD_LOG" >&2 || true
fi
echo "[docker] 'docker info' says:" >&2
docker info 2>&1 | grep -iE 'error|cannot|denied' | tail -n 3 >&2 || true
exit 1
