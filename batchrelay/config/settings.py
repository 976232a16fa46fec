"""batchrelay.toml: Redis, worker tuning and the providers.

Lookup order: `-c/--config`, then `BATCHRELAY_CONFIG`, then `./batchrelay.toml`, else defaults.
`REDIS_URL` in the environment wins over `[redis] url`. API keys are never in this file: each
provider names the environment variable that holds its key.
"""

from __future__ import annotations

import fnmatch
import json
import os
import tomllib
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

from cronsim import CronSim, CronSimError
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from batchrelay import parse
from batchrelay.config.cache import CacheConfig
from batchrelay.config.lanes import BATCH_KINDS, NOT_FOR_LANES, LaneConfig, ProviderKind, lane_defaults, lane_problems
from batchrelay.config.presets import apply_preset
from batchrelay.config.serve import ServeConfig
from batchrelay.errors import ConfigError
from batchrelay.wire.dialect import DIALECTS, Dialect

AuthStyle = Literal["bearer", "tt-api-key", "x-api-key"]
DEFAULT_PREFIX = "batchrelay:"  # of every Redis key (store/keys.py)
DEFAULT_PATHS: dict[Dialect, str] = {"chat": "/v1/chat/completions", "messages": "/v1/messages"}
# cronsim reads only the fields, so the classic macros are spelled out here
CRON_MACROS = {"@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *", "@weekly": "0 0 * * 0",
               "@daily": "0 0 * * *", "@midnight": "0 0 * * *", "@hourly": "0 * * * *"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelPrice(_Strict):
    """USD per 1M tokens, plus per-call amounts in USD. Without `input`/`output` the token rates are
    the official ones (genai-prices) times the provider's `price_multiplier`; cached reads and cache
    writes cost the input rate unless priced apart."""

    input: Decimal | None = Field(default=None, ge=0)
    output: Decimal | None = Field(default=None, ge=0)
    cached_input: Decimal | None = Field(default=None, ge=0)
    cache_write: Decimal | None = Field(default=None, ge=0)
    per_request: Decimal = Field(default=Decimal(0), ge=0)
    min_charge: Decimal = Field(default=Decimal(0), ge=0)

    @model_validator(mode="after")
    def _rates_together(self) -> ModelPrice:
        if (self.input is None) != (self.output is None):
            raise ValueError("set both `input` and `output` (USD per 1M tokens), or neither to use official prices")
        if self.input is None and (self.cached_input is not None or self.cache_write is not None):
            raise ValueError("`cached_input` / `cache_write` need `input` and `output` beside them")
        return self


class RateLimits(_Strict):
    rpm: int | None = Field(default=None, ge=1)
    tpm: int | None = Field(default=None, ge=1)


class ProviderConfig(_Strict):
    name: str = Field(min_length=1)
    kind: ProviderKind = "chat"  # a Batch API (config/lanes.py) is a lane: never called line by line
    lane: LaneConfig | None = None
    preset: str | None = None
    base_url: str
    api_key_env: str | None = None
    auth: AuthStyle | dict[Dialect, AuthStyle] = "bearer"
    dialects: tuple[Dialect, ...] = DIALECTS
    translate: bool = True  # may serve jobs of the other dialect by translating them
    endpoints: dict[Dialect, str] = Field(default_factory=dict)
    priority: int = 100
    weight: float = Field(default=1.0, ge=0)  # for the `weighted` routing strategy
    models: dict[str, str] = Field(default_factory=dict)
    headers: dict[str, str] = Field(default_factory=dict)
    anthropic_version: str | None = "2023-06-01"
    variant: Literal["standard", "ainow"] = "standard"
    error_envelope: Literal["openai", "anthropic"] = "openai"
    models_path: str | None = None
    credits_path: str | None = None
    catalog: tuple[str, ...] = ()
    no_system_models: tuple[str, ...] = ()
    price_multiplier: Decimal = Field(default=Decimal(1), gt=0)
    prices: dict[str, ModelPrice] = Field(default_factory=dict)
    cost_source: Literal["computed", "reported"] = "computed"
    plans: dict[str, RateLimits] = Field(default_factory=dict)
    plan: str | None = None
    rpm: int | None = Field(default=None, ge=1)
    tpm: int | None = Field(default=None, ge=1)
    max_concurrency: int | None = Field(default=None, ge=1)

    @model_validator(mode="before")
    @classmethod
    def _preset(cls, data: Any) -> Any:
        return lane_defaults(apply_preset(data)) if isinstance(data, dict) else data

    @model_validator(mode="after")
    def _plan_known(self) -> ProviderConfig:
        given = {f: getattr(self, f) for f in NOT_FOR_LANES}
        if problems := lane_problems(self.kind, self.lane, given, variant=self.variant, cost_source=self.cost_source):
            raise ValueError("; ".join(problems))
        if self.plan is not None and self.plan not in self.plans:
            known = ", ".join(self.plans) or "none"
            raise ValueError(f"unknown plan {self.plan!r} (known: {known})")
        return self

    @property
    def is_lane(self) -> bool:
        return self.kind in BATCH_KINDS

    def auth_for(self, dialect: Dialect) -> AuthStyle:
        if isinstance(self.auth, str):
            return self.auth
        return self.auth.get(dialect, "bearer")

    @property
    def limits(self) -> RateLimits:
        """rpm/tpm set on the provider win over its plan's."""
        base = self.plans[self.plan] if self.plan else RateLimits()
        return RateLimits(rpm=self.rpm or base.rpm, tpm=self.tpm or base.tpm)

    def price_of(self, provider_model: str) -> ModelPrice | None:
        if provider_model in self.prices:
            return self.prices[provider_model]
        for pattern, price in self.prices.items():
            if fnmatch.fnmatchcase(provider_model, pattern):
                return price
        return None

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return v.rstrip("/")

    @field_validator("endpoints")
    @classmethod
    def _paths(cls, v: dict[Dialect, str]) -> dict[Dialect, str]:
        for dialect, path in v.items():
            if not path.startswith("/"):
                raise ValueError(f"{dialect} path must start with '/'")
        return v

    def path(self, dialect: Dialect) -> str:
        return self.endpoints.get(dialect, DEFAULT_PATHS[dialect])

    def speaks(self, dialect: Dialect) -> bool:
        return dialect in self.dialects

    def provider_model(self, model: str) -> str:
        return self.models.get(model, model)

    def api_key(self) -> str | None:
        """The key from the environment, read at call time so it never sits in config dumps.

        Surrounding whitespace is dropped: a `.env` saved with CRLF endings leaves a stray `\r`."""
        value = os.environ.get(self.api_key_env) if self.api_key_env else None
        return value.strip() if value else None


class RedisConfig(_Strict):
    url: str | None = None
    prefix: str = DEFAULT_PREFIX
    # result writes wait (Redis WAIT) until this many replicas have them, for at most
    # replica_ack_timeout seconds (store/replicas.py); 0: no wait (asynchronous replication)
    min_replicas_ack: int = Field(default=0, ge=0, le=64)
    replica_ack_timeout: float = Field(default=1.0, gt=0, le=60)


class WorkerConfig(_Strict):
    concurrency: int = Field(default=32, ge=1, le=4096)
    chunk_size: int = Field(default=50, ge=1, le=10_000)
    call_timeout: float = Field(default=120.0, gt=0)
    attempts_per_provider: int = Field(default=2, ge=1, le=10)
    backoff: float = Field(default=0.5, ge=0)
    max_tries: int = Field(default=25, ge=1)
    connections_per_client: int = Field(default=16, ge=1, le=256)
    default_max_tokens: int = Field(default=4096, ge=1)  # the messages dialect requires max_tokens
    provider_deadline: float = Field(default=300.0, gt=0)  # retries on one provider stop after this
    # arq's limit for one chunk job; a SIGKILLed worker's chunk reruns this long (+10 s) later.
    # The chunk stops itself before it and requeues its unfinished lines (arq would drop them).
    job_timeout: float = Field(default=600.0, gt=0)
    max_line_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)  # a longer input line is an error, never read whole
    retention_days: float = Field(default=30, ge=0)  # finished batches are deleted after this; 0 keeps them
    # the process's own Prometheus metrics (worker/metrics.py) at http://metrics_host:metrics_port/; off by default
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    metrics_host: str = "127.0.0.1"

    @property
    def retention_s(self) -> float | None:
        return self.retention_days * 86400 if self.retention_days else None

    @model_validator(mode="after")
    def _deadlines(self) -> WorkerConfig:
        if self.call_timeout >= self.job_timeout:
            raise ValueError("call_timeout must be below job_timeout")
        return self

    @property
    def chunk_deadline(self) -> float:
        return max(self.job_timeout * 0.9, self.job_timeout - 30)

    @property
    def cancel_grace_s(self) -> float:
        """How long the calls in flight of a batch being stopped (cancel, expiry) get to come back
        with their answer before their lines are stopped too."""
        return self.call_timeout + 5


