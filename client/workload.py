"""The workload: texts of a target token length cut from a corpus shipped in the package.

Texts are contiguous word spans of client/data/corpus.txt.gz (prose from the Python standard
library's docstrings, PSF license; made by scripts/make_corpus.py), cut at a seeded random
start and ended once the span reaches the length bucket's target token count.

With the model's tokenizer.json (the pipeline always passes the prepared model's), lengths
are EXACT: every distinct word of the corpus is tokenized once (without special tokens), and
spans are cut on the prefix sums of those counts. For tokenizers that split on whitespace
before their subword model (BERT WordPiece, MPNet) a text's count is the sum of its words'
counts, so a span holds exactly what the bucket asks for; each text is also counted whole,
and that count is what a request reports.

Without one, token counts are an APPROXIMATION: each whitespace word is split into letter
runs, digits and punctuation marks; a letter run counts 1 + (len-1)//7 tokens, every digit or
mark 1 (on this corpus 0.88-1.13 of MiniLM's WordPiece count per 32-token text). The counter
in use is recorded in every result (`token_counter`) and is part of the scenario definition.

By default every text of a run is unique (a server-side cache cannot flatter the result); a
repeat mode cycles a small pool of requests, for testing caches.
"""

from __future__ import annotations

import bisect
import gzip
import hashlib
import itertools
import json
import random
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from client.scenario import LENGTH_BUCKET_TOKENS, ClientOptions, ScenarioParams

try:  # orjson is faster; the stdlib is enough
    import orjson

    def dumps(obj: object) -> bytes:
        return orjson.dumps(obj)

except ImportError:  # pragma: no cover - depends on the environment

    def dumps(obj: object) -> bytes:
        return json.dumps(obj, separators=(",", ":")).encode()


CORPUS_PATH = Path(__file__).resolve().parent / "data" / "corpus.txt.gz"
APPROX_COUNTER = "approx-v1"
# Words costing more (long numbers, URLs: under 0.1% of the corpus) are left out, so that a
# text overshoots its bucket's target by a few tokens at most.
MAX_WORD_TOKENS = 10
_PIECE = re.compile(r"[A-Za-z]+|[^\sA-Za-z]")


def approx_word_tokens(word: str) -> int:
    n = 0
    for piece in _PIECE.findall(word):
        n += 1 + (len(piece) - 1) // 7 if piece[0].isalpha() else 1
    return n


def approx_tokens(text: str) -> int:
    return sum(approx_word_tokens(w) for w in text.split())


@dataclass(frozen=True)
class Corpus:
    words: list[str]
    cum: list[int]  # cum[i] = tokens of words[:i] (by the counter the prefix sums came from)
    sha256: str
    path: str

    @property
    def total_tokens(self) -> int:
        return self.cum[-1]

    def max_start(self, target_tokens: int) -> int:
        """The last start index from which a full span of `target_tokens` fits."""
        return bisect.bisect_right(self.cum, self.cum[-1] - target_tokens) - 1

    def span(self, start: int, target_tokens: int) -> tuple[int, int]:
        """The shortest span from `start` with at least `target_tokens` tokens."""
        end = bisect.bisect_left(self.cum, self.cum[start] + target_tokens, lo=start + 1)
        return start, min(end, len(self.words))

    def counted_by(self, word_tokens: Callable[[list[str]], list[int]]) -> Corpus:
        """The words with prefix sums from another counter (each distinct word counted once);
        words that counter makes long are left out, as load_corpus does by its own count."""
        distinct = sorted(set(self.words))
        per_word = dict(zip(distinct, word_tokens(distinct), strict=True))
        words = [w for w in self.words if per_word[w] <= MAX_WORD_TOKENS]
        return Corpus(words, _prefix_sums(per_word[w] for w in words), self.sha256, self.path)


def _prefix_sums(counts: Iterable[int]) -> list[int]:
    return [0, *itertools.accumulate(counts)]


@lru_cache(maxsize=4)
def load_corpus(path: str | None = None) -> Corpus:
    file = Path(path) if path else CORPUS_PATH
    raw = file.read_bytes()
    text = gzip.decompress(raw).decode("utf-8")
    words = [
        w
        for line in text.splitlines()
        if line and not line.startswith("#")
        for w in line.split()
        if approx_word_tokens(w) <= MAX_WORD_TOKENS
    ]
    if len(words) < 10_000:
        raise ValueError(f"corpus {file} has only {len(words)} words")
    return Corpus(
        words,
        _prefix_sums(approx_word_tokens(w) for w in words),
        hashlib.sha256(raw).hexdigest(),
        str(file),
    )


