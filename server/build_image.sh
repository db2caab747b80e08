#!/usr/bin/env bash
# Build an embench server image from server/Dockerfile with the legacy builder.
#
# Usage: server/build_image.sh [--target onnx|openvino|torch|infinity] [--tag TAG] [--base-image IMAGE]
#   --target      onnx (default), openvino, torch or infinity (the peer server)
#   --tag         image tag (default embench-server:<target>)
#   --base-image  BASE_IMAGE build argument (default: $EMBENCH_BASE_IMAGE, else
#                 embench-base:bookworm when that image exists locally, else python:3.11-slim)
#
# For the torch and infinity targets, a local CPU torch wheel (EMBENCH_TORCH_WHEEL_DIR, default /opt/wheels)
# is copied into server/.wheels (git-ignored) so that the build never downloads PyPI's CUDA
# torch; without one, the build uses the PyTorch CPU index instead.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
TARGET=onnx
TAG=""
BASE="${EMBENCH_BASE_IMAGE:-}"
while [ $# -gt 0 ]; do
    case "$1" in
        --target) TARGET="$2"; shift 2 ;;
        --tag) TAG="$2"; shift 2 ;;
        --base-image) BASE="$2"; shift 2 ;;
        -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
        *) echo "build_image.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
case "$TARGET" in onnx|openvino|torch|infinity) ;; *) echo "build_image.sh: --target must be onnx, openvino, torch or infinity" >&2; exit 2 ;; esac
TAG="${TAG:-embench-server:$TARGET}"
if [ -z "$BASE" ]; then
    if docker image inspect embench-base:bookworm >/dev/null 2>&1; then
        BASE=embench-base:bookworm
    else
        BASE=python:3.11-slim
    fi
fi

ARGS=(--build-arg "BASE_IMAGE=$BASE" --target "$TARGET" -t "$TAG" -f "$HERE/Dockerfile")
if [ "$TARGET" = torch ] || [ "$TARGET" = infinity ]; then
    WHEEL_DIR="${EMBENCH_TORCH_WHEEL_DIR:-/opt/wheels}"
    shopt -s nullglob
    wheels=("$WHEEL_DIR"/torch-2.13.0+cpu-*.whl)
    shopt -u nullglob
    if [ ${#wheels[@]} -gt 0 ]; then
        mkdir -p "$HERE/.wheels"
        for wheel in "${wheels[@]}"; do
            target="$HERE/.wheels/$(basename "$wheel")"
            [ -f "$target" ] || ln "$wheel" "$target" 2>/dev/null || cp "$wheel" "$target"
        done
        ARGS+=(--build-arg "TORCH_EXTRA_INDEX_URL=")
        echo "[server-image] using local torch wheel(s): ${wheels[*]}"
    fi
fi

echo "[server-image] building $TAG (target $TARGET, base $BASE)"
DOCKER_BUILDKIT=0 docker build "${ARGS[@]}" "$HERE"
echo "[server-image] built $TAG"
