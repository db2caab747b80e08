"""Fixtures of the server tests: a fake runtime (fast, controllable), in-process apps over httpx's
ASGI transport, and the prepared real model (through the shared `prepared_minilm` fixture)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest

from server.app import create_app
from server.config import ServerSettings
from server.model import LoadedModel, ModelSpec
from server.runtime.base import TokenizedText

FAKE_DIM = 16
FAKE_MAX_SEQ = 32
CLS, SEP = 101, 102


def fake_vector(text: str) -> np.ndarray:
    """The fake runtime's embedding of a text: a unit vector derived from its (truncated) words."""
    words = text.split()[: FAKE_MAX_SEQ - 2]
    seed = int.from_bytes(hashlib.sha256(" ".join(words).encode()).digest()[:8], "little")
    vector = np.random.default_rng(seed).standard_normal(FAKE_DIM).astype(np.float32)
    return vector / np.linalg.norm(vector)


class FakeEmbedder:
    """Whitespace tokenizer plus hash vectors. It records every batch, can hold the worker at a
    gate, fails any batch that holds a text containing FAIL, takes `slow_tokenize_s` to
    tokenize a text containing SLOW and raises on one containing BADTOKEN."""

    runtime = "fake"
    runtime_version = "0.0"
    embedding_dim = FAKE_DIM
    max_seq_length = FAKE_MAX_SEQ

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self.slow_tokenize_s = 0.0
        self.tokenize_calls: list[list[str]] = []
        self.batches: list[list[str]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()  # set when a batch reached the gate
        self._vocab: dict[int, str] = {}
        self._lock = threading.Lock()
        self.running = 0  # batches computing right now
        self.max_running = 0

    def tokenize(self, texts: list[str]) -> list[TokenizedText]:
        self.tokenize_calls.append(list(texts))
        out = []
        for text in texts:
            if "BADTOKEN" in text:
                raise ValueError("the tokenizer chokes on BADTOKEN")
            if "SLOW" in text:
                time.sleep(self.slow_tokenize_s)
            words = text.split()
            ids = [CLS]
            for word in words[: FAKE_MAX_SEQ - 2]:
                token = 1000 + int.from_bytes(hashlib.md5(word.encode()).digest()[:3], "little")
                with self._lock:
                    self._vocab[token] = word
                ids.append(token)
            ids.append(SEP)
            out.append(TokenizedText(ids=ids, truncated=len(words) > FAKE_MAX_SEQ - 2))
        return out

    def detokenize(self, item: TokenizedText) -> str:
        return " ".join(self._vocab[i] for i in item.ids[1:-1])

    def embed_tokenized(self, batch: list[TokenizedText]) -> np.ndarray:
        texts = [self.detokenize(item) for item in batch]
        with self._lock:
            self.batches.append(texts)
            self.running += 1
            self.max_running = max(self.max_running, self.running)
        try:
            self.entered.set()
            if not self.gate.wait(timeout=30):
                raise RuntimeError("test gate never opened")
            if self.delay_s:
                time.sleep(self.delay_s)
            if any("FAIL" in text for text in texts):
                raise RuntimeError("boom: a batch with FAIL in it")
            return np.stack([fake_vector(text) for text in texts])
        finally:
            with self._lock:
                self.running -= 1

    def embed(self, texts: list[str]) -> np.ndarray:
        return self.embed_tokenized(self.tokenize(texts))


def fake_loader(
    embedder: FakeEmbedder, ready: threading.Event | None = None
) -> Callable[[ServerSettings], LoadedModel]:
    def load(settings: ServerSettings) -> LoadedModel:
        if ready is not None and not ready.wait(timeout=30):
            raise RuntimeError("test never let the model load")
        spec = ModelSpec(
            runtime="fake",
            load_dir=settings.model_dir,
            model_id="fake-model",
            variant="fake",
            manifest=None,
            manifest_sha256=None,
            model_info=None,
        )
        return LoadedModel(spec=spec, embedder=embedder, load_s=0.001)  # type: ignore[arg-type]

    return load


def fake_settings(tmp_path: Path, **overrides: object) -> ServerSettings:
    values: dict[str, object] = {
        "model_dir": tmp_path,
        "threads": 1,
        "warmup": False,
        "max_batch_texts": 64,
        "max_batch_tokens": 4096,
        "max_texts_per_request": 16,
        "max_queue": 512,
        "max_body_bytes": 64 * 1024,
    }
    values.update(overrides)
    return ServerSettings(**values)  # type: ignore[arg-type]


async def wait_ready(client: httpx.AsyncClient, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if (await client.get("/health")).status_code == 200:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"server not ready after {timeout_s} s")


@asynccontextmanager
async def serve_in_process(
    settings: ServerSettings, loader: Callable[[ServerSettings], LoadedModel] | None = None
) -> AsyncIterator[httpx.AsyncClient]:
    """The app with its lifespan running, behind an httpx client (no sockets)."""
    app = create_app(settings, loader=loader)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://server", timeout=60
        ) as client:
            client.app = app  # type: ignore[attr-defined]
            await wait_ready(client)
            yield client


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def fake() -> FakeEmbedder:
    return FakeEmbedder()


