"""What every runtime that runs the bare transformer shares: the model's own tokenizer, batches
padded to their longest text, then pooling and normalization by the shared code. A runtime
supplies only the forward pass (`hidden_states`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from server.manifest import ModelInfo
from server.pooling import l2_normalize, pool
from server.runtime.base import TokenizedText, pad_batch
from server.runtime.tokenizer import load_tokenizer, pad_token_id, tokenize


class BareTransformerEmbedder:
    def __init__(self, model_dir: Path, model_info: ModelInfo) -> None:
        self.model_dir = Path(model_dir)
        self.max_seq_length = model_info.max_seq_length
        self.embedding_dim = model_info.embedding_dim
        self.pooling = model_info.pooling
        self.normalize = model_info.normalize
        self.tokenizer = load_tokenizer(self.model_dir, self.max_seq_length)
        self.pad_id = pad_token_id(self.tokenizer)

    input_names: set[str]  # the graph's inputs, set by the runtime

    def hidden_states(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """Token states (batch, seq, dim) of the padded batch."""
        raise NotImplementedError

    def feed(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> dict[str, np.ndarray]:
        """The graph's inputs: token_type_ids (all zero) only where the model has them."""
        feed = {"input_ids": input_ids, "attention_mask": attention_mask}
        if "token_type_ids" in self.input_names:
            feed["token_type_ids"] = np.zeros_like(input_ids)
        return feed

    def tokenize(self, texts: list[str]) -> list[TokenizedText]:
        return tokenize(self.tokenizer, texts)

    def embed_tokenized(self, batch: list[TokenizedText]) -> np.ndarray:
        input_ids, attention_mask = pad_batch(batch, self.pad_id)
        vectors = pool(self.hidden_states(input_ids, attention_mask), attention_mask, self.pooling)
        if self.normalize:
            vectors = l2_normalize(vectors)
        return vectors.astype(np.float32, copy=False)

    def embed(self, texts: list[str]) -> np.ndarray:
        return self.embed_tokenized(self.tokenize(texts))
