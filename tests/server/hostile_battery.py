"""A battery of bad and hostile requests against a running inference server (issue 17).

Each attack records the server's answer (status and error code, "closed" when the server closed
the connection without one, "no answer" when it neither answered nor closed), the server's RSS
before and after (GET /info -> process_rss_bytes), and the latency of normal one-sentence
requests issued while the attack runs, against the idle p50 of such requests measured first.

Used by tests/server/test_hostile.py (asserts) and bench/hostile.py (prints the table). Low-level
attacks speak raw HTTP over asyncio streams; the rest use httpx.

An attack's expected answer is a tuple of fnmatch patterns; answers read "400 invalid_json",
"422" (no code), "400 plain" (a non-JSON error, e.g. from the HTTP parser), "closed", ..."""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import json
import os
import re
import resource
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx

REPO = Path(__file__).resolve().parents[2]
NORMAL_TEXT = "A short and perfectly ordinary sentence about the weather today."
NORMAL_BODY = json.dumps({"texts": [NORMAL_TEXT]}).encode()
MiB = 1024 * 1024
DISCONNECTED_METRIC = "embench_server_disconnected_requests_total"


# ---- configuration -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Limits:
    """What the battery assumes of the server under attack (its settings)."""

    max_body_bytes: int = 4 * MiB
    max_texts_per_request: int = 256
    max_queue: int = 1024
    max_queue_bytes: int = 16 * MiB
    max_connections: int = 2048
    header_timeout_s: float = 10.0
    body_timeout_s: float = 10.0


# Settings of the server the test starts: short timeouts so that slow-loris attacks end fast, a
# small byte budget for the queue so that a byte burst stays cheap, a connection limit above the
# 1,000 idle connections.
TEST_LIMITS = Limits(
    max_queue_bytes=4 * MiB, max_connections=1200, header_timeout_s=2.0, body_timeout_s=2.0
)


def server_env(limits: Limits) -> dict[str, str]:
    return {
        "EMBENCH_MAX_BODY_BYTES": str(limits.max_body_bytes),
        "EMBENCH_MAX_TEXTS_PER_REQUEST": str(limits.max_texts_per_request),
        "EMBENCH_MAX_QUEUE": str(limits.max_queue),
        "EMBENCH_MAX_QUEUE_BYTES": str(limits.max_queue_bytes),
        "EMBENCH_MAX_CONNECTIONS": str(limits.max_connections),
        "EMBENCH_HEADER_TIMEOUT_S": str(limits.header_timeout_s),
        "EMBENCH_BODY_TIMEOUT_S": str(limits.body_timeout_s),
    }


