"""How close does each prepared variant run to this host's dense-matrix peak? One run, ratios.

    .venv/bin/python bench/roofline.py [--models all-minilm-l6-v2] [--targets onnx:int8,...]
        [--threads 2 | --layout 2x1] [--rounds 3] [--seconds 3] [--batch 32,1] [--json]

Peaks: square GEMMs (n = 1024 and 2048, best of --reps calls) on the same total threads as the
runtimes, in every library that runs that precision here; a precision's peak is the fastest:
  fp32  torch.matmul (MKL), ONNX Runtime MatMul, OpenVINO MatMul at INFERENCE_PRECISION f32
  bf16  torch.matmul on bf16 tensors (oneDNN, AMX where the CPU has it), OpenVINO at bf16
  int8  ONNX Runtime MatMulInteger u8 x s8 -> s32 (the op its dynamic-int8 variant runs; MLAS
        uses AMX-INT8/VNNI), and OpenVINO Quantize/DequantizeLinear -> MatMul with s8 weights
        (NNCF's pattern), which its CPU plugin runs as an int8 FullyConnected (brgemm AMX I8).
  (torch._int_mm runs on CPU but at ~1/10 of these, so it would understate the int8 peak.)
Targets: each variant in-process through the server's own embedder (create_embedder), texts
tokenized up front, embed_tokenized timed (run + pool + normalize) for --seconds at each batch
size; W Python threads each loop over their own share of the batches (--layout WxT: W workers
of T intra-op threads). Texts are spans of the load client's corpus of about --tokens tokens.
FLOPs counted (from config.json; h hidden, i intermediate, L layers): the dense matmuls only,
2*L*(4*h*h + 2*h*i) per computed token (Q, K, V, attention output, FFN up and down) plus the
attention scores and context, 2*L*2*s*h per token at padded length s. Padding within a batch is
computed work and counted; embeddings, layer norms, softmax, GELU and pooling are not.
A variant's matmuls may mix precisions (the int8 variants keep some layers in float): the share
of linear-layer weights per precision is read from the graph (ONNX: MatMulInteger weights; OpenVINO:
the compiled FullyConnected nodes' runtime precision); attention runs in its float precision.
Fraction of peak = achieved time-at-peak / wall time, with each round's own peaks. Every round
measures peaks and all targets in a shuffled order; ratios are taken within the round.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
from rich.console import Console
from rich.table import Table

PRECISION = {"f32": "fp32", "float32": "fp32", "bf16": "bf16", "bfloat16": "bf16"}
PRECISION.update({"u8": "int8", "i8": "int8"})
COLUMNS = "runtime|variant|matmuls|texts/s|tok/text|pad|vs torch fp32|min..max|mean cos"
COLUMNS += "|GFLOP/s|of peak"
FIELDS = ("texts", "real_tokens", "computed_tokens", "linear_flops", "attention_flops")  # per s


def linear_flops_per_token(hidden: int, intermediate: int, layers: int) -> int:
    """Q, K, V, attention output (4 h x h) and FFN up and down (2 h x i), 2 FLOPs per MAC."""
    return 2 * layers * (4 * hidden * hidden + 2 * hidden * intermediate)


def attention_flops_per_token(hidden: int, layers: int, seq_len: int) -> int:
    """Scores (Q K^T) and context (P V): 2 * s * h MACs per token and layer."""
    return 2 * layers * 2 * seq_len * hidden


def batch_flops(shape: dict[str, int], lengths: list[int]) -> tuple[int, int, int, int]:
    """(real tokens, computed tokens, linear FLOPs, attention FLOPs) of one padded batch."""
    h, i, layers = shape["hidden_size"], shape["intermediate_size"], shape["num_hidden_layers"]
    s = max(lengths)
    computed = s * len(lengths)
    linear = computed * linear_flops_per_token(h, i, layers)
    return sum(lengths), computed, linear, computed * attention_flops_per_token(h, layers, s)


def parse_layout(text: str) -> tuple[int, int]:
    """'2x1' -> (2 workers, 1 thread each)."""
    workers, threads = (int(part) for part in text.lower().split("x"))
    if workers < 1 or threads < 1:
        raise ValueError(f"layout {text!r}: workers and threads must be >= 1")
    return workers, threads


def ideal_seconds(
    linear: float, attention: float, mix: dict[str, float], base: str, peaks: dict[str, float]
) -> float:
    """Seconds the FLOPs would take at each precision's peak (FLOP/s)."""
    return sum(linear * share / peaks[p] for p, share in mix.items()) + attention / peaks[base]