@pytest.fixture
async def client(tmp_path: Path, fake: FakeEmbedder) -> AsyncIterator[httpx.AsyncClient]:
    async with serve_in_process(fake_settings(tmp_path), fake_loader(fake)) as c:
        yield c


@pytest.fixture(scope="session")
def fp32_dir(prepared_minilm: dict) -> Path:
    """The real MiniLM fp32 variant, prepared and parity-gated (slow the first time)."""
    return Path(prepared_minilm["fp32"].directory)


# ---- Docker --------------------------------------------------------------------------------------
REPO_ROOT = Path(__file__).resolve().parents[2]
# Unique per test session, so that cleaning up never touches another session's containers.
TEST_LABEL = f"embench.test.server={os.getpid()}-{uuid.uuid4().hex[:8]}"


def docker(
    *args: str, timeout: float = 120, check: bool = True
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and result.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} failed: {result.stderr.strip()}")
    return result


def docker_ready() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return docker("info", timeout=20, check=False).returncode == 0
    except subprocess.TimeoutExpired:
        return False


@dataclass
class Container:
    id: str
    url: str

    def logs(self) -> str:
        result = docker("logs", "--tail", "60", self.id, check=False)
        return result.stdout + result.stderr

    def inspect(self, template: str) -> str:
        return docker("inspect", "-f", template, self.id).stdout.strip()


class ContainerFactory:
    """Starts server containers on 127.0.0.1 and removes every one of them, whatever happens."""

    def __init__(self, image: str) -> None:
        self.image = image
        self.started: list[str] = []

    def start(
        self, model_dir: Path, env: dict[str, str] | None = None, wait: bool = True
    ) -> Container:
        args = [
            "run", "--detach", "--label", TEST_LABEL,
            "--publish", "127.0.0.1::8080",
            "--volume", f"{model_dir}:/model:ro",
            "--env", "EMBENCH_THREADS=2",
        ]  # fmt: skip
        for key, value in (env or {}).items():
            args += ["--env", f"{key}={value}"]
        container_id = docker(*args, self.image).stdout.strip()
        self.started.append(container_id)
        port = docker("port", container_id, "8080/tcp").stdout.split(":")[-1].strip()
        container = Container(id=container_id, url=f"http://127.0.0.1:{port}")
        if wait:
            wait_healthy_http(container)
        return container

    def remove_all(self) -> None:
        for container_id in self.started:
            docker("rm", "--force", "--volumes", container_id, check=False)
        self.started.clear()


def wait_healthy_http(container: Container, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(container.url + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if container.inspect("{{.State.Running}}") != "true":
            raise AssertionError(f"server container exited:\n{container.logs()}")
        time.sleep(0.25)
    raise AssertionError(f"server container not healthy in {timeout_s} s:\n{container.logs()}")


def built_image(env_var: str, target: str, tag: str, timeout_s: int) -> str:
    """The image named by `env_var` when set (CI builds it once), else the Dockerfile's
    `target` built here as `tag` (layer-cached)."""
    if not docker_ready():
        pytest.skip("no Docker engine answers `docker info`")
    if image := os.environ.get(env_var):
        docker("image", "inspect", image)
        return image
    build = subprocess.run(
        [str(REPO_ROOT / "server" / "build_image.sh"), "--target", target, "--tag", tag],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    assert build.returncode == 0, f"image build failed:\n{build.stdout[-3000:]}\n{build.stderr}"
    return tag


@pytest.fixture(scope="session")
def server_image() -> str:
    return built_image("EMBENCH_SERVER_IMAGE", "onnx", "embench-server:test", 1200)


@pytest.fixture(scope="session")
def containers(server_image: str) -> Iterator[ContainerFactory]:
    factory = ContainerFactory(server_image)
    try:
        yield factory
    finally:
        factory.remove_all()
        # Belt and braces: anything labelled by a test run that died half-way.
        leftovers = docker("ps", "-aq", "--filter", f"label={TEST_LABEL}", check=False).stdout
        for container_id in leftovers.split():
            docker("rm", "--force", container_id, check=False)


@pytest.fixture(scope="session")
def openvino_server_image() -> str:
    return built_image(
        "EMBENCH_SERVER_OPENVINO_IMAGE", "openvino", "embench-server:openvino-test", 1200
    )


@pytest.fixture(scope="session")
def torch_server_image() -> str:
    return built_image("EMBENCH_SERVER_TORCH_IMAGE", "torch", "embench-server:torch-test", 1800)
