"""What the client is asked to run: scenario, warm-up, stability and request options.

The field names of ScenarioParams, WarmupParams and StabilityParams are those of embench's
ScenarioConfig, WarmupConfig and StabilityConfig (config/benchmark.yaml), so embench builds
them with `ScenarioParams.model_validate(scenario_config.model_dump())`; the client never
imports embench. A scenario file (`--scenario-file`) is the JSON form of ScenarioFile.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    model_validator,
)
from pydantic_core import PydanticCustomError

Identifier = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$")]
Mode = Literal["closed", "open"]
Arrival = Literal["poisson", "constant"]
LengthBucket = Literal["short", "medium", "long"]
Endpoint = Literal["embed", "openai"]
TextMode = Literal["unique", "repeat"]

# Target token counts of the length buckets (approximate tokens; see client.workload).
LENGTH_BUCKET_TOKENS: dict[str, int] = {"short": 32, "medium": 128, "long": 512}
ENDPOINT_PATHS: dict[str, str] = {"embed": "/embed", "openai": "/v1/embeddings"}
# Logical name -> response header (milliseconds). The server's names are the defaults.
DEFAULT_TIMING_HEADERS: dict[str, str] = {
    "tokenization": "x-tokenization-time",
    "queue": "x-queue-time",
    "inference": "x-inference-time",
    "total": "x-total-time",
}
TIMING_NAMES: tuple[str, ...] = tuple(DEFAULT_TIMING_HEADERS)


class ParamsModel(BaseModel):
    """Frozen, unknown keys rejected with a hint; lax typing (CLI values arrive as text)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _reject_unknown_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            allowed = list(cls.model_fields)
            for key in data:
                if key not in allowed:
                    close = difflib.get_close_matches(str(key), allowed, n=1)
                    hint = f" (did you mean {close[0]!r}?)" if close else ""
                    raise PydanticCustomError(
                        "unknown_key",
                        "unknown key {quoted}{hint}; expected one of: {allowed}",
                        {
                            "key": key,
                            "quoted": repr(key),
                            "hint": hint,
                            "allowed": ", ".join(allowed),
                        },
                    )
        return data


class WarmupParams(ParamsModel):
    """Load sent before measuring, excluded from every statistic. Warm-up ends when `requests`
    requests have completed AND `duration_s` has passed (bounded by the scenario's
    max_duration_s). It runs at the scenario's own load, so measurement starts in a steady
    state with no gap."""

    requests: NonNegativeInt = 50
    duration_s: NonNegativeFloat = 5.0


class StabilityParams(ParamsModel):
    """perf_analyzer-style stability that gates (client.stats.stability). The measurement is
    cut into windows of max(`window_s`, `window_requests` / the throughput seen in warm-up -
    open loop: the rate) seconds. Once min_duration_s and min_requests are met, every window
    boundary is a check (a trial): stable when the last `windows` windows agree within
    `tolerance` (max/min - 1) on throughput (open loop: completions per scheduled arrival) and
    on p99 and p50 (beyond each window's own sampling range). Not stable: with
    `extend_until_stable` one more window, up to `max_trials` checks, never past
    max_duration_s. The figures are those of the stable windows; a scenario that never
    stabilises is invalid.

    Defaults, measured on simulated steady runs of the nightly scenarios (a queueing server
    with 1% hiccups at its p99): 0 of 400 runs per scenario falsely unstable, a slowdown to
    40% of the speed for one window caught in 10 of 10. 135 requests a window let the figures
    of the minimal 3 stable windows bound p99 (a 95% order-statistic interval needs 368
    requests), with a margin for a throughput below the warm-up's; 10 checks give a run that
    settles late its chance."""

    window_s: PositiveFloat = 2.0
    window_requests: PositiveInt = 135
    windows: Annotated[int, Field(ge=2)] = 3
    tolerance: Annotated[float, Field(gt=0, lt=1)] = 0.10
    extend_until_stable: bool = True
    max_trials: PositiveInt = 10


SearchOver = Literal["rate", "concurrency"]