# ---- peaks ---------------------------------------------------------------------------------
def _onnx_gemm(n: int, kind: str) -> bytes:
    """An n x n x n GEMM: "float" (MatMul), "matmulinteger" (u8 x s8 -> s32) or "qdq" (NNCF's
    pattern: fake-quantized u8 input times dequantized s8 weights)."""
    from onnx import TensorProto as T
    from onnx import helper as oh

    rng, node, info = np.random.default_rng(0), oh.make_node, oh.make_tensor_value_info
    w_type = T.FLOAT if kind == "float" else T.INT8
    dtype = np.float32 if kind == "float" else np.int8
    w = rng.integers(-99, 99, (n, n)).astype(dtype).tobytes()
    inits = [oh.make_tensor("W", w_type, [n, n], w, raw=True)]
    io = [info("A", T.FLOAT, [n, n]), info("Y", T.FLOAT, [n, n])]
    nodes = [node("MatMul", ["A", "W"], ["Y"])]
    if kind == "matmulinteger":
        io = [info("A", T.UINT8, [n, n]), info("Y", T.INT32, [n, n])]
        nodes = [node("MatMulInteger", ["A", "W"], ["Y"])]
    elif kind == "qdq":
        inits += [oh.make_tensor("s", T.FLOAT, [], [0.01]), oh.make_tensor("z", T.INT8, [], [0])]
        inits += [oh.make_tensor("zu", T.UINT8, [], [128])]
        nodes = [node("QuantizeLinear", ["A", "s", "zu"], ["Aq"])]
        nodes += [node("DequantizeLinear", ["Aq", "s", "zu"], ["Af"])]
        nodes += [node("DequantizeLinear", ["W", "s", "z"], ["Wf"])]
        nodes += [node("MatMul", ["Af", "Wf"], ["Y"])]
    graph = oh.make_graph(nodes, "gemm", io[:1], io[1:], inits)
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)], ir_version=8)
    return model.SerializeToString()


def gemm_probes(threads: int, sizes: list[int], workdir: Path) -> dict[tuple[str, str, int], Any]:
    """(precision, library, n) -> a zero-argument callable running one n x n x n GEMM."""
    import onnxruntime as ort
    import openvino as ov
    import torch

    probes: dict[tuple[str, str, int], Any] = {}
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    ov_config = {"INFERENCE_NUM_THREADS": str(threads), "NUM_STREAMS": "1"}
    core = ov.Core()
    for n in sizes:
        x, y = torch.randn(n, n), torch.randn(n, n)
        xb, yb = x.bfloat16(), y.bfloat16()
        assert torch.matmul(xb, yb).dtype == torch.bfloat16  # really bf16 in and out
        probes["fp32", "torch", n] = lambda x=x, y=y: torch.matmul(x, y)
        probes["bf16", "torch", n] = lambda x=xb, y=yb: torch.matmul(x, y)
        a32 = np.random.default_rng(1).standard_normal((n, n), np.float32)
        a8 = np.random.default_rng(1).integers(0, 120, (n, n), np.uint8)
        for precision, kind, a in (("fp32", "float", a32), ("int8", "matmulinteger", a8)):
            s = ort.InferenceSession(
                _onnx_gemm(n, kind), options, providers=["CPUExecutionProvider"]
            )
            probes[precision, "onnxruntime", n] = lambda s=s, a=a: s.run(None, {"A": a})
        for precision, kind in (("fp32", "float"), ("bf16", "float"), ("int8", "qdq")):
            (path := workdir / f"{kind}-{n}.onnx").write_bytes(_onnx_gemm(n, kind))
            hint = {"INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32"}
            request = core.compile_model(path, "CPU", ov_config | hint).create_infer_request()
            probes[precision, "openvino", n] = lambda r=request, a=a32: r.infer({"A": a})
    return probes


def best_gflops(run: Callable[[], object], n: int, reps: int) -> float:
    run()
    best = float("inf")
    for _ in range(reps):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return 2 * n**3 / best / 1e9


