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


OPENVINO_XML = "openvino_model.xml"
OPENVINO_BIN = "openvino_model.bin"
# Weights a sentence-transformers directory may carry in other formats than safetensors, and
# other runtimes' exports some hub repositories include: none of them is what torch loads.
NOT_TORCH_WEIGHTS = ("pytorch_model.bin", "tf_model.h5", "flax_model.msgpack", "rust_model.ot")
OTHER_RUNTIME_DIRS = ("onnx", "openvino")


def copy_sentence_transformers(source_dir: Path, dst_dir: Path) -> None:
    """The sentence-transformers directory as torch loads it, without other formats' weights."""
    has_safetensors = (source_dir / "model.safetensors").is_file()

    def ignore(directory: str, names: list[str]) -> list[str]:
        skipped = [n for n in names if n in OTHER_RUNTIME_DIRS or n.startswith(".")]
        if has_safetensors and Path(directory) == source_dir:
            skipped += [n for n in names if n in NOT_TORCH_WEIGHTS]
        return skipped

    shutil.copytree(source_dir, dst_dir, ignore=ignore, dirs_exist_ok=True)


def convert_openvino(onnx_path: Path, dst_dir: Path, settings: dict[str, Any]) -> None:
    """The ONNX export as OpenVINO IR (openvino_model.xml + .bin) in dst_dir."""
    import openvino as ov

    model = ov.convert_model(str(onnx_path))
    ov.save_model(model, str(dst_dir / OPENVINO_XML), compress_to_fp16=settings["compress_to_fp16"])


def quantize_openvino(
    xml_path: Path, dst_dir: Path, settings: dict[str, Any], feeds: list[dict[str, Any]]
) -> list[str]:
    """Static int8 of an OpenVINO IR with NNCF, calibrated on `feeds` (the model's inputs;
    those the model lacks, such as MPNet's token_type_ids, are dropped); returns the names of
    the nodes kept out of quantization."""
    import nncf
    import openvino as ov

    model = ov.Core().read_model(str(xml_path))
    inputs = {port.get_any_name() for port in model.inputs}
    feeds = [{k: v for k, v in feed.items() if k in inputs} for feed in feeds]
    pattern = re.compile(settings["exclude_nodes_matching"])
    excluded = [
        op.get_friendly_name() for op in model.get_ops() if pattern.search(op.get_friendly_name())
    ]
    with quiet_logging(), _nncf_quiet():
        quantized = nncf.quantize(
            model,
            nncf.Dataset(feeds),
            model_type=getattr(nncf.ModelType, settings["model_type"].upper()),
            subset_size=len(feeds),
            ignored_scope=nncf.IgnoredScope(names=excluded),
        )
    ov.save_model(quantized, str(dst_dir / OPENVINO_XML), compress_to_fp16=False)
    return excluded


@contextmanager
def _nncf_quiet() -> Iterator[None]:
    """NNCF logs every node it treats specially through its own logger, at INFO."""
    from nncf.common.logging import nncf_logger

    previous = nncf_logger.level
    nncf_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        nncf_logger.setLevel(previous)