class TokenCounter:
    """Approximate by default; exact with a tokenizer.json (needs the `tokenizers` package)."""

    def __init__(self, tokenizer_json: str | None = None) -> None:
        self._tokenizer: Any = None
        self.name = APPROX_COUNTER
        if tokenizer_json:
            try:
                from tokenizers import Tokenizer
            except ImportError as exc:
                raise ValueError("--tokenizer needs the 'tokenizers' package installed") from exc
            path = Path(tokenizer_json)
            if not path.is_file():
                raise ValueError(f"tokenizer file not found: {path}")
            try:
                tok = Tokenizer.from_file(str(path))
            except Exception as exc:  # the library raises a bare Exception on a bad file
                raise ValueError(f"tokenizer file {path} cannot be read: {exc}") from None
            tok.no_padding()
            tok.no_truncation()
            self._tokenizer = tok
            digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
            self.name = f"tokenizer-json:{digest}"

    @property
    def exact(self) -> bool:
        return self._tokenizer is not None

    def count(self, text: str) -> int:
        if self._tokenizer is None:
            return approx_tokens(text)
        return len(self._tokenizer.encode(text, add_special_tokens=False).ids)

    def count_words(self, words: list[str]) -> list[int]:
        if self._tokenizer is None:
            return [approx_word_tokens(w) for w in words]
        encoded = self._tokenizer.encode_batch(words, add_special_tokens=False)
        return [len(e.ids) for e in encoded]

    def corpus(self, corpus: Corpus) -> Corpus:
        """The corpus with prefix sums by this counter (cut spans to exact lengths)."""
        return corpus.counted_by(self.count_words) if self.exact else corpus


@dataclass(frozen=True, slots=True)
class PreparedRequest:
    body: bytes
    n_texts: int
    n_tokens: int


class TextSource:
    """Unique texts for a whole run: one seen-set shared by all scenarios and warm-ups."""

    def __init__(self, corpus: Corpus, counter: TokenCounter) -> None:
        self.corpus = counter.corpus(corpus)
        self.counter = counter
        self._seen: set[int] = set()

    def text(self, rng: random.Random, target_tokens: int) -> tuple[str, int]:
        c = self.corpus
        for attempt in range(12):
            if attempt == 0:
                s, e = c.span(rng.randrange(c.max_start(target_tokens)), target_tokens)
                words = c.words[s:e]
                counted = c.cum[e] - c.cum[s]
            else:  # a collision: join two half-length spans (about n_words^2 combinations)
                half = max(1, target_tokens // 2)
                s1, e1 = c.span(rng.randrange(c.max_start(half)), half)
                rest = target_tokens - half
                s2, e2 = c.span(rng.randrange(c.max_start(rest)), rest)
                words = c.words[s1:e1] + c.words[s2:e2]
                counted = c.cum[e1] - c.cum[s1] + c.cum[e2] - c.cum[s2]
            text = " ".join(words)
            key = hash(text)
            if key not in self._seen:
                self._seen.add(key)
                # exact: the whole text's own count (what the server sees); approximate: the
                # prefix sums already hold it
                return text, self.counter.count(text) if self.counter.exact else counted
        raise RuntimeError("could not draw a unique text (corpus exhausted)")  # pragma: no cover

    @property
    def texts_drawn(self) -> int:
        return len(self._seen)


class Workload:
    """The request stream of one scenario (warm-up included), seeded by (seed, scenario)."""

    def __init__(self, source: TextSource, params: ScenarioParams, options: ClientOptions) -> None:
        self.source = source
        self.n_texts = params.texts_per_request
        self.target_tokens = LENGTH_BUCKET_TOKENS[params.length_bucket]
        self.endpoint = options.endpoint
        self.request_model = options.request_model
        seed_doc = f"{options.seed}:{params.name}".encode()
        self.rng = random.Random(int.from_bytes(hashlib.sha256(seed_doc).digest()[:8], "big"))
        self._pool: list[PreparedRequest] = []
        self._i = 0
        if options.text_mode == "repeat":
            self._pool = [self._make() for _ in range(options.repeat_pool)]

    def _make(self) -> PreparedRequest:
        texts: list[str] = []
        tokens = 0
        for _ in range(self.n_texts):
            t, n = self.source.text(self.rng, self.target_tokens)
            texts.append(t)
            tokens += n
        doc: dict[str, object] = {"texts": texts} if self.endpoint == "embed" else {"input": texts}
        if self.request_model and self.endpoint == "openai":
            doc["model"] = self.request_model
        return PreparedRequest(dumps(doc), self.n_texts, tokens)

    def next(self) -> PreparedRequest:
        if self._pool:
            req = self._pool[self._i % len(self._pool)]
            self._i += 1
            return req
        return self._make()
