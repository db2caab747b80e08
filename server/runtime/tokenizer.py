"""The tokenizer shared by every runtime: the model's own tokenizer.json (HF `tokenizers`),
truncated to the model's max_seq_length and never padded (batches are padded by the runtime to
their own longest text)."""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer

from server.runtime.base import TokenizedText


def load_tokenizer(model_dir: Path, max_seq_length: int) -> Tokenizer:
    tokenizer = Tokenizer.from_file(str(Path(model_dir) / "tokenizer.json"))
    # Exported tokenizers pad every input to a fixed length; batches are padded by us instead.
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=max_seq_length)
    return tokenizer


def pad_token_id(tokenizer: Tokenizer) -> int:
    return tokenizer.token_to_id("[PAD]") or 0


def tokenize(tokenizer: Tokenizer, texts: list[str]) -> list[TokenizedText]:
    # encode_batch, even for one text: unlike encode() it releases the GIL while it works, so
    # the server's tokenizer thread does not stall the event loop (same cost per text).
    encodings = tokenizer.encode_batch(texts)
    return [TokenizedText(ids=e.ids, truncated=bool(e.overflowing)) for e in encodings]
