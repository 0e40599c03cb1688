"""Gateway config: YAML → typed, strictly validated models, with errors that name file:line.

Config-time only (pydantic is never on the request path). Unknown keys are errors, so a typo
in a PR fails validation instead of being silently ignored.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

#: Provider kinds the gateway can translate to. Each has one module in ext_proc/translate.
ProviderKind = Literal["openai", "anthropic", "azure_openai", "bedrock", "gemini", "vertex",
                       "vllm", "tgi"]

_NAME = r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Address(_Strict):
    address: str = "127.0.0.1"
    port: int = Field(ge=0, le=65535)


class SecretRef(_Strict):
    """A credential: from an environment variable (preferred) or inline (tests, local only)."""

    env: str | None = None
    value: SecretStr | None = None

    @model_validator(mode="after")
    def _one_source(self) -> SecretRef:
        if (self.env is None) == (self.value is None):
            raise ValueError("set exactly one of 'env' or 'value'")
        return self

    def resolve(self) -> str | None:
        """The secret's value, or None when the environment variable is unset."""
        if self.value is not None:
            return self.value.get_secret_value()
        assert self.env is not None
        return os.environ.get(self.env) or None


class Simulate(_Strict):
    """Serve this provider from the built-in simulator (`switchyard up` starts it on base_url)."""

    ttft_ms: float = Field(default=20.0, ge=0)
    tokens_per_s: float = Field(default=200.0, ge=0)
    # Faults from the start (the same fields can change at run time: PUT /_sim/options).
    error_rate: float = Field(default=0.0, ge=0, le=1)
    error_status: int = Field(default=500, ge=400, le=599)
    rate_limit: bool = False
    retry_after_s: int = Field(default=1, ge=0)
    hang: bool = False
    slow_first_token_ms: float | None = Field(default=None, ge=0)
    reset_after_chunks: int | None = Field(default=None, ge=0)
    truncate_after_chunks: int | None = Field(default=None, ge=1)
    reply_tokens: int | None = Field(default=None, ge=1)
    # The simulated account's own quota (429 with the provider's rate-limit headers over it).
    rpm: float | None = Field(default=None, gt=0)
    tpm: float | None = Field(default=None, gt=0)
    #: A pool: one simulator per endpoint (must equal the number of `endpoints`).
    replicas: int = Field(default=1, ge=1, le=64)
    #: vLLM kind: the engine model (continuous batching, KV blocks, prefix cache) instead of
    #: the fixed ttft_ms / tokens_per_s timing.
    engine: EngineSettings | None = None


class TpotSettings(_Strict):
    """Decode step time (ms) = base + per_running_seq x running sequences."""

    base: float = Field(default=12.0, ge=0)
    per_running_seq: float = Field(default=0.25, ge=0)


class EngineSettings(_Strict):
    """The simulated vLLM engine of each endpoint (see sim/vllm_engine.py)."""

    max_num_seqs: int = Field(default=64, ge=1, le=4096)
    kv_blocks: int = Field(default=4096, ge=1)
    block_size: int = Field(default=16, ge=1, le=1024)
    prefix_cache: bool = True
    prefill_tokens_per_s: float = Field(default=8000.0, gt=0)
    tpot_ms: TpotSettings = TpotSettings()
    max_batched_tokens: int = Field(default=8192, ge=1)


class PoolScorers(_Strict):
    """Weights of the endpoint picker's scorers (0 turns one off)."""

    queue: float = Field(default=1.0, ge=0)
    kv_cache: float = Field(default=1.0, ge=0)
    prefix: float = Field(default=2.0, ge=0)


class Saturation(_Strict):
    """An endpoint over either threshold takes no new requests of `low_classes`; a pool whose
    every endpoint is over them sends those to the model's next backend."""

    max_waiting: int = Field(default=8, ge=0)
    max_kv_usage: float = Field(default=0.9, gt=0, le=1)
    low_classes: list[PriorityClassName] = Field(
        default_factory=lambda: ["agent", "batch"])  # type: ignore[arg-type]


