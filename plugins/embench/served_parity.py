"""The parity gate through a server's API: before a target is measured, the vectors it serves
for the parity texts must match the PyTorch reference its prepared entry keeps. For a peer
(infinity-emb, an external server) this is the only proof that it computes the same model;
for ours it checks the served path (batching, padding, truncation) beyond the in-process gate.
A report therefore never compares a server that returns wrong vectors."""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from client.scenario import ENDPOINT_PATHS
from embench.config import AppConfig
from embench.errors import ParityError
from embench.peers import endpoint_of, precision_of, request_model_of
from embench.prepare.parity import (
    PARITY_BATCH_SIZE,
    REFERENCE_FILE,
    ParityResult,
    check_parity,
    parity_texts,
)
from embench.prepare.variants import PARITY_GATES, ParityGate

log = logging.getLogger(__name__)

# One label of the result: the served check's figures, as JSON (labels are strings).
SERVED_PARITY_LABEL = "served_parity"


def served_vectors(
    base_url: str,
    endpoint: str,
    texts: list[str],
    request_model: str | None = None,
    timeout_s: float = 60.0,
) -> np.ndarray:
    """The server's embeddings of `texts`, asked in batches as a client would."""
    url = base_url.rstrip("/") + ENDPOINT_PATHS[endpoint]
    rows: list[list[float]] = []
    for start in range(0, len(texts), PARITY_BATCH_SIZE):
        batch = texts[start : start + PARITY_BATCH_SIZE]
        body: dict[str, object] = {"texts": batch} if endpoint == "embed" else {"input": batch}
        if request_model and endpoint == "openai":
            body["model"] = request_model
        request = urllib.request.Request(
            url, data=json.dumps(body).encode(), headers={"content-type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:
                doc = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:300].decode(errors="replace")
            raise ParityError(f"the parity check got HTTP {exc.code} from {url}: {detail}") from exc
        except (OSError, ValueError) as exc:
            raise ParityError(f"the parity check got no answer from {url}: {exc}") from None
        rows.extend(_embeddings(doc, endpoint, len(batch), url))
    return np.asarray(rows, dtype=np.float64)


def _embeddings(doc: object, endpoint: str, expected: int, url: str) -> list[list[float]]:
    try:
        if endpoint == "embed":
            vectors = doc["embeddings"]  # type: ignore[index]
        else:  # OpenAI: data[i].embedding, in the order of data[i].index
            data = sorted(doc["data"], key=lambda item: item.get("index", 0))  # type: ignore[index]
            vectors = [item["embedding"] for item in data]
    except (KeyError, TypeError, AttributeError):
        raise ParityError(
            f"the answer of {url} is not an {endpoint} embeddings response: {str(doc)[:300]}"
        ) from None
    if len(vectors) != expected:
        raise ParityError(f"{url} answered {len(vectors)} embeddings for {expected} texts")
    return list(vectors)


def check_served_parity(
    base_url: str,
    endpoint: str,
    model_dir: Path,
    gate: ParityGate,
    what: str,
    request_model: str | None = None,
) -> ParityResult:
    """Raise ParityError unless the served vectors pass `gate` against the entry's reference."""
    reference = np.load(Path(model_dir) / REFERENCE_FILE)
    texts = parity_texts()
    if len(reference) != len(texts):
        raise ParityError(
            f"{model_dir / REFERENCE_FILE} holds {len(reference)} vectors for {len(texts)} "
            "parity texts: prepare the model again"
        )
    served = served_vectors(base_url, endpoint, texts, request_model)
    if served.shape != reference.shape:
        raise ParityError(
            f"{what} serves vectors of shape {served.shape[1:]}, the reference has "
            f"{reference.shape[1:]}: is it serving another model?"
        )
    result = check_parity(served, reference, gate)
    if not result.passed:
        raise ParityError(
            f"{what} failed the parity gate through its API, so it is not measured: "
            f"{result.describe()}"
        )
    log.info("%s passed the parity gate through its API: %s", what, result.describe())
    return result


def parity_label(result: ParityResult) -> dict[str, str]:
    """The label that records the check in the result."""
    doc = {
        "through": "api",
        "texts": len(result.cosines),
        "mean_cosine": result.mean,
        "min_cosine": result.min,
        "gate_mean": result.gate.mean_cosine,
        "gate_min": result.gate.min_cosine,
        "passed": result.passed,
    }
    return {SERVED_PARITY_LABEL: json.dumps(doc, sort_keys=True)}


def parity_from_labels(labels: dict[str, str] | None) -> dict[str, object] | None:
    """The check's figures back from a result's labels (None when it has none)."""
    raw = (labels or {}).get(SERVED_PARITY_LABEL)
    try:
        doc = json.loads(raw) if raw else None
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def check_target_parity(
    target: dict[str, Any], url: str, server: str, config: AppConfig
) -> ParityResult:
    """The gate of a prepared target, through the API the load client will use at `url`."""
    runtime, variant = target["runtime"], target["variant"]
    return check_served_parity(
        url,
        endpoint_of(runtime),
        Path(target["model_dir"]),
        PARITY_GATES[precision_of(target, config)],
        f"{target['model']} on {runtime}/{variant} ({server})",
        request_model_of(target, config),
    )