class HealthConfig(_Strict):
    """Shared provider health (README: "Shared health"); seconds unless named otherwise."""

    bench_s: float = Field(default=900, ge=0)  # out of credit: leave it alone this long
    disable_s: float = Field(default=3600, ge=0)  # 401/403; `providers check` lifts it sooner
    model_cooldown_s: float = Field(default=600, ge=0)  # 404 for a model at a provider
    cooldown_s: float = Field(default=5, ge=0)  # a 429 without Retry-After
    breaker_window_s: float = Field(default=30, gt=0)
    breaker_min_calls: int = Field(default=10, ge=1)
    breaker_error_rate: float = Field(default=0.5, gt=0, le=1)
    breaker_open_s: float = Field(default=10, ge=0)
    rate_recovery_s: float = Field(default=60, gt=0)  # from half pace back to full after a 429
    # A provider's first this many answers come in rounds of calls that double (1, 2, 4, ...; its
    # slow start); a 429 cuts the calls it may have in flight to half (at least one), every this many
    # answers add one back, and the limit lapses rate_recovery_s after the 429's cooldown ends (see
    # health.py). 1: no slow start.
    concurrency_recovery_calls: int = Field(default=20, ge=1)
    rate_headroom: float = Field(default=0.99, gt=0, le=1)  # pace at this share of rpm/tpm
    max_wait_s: float = Field(default=5, ge=0)  # longer waits defer the line instead of holding a slot
    line_deadline_s: float = Field(default=3600, gt=0)  # a line nobody could serve fails after this
    probe_s: float = Field(default=30, gt=0)  # a probe's claim lapses after this (its worker may have died)
    probe_wait_s: float = Field(default=2, ge=0)  # wait this long for a probe's verdict before moving on
    # A counted call's slot lapses this long after its process last renewed it (it renews its calls
    # in flight five times as often): a process killed mid-call blocks its slots no longer than this.
    lease_s: float = Field(default=5, gt=0)