class PoolSizing(_Strict):
    """The desired-replicas gauge: `switchyard plan`'s analytic sizing over the live demand."""

    #: The p95 SLO a replica must meet (plan's --slo-ttft-ms / --slo-tpot-ms defaults).
    slo_ttft_ms: float = Field(default=500.0, gt=0)
    slo_tpot_ms: float = Field(default=50.0, gt=0)
    #: Decay time of the demand window (req/s, tokens/s); plan sizes per-minute peaks.
    window_s: float = Field(default=60.0, gt=0, le=86_400)
    #: A `switchyard profile` JSON (plan's --profile); default: `simulate.engine`'s numbers.
    profile: str | None = None


class Pool(_Strict):
    """Endpoint picking inside a pool of self-hosted replicas (vLLM metrics)."""

    scorers: PoolScorers = PoolScorers()
    #: How often ext_proc scrapes each endpoint's `/metrics` (off the request path).
    metrics_interval_ms: int = Field(default=200, ge=10, le=60_000)
    #: Metrics older than this are stale: pick by the gateway's own in-flight counts
    #: (default: 3 scrape intervals, at least 1 s).
    stale_after_ms: int | None = Field(default=None, ge=10)
    saturation: Saturation = Field(default_factory=Saturation)
    #: Bounded-load consistent hashing: an endpoint takes a prefix's requests only while its
    #: load is at most this times the pool's mean.
    load_factor: float = Field(default=1.25, ge=1.0, le=10.0)
    #: Prompt characters hashed for prefix affinity (in blocks of 64; shorter prompts have
    #: no affinity).
    prefix_chars: int = Field(default=1024, ge=64, le=1_000_000)
    #: `score` (queue, KV, prefix affinity) or `round_robin` (a baseline for comparisons).
    picker: Literal["score", "round_robin"] = "score"
    sizing: PoolSizing = Field(default_factory=PoolSizing)


class Cost(_Strict):
    """What one endpoint of a self-hosted pool costs (for `switchyard plan`)."""

    gpu_hour_usd: float = Field(gt=0)
    gpus_per_endpoint: int = Field(default=1, ge=1, le=64)


class Health(_Strict):
    """Envoy outlier detection, circuit breaking and retry budget for this provider's backends."""

    #: Consecutive failures (5xx, gateway errors, connect failures, resets) before ejection.
    consecutive_failures: int = Field(default=5, ge=1)
    #: Base ejection time; Envoy multiplies it by the number of ejections so far.
    ejection_s: float = Field(default=30.0, gt=0)
    #: Retries into these backends may be at most this percent of their active requests
    #: (min `min_retry_concurrency`), so an outage cannot double the load on the survivors.
    retry_budget_percent: float = Field(default=20.0, ge=0, le=100)
    min_retry_concurrency: int = Field(default=32, ge=0)


#: Kinds that are self-hosted servers (a pool of `endpoints` is allowed).
SELF_HOSTED = ("vllm", "tgi")


