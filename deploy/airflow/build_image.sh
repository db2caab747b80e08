#!/usr/bin/env bash
# Build the embench Airflow image (deploy/airflow/Dockerfile) with the legacy builder, from a
# staged build context in a temporary folder (removed afterwards): only requirements.txt,
# pyproject.toml, dags/, plugins/, config/, server/ and client/ travel, never .venv or data.
#
# Usage: deploy/airflow/build_image.sh [--tag TAG] [--base-image IMAGE]
#   --tag         image tag (default: $AIRFLOW_IMAGE, else embench-airflow:latest)
#   --base-image  BASE_IMAGE build argument (default: $EMBENCH_BASE_IMAGE, else
#                 apache/airflow:3.3.2-python3.11, the public image)
# A local CPU torch wheel (EMBENCH_TORCH_WHEEL_DIR, default /opt/wheels) is staged so that the
# build never downloads PyPI's CUDA torch; without one the PyTorch CPU index is used.
# EXTRA_PIP_PACKAGES: more requirement specifiers to install (constrained by requirements.txt).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
TAG="${AIRFLOW_IMAGE:-embench-airflow:latest}"
BASE="${EMBENCH_BASE_IMAGE:-apache/airflow:3.3.2-python3.11}"
while [ $# -gt 0 ]; do
    case "$1" in
        --tag) TAG="$2"; shift 2 ;;
        --base-image) BASE="$2"; shift 2 ;;
        -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
        *) echo "build_image.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done

CTX="$(mktemp -d "${TMPDIR:-/tmp}/embench-airflow-ctx.XXXXXX")"
trap 'rm -rf "$CTX"' EXIT
mkdir -p "$CTX/src" "$CTX/wheels"
cp "$ROOT/deploy/airflow/Dockerfile" "$ROOT/deploy/airflow/entrypoint.sh" "$CTX/"
cp "$ROOT/requirements.txt" "$CTX/requirements.txt"
cp "$ROOT/pyproject.toml" "$CTX/src/"
tar -C "$ROOT" -c --exclude='__pycache__' --exclude='*.pyc' --exclude='.wheels' \
    --exclude='*.egg-info' --exclude='.pytest_cache' dags plugins config server client \
    | tar -C "$CTX/src" -x

ARGS=(--build-arg "BASE_IMAGE=$BASE" -t "$TAG" -f "$CTX/Dockerfile")
[ -z "${EXTRA_PIP_PACKAGES:-}" ] || ARGS+=(--build-arg "EXTRA_PIP_PACKAGES=$EXTRA_PIP_PACKAGES")
shopt -s nullglob
wheels=("${EMBENCH_TORCH_WHEEL_DIR:-/opt/wheels}"/torch-2.13.0+cpu-*.whl)
shopt -u nullglob
if [ ${#wheels[@]} -gt 0 ]; then
    for wheel in "${wheels[@]}"; do
        ln "$wheel" "$CTX/wheels/" 2>/dev/null || cp "$wheel" "$CTX/wheels/"
    done
    ARGS+=(--build-arg "TORCH_EXTRA_INDEX_URL=")
    echo "[airflow-image] using local torch wheel(s): ${wheels[*]}"
fi

echo "[airflow-image] building $TAG (base $BASE)"
DOCKER_BUILDKIT=0 docker build "${ARGS[@]}" "$CTX"
echo "[airflow-image] built $TAG"