def raise_fd_limit(wanted: int = 8192) -> None:
    """Thousands of sockets need more than the usual soft limit of 1,024 descriptors (a server
    started afterwards inherits the raised limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


# ---- a real server -------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def running_server(
    model_dir: Path, limits: Limits, log_path: Path, threads: int = 2
) -> Iterator[str]:
    """`python -m server` on the model, on a free loopback port; yields its base URL."""
    raise_fd_limit()
    port = free_port()
    env = {
        **os.environ,
        **server_env(limits),
        "EMBENCH_MODEL_DIR": str(model_dir),
        "EMBENCH_HOST": "127.0.0.1",
        "EMBENCH_PORT": str(port),
        "EMBENCH_THREADS": str(threads),
        "EMBENCH_LOG_LEVEL": "warning",
    }
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "server"], env=env, cwd=REPO, stdout=log, stderr=log
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if process.poll() is not None:
                raise RuntimeError(
                    f"server exited with {process.returncode}:\n{log_path.read_text()[-3000:]}"
                )
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not healthy after 180 s:\n{log_path.read_text()}")
            time.sleep(0.2)
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# ---- raw HTTP ------------------------------------------------------------------------------------
@dataclass
class Reply:
    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    closed: bool = False  # the server closed the connection (after its replies, if any)
    error: str | None = None  # "no answer after N s", "reset", ...

    @property
    def answer(self) -> str:
        if self.status is None:
            return self.error or ("closed" if self.closed else "no answer")
        return describe(self.status, self.headers.get("content-type", ""), self.body)


def describe(status: int, content_type: str, body: bytes) -> str:
    """'200', '422 code', '422' (JSON error without a code), '400 plain' (not JSON), '400
    unreadable' (a JSON body cut short), or '422 bad-envelope' when a JSON error lacks the
    {"error": {message,type,param,code}} shape."""
    if status < 400:
        return str(status)
    if "json" not in content_type:
        return f"{status} plain"
    try:
        error = json.loads(body)["error"]
        assert set(error) == {"message", "type", "param", "code"}, error
    except ValueError:  # cut short (the connection was reset) or not JSON at all
        return f"{status} unreadable"
    except (KeyError, TypeError, AssertionError):
        return f"{status} bad-envelope"
    return f"{status} {error['code']}" if error["code"] else str(status)


async def read_reply(reader: asyncio.StreamReader, timeout_s: float) -> Reply:
    """One HTTP response from the stream (or what happened instead)."""
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout_s)
    except asyncio.IncompleteReadError as exc:
        return Reply(closed=True, error=None if not exc.partial else "closed mid-reply")
    except TimeoutError:
        return Reply(error=f"no answer after {timeout_s:.0f} s")
    except ConnectionError:
        return Reply(closed=True, error="closed (reset)")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    body = b""
    try:
        if "content-length" in headers:
            body = await asyncio.wait_for(
                reader.readexactly(int(headers["content-length"])), timeout_s
            )
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size = int((await reader.readuntil(b"\r\n")).strip(), 16)
                chunk = await reader.readexactly(size + 2)
                if size == 0:
                    break
                body += chunk[:-2]
    except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
        pass
    return Reply(status=status, headers=headers, body=body)


async def is_closed(reader: asyncio.StreamReader, timeout_s: float) -> bool:
    """Whether the server closes the connection within timeout_s (EOF or reset)."""
    try:
        data = await asyncio.wait_for(reader.read(65536), timeout_s)
    except TimeoutError:
        return False
    except ConnectionError:
        return True
    return data == b""


@dataclass
class Target:
    url: str
    limits: Limits

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        return urlsplit(self.url).port or 80

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection(self.host, self.port, limit=4 * MiB)

    async def raw(
        self,
        data: bytes,
        *,
        replies: int = 1,
        timeout_s: float = 15.0,
        then_closed_s: float = 0.0,
    ) -> list[Reply]:
        """Send `data` as is, read `replies` responses; with then_closed_s, also whether the
        server closes the connection within that many seconds after the last reply."""
        reader, writer = await self.connect()
        try:
            try:
                writer.write(data)
                await writer.drain()
            except ConnectionError:
                pass  # the server may answer and close before taking all of it
            out = []
            for _ in range(replies):
                reply = await read_reply(reader, timeout_s)
                out.append(reply)
                if reply.status is None:
                    break
            if then_closed_s and out[-1].status is not None:
                out[-1].closed = await is_closed(reader, then_closed_s)
            return out
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


def request(
    method: str,
    path: str,
    body: bytes = b"",
    *,
    content_type: str | None = "application/json",
    headers: dict[str, str] | None = None,
    version: str = "HTTP/1.1",
    length: int | None = -1,
) -> bytes:
    """A raw request; length=-1: the body's real length, None: no Content-Length header."""
    lines = [f"{method} {path} {version}", "Host: server"]
    if content_type is not None:
        lines.append(f"Content-Type: {content_type}")
    if length is not None:
        lines.append(f"Content-Length: {len(body) if length == -1 else length}")
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


# ---- attacks -------------------------------------------------------------------------------------
AttackFn = Callable[[Target, httpx.AsyncClient], Awaitable[str]]


@dataclass
class Attack:
    name: str
    run: AttackFn
    expect: tuple[str, ...]  # fnmatch patterns of acceptable answers
    # How the latency of normal requests during the attack is judged: "idle" (under 3x the idle
    # p50), "work" (the attack carries legitimate work: under 3x the idle p50 plus that work's
    # own latency at idle, measured by `work`), "report" (printed only).
    latency: str = "idle"
    work: AttackFn | None = None  # the legitimate twin of a "work" attack
    timeout_s: float = 30.0


async def post(
    client: httpx.AsyncClient, path: str, payload: object = None, **kwargs: object
) -> str:
    if payload is not None:
        kwargs["content"] = json.dumps(payload).encode()
        kwargs.setdefault("headers", {"content-type": "application/json"})
    response = await client.post(path, **kwargs)  # type: ignore[arg-type]
    return answer_of(response)


def answer_of(response: httpx.Response) -> str:
    return describe(
        response.status_code, response.headers.get("content-type", ""), response.content
    )


def post_json(path: str, payload: object) -> AttackFn:
    async def run(target: Target, client: httpx.AsyncClient) -> str:
        return await post(client, path, payload)

    return run


def post_bytes(path: str, body: bytes, content_type: str | None = "application/json") -> AttackFn:
    async def run(target: Target, client: httpx.AsyncClient) -> str:
        headers = {"content-type": content_type} if content_type else {}
        return answer_of(await client.post(path, content=body, headers=headers))

    return run


def raw_attack(data: bytes, replies: int = 1, then_closed_s: float = 0.0) -> AttackFn:
    async def run(target: Target, client: httpx.AsyncClient) -> str:
        got = await target.raw(data, replies=replies, then_closed_s=then_closed_s)
        answer = ", ".join(r.answer for r in got)
        if then_closed_s and got[-1].status is not None:
            answer += ", then closed" if got[-1].closed else ", kept open"
        return answer

    return run


def method_attack(method: str, path: str) -> AttackFn:
    async def run(target: Target, client: httpx.AsyncClient) -> str:
        return answer_of(await client.request(method, path))

    return run