class Provider(_Strict):
    kind: ProviderKind
    #: The provider's URL; for a pool, one of `endpoints` (default: the first).
    base_url: str
    #: A pool of self-hosted replicas (vllm, tgi): `http://IP:PORT` each, same scheme and path.
    endpoints: list[str] | None = Field(default=None, min_length=1, max_length=256)
    #: Endpoint picking in the pool (default settings when `endpoints` is set).
    pool: Pool | None = None
    #: GPU cost of the pool's endpoints (`switchyard plan`).
    cost: Cost | None = None
    #: Bearer token (openai, vllm, tgi), `x-api-key` (anthropic), `api-key` (azure_openai),
    #: `x-goog-api-key` (gemini). Not used by bedrock (SigV4) or vertex (OAuth).
    api_key: SecretRef | None = None
    #: azure_openai: the `api-version` query parameter (required).
    api_version: str | None = None
    #: bedrock: AWS region (required); credentials default to the standard AWS environment
    #: variables (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN).
    region: str | None = None
    aws_access_key_id: SecretRef | None = None
    aws_secret_access_key: SecretRef | None = None
    aws_session_token: SecretRef | None = None
    #: vertex: GCP project and location (required); OAuth from `credentials_file` (a service
    #: account JSON) or application-default credentials.
    project: str | None = None
    location: str | None = None
    credentials_file: str | None = None
    connect_timeout_s: float = Field(default=5.0, gt=0)
    #: Extra static headers sent to this provider on every attempt.
    headers: dict[str, str] = Field(default_factory=dict)
    #: OpenAI parameters this provider cannot honour: drop them (named in the
    #: `x-switchyard-dropped-params` response header) or reject the request with a 400.
    unsupported_params: Literal["drop", "reject"] = "drop"
    max_concurrent_requests: int = Field(default=4096, ge=1)
    #: The provider account's quota, enforced by admission control and by Envoy's local rate
    #: limit (requests) and circuit breaker (max_concurrent) as a safety net.
    limits: QuotaLimits | None = None
    health: Health = Health()
    simulate: Simulate | None = None

    @model_validator(mode="before")
    @classmethod
    def _base_url_from_endpoints(cls, data: Any) -> Any:
        if (isinstance(data, dict) and data.get("base_url") is None
                and isinstance(data.get("endpoints"), list) and data["endpoints"]
                and isinstance(data["endpoints"][0], str)):
            return {**data, "base_url": data["endpoints"][0]}
        return data

    @model_validator(mode="after")
    def _pool(self) -> Provider:
        if self.endpoints is None:
            if self.pool is not None:
                raise _RefError(("pool",), "a pool needs 'endpoints'")
            if self.simulate is not None and self.simulate.replicas > 1:
                raise _RefError(("simulate", "replicas"),
                                "simulate.replicas > 1 needs one entry per replica in 'endpoints'")
            return self
        if self.kind not in SELF_HOSTED:
            raise _RefError(("endpoints",), f"endpoints (a pool) are for self-hosted kinds "
                            f"({', '.join(SELF_HOSTED)}), not {self.kind}")
        seen: set[str] = set()
        base = urlsplit(self.base_url)
        for i, url in enumerate(self.endpoints):
            parts = urlsplit(url)
            if parts.scheme != "http" or not parts.hostname or not _is_ip(parts.hostname):
                raise _RefError(("endpoints", i), "a pool endpoint must be http://IP:PORT (Envoy "
                                f"picks pool hosts by address), got {url!r}")
            if parts.path.rstrip("/") != base.path.rstrip("/") or parts.query:
                raise _RefError(("endpoints", i), "every endpoint needs base_url's path "
                                f"{base.path or '/'!r} and no query")
            addr = f"{parts.hostname}:{parts.port or 80}"
            if addr in seen:
                raise _RefError(("endpoints", i), f"duplicate endpoint {addr}")
            seen.add(addr)
        if f"{base.hostname}:{base.port or 80}" not in seen:
            raise _RefError(("base_url",), "base_url must be one of endpoints")
        if self.simulate is not None and self.simulate.replicas not in (1, len(self.endpoints)):
            raise _RefError(("simulate", "replicas"), f"simulate.replicas must equal the number "
                            f"of endpoints ({len(self.endpoints)})")
        if self.simulate is not None and self.simulate.engine is not None and self.kind != "vllm":
            raise _RefError(("simulate", "engine"), "simulate.engine is for kind vllm")
        return self

    @property
    def endpoint_addresses(self) -> list[tuple[str, int]]:
        """(IP, port) of every endpoint of a pool; the base_url's host for one endpoint."""
        if not self.endpoints:
            return [(self.host, self.port)]
        out = []
        for url in self.endpoints:
            parts = urlsplit(url)
            out.append((parts.hostname or "", parts.port or 80))
        return out

    @model_validator(mode="after")
    def _kind_fields(self) -> Provider:
        required = {"azure_openai": ("api_version",), "bedrock": ("region",),
                    "vertex": ("project", "location")}.get(self.kind, ())
        for name in required:
            if getattr(self, name) is None:
                raise ValueError(f"kind {self.kind} requires '{name}'")
        return self

    def options(self) -> dict[str, str]:
        """Per-kind settings for ext_proc (resolved secrets included: never log this)."""
        out: dict[str, str] = {"unsupported_params": self.unsupported_params}
        for name in ("api_version", "region", "project", "location", "credentials_file"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        for name in ("aws_access_key_id", "aws_secret_access_key", "aws_session_token"):
            if self.kind != "bedrock":
                break
            ref: SecretRef | None = getattr(self, name)
            env_name = name.upper()
            value = ref.resolve() if ref is not None else os.environ.get(env_name)
            if value:
                out[name] = value
        return out

    @model_validator(mode="after")
    def _url(self) -> Provider:
        parts = urlsplit(self.base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"base_url must be an http(s) URL with a host, got {self.base_url!r}")
        if parts.query or parts.fragment:
            raise ValueError("base_url must not have a query or fragment")
        return self

    @property
    def host(self) -> str:
        return urlsplit(self.base_url).hostname or ""

    @property
    def port(self) -> int:
        parts = urlsplit(self.base_url)
        return parts.port or (443 if parts.scheme == "https" else 80)

    @property
    def tls(self) -> bool:
        return urlsplit(self.base_url).scheme == "https"

    @property
    def path_prefix(self) -> str:
        """Path before the API's own path; a trailing `/v1` is folded into the API path."""
        path = urlsplit(self.base_url).path.rstrip("/")
        return path[:-3] if path.endswith("/v1") else path


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class Price(_Strict):
    """USD per 1M tokens. `cached_input` (prompt tokens served from the provider's prompt
    cache) defaults to the input price."""

    input: float = Field(ge=0)
    output: float = Field(ge=0)
    cached_input: float = Field(ge=0)

    @model_validator(mode="before")
    @classmethod
    def _cached_input_defaults_to_input(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("cached_input") is None and "input" in data:
            return {**data, "cached_input": data["input"]}
        return data


class QuotaLimits(_Strict):
    """A quota with smooth refill: requests and tokens per minute, requests in flight."""

    rpm: float | None = Field(default=None, gt=0)
    tpm: float | None = Field(default=None, gt=0)
    max_concurrent: int | None = Field(default=None, ge=1)


class ModelQuota(_Strict):
    """A tenant's own limits on one model alias."""

    rpm: float | None = Field(default=None, gt=0)
    tpm: float | None = Field(default=None, gt=0)
    max_concurrent: int | None = Field(default=None, ge=1)


PriorityClassName = Literal["interactive", "chat", "agent", "batch"]


class CallerKey(_Strict):
    """A caller's API key: from an environment variable, inline, or only its SHA-256 (hex)."""

    env: str | None = None
    value: SecretStr | None = None
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-fA-F]{64}$")

    @model_validator(mode="after")
    def _one_source(self) -> CallerKey:
        if sum(x is not None for x in (self.env, self.value, self.sha256)) != 1:
            raise ValueError("set exactly one of 'env', 'value' or 'sha256'")
        return self

    def digest(self) -> str | None:
        """Hex SHA-256 of the key; None when its environment variable is unset."""
        if self.sha256 is not None:
            return self.sha256.lower()
        key = self.value.get_secret_value() if self.value is not None else (
            os.environ.get(self.env or "") or None)
        return hashlib.sha256(key.encode()).hexdigest() if key else None


class Tenant(_Strict):
    api_keys: list[CallerKey] = Field(min_length=1)
    #: The class of this tenant's requests; a request may lower it with x-switchyard-priority.
    priority: PriorityClassName = "interactive"
    limits: QuotaLimits = QuotaLimits()
    #: Per (tenant, model alias) limits.
    models: dict[str, ModelQuota] = Field(default_factory=dict)


class PrioritySettings(_Strict):
    #: Fraction of a provider's or backend's quota this class may use.
    quota_share: float | None = Field(default=None, gt=0, le=1)
    #: How long a request of this class may wait for headroom before it is shed.
    max_queue_ms: int | None = Field(default=None, ge=0, le=600_000)


class RedisSettings(_Strict):
    url: str = Field(pattern=r"^rediss?://")


class SharedState(_Strict):
    redis: RedisSettings | None = None


#: A task category of the request classifier (per-category quality priors).
TaskCategory = Literal["tools", "long_context", "code", "reasoning", "chat"]
#: Capabilities a provider kind lacks unless a backend's `capabilities:` says otherwise.
#: Every kind translates tools, images and JSON schema (TGI's Messages API takes image_url
#: for vision models); whether the model behind a backend can use them is said per backend.
KIND_LACKS: dict[str, frozenset[str]] = {}


class Capabilities(_Strict):
    """What the model behind a backend can do; unset: the provider kind's default."""

    tools: bool | None = None
    images: bool | None = None
    json_schema: bool | None = None


class Backend(_Strict):
    provider: str
    model: str = Field(min_length=1)
    #: This deployment's own quota (on top of its provider's account quota).
    limits: QuotaLimits | None = None
    price: Price | None = None
    context_window: int | None = Field(default=None, ge=1)
    #: Quality prior 0..1 for selection: one number, or per task category.
    quality: Annotated[float, Field(ge=0, le=1)] | dict[
        TaskCategory, Annotated[float, Field(ge=0, le=1)]] | None = None
    capabilities: Capabilities = Capabilities()

    def lacks(self, kind: str) -> list[str]:
        """Capabilities this backend lacks (kind default, then this backend's config)."""
        lacking = set(KIND_LACKS.get(kind, ()))
        for name, value in self.capabilities.model_dump().items():
            if value is True:
                lacking.discard(name)
            elif value is False:
                lacking.add(name)
        return sorted(lacking)


class Slo(_Strict):
    """Constraint on predicted latency: a backend whose predicted `percentile` misses it is
    only a fallback."""

    ttft_ms: float | None = Field(default=None, gt=0)
    tpot_ms: float | None = Field(default=None, gt=0)
    percentile: float = Field(default=95.0, gt=0, lt=100)


class Weights(_Strict):
    """Balanced strategy: 2x the expected cost (or predicted latency) weighs as much as 0.1
    quality, at equal weights."""

    cost: float = Field(default=1.0, ge=0)
    latency: float = Field(default=1.0, ge=0)
    quality: float = Field(default=1.0, ge=0)


class Routing(_Strict):
    """Live selection among a model's backends (absent: the configured order)."""

    strategy: Literal["ordered", "cost", "latency", "throughput", "quality", "balanced"] = (
        "balanced")
    weights: Weights = Weights()
    slo: Slo | None = None
    min_quality: float | None = Field(default=None, ge=0, le=1)
    #: Share of traffic sent to a non-best backend; default 0.02 (0 for `ordered`).
    explore: float | None = Field(default=None, ge=0, le=0.5)
    #: Expected USD per request above which a backend is only a fallback.
    max_price_usd: float | None = Field(default=None, gt=0)


RetryOn = Literal["connect-failure", "reset", "5xx", "429", "timeout"]


class Failover(_Strict):
    """When and how a request moves to the next backend (Envoy's own retries)."""

    retry_on: list[RetryOn] = Field(default_factory=lambda: list(RetryOn.__args__))  # type: ignore[attr-defined]

    @field_validator("retry_on", mode="before")
    @classmethod
    def _codes_as_text(cls, value: Any) -> Any:
        """YAML reads a bare 429 as a number."""
        return [str(v) if isinstance(v, int) else v for v in value] if isinstance(
            value, list) else value
    #: Further attempts after the first; default: one per remaining backend.
    max_retries: int | None = Field(default=None, ge=0, le=10)
    #: Non-streaming: an attempt with no response within this moves on.
    per_try_timeout_s: float = Field(default=120.0, gt=0)
    #: Streaming: an attempt with no first byte within this moves on.
    first_byte_timeout_s: float = Field(default=30.0, gt=0)
    #: Opt-in hedging: after this long with no first byte, a second attempt starts on the next
    #: backend; the first to answer wins and the other is cancelled.
    hedge_after_s: float | None = Field(default=None, gt=0)


class Model(_Strict):
    #: Ordered: the first is preferred, later ones are the fallback order.
    backends: list[Backend] = Field(min_length=1)
    failover: Failover = Failover()
    #: Live selection (cost, latency, quality, SLO); absent: the configured order.
    routing: Routing | None = None
    #: Unix time shown as `created` in `GET /v1/models`; default: when this control plane
    #: first loaded the model (kept across reloads).
    created: int | None = Field(default=None, ge=0)


class ExtProcSettings(_Strict):
    address: str = "127.0.0.1"
    port: int = Field(default=18081, ge=0, le=65535)
    #: Health and Prometheus metrics of the ext_proc server.
    metrics_port: int = Field(default=9464, ge=0, le=65535)
    #: Envoy waits this long for each ext_proc reply (Envoy's 200 ms default is too short for
    #: large bodies).
    message_timeout_ms: int = Field(default=5000, ge=10)
    #: Envoy <-> ext_proc over a Unix socket (ext_proc runs beside Envoy); `false` uses TCP on
    #: address:port (an ext_proc fleet on other hosts).
    unix_socket: bool = True
    #: Concurrent gRPC streams Envoy may open to ext_proc (the ext_proc cluster's circuit
    #: breakers; each request is one route-phase stream plus one per attempt).
    max_streams: int = Field(default=20_000, ge=1)
    #: ext_proc processes behind this Envoy (one core each for Python): worker i listens on
    #: port + i and metrics_port + i. Each worker is a replica of admission and selection
    #: state, so more than one needs `shared_state.redis`; `auto`: the number of cores when
    #: Redis is configured, else 1.
    workers: int | Literal["auto"] = 1

    @field_validator("workers", mode="before")
    @classmethod
    def _worker_count(cls, v: Any) -> Any:
        """One readable error for anything but `auto` or 1..256."""
        if v == "auto" or (isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 256):
            return v
        raise ValueError(f"workers must be a whole number from 1 to 256, or auto (got {v!r})")


class ControlPlaneSettings(_Strict):
    #: gRPC (ADS + RoutingTable) listener every node connects to.
    address: str = "127.0.0.1"
    port: int = Field(default=18000, ge=0, le=65535)
    #: The status page and fleet API (`/`, `/api/fleet`): loopback by default; port 0: off.
    status_address: str = "127.0.0.1"
    status_port: int = Field(default=18001, ge=0, le=65535)


class LedgerSettings(_Strict):
    """The usage ledger: one JSON line per request, in rotating files (docs/usage-ledger.md)."""

    enabled: bool = True
    #: Directory of the ledger files (relative: to the config file's directory). Default: the
    #: gateway's log directory + `/usage`, else `$XDG_STATE_HOME/switchyard/usage`.
    dir: str | None = None
    #: Longest a record waits in memory before it is written.
    flush_interval_ms: int = Field(default=1000, ge=10, le=60_000)
    #: A new file is started past this size (and every hour).
    max_file_mb: float = Field(default=64.0, gt=0)


class Limits(_Strict):
    #: Larger request bodies get 413 from Envoy before any Python sees them.
    max_request_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)
    #: Whole-request timeout (streams included).
    request_timeout_s: float = Field(default=600.0, gt=0)
    #: A client must send its request headers within this, and the whole request (headers and
    #: body) within `request_receive_timeout_s`: slow or stalled clients do not hold resources.
    request_headers_timeout_s: float = Field(default=10.0, gt=0)
    request_receive_timeout_s: float = Field(default=60.0, gt=0)
    #: Downstream connections one Envoy accepts (listener connection limit and the overload
    #: manager's global cap): a flood cannot exhaust file descriptors or memory.
    max_connections: int = Field(default=10_000, ge=1)
    #: Envoy's heap budget: past 90% it shrinks its heap, past 95% it stops accepting new
    #: requests (overload manager) instead of growing until the OOM killer.
    max_heap_mb: int = Field(default=4096, ge=64)