class SearchParams(ParamsModel):
    """Peak throughput under a latency SLO (client.search): the highest open-loop `rate`, or
    closed-loop `concurrency`, in [low, high] at which p99 (over all requests) is at most
    `slo_p99_ms` and the error rate below `max_error_rate`. Bisection (geometric midpoints;
    whole numbers for concurrency) stops once the bracket's relative width high/low - 1 is at
    most `precision`, or after `max_probes` probes in all; each probe is a full measurement
    with the scenario's own warm-up, durations and stability rules."""

    over: SearchOver
    slo_p99_ms: PositiveFloat
    max_error_rate: Annotated[float, Field(gt=0, le=1)] = 0.01
    low: PositiveFloat
    high: PositiveFloat
    precision: Annotated[float, Field(gt=0, le=1)] = 0.05
    # the two bounds are always probed, so at least 2
    max_probes: Annotated[int, Field(ge=2, le=64)] = 8

    @model_validator(mode="after")
    def _bounds(self) -> SearchParams:
        if self.low >= self.high:
            raise ValueError(f"search.low ({self.low:g}) must be below search.high ({self.high:g})")
        if self.over == "concurrency" and not (self.low.is_integer() and self.high.is_integer()):
            raise ValueError(
                f"a search over concurrency needs whole numbers for search.low and search.high "
                f"(got {self.low:g} and {self.high:g})"
            )
        return self


class ScenarioParams(ParamsModel):
    """One load scenario. Closed: `concurrency` workers, each sends its next request when the
    last is answered. Open: requests arrive at `rate` per second (Poisson or constant, seeded)
    whether or not the server keeps up. Measurement runs until BOTH min_requests and
    min_duration_s are met, and stops at max_duration_s. With `search`, the rate (open) or
    concurrency (closed) is left out and searched instead; every probe of the search is
    measured with these parameters."""

    name: Identifier
    mode: Mode
    concurrency: PositiveInt | None = None
    rate: PositiveFloat | None = None
    arrival: Arrival = "poisson"
    min_requests: PositiveInt = 200
    min_duration_s: PositiveFloat = 10.0
    max_duration_s: PositiveFloat = 120.0
    texts_per_request: Annotated[int, Field(gt=0, le=2048)] = 1
    length_bucket: LengthBucket = "short"
    # a latency SLO: the result gains goodput (requests that met it, per second) and slo_met
    slo_p99_ms: PositiveFloat | None = None
    # open loop with an SLO: stop as soon as more requests have exceeded it than p99 allows
    # of all the arrivals max_duration_s can hold (the SLO can no longer be met); a search
    # sets it on its probes, so that an overloaded probe ends in seconds, not at the bound
    stop_when_slo_missed: bool = False
    # a search scenario: the peak load under an SLO (its rate or concurrency is searched)
    search: SearchParams | None = None

    def _searches(self, over: SearchOver) -> bool:
        return self.search is not None and self.search.over == over

    # before _mode_parameters, so that a search in the wrong mode is named as such
    @model_validator(mode="after")
    def _search_parameters(self) -> ScenarioParams:
        if self.search is None:
            return self
        over = self.search.over
        needed: Mode = "open" if over == "rate" else "closed"
        if self.mode != needed:
            other = "concurrency" if over == "rate" else "rate"
            raise ValueError(
                f"search.over={over} needs mode: {needed} (a {self.mode}-loop scenario "
                f"searches over {other})"
            )
        if getattr(self, over) is not None:
            raise ValueError(
                f"'{over}' is what the search finds (between search.low and search.high); "
                "leave it out"
            )
        if self.slo_p99_ms is not None and self.slo_p99_ms != self.search.slo_p99_ms:
            raise ValueError(
                f"slo_p99_ms ({self.slo_p99_ms:g}) differs from search.slo_p99_ms "
                f"({self.search.slo_p99_ms:g}); give the SLO once, in search"
            )
        return self

    @model_validator(mode="after")
    def _stop_when_slo_missed(self) -> ScenarioParams:
        if self.stop_when_slo_missed and (self.mode != "open" or self.slo_p99_ms is None):
            raise ValueError(
                "stop_when_slo_missed needs mode: open and slo_p99_ms (the arrivals the "
                "measurement can hold bound how many requests p99 lets exceed the SLO)"
            )
        return self

    @model_validator(mode="after")
    def _mode_parameters(self) -> ScenarioParams:
        if self.mode == "closed":
            if self.concurrency is None and not self._searches("concurrency"):
                raise ValueError("a closed-loop scenario needs 'concurrency'")
            if self.rate is not None:
                raise ValueError("'rate' applies to open-loop scenarios only (mode: open)")
        else:
            if self.rate is None and not self._searches("rate"):
                raise ValueError("an open-loop scenario needs 'rate' (requests per second)")
        if self.max_duration_s < self.min_duration_s:
            raise ValueError(
                f"max_duration_s ({self.max_duration_s}) is below min_duration_s "
                f"({self.min_duration_s})"
            )
        return self


