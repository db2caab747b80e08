"""PyTorch baseline: sentence-transformers running the source model, the way its authors run it.

Tokenization is the same `tokenizers` code as the ONNX runtime (the source directory's
tokenizer.json, truncated to max_seq_length, unpadded), so both runtimes see identical ids;
the forward pass, pooling and normalization are sentence-transformers' own modules."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from server.manifest import ModelInfo
from server.pooling import l2_normalize
from server.runtime.base import TokenizedText, pad_batch
from server.runtime.tokenizer import load_tokenizer, pad_token_id, tokenize


def is_sentence_transformers_dir(path: Path) -> bool:
    return (path / "modules.json").is_file() or (
        path / "config_sentence_transformers.json"
    ).is_file()


class TorchEmbedder:
    runtime = "torch"

    def __init__(
        self,
        source_dir: Path,
        *,
        intra_op_threads: int | None = None,
        inter_op_threads: int | None = None,
        model_info: ModelInfo | None = None,
        dtype: str = "float32",
    ) -> None:
        """`dtype` float32 or bfloat16: the weights and the forward pass in that type (bf16
        where the CPU computes it natively: AMX or AVX512-BF16), pooling included."""
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        import torch
        from sentence_transformers import SentenceTransformer

        self._torch = torch
        if intra_op_threads:
            torch.set_num_threads(intra_op_threads)
        if inter_op_threads and torch.get_num_interop_threads() != inter_op_threads:
            try:  # PyTorch allows it once per process, before any inter-op work
                torch.set_num_interop_threads(inter_op_threads)
            except RuntimeError as exc:
                raise ValueError(
                    f"inter_op_threads={inter_op_threads}: PyTorch's inter-op pool is already "
                    f"{torch.get_num_interop_threads()} threads in this process ({exc})"
                ) from None
        self.runtime_version = torch.__version__
        self.model_dir = Path(source_dir)
        self.model = SentenceTransformer(str(self.model_dir), device="cpu")
        self.model.eval()
        self.dtype = dtype
        if dtype != "float32":
            self.model.to(getattr(torch, dtype))
        if model_info is not None:
            self.max_seq_length = model_info.max_seq_length
            self.embedding_dim = model_info.embedding_dim
            self.normalize = model_info.normalize
        else:
            self.max_seq_length = int(self.model.max_seq_length)
            self.embedding_dim = int(self.model.get_sentence_embedding_dimension() or 0)
            self.normalize = any(
                type(module).__name__ == "Normalize" for module in self.model.children()
            )
        self.model.max_seq_length = self.max_seq_length
        self.tokenizer = load_tokenizer(self.model_dir, self.max_seq_length)
        self.pad_id = pad_token_id(self.tokenizer)
        self.intra_op_threads = torch.get_num_threads()
        self.inter_op_threads = torch.get_num_interop_threads()

    def tokenize(self, texts: list[str]) -> list[TokenizedText]:
        return tokenize(self.tokenizer, texts)

    def embed_tokenized(self, batch: list[TokenizedText]) -> np.ndarray:
        torch = self._torch
        input_ids, attention_mask = pad_batch(batch, self.pad_id)
        features = {
            "input_ids": torch.from_numpy(input_ids),
            "attention_mask": torch.from_numpy(attention_mask),
            "token_type_ids": torch.zeros_like(torch.from_numpy(input_ids)),
        }
        with torch.inference_mode():
            out = self.model(features)["sentence_embedding"]
        vectors = out.float().numpy()
        if self.normalize:
            vectors = l2_normalize(vectors)
        return vectors.astype(np.float32, copy=False)

    def embed(self, texts: list[str]) -> np.ndarray:
        return self.embed_tokenized(self.tokenize(texts))