def traversal(path: str) -> AttackFn:
    """A raw path (not normalised by a client): must be a 404 that leaks no file."""

    async def run(target: Target, client: httpx.AsyncClient) -> str:
        reply = (await target.raw(request("GET", path, content_type=None, length=None)))[0]
        leaked = b"root:" in reply.body or b"[global]" in reply.body
        return reply.answer + (" LEAKED A FILE" if leaked else "")

    return run


VOCABULARY = re.findall(
    r"\w+",
    "the quick brown fox jumps over a lazy dog while people walk along the river and talk "
    "about weather markets music history science travel food gardens books and films",
)


def words(n_bytes: int, seed: int = 0) -> str:
    """Ordinary English-like words, about n_bytes long."""
    vocabulary = VOCABULARY
    out, size, i = [], 0, seed
    while size < n_bytes:
        word = vocabulary[(i * 7919) % len(vocabulary)]
        out.append(word)
        size += len(word) + 1
        i += 1
    return " ".join(out)[:n_bytes]


def big_text_attack(truncate: bool, n_bytes: int = 3_000_000) -> AttackFn:
    text = words(n_bytes)
    body = json.dumps({"texts": [text], "truncate": truncate}).encode()

    async def run(target: Target, client: httpx.AsyncClient) -> str:
        response = await client.post(
            "/embed", content=body, headers={"content-type": "application/json"}
        )
        answer = answer_of(response)
        if response.status_code == 200:
            answer += " truncated=" + ",".join(str(t).lower() for t in response.json()["truncated"])
        return answer

    return run


def cut_text_work(n_texts: int) -> AttackFn:
    """What a cut text costs legitimately: n texts of max_seq_length x 32 characters."""
    body = json.dumps({"texts": [words(256 * 32, seed=i) for i in range(n_texts)]}).encode()

    async def run(target: Target, client: httpx.AsyncClient) -> str:
        return answer_of(
            await client.post("/embed", content=body, headers={"content-type": "application/json"})
        )

    return run


def many_texts_attack(n_texts: int, text_bytes: int) -> AttackFn:
    body = json.dumps({"texts": [words(text_bytes, seed=i) for i in range(n_texts)]}).encode()

    async def run(target: Target, client: httpx.AsyncClient) -> str:
        response = await client.post(
            "/embed", content=body, headers={"content-type": "application/json"}
        )
        answer = answer_of(response)
        if response.status_code == 200:
            truncated = response.json()["truncated"]
            answer += f" truncated={sum(truncated)}/{len(truncated)}"
        return answer

    return run


async def over_limit_with_length(target: Target, client: httpx.AsyncClient) -> str:
    """Declares a body over max_body_bytes and starts sending it: 413 before it is read."""
    size = target.limits.max_body_bytes + MiB
    head = request("POST", "/embed", length=size)
    start = b'{"texts": ["' + b"a" * 65536
    got = await target.raw(head + start, timeout_s=10)
    return got[0].answer


async def over_limit_chunked(target: Target, client: httpx.AsyncClient) -> str:
    """No Content-Length: a chunked body that grows past max_body_bytes."""
    reader, writer = await target.connect()
    try:
        writer.write(
            request("POST", "/embed", length=None, headers={"Transfer-Encoding": "chunked"})
        )
        chunk = b"a" * (64 * 1024)
        frame = b"%x\r\n" % len(chunk) + chunk + b"\r\n"
        sent = 0
        reply_task = asyncio.ensure_future(read_reply(reader, 20))
        try:
            while sent <= target.limits.max_body_bytes and not reply_task.done():
                writer.write(frame)
                await writer.drain()
                sent += len(chunk)
        except ConnectionError:
            pass
        reply = await reply_task
        return reply.answer
    finally:
        writer.close()


async def over_limit_unknown_length_http10(target: Target, client: httpx.AsyncClient) -> str:
    """HTTP/1.0 without Content-Length: the body runs until the client closes its side."""
    reader, writer = await target.connect()
    try:
        writer.write(request("POST", "/embed", version="HTTP/1.0", length=None))
        data = b"a" * (64 * 1024)
        sent = 0
        reply_task = asyncio.ensure_future(read_reply(reader, 20))
        try:
            while sent <= target.limits.max_body_bytes and not reply_task.done():
                writer.write(data)
                await writer.drain()
                sent += len(data)
            if not reply_task.done() and writer.can_write_eof():
                writer.write_eof()
        except ConnectionError:
            pass
        return (await reply_task).answer
    finally:
        writer.close()


async def length_longer_than_sent(target: Target, client: httpx.AsyncClient) -> str:
    """Declares 100 bytes more than it sends, then waits: the body never completes."""
    body = NORMAL_BODY
    data = request("POST", "/embed", body, length=len(body) + 100)
    wait = target.limits.body_timeout_s + 4
    reply = (await target.raw(data, timeout_s=wait, then_closed_s=1.0))[0]
    if reply.status is None:
        return reply.answer
    return reply.answer + (", then closed" if reply.closed else ", kept open")