class GatewayConfig(_Strict):
    listen: Address = Address(port=8080)
    admin: Address = Address(port=9901)
    control_plane: ControlPlaneSettings = ControlPlaneSettings()
    ext_proc: ExtProcSettings = ExtProcSettings()
    limits: Limits = Limits()
    #: Envoy worker threads (`--concurrency`).
    envoy_concurrency: int = Field(default=2, ge=1, le=64)
    providers: dict[Annotated[str, Field(pattern=_NAME)], Provider] = Field(min_length=1)
    models: dict[Annotated[str, Field(pattern=_NAME)], Model] = Field(default_factory=dict)
    #: Absent: an open gateway, every caller is tenant "default" (class interactive).
    tenants: dict[Annotated[str, Field(pattern=_NAME)], Tenant] | None = None
    priorities: dict[PriorityClassName, PrioritySettings] = Field(default_factory=dict)
    #: Absent: limits and statistics are per process.
    shared_state: SharedState | None = None
    ledger: LedgerSettings = LedgerSettings()

    def binds(self) -> list[tuple[tuple[str | int, ...], str, int]]:
        """(config field, address, port) of every listener the gateway opens itself."""
        binds: list[tuple[tuple[str | int, ...], str, int]] = [
            (("listen", "port"), self.listen.address, self.listen.port),
            (("admin", "port"), self.admin.address, self.admin.port),
            (("control_plane", "port"), self.control_plane.address, self.control_plane.port),
            (("control_plane", "status_port"), self.control_plane.status_address,
             self.control_plane.status_port),
        ]
        for i in range(self.ext_proc_workers):  # worker i: port + i, metrics_port + i
            for key in ("port", "metrics_port"):
                base = getattr(self.ext_proc, key)
                binds.append((("ext_proc", key), self.ext_proc.address, base + i if base else 0))
        for name, p in self.providers.items():
            if p.simulate is None:
                continue
            if p.endpoints:
                for i, url in enumerate(p.endpoints):
                    parts = urlsplit(url)
                    binds.append((("providers", name, "endpoints", i), parts.hostname or "",
                                  parts.port or 80))
            else:
                binds.append((("providers", name, "base_url"), p.host, p.port))
        return binds

    @property
    def ext_proc_workers(self) -> int:
        """How many ext_proc processes run behind this Envoy (`auto` resolved)."""
        workers = self.ext_proc.workers
        if workers == "auto":
            return (os.cpu_count() or 1) if self._shared else 1
        return workers

    @property
    def _shared(self) -> bool:
        return self.shared_state is not None and self.shared_state.redis is not None

    @model_validator(mode="after")
    def _workers(self) -> GatewayConfig:
        """Workers are replicas of admission and selection state: without Redis each would
        admit its own share of every limit and learn from a fraction of the traffic."""
        workers = self.ext_proc.workers
        if workers != "auto" and workers > 1 and not self._shared:
            raise _RefError(("ext_proc", "workers"), (
                f"{workers} workers need shared_state.redis: each worker is a separate replica "
                "of admission limits and live selection statistics, which only stay correct "
                "when they share state (use 1, or configure shared_state.redis)"))
        return self

    @model_validator(mode="after")
    def _ports(self) -> GatewayConfig:
        """Every listener the gateway opens needs its own port (0: any free port)."""
        binds = self.binds()
        seen: dict[int, tuple[tuple[str | int, ...], str]] = {}
        for loc, address, port in binds:
            if not port:
                continue
            other = seen.get(port)
            if other is not None and (other[1] == address or "0.0.0.0" in (other[1], address)):
                raise _RefError(loc, f"port {port} is already used by {_dotted(other[0])}")
            seen.setdefault(port, (loc, address))
        return self

    @model_validator(mode="after")
    def _tenant_models(self) -> GatewayConfig:
        for name, tenant in (self.tenants or {}).items():
            for alias in tenant.models:
                if alias not in self.models:
                    known = ", ".join(sorted(self.models)) or "none"
                    raise _RefError(("tenants", name, "models", alias),
                                    f"unknown model {alias!r} (known: {known})")
        return self

    @model_validator(mode="after")
    def _references(self) -> GatewayConfig:
        for alias, model in self.models.items():
            for i, backend in enumerate(model.backends):
                if backend.provider not in self.providers:
                    known = ", ".join(sorted(self.providers))
                    raise _RefError(
                        ("models", alias, "backends", i, "provider"),
                        f"unknown provider {backend.provider!r} (known: {known})",
                    )
        return self


