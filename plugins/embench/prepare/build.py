"""Build steps: export with optimum, optimize with ONNX Runtime, quantize dynamically to int8.

Heavy libraries are imported inside the functions, so a cache hit never pays for them."""

from __future__ import annotations

import json
import logging
import re
import shutil
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# Files that travel with every variant besides model.onnx.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "config.json",
)


@contextmanager
def quiet_logging(level: int = logging.ERROR) -> Iterator[None]:
    """The exporter, optimizer and quantizer log chatty INFO lines through the root logger."""
    root = logging.getLogger()
    previous = root.level
    root.setLevel(level)
    try:
        yield
    finally:
        root.setLevel(previous)


def export_onnx(
    source_dir: Path, out_dir: Path, settings: dict[str, Any], max_seq_length: int
) -> None:
    """Export the transformer to out_dir/model.onnx with its tokenizer files."""
    from optimum.exporters.onnx import main_export

    with quiet_logging(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about shapes the export handles
        main_export(
            model_name_or_path=str(source_dir),
            output=out_dir,
            task=settings["task"],
            opset=settings["opset"],
            library_name=settings["library_name"],
            local_files_only=True,
            do_validation=False,
        )
    fix_tokenizer(out_dir / "tokenizer.json", max_seq_length)


def fix_tokenizer(path: Path, max_seq_length: int) -> None:
    """Remove the fixed 128-token padding the exporter bakes in, truncate at max_seq_length."""
    document = json.loads(path.read_text(encoding="utf-8"))
    document["padding"] = None
    truncation = document.get("truncation") or {
        "direction": "Right",
        "strategy": "LongestFirst",
        "stride": 0,
    }
    truncation["max_length"] = max_seq_length
    document["truncation"] = truncation
    path.write_text(json.dumps(document, ensure_ascii=False), encoding="utf-8")


def copy_tokenizer_files(src_dir: Path, dst_dir: Path) -> None:
    for name in TOKENIZER_FILES:
        if (src_dir / name).is_file():
            shutil.copy2(src_dir / name, dst_dir / name)


def optimize_onnx(src: Path, dst: Path, settings: dict[str, Any], model_type: str) -> None:
    from onnxruntime.transformers.optimizer import optimize_model

    # The transformer fusions know BERT-like encoders; others get ONNX Runtime's generic passes.
    bert_like = model_type in {"bert", "roberta", "xlm-roberta", "mpnet", "distilbert", "electra"}
    with quiet_logging():
        optimized = optimize_model(
            str(src),
            model_type="bert" if bert_like else model_type,
            opt_level=settings["opt_level"],
            use_gpu=False,
            only_onnxruntime=not bert_like,
        )
        optimized.save_model_to_file(str(dst))


def quantize_onnx(src: Path, dst: Path, settings: dict[str, Any]) -> list[str]:
    """Dynamic int8 quantization; returns the names of the nodes kept in fp32."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    pattern = re.compile(settings["exclude_nodes_matching"])
    graph = onnx.load(str(src), load_external_data=False).graph
    excluded = [node.name for node in graph.node if pattern.search(node.name)]
    with quiet_logging():
        quantize_dynamic(
            str(src),
            str(dst),
            weight_type=getattr(QuantType, settings["weight_type"]),
            per_channel=settings["per_channel"],
            reduce_range=settings["reduce_range"],
            op_types_to_quantize=settings["op_types"],
            nodes_to_exclude=excluded,
        )
    return excluded


def hf_model_type(source_dir: Path) -> str:
    config = json.loads((source_dir / "config.json").read_text(encoding="utf-8"))
    return str(config.get("model_type", "unknown"))