async def slow_loris_headers(target: Target, client: httpx.AsyncClient) -> str:
    """Request headers one byte per second: the server must close the connection."""
    reader, writer = await target.connect()
    started = time.monotonic()
    cap = target.limits.header_timeout_s + 4
    try:
        writer.write(b"POST /embed HTTP/1.1\r\nHost: server\r\n")
        await writer.drain()
        trickle = b"X-Slow: " + b"a" * 1000
        for byte in trickle:
            if time.monotonic() - started > cap:
                return f"still open after {cap:.0f} s"
            try:
                writer.write(bytes([byte]))
                await writer.drain()
            except ConnectionError:
                return f"closed after {time.monotonic() - started:.1f} s"
            reply = await read_reply(reader, 1.0)
            if reply.status is not None:
                return f"{reply.answer} after {time.monotonic() - started:.1f} s"
            if reply.closed:
                return f"closed after {time.monotonic() - started:.1f} s"
        return "all bytes sent"
    finally:
        writer.close()


async def slow_body(target: Target, client: httpx.AsyncClient) -> str:
    """Complete headers, then a declared body trickled one byte per second."""
    body = NORMAL_BODY
    reader, writer = await target.connect()
    started = time.monotonic()
    cap = target.limits.body_timeout_s + 4
    try:
        writer.write(request("POST", "/embed", length=len(body)))
        await writer.drain()
        for byte in body:
            if time.monotonic() - started > cap:
                return f"no answer after {cap:.0f} s"
            try:
                writer.write(bytes([byte]))
                await writer.drain()
            except ConnectionError:
                return f"closed after {time.monotonic() - started:.1f} s"
            reply = await read_reply(reader, 1.0)
            if reply.status is not None:
                closed = await is_closed(reader, 1.0)
                return f"{reply.answer} after {time.monotonic() - started:.0f} s" + (
                    ", then closed" if closed else ", kept open"
                )
            if reply.closed:
                return f"closed after {time.monotonic() - started:.1f} s"
        return "whole body sent"
    finally:
        writer.close()


async def open_idle(
    target: Target, n: int
) -> list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    conns = []
    for start in range(0, n, 100):
        batch = await asyncio.gather(
            *(target.connect() for _ in range(min(100, n - start))), return_exceptions=True
        )
        conns += [c for c in batch if not isinstance(c, BaseException)]
    return conns


async def idle_connections(target: Target, client: httpx.AsyncClient) -> str:
    """1,000 connections that send nothing, held while normal requests run."""
    conns = await open_idle(target, 1000)
    try:
        hold = target.limits.header_timeout_s + 2
        deadline = time.monotonic() + hold
        statuses = []
        while time.monotonic() < deadline:
            statuses.append(
                (await client.post("/embed", content=NORMAL_BODY, headers=JSON)).status_code
            )
            await asyncio.sleep(0.1)
        closed = await asyncio.gather(*(is_closed(r, 0.05) for r, _ in conns))
        ok = statuses.count(200)
        return (
            f"{ok}/{len(statuses)} normal 200; {sum(closed)}/{len(conns)} idle closed by the "
            f"server in {hold:.0f} s"
        )
    finally:
        for _, writer in conns:
            writer.close()


async def beyond_max_connections(target: Target, client: httpx.AsyncClient) -> str:
    """max_connections idle connections, then one more with a request: 503."""
    conns = await open_idle(target, target.limits.max_connections)
    try:
        reply = (await target.raw(request("POST", "/embed", NORMAL_BODY), timeout_s=5))[0]
        return reply.answer
    finally:
        for _, writer in conns:
            writer.close()
        await asyncio.sleep(0.2)


async def metric(client: httpx.AsyncClient, name: str) -> float | None:
    text = (await client.get("/metrics")).text
    match = re.search(rf"^{re.escape(name)}(?:\{{[^}}]*\}})? ([0-9.e+-]+)$", text, re.M)
    return float(match.group(1)) if match else None


async def disconnect_mid_request(target: Target, client: httpx.AsyncClient) -> str:
    """A big request whose client closes right after sending it, before the answer."""
    body = json.dumps({"texts": [words(100_000, seed=i) for i in range(16)]}).encode()
    before = await metric(client, DISCONNECTED_METRIC)
    _reader, writer = await target.connect()
    writer.write(request("POST", "/embed", body))
    await writer.drain()
    while writer.transport.get_write_buffer_size():  # all of it handed to the kernel
        await asyncio.sleep(0.005)
    await asyncio.sleep(0.3)  # the server has it all and is working on it
    writer.transport.abort()  # gone, without waiting for the answer
    deadline = time.monotonic() + 5
    after = before
    while time.monotonic() < deadline:
        after = await metric(client, DISCONNECTED_METRIC)
        if after is not None and after > (before or 0):
            break
        await asyncio.sleep(0.1)
    if after is None:
        return "client closed; no disconnected counter"
    return f"client closed; disconnected counter +{after - (before or 0):.0f}"