# ---- targets -------------------------------------------------------------------------------
def precision_mix(runtime: str, directory: Path, embedder: Any, linear_weights: int) -> dict:
    """Share of the linear layers' weights per precision, as the runtime will compute them."""
    if runtime == "torch":
        return {PRECISION[embedder.dtype]: 1.0}
    if runtime == "onnx":
        import onnx

        graph = onnx.load(str(directory / "model.onnx")).graph
        sizes = {t.name: int(np.prod(t.dims)) for t in graph.initializer}
        int8 = sum(sizes.get(n.input[1], 0) for n in graph.node if n.op_type == "MatMulInteger")
        return {"int8": int8 / linear_weights, "fp32": 1 - int8 / linear_weights}
    mix: dict[str, float] = {}
    for op in embedder.compiled.get_runtime_model().get_ops():
        info = op.get_rt_info()
        if info["layerType"].astype(str) == "FullyConnected":
            precision = PRECISION[info["runtimePrecision"].astype(str)]
            size = int(np.prod(op.input(1).get_shape()))
            mix[precision] = mix.get(precision, 0) + size
    return {p: size / sum(mix.values()) for p, size in mix.items()}


def corpus_texts(count: int, tokens: int, seed: int) -> list[str]:
    from client.workload import load_corpus

    corpus, rng = load_corpus(), random.Random(seed)
    spans = [corpus.span(rng.randrange(corpus.max_start(tokens)), tokens) for _ in range(count)]
    return [" ".join(corpus.words[a:b]) for a, b in spans]