class ClientOptions(ParamsModel):
    """How requests are made; the same for every scenario of a run."""

    endpoint: Endpoint = "embed"
    # openai: the requests' "model" field, for servers that want one (None: left out)
    request_model: str | None = None
    text_mode: TextMode = "unique"
    # repeat mode: this many distinct requests are cycled (for testing server-side caches)
    repeat_pool: PositiveInt = 16
    seed: int = 0
    request_timeout_s: PositiveFloat = 30.0
    # open loop: connections in flight at most; requests beyond wait (and the wait counts)
    max_connections: PositiveInt = 1024
    # closed loop: after a 429, a worker waits Retry-After, capped at this (0: no wait)
    max_retry_after_s: NonNegativeFloat = 1.0
    error_threshold: Annotated[float, Field(ge=0, lt=1)] = 0.01
    timing_headers: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_TIMING_HEADERS))
    sample_interval_s: PositiveFloat = 1.0
    # a client whose own CPU% (of one core: the event loop is one thread) reaches this is
    # flagged saturated
    client_saturation_pct: Annotated[float, Field(gt=0, le=100)] = 90.0
    # open loop: p99 of schedule lag above this (ms) is flagged
    max_schedule_lag_ms: PositiveFloat = 10.0
    # open loop, LoadGen's rule: a p99 schedule lag beyond this, or any arrival scheduled in
    # the measurement but never sent, makes the scenario invalid (the load was not the load
    # asked for); it is also how long the last due arrivals get to go out at the end
    schedule_lag_limit_ms: PositiveFloat = 100.0
    # the client's own event loop: a monitor sleeps this interval and records how late it
    # wakes; a p99 of that lag above max_loop_lag_ms flags the client saturated
    loop_lag_interval_ms: PositiveFloat = 10.0
    max_loop_lag_ms: PositiveFloat = 10.0
    tokenizer: str | None = None  # optional tokenizer.json for exact token counts

    @model_validator(mode="after")
    def _timing_names(self) -> ClientOptions:
        unknown = sorted(set(self.timing_headers) - set(TIMING_NAMES))
        if unknown:
            raise ValueError(
                f"unknown timing name(s) {', '.join(unknown)}; expected: {', '.join(TIMING_NAMES)}"
            )
        return self


class RunLabels(ParamsModel):
    """What is being measured, as the caller knows it. Blank fields are filled from /info."""

    model: str | None = None
    variant: str | None = None
    runtime: str | None = None
    git_sha: str | None = None
    image: str | None = None
    image_digest: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)


class ScenarioFile(ParamsModel):
    """The JSON document `--scenario-file` reads (embench writes it from benchmark.yaml)."""

    scenarios: Annotated[list[ScenarioParams], Field(min_length=1)]
    warmup: WarmupParams = WarmupParams()
    stability: StabilityParams = StabilityParams()
    options: ClientOptions | None = None
    metadata: RunLabels | None = None

    @model_validator(mode="after")
    def _unique_names(self) -> ScenarioFile:
        names = [s.name for s in self.scenarios]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"scenario names must be unique; repeated: {', '.join(repeated)}")
        return self