JSON = {"content-type": "application/json"}


async def burst_texts(target: Target, client: httpx.AsyncClient) -> str:
    """Concurrent requests carrying three times max_queue short texts: the excess gets 429."""
    per = target.limits.max_texts_per_request
    n = 3 * target.limits.max_queue // per + 1
    body = json.dumps({"texts": ["hi there"] * per}).encode()
    responses = await asyncio.gather(
        *(client.post("/embed", content=body, headers=JSON) for _ in range(n))
    )
    return summarize(responses)


async def burst_bytes(target: Target, client: httpx.AsyncClient) -> str:
    """Concurrent requests of ~3.9 MB each, beyond max_queue_bytes: the excess gets 429
    queue_full (counted in bytes as received, not texts). Each holds 32 long texts, so that it
    computes long enough (every text is cut to what the model uses) for the requests to be in
    the server at once."""
    per = min(32, target.limits.max_texts_per_request)
    size = min(3_900_000, target.limits.max_body_bytes - 1000)
    body = json.dumps({"texts": [words(size // per, seed=i) for i in range(per)]}).encode()
    n = target.limits.max_queue_bytes // size + 3
    responses = await asyncio.gather(
        *(client.post("/embed", content=body, headers=JSON) for _ in range(n))
    )
    return summarize(responses)


def summarize(responses: list[httpx.Response]) -> str:
    counts: dict[str, int] = {}
    for r in responses:
        counts[answer_of(r)] = counts.get(answer_of(r), 0) + 1
    parts = [f"{answer} x{count}" for answer, count in sorted(counts.items())]
    limited = [r for r in responses if r.status_code == 429]
    if limited:
        has = all(r.headers.get("retry-after", "").isdigit() for r in limited)
        parts.append("Retry-After" if has else "NO Retry-After")
    return ", ".join(parts)


def attacks(limits: Limits) -> list[Attack]:
    texts_of = limits.max_texts_per_request
    over_limit = limits.max_body_bytes + MiB
    nested = b'{"texts": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    normal = request("POST", "/embed", NORMAL_BODY)
    A = Attack
    return [
        # -- malformed bodies
        A("invalid JSON", post_bytes("/embed", b'{"texts": ["a",'), ("400 invalid_json",)),
        A("empty body", post_bytes("/embed", b""), ("400*",)),
        A(
            "wrong content-type",
            post_bytes("/embed", NORMAL_BODY, "text/plain"),
            ("415 unsupported_media_type",),
        ),
        A(
            "no content-type",
            post_bytes("/embed", NORMAL_BODY, None),
            ("415 unsupported_media_type",),
        ),
        A("body is an array", post_json("/embed", ["a", "b"]), ("422*",)),
        A("texts: number", post_json("/embed", {"texts": 5}), ("422*",)),
        A("texts: null", post_json("/embed", {"texts": None}), ("422*",)),
        A("texts: object", post_json("/embed", {"texts": {"a": 1}}), ("422*",)),
        A("texts[1]: number", post_json("/embed", {"texts": ["a", 3]}), ("422*",)),
        A("truncate: string", post_json("/embed", {"texts": ["a"], "truncate": "yes"}), ("422*",)),
        A("model: number", post_json("/v1/embeddings", {"input": "a", "model": 5}), ("422*",)),
        A(
            "encoding_format: hex",
            post_json("/v1/embeddings", {"input": "a", "encoding_format": "hex"}),
            ("422*",),
        ),
        A(
            "dimensions: string",
            post_json("/v1/embeddings", {"input": "a", "dimensions": "384"}),
            ("422*",),
        ),
        A("unknown field", post_json("/embed", {"texts": ["a"], "evil": 1}), ("422*",)),
        A("missing texts", post_json("/embed", {}), ("422*",)),
        A("empty string", post_json("/embed", {"texts": ""}), ("422*",)),
        A("empty array", post_json("/v1/embeddings", {"input": []}), ("422*",)),
        A("empty string in array", post_json("/embed", {"texts": ["a", ""]}), ("422*",)),
        A(
            f"too many texts ({texts_of + 1})",
            post_json("/embed", {"texts": ["a"] * (texts_of + 1)}),
            ("422 too_many_texts",),
        ),
        # -- encodings and JSON corner cases
        A(
            "invalid UTF-8",
            post_bytes("/embed", b'{"texts": ["caf\xc3\x28 \xff"]}'),
            ("400 invalid_json",),
        ),
        A(
            "lone surrogate escape",
            post_bytes("/embed", b'{"texts": ["\\ud800"]}'),
            ("400 invalid_json", "422*"),
        ),
        A(
            "raw NUL byte in JSON",
            post_bytes("/embed", b'{"texts": ["a\x00b"]}'),
            ("400 invalid_json",),
        ),
        A(
            "escaped NUL in a text",
            post_bytes("/embed", b'{"texts": ["a\\u0000b"]}'),
            ("200", "422*"),
        ),
        A("deeply nested JSON (100k)", post_bytes("/embed", nested), ("400 invalid_json",)),
        A(
            "huge number (1e999999)",
            post_bytes("/v1/embeddings", b'{"input": "a", "dimensions": 1e999999}'),
            ("400 invalid_json", "422*"),
        ),
        A(
            "huge integer (40 digits)",
            post_bytes("/v1/embeddings", b'{"input": "a", "dimensions": ' + b"9" * 40 + b"}"),
            ("422*", "400 invalid_json"),
        ),
        A(
            "NaN literal",
            post_bytes("/embed", b'{"texts": ["a"], "truncate": NaN}'),
            ("400 invalid_json",),
        ),
        A(
            "Infinity literal",
            post_bytes("/v1/embeddings", b'{"input": "a", "dimensions": Infinity}'),
            ("400 invalid_json",),
        ),
        A(
            "duplicate keys",
            post_bytes("/embed", b'{"texts": ["a"], "texts": 7}'),
            ("422*", "400*"),
        ),
        A("token arrays", post_json("/v1/embeddings", {"input": [[101, 2023, 102]]}), ("422*",)),
        A("token ids", post_json("/v1/embeddings", {"input": [101, 2023, 102]}), ("422*",)),
        A(
            "base64 + wrong dimensions",
            post_json(
                "/v1/embeddings", {"input": "a", "encoding_format": "base64", "dimensions": 17}
            ),
            ("422*",),
        ),
        A(
            "superscript digit in dimensions",
            post_json("/v1/embeddings", {"input": "a", "dimensions": "³⁸⁴"}),
            ("422*",),
        ),
        A(
            "superscript digit in Content-Length",
            raw_attack(
                request(
                    "POST",
                    "/embed",
                    NORMAL_BODY,
                    length=None,
                    headers={"Content-Length": "\xb2\xb3"},
                )
            ),
            ("400*", "closed*"),
        ),
        A(
            "negative Content-Length",
            raw_attack(
                request(
                    "POST", "/embed", NORMAL_BODY, length=None, headers={"Content-Length": "-5"}
                )
            ),
            ("400*", "closed*"),
        ),
        A(
            "huge Content-Length",
            raw_attack(request("POST", "/embed", NORMAL_BODY, length=10**30)),
            ("413 body_too_large", "400*", "closed*"),
        ),
        # -- size and length
        A(
            "3 MB text, truncate=true",
            big_text_attack(True),
            ("200 truncated=true",),
            latency="work",
            work=cut_text_work(1),
        ),
        A("3 MB text, truncate=false", big_text_attack(False), ("422 text_too_long",)),
        A(
            "16 texts of 100 KB",
            many_texts_attack(16, 100_000),
            ("200 truncated=16/16",),
            latency="work",
            work=cut_text_work(16),
        ),
        A(
            f"body over limit ({over_limit // MiB} MiB), Content-Length",
            over_limit_with_length,
            ("413 body_too_large",),
        ),
        A("body over limit, chunked", over_limit_chunked, ("413 body_too_large",)),
        A(
            "body over limit, HTTP/1.0 without length",
            over_limit_unknown_length_http10,
            ("413 body_too_large", "400*", "411*", "closed*"),
        ),
        A(
            "Content-Length shorter than sent",
            raw_attack(
                request(
                    "POST", "/embed", NORMAL_BODY + b'{"texts": ["x"]}', length=len(NORMAL_BODY) - 5
                ),
                replies=2,
            ),
            ("400*",),
        ),
        A(
            "Content-Length longer than sent",
            length_longer_than_sent,
            ("408 body_timeout, then closed",),
            timeout_s=limits.body_timeout_s + 10,
        ),
        A(
            "chunked, bad chunk size",
            raw_attack(
                request(
                    "POST",
                    "/embed",
                    b"zz\r\nabc\r\n0\r\n\r\n",
                    length=None,
                    headers={"Transfer-Encoding": "chunked"},
                )
            ),
            ("400*", "closed*"),
        ),
        A(
            "Content-Length + Transfer-Encoding (smuggling)",
            raw_attack(
                request(
                    "POST",
                    "/embed",
                    b"0\r\n\r\n" + normal,
                    length=len(normal) + 5,
                    headers={"Transfer-Encoding": "chunked"},
                ),
                replies=2,
            ),
            ("400*", "closed*", "400 invalid_json, closed*", "400*, closed*"),
        ),
        # -- HTTP protocol
        A(
            "HTTP/1.0 request",
            raw_attack(request("POST", "/embed", NORMAL_BODY, version="HTTP/1.0"), then_closed_s=2),
            ("200, then closed",),
        ),
        A(
            "3 pipelined requests (ok, bad, ok)",
            raw_attack(normal + request("POST", "/embed", b"{bad") + normal, replies=3),
            ("200, 400 invalid_json, 200",),
        ),
        A(
            "oversized header (1 MB)",
            raw_attack(request("POST", "/embed", NORMAL_BODY, headers={"X-Big": "a" * MiB})),
            ("200", "431*", "400*", "413*", "closed*"),
        ),
        A(
            "many headers (10,000)",
            raw_attack(
                request(
                    "POST", "/embed", NORMAL_BODY, headers={f"X-H{i}": "v" for i in range(10_000)}
                )
            ),
            ("200", "431*", "400*", "closed*"),
        ),
        A(
            "slow-loris headers (1 byte/s)",
            slow_loris_headers,
            ("closed after*", "408*"),
            timeout_s=limits.header_timeout_s + 10,
        ),
        A(
            "slow body (1 byte/s)",
            slow_body,
            ("408 body_timeout after*, then closed",),
            timeout_s=limits.body_timeout_s + 10,
        ),
        A(
            "1,000 idle connections",
            idle_connections,
            ("*normal 200; 1000/1000 idle closed*",),
            timeout_s=limits.header_timeout_s + 30,
        ),
        A(
            f"beyond max_connections ({limits.max_connections})",
            beyond_max_connections,
            ("503*",),
            latency="report",
            timeout_s=60,
        ),
        A(
            "disconnect mid-request",
            disconnect_mid_request,
            ("client closed; disconnected counter +1",),
            latency="report",
        ),
        A(
            "burst beyond max_queue (texts)",
            burst_texts,
            ("200 x*, 429 queue_full x*, Retry-After",),
            latency="report",
            timeout_s=60,
        ),
        A(
            "burst beyond max_queue_bytes",
            burst_bytes,
            ("200 x*, 429 queue_full x*, Retry-After",),
            latency="report",
            timeout_s=90,
        ),
        # -- methods and paths
        A("PUT /embed", method_attack("PUT", "/embed"), ("405*",)),
        A("DELETE /v1/embeddings", method_attack("DELETE", "/v1/embeddings"), ("405*",)),
        A("GET /embed", method_attack("GET", "/embed"), ("405*",)),
        A(
            "TRACE /",
            raw_attack(request("TRACE", "/", content_type=None, length=None)),
            ("405*", "404*", "400*"),
        ),
        A(
            "unknown method FOO",
            raw_attack(request("FOO", "/embed", NORMAL_BODY)),
            ("405*", "400*", "501*", "closed*"),
        ),
        A("unknown path", method_attack("GET", "/admin"), ("404*",)),
        A("POST unknown path", post_json("/v2/embeddings", {"input": "a"}), ("404*",)),
        A("path traversal ../", traversal("/../../../../etc/passwd"), ("404*", "400*")),
        A("path traversal %2e%2e", traversal("/%2e%2e/%2e%2e/%2e%2e/etc/passwd"), ("404*", "400*")),
        A("path traversal ..%2f", traversal("/docs/..%2f..%2f..%2fetc%2fpasswd"), ("404*", "400*")),
        A("absolute-form URI", traversal("file:///etc/passwd"), ("404*", "400*")),
    ]


# ---- the runner ----------------------------------------------------------------------------------
@dataclass
class Result:
    name: str
    answer: str
    expect: tuple[str, ...]
    rss_before: int
    rss_after: int
    latency: str
    during_s: list[float]  # normal-request latencies measured during the attack
    idle_p50_s: float
    work_s: float = 0.0  # the latency of the attack's legitimate twin at idle ("work")
    healthy_after: bool = True
    elapsed_s: float = 0.0
    retried: bool = False

    @property
    def answered_as_expected(self) -> bool:
        return any(fnmatch.fnmatchcase(self.answer, p) for p in self.expect)

    @property
    def during_p50_s(self) -> float:
        return statistics.median(self.during_s) if self.during_s else float("nan")

    @property
    def during_max_s(self) -> float:
        return max(self.during_s) if self.during_s else float("nan")

    @property
    def ratio(self) -> float:
        """p50 of normal requests during the attack / their idle p50."""
        return self.during_p50_s / self.idle_p50_s

    @property
    def latency_bound_s(self) -> float | None:
        if self.latency == "idle":
            return 3 * self.idle_p50_s
        if self.latency == "work":
            return 3 * (self.idle_p50_s + self.work_s)
        return None

    @property
    def latency_ok(self) -> bool:
        bound = self.latency_bound_s
        return bound is None or self.during_p50_s <= bound


async def normal_request(client: httpx.AsyncClient) -> float:
    started = time.perf_counter()
    response = await client.post("/embed", content=NORMAL_BODY, headers=JSON)
    elapsed = time.perf_counter() - started
    if response.status_code != 200:
        return float("inf")
    return elapsed


async def idle_p50(client: httpx.AsyncClient, n: int = 40) -> float:
    for _ in range(5):
        await normal_request(client)
    return statistics.median([await normal_request(client) for _ in range(n)])


async def rss(client: httpx.AsyncClient) -> int:
    return int((await client.get("/info")).json()["process_rss_bytes"])


async def settle(client: httpx.AsyncClient, timeout_s: float = 15.0) -> bool:
    """Waits until the server is healthy with nothing queued or in flight."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if (await client.get("/health")).status_code == 200:
                queue = (await client.get("/info")).json().get("queue", {})
                if not queue.get("queued_texts") and not queue.get("inflight_requests"):
                    return True
        except httpx.HTTPError:
            pass
        await asyncio.sleep(0.05)
    return False


async def run_attack(
    target: Target,
    attack: Attack,
    client: httpx.AsyncClient,
    probes: httpx.AsyncClient,
    idle: float,
    interval_s: float = 0.02,
) -> Result:
    await settle(client)
    work_s = 0.0
    if attack.work is not None:
        started = time.perf_counter()
        await attack.work(target, client)
        work_s = time.perf_counter() - started
        await settle(client)
    before = await rss(client)
    started = time.monotonic()
    task = asyncio.ensure_future(asyncio.wait_for(attack.run(target, client), attack.timeout_s))
    # Normal requests at a steady pace while the attack runs (at least three of them): each on
    # its own, so that a stalled one does not delay the next.
    pending: list[asyncio.Future[float]] = []
    await asyncio.sleep(0.005)
    while not task.done() or len(pending) < 3:
        pending.append(asyncio.ensure_future(normal_request(probes)))
        await asyncio.sleep(interval_s)
    try:
        answer = await task
    except TimeoutError:
        answer = f"attack unfinished after {attack.timeout_s:.0f} s"
    except Exception as exc:
        answer = f"client error: {type(exc).__name__}: {exc}"
    elapsed = time.monotonic() - started
    during = list(await asyncio.gather(*pending))
    healthy = await settle(client)
    after = await rss(client) if healthy else before
    return Result(
        name=attack.name,
        answer=answer,
        expect=attack.expect,
        rss_before=before,
        rss_after=after,
        latency=attack.latency,
        during_s=during,
        idle_p50_s=idle,
        work_s=work_s,
        healthy_after=healthy,
        elapsed_s=elapsed,
    )


async def run_battery(
    url: str,
    limits: Limits,
    only: list[str] | None = None,
    retry_slow: bool = True,
    on_result: Callable[[Result], None] | None = None,
) -> tuple[float, list[Result]]:
    """Every attack in turn; returns the idle p50 and the results. An attack whose normal
    requests were too slow runs once more (this machine is shared and noisy); the better of
    the two counts."""
    raise_fd_limit()
    target = Target(url, limits)
    timeout = httpx.Timeout(60.0)
    pool = httpx.Limits(max_connections=200, max_keepalive_connections=50)
    async with (
        httpx.AsyncClient(base_url=url, timeout=timeout, limits=pool) as client,
        httpx.AsyncClient(base_url=url, timeout=timeout, limits=pool) as probes,
    ):
        await settle(client)
        # The runtime's memory arena grows to the largest batch it has computed: warm it with
        # the largest legitimate batch the battery causes, so that RSS growth counts only what
        # the attacks themselves leave behind.
        await cut_text_work(16)(target, client)
        await settle(client)
        idle = await idle_p50(probes)
        results = []
        for attack in attacks(limits):
            if only and not any(o.lower() in attack.name.lower() for o in only):
                continue
            result = await run_attack(target, attack, client, probes, idle)
            if retry_slow and not result.latency_ok:
                again = await run_attack(target, attack, client, probes, idle)
                again.retried = True
                if again.during_p50_s < result.during_p50_s:
                    result = again
                else:
                    result.retried = True
            results.append(result)
            if on_result is not None:
                on_result(result)
    return idle, results


def table_header() -> str:
    return (
        f"{'attack':<44} {'answer':<46} {'ok':<3} {'RSS MB before->after':>21} "
        f"{'normal p50/max ms':>18} {'ratio':>6} {'bound':>6}"
    )


def table_row(r: Result) -> str:
    bound = r.latency_bound_s
    bound_text = "-" if bound is None else f"{bound / r.idle_p50_s:.1f}x"
    ok = "ok" if r.answered_as_expected and r.healthy_after else "NO"
    rss_text = f"{r.rss_before / MiB:.0f}->{r.rss_after / MiB:.0f}"
    lat = f"{r.during_p50_s * 1e3:.0f}/{r.during_max_s * 1e3:.0f}"
    flag = "" if r.latency_ok else " SLOW"
    answer = r.answer if len(r.answer) <= 46 else r.answer[:43] + "..."
    return (
        f"{r.name[:44]:<44} {answer:<46} {ok:<3} {rss_text:>21} {lat:>18} "
        f"{r.ratio:>5.1f}x {bound_text:>6}{flag}"
    )
