#!/usr/bin/env bash
# Build the pipeline's images (server onnx, openvino and torch targets, the infinity-emb peer, client) when a Docker daemon
# answers; without one, say so and exit 0: the process launcher needs no image.
# Layer caching makes a rebuild with unchanged sources take seconds.
#
# Usage: scripts/docker/build_images.sh [--no-torch]
#   EMBENCH_BASE_IMAGE  base image (default: embench-base:bookworm when present, else
#                       python:3.11-slim, the public image)
set -euo pipefail
cd "$(dirname "$0")/../.."
torch=1
[ "${1:-}" = "--no-torch" ] && torch=0

if ! docker info >/dev/null 2>&1; then
    echo "[images] no Docker daemon answers: skipping images (the process launcher will be used)"
    exit 0
fi
base="${EMBENCH_BASE_IMAGE:-}"
if [ -z "$base" ]; then
    if docker image inspect embench-base:bookworm >/dev/null 2>&1; then
        base=embench-base:bookworm
    else
        base=python:3.11-slim
    fi
fi
echo "[images] base image: $base"
server/build_image.sh --target onnx --tag embench-server:onnx --base-image "$base"
server/build_image.sh --target openvino --tag embench-server:openvino --base-image "$base"
if [ "$torch" = 1 ]; then
    server/build_image.sh --target torch --tag embench-server:torch --base-image "$base"
    server/build_image.sh --target infinity --tag embench-server:infinity --base-image "$base"
fi
docker build -q --build-arg "BASE_IMAGE=$base" -t embench-client:latest -f client/Dockerfile client
echo "[images] built: embench-server:onnx, embench-server:openvino$([ "$torch" = 1 ] && echo ', embench-server:torch, embench-server:infinity'), embench-client:latest"
