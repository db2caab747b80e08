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
    """Dynamic int8 quantization, after smoothing the activations when the settings ask for it
    (src's directory holds the tokenizer the calibration needs); returns the names of the
    nodes kept in fp32."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    pattern = re.compile(settings["exclude_nodes_matching"])
    model = onnx.load(str(src))
    excluded = [node.name for node in model.graph.node if pattern.search(node.name)]
    smooth = settings.get("smooth_activations")
    with quiet_logging():
        if smooth and "MatMul" in settings["op_types"]:
            feeds = calibration_feeds(src.parent, smooth)
            smooth_activations(model, set(excluded), feeds, smooth["alpha"])
        quantize_dynamic(
            model,
            str(dst),
            weight_type=getattr(QuantType, settings["weight_type"]),
            per_channel=settings["per_channel"],
            reduce_range=settings["reduce_range"],
            op_types_to_quantize=settings["op_types"],
            nodes_to_exclude=excluded,
        )
    return excluded


def smooth_activations(
    model: Any, excluded: set[str], feeds: list[dict[str, Any]], alpha: float
) -> int:
    """SmoothQuant (Xiao et al., 2023) for the MatMuls with a 2-D fp32 weight that are not
    excluded: per input channel j, the activation is divided by
    s_j = max|x_j|^alpha / max|w_j|^(1 - alpha) (one Mul inserted per input tensor, max|x_j|
    measured on `feeds`) and weight row j multiplied by it. The product is unchanged in fp32,
    but the activation outlier channels, which set the per-tensor step of dynamic int8, move
    into the weights, quantized per output channel. Edits `model` in place; returns the number
    of MatMuls smoothed."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    graph = model.graph
    initializers = {tensor.name: tensor for tensor in graph.initializer}
    uses: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    groups: dict[str, list[Any]] = {}  # activation tensor -> the MatMuls that read it
    for node in graph.node:
        weight = initializers.get(node.input[1]) if node.op_type == "MatMul" else None
        if (
            weight is not None
            and node.name not in excluded
            and len(weight.dims) == 2
            and weight.data_type == onnx.TensorProto.FLOAT
            and uses[weight.name] == 1  # a shared weight would change for its other readers
        ):
            groups.setdefault(node.input[0], []).append(node)
    if not groups:
        return 0

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.output[:]
    probe.graph.output.extend(onnx.helper.make_empty_tensor_value_info(name) for name in groups)
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    del probe
    inputs = {port.name for port in session.get_inputs()}
    names = list(groups)
    act_max: dict[str, Any] = {}
    for feed in feeds:
        outputs = session.run(names, {k: v for k, v in feed.items() if k in inputs})
        for name, x in zip(names, outputs, strict=True):
            # Over every position, padding included: dynamic int8 sees the whole tensor too.
            channel_max = np.abs(x.reshape(-1, x.shape[-1])).max(axis=0)
            act_max[name] = np.maximum(act_max.get(name, channel_max), channel_max)
    del session

    pending: dict[str, Any] = {}  # smoothed tensor -> the Mul that makes it
    for name, nodes in groups.items():
        weights = [numpy_helper.to_array(initializers[node.input[1]]) for node in nodes]
        w_max = np.max([np.abs(w).max(axis=1) for w in weights], axis=0)
        scale = (
            np.maximum(act_max[name], 1e-5) ** alpha / np.maximum(w_max, 1e-5) ** (1 - alpha)
        ).astype(np.float32)
        inverse = numpy_helper.from_array(1 / scale, name=f"{name}_smooth_scale")
        graph.initializer.append(inverse)
        smoothed = f"{name}_smoothed"
        pending[smoothed] = onnx.helper.make_node(
            "Mul", [name, inverse.name], [smoothed], name=f"{nodes[0].name}_smooth"
        )
        for node, weight in zip(nodes, weights, strict=True):
            node.input[0] = smoothed
            initializers[node.input[1]].CopyFrom(
                numpy_helper.from_array(weight * scale[:, None], name=node.input[1])
            )
    # Each Mul goes right before the first MatMul that reads it: the order stays topological.
    ordered = []
    for node in graph.node:
        if node.input and node.input[0] in pending:
            ordered.append(pending.pop(node.input[0]))
        ordered.append(node)
    del graph.node[:]
    graph.node.extend(ordered)
    return sum(len(nodes) for nodes in groups.values())


def calibration_feeds(model_dir: Path, settings: dict[str, Any]) -> list[dict[str, Any]]:
    """The exported model's inputs for the calibration texts (the load client's corpus, never
    the parity texts), in padded batches as the server feeds them; `settings` name the count
    (calibration_texts), the batch size (calibration_batch) and the seed. Inputs a model lacks
    (MPNet has no token_type_ids) are dropped by each consumer."""
    import numpy as np
    from tokenizers import Tokenizer

    from embench.prepare.parity import calibration_texts
    from server.runtime.base import pad_batch
    from server.runtime.tokenizer import pad_token_id, tokenize

    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tokenizer.no_padding()  # the export's truncation at max_seq_length stays
    texts = calibration_texts(settings["calibration_texts"], settings["seed"])
    size = settings["calibration_batch"]
    feeds = []
    for start in range(0, len(texts), size):
        batch = tokenize(tokenizer, texts[start : start + size])
        ids, mask = pad_batch(batch, pad_token_id(tokenizer))
        feeds.append(
            {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        )
    return feeds


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