class SearchDefinition(BaseModel):
    """What a search's result means: the peak `over` at which p99 <= slo_p99_ms and errors
    < max_error_rate, to within `precision`. The precision belongs here: the reported peak
    is the highest load that passed, so it lies below the true peak by up to the final
    bracket's width (about precision/2 on average) - two precisions are two estimators with
    different biases. low, high and max_probes are left out: they bound and budget the search
    (a peak outside [low, high], or a search cut short by max_probes, is flagged on the
    result), they do not change what is estimated."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    over: SearchOver
    slo_p99_ms: float
    max_error_rate: float
    precision: float


class ScenarioDefinition(BaseModel):
    """The comparability-relevant definition of a scenario: two results whose definitions are
    equal measured the same thing (durations, seeds and request counts change the noise, not
    the quantity, and are left out). `key()` is its stable hash."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Mode
    concurrency: int | None
    rate: float | None
    arrival: Arrival | None
    texts_per_request: int
    length_bucket: LengthBucket
    target_tokens: int
    endpoint: Endpoint
    text_mode: TextMode
    repeat_pool: int | None
    corpus_sha256: str
    token_counter: str
    search: SearchDefinition | None = None

    def key(self) -> str:
        fields = self.model_dump(mode="json")
        if fields["search"] is None:
            del fields["search"]  # a plain scenario keeps the key it had before searches
        doc = json.dumps(fields, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(doc.encode()).hexdigest()


def definition_of(
    params: ScenarioParams, options: ClientOptions, corpus_sha256: str, token_counter: str
) -> ScenarioDefinition:
    return ScenarioDefinition(
        mode=params.mode,
        concurrency=params.concurrency if params.mode == "closed" else None,
        rate=params.rate if params.mode == "open" else None,
        arrival=params.arrival if params.mode == "open" else None,
        texts_per_request=params.texts_per_request,
        length_bucket=params.length_bucket,
        target_tokens=LENGTH_BUCKET_TOKENS[params.length_bucket],
        endpoint=options.endpoint,
        text_mode=options.text_mode,
        repeat_pool=options.repeat_pool if options.text_mode == "repeat" else None,
        corpus_sha256=corpus_sha256,
        token_counter=token_counter,
        search=(
            SearchDefinition(
                over=params.search.over,
                slo_p99_ms=params.search.slo_p99_ms,
                max_error_rate=params.search.max_error_rate,
                precision=params.search.precision,
            )
            if params.search is not None
            else None
        ),
    )


# ------------------------------------------------------------------ CLI specs


class ScenarioSpecError(ValueError):
    """A scenario given on the command line or in a file is invalid; the message names it."""


def _auto_name(fields: dict[str, str]) -> str:
    mode = fields.get("mode", "x")
    load = f"c{fields.get('concurrency', '')}" if mode == "closed" else f"r{fields.get('rate', '')}"
    if "search.over" in fields:
        load = f"search-{fields['search.over']}-slo{fields.get('search.slo_p99_ms', '')}ms"
    parts = [mode, load.replace(".", "_")]
    if mode == "open" and fields.get("arrival", "poisson") != "poisson":
        parts.append(fields["arrival"])
    if fields.get("texts_per_request", "1") != "1":
        parts.append(f"b{fields['texts_per_request']}")
    parts.append(fields.get("length_bucket", "short"))
    return "-".join(parts).lower()


def parse_scenario_spec(spec: str, defaults: dict[str, Any] | None = None) -> list[ScenarioParams]:
    """`mode=closed,concurrency=16,texts_per_request=8` -> scenarios. A value list in
    `concurrency` or `rate` separated by '/' (`concurrency=1/4/16`) expands into a sweep, one
    scenario per value. `name` defaults to a description such as `closed-c16-b8-short`.
    `search.KEY=VALUE` sets a SearchParams field: `mode=open,search.over=rate,
    search.slo_p99_ms=50,search.low=10,search.high=400` is a search (`open-search-rate-
    slo50ms-short`)."""
    fields: dict[str, str] = {}
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise ScenarioSpecError(f"scenario {spec!r}: expected key=value, got {part!r}")
        fields[key.strip()] = value.strip()
    sweep_key = next((k for k in ("concurrency", "rate") if "/" in fields.get(k, "")), None)
    values = fields[sweep_key].split("/") if sweep_key else [None]
    out: list[ScenarioParams] = []
    for value in values:
        one = dict(fields)
        if sweep_key and value is not None:
            one[sweep_key] = value
        one.setdefault("name", _auto_name(one))
        merged: dict[str, Any] = {**(defaults or {}), **one}
        out.append(validate_scenario(_nest_search(merged), label=spec))
    return out


def _nest_search(fields: dict[str, Any]) -> dict[str, Any]:
    """`search.over=rate` -> {"search": {"over": "rate"}} (other dotted keys stay unknown)."""
    out: dict[str, Any] = {}
    search: dict[str, Any] = {}
    for key, value in fields.items():
        if key.startswith("search."):
            search[key.removeprefix("search.")] = value
        else:
            out[key] = value
    if search:
        out["search"] = search
    return out


def validate_scenario(data: dict[str, Any], label: str | None = None) -> ScenarioParams:
    try:
        return ScenarioParams.model_validate(data)
    except ValidationError as exc:
        name = data.get("name") or label or "?"
        raise ScenarioSpecError(
            f"invalid scenario {name!r}: {format_validation_error(exc)}"
        ) from None


def format_validation_error(exc: ValidationError) -> str:
    """One line per problem, each naming the parameter."""
    problems = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"]) or "(scenario)"
        msg = err["msg"].removeprefix("Value error, ")
        value = err.get("input")
        shown = "" if isinstance(value, dict) or value is None else f" (got {value!r})"
        problems.append(f"{loc}: {msg}{shown}")
    return "; ".join(problems)