def throughput(embedder: Any, batches: list, stats: np.ndarray, workers: int, seconds: float):
    """Per second: texts, real tokens, computed tokens, linear FLOPs, attention FLOPs."""
    done = np.zeros(5)
    lock = threading.Lock()
    started = time.perf_counter()

    def loop(k: int) -> None:
        mine, j = np.zeros(5), k * len(batches) // workers
        while time.perf_counter() - started < seconds:
            embedder.embed_tokenized(batches[j % len(batches)])
            mine += stats[j % len(batches)]
            j += 1
        with lock:
            done[:] += mine

    threads = [threading.Thread(target=loop, args=(k,)) for k in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return done / (time.perf_counter() - started)


def run_model(args: argparse.Namespace, model_id: str, console: Console) -> dict:
    import torch

    from embench.config import load_config
    from embench.prepare import prepare_targets
    from server.runtime import create_embedder

    config = load_config()
    wanted = [tuple(t.split(":")) for t in args.targets.split(",")] if args.targets else None
    prepared = prepare_targets(config, model_id, wanted, cache_root=args.cache_dir)
    texts = corpus_texts(args.texts, args.tokens, args.seed)
    targets: dict[str, dict] = {}
    for p in prepared:
        options = p.manifest.runtime_options
        kwargs = {"threads": args.threads, "workers": args.workers, "options": options}
        embedder = create_embedder(p.runtime, p.directory, model_info=p.manifest.model, **kwargs)
        shape = json.loads((p.directory / "config.json").read_text())
        h, i, layers = shape["hidden_size"], shape["intermediate_size"], shape["num_hidden_layers"]
        tokenized = embedder.tokenize(texts)
        base = options.get("inference_precision") or getattr(embedder, "dtype", "f32")
        per_batch = {}
        for b in args.batch:
            batches = [tokenized[k : k + b] for k in range(0, len(tokenized) - b + 1, b)]
            stats = np.array(
                [(len(x), *batch_flops(shape, [t.n_tokens for t in x])) for x in batches]
            )
            per_batch[b] = (batches, stats.astype(float))
        mix = precision_mix(p.runtime, p.directory, embedder, layers * (4 * h * h + 2 * h * i))
        targets[f"{p.runtime}:{p.variant}"] = dict(runtime=p.runtime, variant=p.variant, mix=mix,
            embedder=embedder, batches=per_batch, base=PRECISION[base],
            mean_cosine=p.manifest.parity.mean_cosine)  # fmt: skip
    with tempfile.TemporaryDirectory() as workdir:
        probes = gemm_probes(args.threads * args.workers, args.sizes, Path(workdir))
        for target in targets.values():  # warm-up: first-call allocations, thread pools
            for batches, _ in target["batches"].values():
                target["embedder"].embed_tokenized(batches[0])
        rng, rounds = random.Random(args.seed), []
        for _ in range(args.rounds):
            jobs = [("peak", k) for k in probes] + [(t, b) for t in targets for b in args.batch]
            rng.shuffle(jobs)
            found: dict[Any, Any] = {}
            for name, key in jobs:
                # process-wide: the torch embedders share it; the peaks use all threads
                torch.set_num_threads(args.threads * (args.workers if name == "peak" else 1))
                if name == "peak":
                    found[key] = best_gflops(probes[key], key[2], args.reps)
                else:
                    target = targets[name]
                    found[name, key] = throughput(
                        target["embedder"], *target["batches"][key], args.workers, args.seconds
                    )
            rounds.append(found)
    return report(args, model_id, targets, probes, rounds, console)


def report(args, model_id, targets, probes, rounds, console) -> dict:
    peaks = [
        {p: max(r[k] for k in probes if k[0] == p) * 1e9 for p in ("fp32", "bf16", "int8")}
        for r in rounds
    ]
    table = Table(title=f"GEMM peaks, {args.threads * args.workers} threads, best over rounds")
    for column in ("precision", "library", "n", "GFLOP/s (GOP/s int8)"):
        table.add_column(column, justify="left" if column in ("precision", "library") else "right")
    for key in probes:
        table.add_row(*key[:2], str(key[2]), f"{max(r[key] for r in rounds):.0f}")
    console.print(table)
    out: dict[str, Any] = {
        "model": model_id,
        "peaks_gflops": [{p: v / 1e9 for p, v in pk.items()} for pk in peaks],
        "targets": {},
    }
    for b in args.batch:
        title = f"{model_id}: batch {b}, {args.workers} workers x {args.threads} threads"
        table = Table(title=f"{title}, median of {args.rounds} interleaved rounds")
        for column in COLUMNS.split("|"):
            table.add_column(column, justify="left" if column in COLUMNS[:15] else "right")
        for name, t in targets.items():
            rates = [r[name, b] for r in rounds]
            base = [r.get(("torch:fp32", b)) for r in rounds]
            ratios = [x[0] / y[0] for x, y in zip(rates, base, strict=True) if y is not None]
            fraction = [
                ideal_seconds(x[3], x[4], t["mix"], t["base"], pk)
                for x, pk in zip(rates, peaks, strict=True)
            ]
            med = lambda k, rates=rates: statistics.median(x[k] for x in rates)  # noqa: E731
            mix = " ".join(f"{p} {s:.0%}" for p, s in sorted(t["mix"].items()) if s > 0.005)
            ratio = f"{statistics.median(ratios):.2f}" if ratios else "-"
            spread = f"{min(ratios):.2f}..{max(ratios):.2f}" if ratios else "-"
            total = t["batches"][b][1].sum(axis=0)  # the text set's own tokens and padding
            tokens, pad = f"{total[1] / total[0]:.1f}", f"{total[2] / total[1]:.2f}"
            table.add_row(t["runtime"], t["variant"], mix, f"{med(0):.0f}", tokens, pad, ratio,
                spread, f"{t['mean_cosine']:.5f}", f"{(med(3) + med(4)) / 1e9:.0f}",
                f"{statistics.median(fraction):.0%}")  # fmt: skip
            figures = out["targets"].setdefault(name, {"mix": t["mix"], "cos": t["mean_cosine"]})
            figures[f"batch_{b}"] = {
                "per_round": [dict(zip(FIELDS, map(float, x), strict=True)) for x in rates],
                "ratio_to_torch_fp32": ratios,
                "fraction_of_peak": fraction,
            }
        console.print(table)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="all-minilm-l6-v2")
    parser.add_argument("--targets", help="runtime:variant,... (default: all of each model)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--layout", help="WxT: W workers of T threads (overrides --threads)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--batch", default="32,1")
    parser.add_argument("--sizes", default="1024,2048", help="GEMM sizes for the peaks")
    parser.add_argument("--reps", type=int, default=5, help="GEMM calls per peak, best taken")
    parser.add_argument("--texts", type=int, default=512)
    parser.add_argument("--tokens", type=int, default=30, help="corpus tokens per text")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache-dir", type=Path)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    args.workers, args.threads = parse_layout(args.layout) if args.layout else (1, args.threads)
    args.batch = [int(b) for b in args.batch.split(",")]
    args.sizes = [int(n) for n in args.sizes.split(",")]
    console = Console(width=160)
    results = [run_model(args, m, console) for m in args.models.split(",")]
    if args.json:
        print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
