"""In-process throughput of every prepared variant against the PyTorch reference, in one run.

    .venv/bin/python bench/prepare_throughput.py [--batch-sizes 1,32] [--rounds 5]

Each round times every runtime on the same texts, in a shuffled order; the ratio to PyTorch
is taken within each round and the median over rounds is printed, so that the noise of a
shared machine moves numerator and denominator together instead of deciding the result.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from rich.console import Console
from rich.table import Table

from embench.config import load_config
from embench.prepare import prepare_model
from embench.prepare.parity import parity_texts
from embench.prepare.source import resolve_source
from server.runtime import OnnxEmbedder

Runner = Callable[[list[str]], object]


def workload(n_texts: int, max_words: int) -> list[str]:
    """The parity texts short enough for the bucket, cycled to n_texts."""
    texts = [t for t in parity_texts() if len(t.split()) <= max_words]
    return [texts[i % len(texts)] for i in range(n_texts)]


def make_runners(args: argparse.Namespace) -> dict[str, Callable[[int], Runner]]:
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(args.threads)
    config = load_config(args.config_dir)
    model = config.model(args.model)
    prepared = prepare_model(config, args.model, args.variants, cache_root=args.cache_dir)
    source = resolve_source(args.model, model, config.config_dir)
    reference = SentenceTransformer(str(source.directory), device="cpu")
    reference.max_seq_length = model.max_seq_length

    def torch_runner(batch_size: int) -> Runner:
        def run(texts: list[str]) -> object:
            with torch.inference_mode():
                return reference.encode(
                    texts, batch_size=batch_size, normalize_embeddings=True, show_progress_bar=False
                )

        return run

    runners: dict[str, Callable[[int], Runner]] = {"pytorch": torch_runner}
    for variant in prepared:
        embedder = OnnxEmbedder(
            variant.directory, intra_op_threads=args.threads, thread_spinning=args.spinning
        )

        def onnx_runner(batch_size: int, embedder: OnnxEmbedder = embedder) -> Runner:
            def run(texts: list[str]) -> object:
                # Length-sorted batches, as sentence-transformers and the server's batcher do.
                ordered = sorted(texts, key=len)
                return [
                    embedder.embed(ordered[i : i + batch_size])
                    for i in range(0, len(ordered), batch_size)
                ]

            return run

        runners[f"onnx-{variant.variant}"] = onnx_runner
    return runners


def measure(runner: Runner, texts: list[str]) -> float:
    started = time.perf_counter()
    runner(texts)
    return len(texts) / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="all-minilm-l6-v2")
    parser.add_argument("--variants", default="fp32,optimized,int8")
    parser.add_argument("--config-dir", type=Path)
    parser.add_argument("--cache-dir", type=Path)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--spinning", action="store_true", help="ONNX Runtime thread spinning")
    parser.add_argument("--batch-sizes", default="1,32")
    parser.add_argument("--texts", type=int, default=256)
    parser.add_argument("--max-words", type=int, default=60, help="leave out longer texts")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.variants = args.variants.split(",")
    console = Console()

    texts = workload(args.texts, args.max_words)
    factories = make_runners(args)
    order = list(factories)
    rng = random.Random(args.seed)
    for batch_size in (int(b) for b in args.batch_sizes.split(",")):
        runners = {name: factory(batch_size) for name, factory in factories.items()}
        for runner in runners.values():
            runner(texts[:32])  # warm-up: first-call allocations, thread pools
        rates: dict[str, list[float]] = {name: [] for name in runners}
        for _ in range(args.rounds):
            rng.shuffle(order)
            for name in order:
                rates[name].append(measure(runners[name], texts))
        table = Table(
            title=(
                f"{args.model}: in-process texts/s, batch size {batch_size}, {args.threads} "
                f"threads, {len(texts)} texts, median of {args.rounds} interleaved rounds"
            )
        )
        for column in ("runtime", "texts/s", "ratio to pytorch", "min..max ratio"):
            table.add_column(column, justify="right" if column != "runtime" else "left")
        for name in runners:
            ratios = [r / t for r, t in zip(rates[name], rates["pytorch"], strict=True)]
            table.add_row(
                name,
                f"{statistics.median(rates[name]):.0f}",
                f"{statistics.median(ratios):.2f}",
                f"{min(ratios):.2f}..{max(ratios):.2f}",
            )
        console.print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
