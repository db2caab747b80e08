#!/usr/bin/env bash
# Build local stand-ins for the public images the compose stack uses, for machines without
# registry access: PostgreSQL and Redis from Debian's packages on the local base image, and
# the Airflow image from the local base. Then run compose with
#   POSTGRES_IMAGE=embench-postgres:16-local REDIS_IMAGE=embench-redis:7-local
#   (set in .env; AIRFLOW_IMAGE keeps its default embench-airflow:latest).
#
# Usage: deploy/local-images/build.sh [--no-airflow] [--no-redis]
#   EMBENCH_BASE_IMAGE  base image (default embench-base:bookworm, built by
#                       scripts/docker/build_base_image.sh when missing)
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
BASE="${EMBENCH_BASE_IMAGE:-embench-base:bookworm}"
airflow=1 redis=1
for arg in "$@"; do
    case "$arg" in
        --no-airflow) airflow=0 ;;
        --no-redis) redis=0 ;;
        *) echo "build.sh: unknown argument $arg" >&2; exit 2 ;;
    esac
done
if ! docker image inspect "$BASE" >/dev/null 2>&1; then
    [ "$BASE" = embench-base:bookworm ] || { echo "build.sh: no image $BASE" >&2; exit 1; }
    "$ROOT/scripts/docker/build_base_image.sh"
fi
echo "[local-images] postgres: ${POSTGRES_IMAGE:-embench-postgres:16-local} (base $BASE)"
DOCKER_BUILDKIT=0 docker build -q --build-arg "BASE_IMAGE=$BASE" \
    -t "${POSTGRES_IMAGE:-embench-postgres:16-local}" "$HERE/postgres"
if [ "$redis" = 1 ]; then
    echo "[local-images] redis: ${REDIS_IMAGE:-embench-redis:7-local}"
    DOCKER_BUILDKIT=0 docker build -q --build-arg "BASE_IMAGE=$BASE" \
        -t "${REDIS_IMAGE:-embench-redis:7-local}" "$HERE/redis"
fi
if [ "$airflow" = 1 ]; then
    "$ROOT/deploy/airflow/build_image.sh" --base-image "$BASE"
fi
