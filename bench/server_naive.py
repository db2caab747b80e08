"""The common design, as a baseline for bench/server_vs_inprocess.py: FastAPI + ONNX Runtime with
one session.run per request (no batching), a plain `def` endpoint (FastAPI runs it in its thread
pool), FastAPI's default JSON response. Same runtime code (tokenize, run, pool, normalize) and
threads as the real server, so the comparison isolates the serving design.

    python bench/server_naive.py --model-dir DIR [--port 8090] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel

from server.runtime.onnx_embedder import OnnxEmbedder


class EmbedRequest(BaseModel):
    texts: list[str]


def build_app(model_dir: Path, threads: int) -> FastAPI:
    embedder = OnnxEmbedder(model_dir, intra_op_threads=threads)
    app = FastAPI()

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/embed")
    def embed(request: EmbedRequest) -> dict[str, object]:
        vectors = embedder.embed(request.texts)
        return {"embeddings": vectors.tolist()}

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    app = build_app(args.model_dir, args.threads)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