class _RefError(ValueError):
    """A cross-reference error that knows the exact field it is about."""

    def __init__(self, loc: tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.loc = loc


@dataclass(frozen=True)
class ConfigError(Exception):
    """A config problem located at file:line and a dotted field path."""

    file: str
    line: int | None
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        field = f" {self.field}:" if self.field else ""
        return f"{where}:{field} {self.message}"


def _dotted(loc: tuple[str | int, ...]) -> str:
    out = ""
    for part in loc:
        if part == "[key]":  # pydantic's marker for a bad mapping key: the key is the field
            continue
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _line_map(node: yaml.Node, path: tuple[str | int, ...], out: dict[tuple[Any, ...], int],
              file: str) -> None:
    """Record the 1-based line of every key/item; reject duplicate keys (PyYAML keeps the last)."""
    out.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen: set[Any] = set()
        for key_node, value_node in node.value:
            key = key_node.value
            if key in seen:
                raise ConfigError(file, key_node.start_mark.line + 1, _dotted((*path, key)),
                                  "duplicate key")
            seen.add(key)
            out[(*path, key)] = key_node.start_mark.line + 1
            _line_map(value_node, (*path, key), out, file)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            out[(*path, i)] = item.start_mark.line + 1
            _line_map(item, (*path, i), out, file)


def _line_for(loc: tuple[Any, ...], lines: dict[tuple[Any, ...], int]) -> int | None:
    for end in range(len(loc), -1, -1):
        if loc[:end] in lines:
            return lines[loc[:end]]
    return None


_INTERNAL_LOC = re.compile(r"^(function-after|function-before|model|constrained-str)\[")


def parse_config(text: str, file: str = "<config>") -> GatewayConfig:
    """Parse and validate config text; raise ConfigError naming file, line and field."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.load(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        raise ConfigError(file, line, "", f"YAML syntax error: {exc.problem}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(file, None, "", f"YAML error: {exc}") from None
    if not isinstance(data, dict) or root is None:
        raise ConfigError(file, 1, "", "config must be a mapping at the top level")
    lines: dict[tuple[Any, ...], int] = {}
    _line_map(root, (), lines, file)
    try:
        return GatewayConfig.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        # A typo'd key also makes the real key "missing": the unknown key is the better hint.
        err = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
        ctx_error = (err.get("ctx") or {}).get("error")
        if isinstance(ctx_error, _RefError):
            # A model's own check names fields below the model (err["loc"] points at it).
            base = tuple(p for p in err["loc"] if not (isinstance(p, str)
                                                       and _INTERNAL_LOC.match(p)))
            loc: tuple[Any, ...] = base + ctx_error.loc
            message = str(ctx_error)
        else:
            loc = tuple(p for p in err["loc"] if not (isinstance(p, str)
                                                      and _INTERNAL_LOC.match(p)))
            message = err["msg"]
            if err["type"] == "extra_forbidden":
                message = "unknown key"
            elif err["type"] == "missing":
                message = "required field is missing"
        more = exc.error_count() - 1
        if more:
            message += f" (and {more} more error{'s' if more > 1 else ''})"
        raise ConfigError(file, _line_for(loc, lines), _dotted(loc), message) from None


def load_config(path: str | Path, data: bytes | None = None) -> GatewayConfig:
    """Load a config file; `data` is its content when the caller already read it."""
    path = Path(path)
    if data is None:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ConfigError(str(path), None, "", f"cannot read config: {exc.strerror}"
                              ) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(str(path), None, "", "config is not valid UTF-8") from None
    return parse_config(text, str(path))


def default_config_path() -> Path:
    """The embedded default config (simulated providers, no keys)."""
    return Path(__file__).resolve().parent.parent / "config" / "gateway.yaml"