class RoutingConfig(_Strict):
    strategy: Literal["priority", "cheapest", "weighted"] = "priority"
    routes: dict[str, list[str]] = Field(default_factory=dict)  # model (or glob) -> providers allowed


class WebhooksConfig(_Strict):
    """Completion webhooks (see webhooks.py). The signing secret is never in this file: `secret_env`
    names the environment variable that holds it (a Standard Webhooks `whsec_...` secret or any string)."""

    secret_env: str | None = None
    timeout_s: float = Field(default=10.0, gt=0, le=60)
    max_attempts: int = Field(default=10, ge=1, le=100)
    backoff_s: float = Field(default=5.0, gt=0)
    max_backoff_s: float = Field(default=900.0, gt=0)


class ScheduleConfig(_Strict):
    """A `[[schedules]]` entry: at each `cron` tick (UTC), every file matching `input` that was never
    processed becomes a batch; its results land in `output_dir` (see schedules.py). `cron` is kept as
    the five fields cronsim reads (minute hour day month weekday; names such as MON-FRI, any case)."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    cron: str
    input: str = Field(min_length=1)  # a path or a glob
    output_dir: Path
    endpoint: Dialect = "chat"
    providers: tuple[str, ...] | None = None
    max_cost: Decimal | None = None
    webhook: str | None = None  # each run's batch POSTs its batch object there when it ends
    completion_window: float | None = None  # each run's lines expire this long after its submit (lanes: see README)

    @field_validator("completion_window", mode="before")
    @classmethod
    def _window(cls, v: float | str | None) -> float | None:
        return None if v is None else parse.duration_s(v)

    @field_validator("max_cost", mode="before")
    @classmethod
    def _max_cost(cls, v: Decimal | float | str | None) -> Decimal | None:
        return None if v is None else parse.usd_amount(v)  # InvalidValue: reported as a config error

    @field_validator("webhook")
    @classmethod
    def _webhook(cls, v: str | None) -> str | None:
        return None if v is None else parse.webhook_url(v)

    @field_validator("cron")
    @classmethod
    def _cron(cls, v: str) -> str:
        """The five fields (a macro spelled out) once cronsim has read them; ValueError is a config error."""
        expr = v.strip()
        if expr.startswith("@"):
            if expr.lower() not in CRON_MACROS:
                raise ValueError(f"cron {v!r}: the macros are {', '.join(CRON_MACROS)}")
            expr = CRON_MACROS[expr.lower()]
        fields = expr.split()
        if len(fields) != 5:  # cronsim would also take a sixth, leading field of seconds
            raise ValueError(f"cron {v!r} needs 5 fields (minute hour day month weekday), has {len(fields)}")
        try:
            CronSim(expr, datetime.now(UTC))
        except CronSimError as e:
            raise ValueError(f"cron {v!r}: {e}") from None
        return " ".join(fields)


class Settings(_Strict):
    redis: RedisConfig = RedisConfig()
    worker: WorkerConfig = WorkerConfig()
    health: HealthConfig = HealthConfig()
    routing: RoutingConfig = RoutingConfig()
    serve: ServeConfig = ServeConfig()
    webhooks: WebhooksConfig = WebhooksConfig()
    cache: CacheConfig = CacheConfig()
    providers: tuple[ProviderConfig, ...] = ()
    schedules: tuple[ScheduleConfig, ...] = ()
    source: str | None = None

    @model_validator(mode="after")
    def _unique_names(self) -> Settings:
        names = [p.name for p in self.providers]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"provider names must be unique, repeated: {', '.join(dupes)}")
        for model, allowed in self.routing.routes.items():
            unknown = sorted(set(allowed) - set(names))
            if unknown and self.providers:
                raise ValueError(f"routing.routes[{model!r}] names unknown providers: {', '.join(unknown)}")
        schedules = [s.name for s in self.schedules]
        if len(set(schedules)) != len(schedules):
            raise ValueError("schedule names must be unique")
        for sch in self.schedules:
            unknown = sorted(set(sch.providers or ()) - set(names))
            if unknown and self.providers:
                raise ValueError(f"schedules {sch.name!r} names unknown providers: {', '.join(unknown)}")
        return self

    @property
    def redis_url(self) -> str | None:
        return os.environ.get("REDIS_URL") or self.redis.url

    def ordered_providers(self) -> list[ProviderConfig]:
        return sorted(self.providers, key=lambda p: p.priority)

    def with_providers(self, providers: list[ProviderConfig]) -> Settings:
        return self.model_copy(update={"providers": tuple(providers)})


def _where(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def parse_settings(data: dict[str, Any], source: str = "<config>") -> Settings:
    try:
        return Settings.model_validate({**data, "source": source})
    except ValidationError as e:
        problems = "; ".join(f"{_where(err['loc'])}: {err['msg']}" for err in e.errors())
        raise ConfigError(f"{source}: {problems}") from None


def _decode(raw: bytes, p: Path) -> dict[str, Any]:
    text = raw.decode("utf-8")
    if p.suffix == ".json":  # what `run` hands its worker processes
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("top level must be an object")
        return data
    return tomllib.loads(text)


def load_settings(path: str | os.PathLike[str] | None = None) -> Settings:
    chosen = path or os.environ.get("BATCHRELAY_CONFIG") or None  # empty means unset
    if chosen is None:
        default = Path("batchrelay.toml")
        if not default.exists():
            return Settings()
        chosen = default
    p = Path(chosen)
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise ConfigError(f"{p}: cannot read config: {e.strerror}") from None
    try:
        data = _decode(raw, p)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, ValueError) as e:
        raise ConfigError(f"{p}: not valid {'JSON' if p.suffix == '.json' else 'TOML'}: {e}") from None
    return parse_settings(data, str(p))
