"""How the provider simulator misbehaves: its config, which fault each call gets, its rate limits.

No IO here, so every rule is table-testable; `answers.py` shapes what a call gets back and `app.py`
is the HTTP edge around both. The hot path (one call = `decide` + an answer or error body) touches
no pydantic validation: the config is validated once when it is set, and per call only its
attributes are read.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# The simulator's own names (Sim*, Fault*): it stands in for a provider, so it shares no types with the
# core it tests (batchrelay.wire.Dialect, results.Outcome, store.health.Kind mean other things).
SimDialect = Literal["chat", "messages"]
FaultKind = Literal["answer", "error", "malformed", "hang", "junk"]
# The five seed providers (the README's Presets table); their wire formats are tabled in sim/presets.py.
Preset = Literal["ttapi", "ttonkapi", "ttttt", "piapi", "ainow"]

Rate = Annotated[float, Field(ge=0.0, le=1.0)]
# 0 and 200 mean "answer normally" (so a script can mix normal calls with faults).
SimStatus = Annotated[int, Field(ge=0, le=599)]

RATE_WINDOW = 60.0  # seconds: rpm and tpm are counted over a sliding minute
NORMAL = frozenset({0, 200})
# Float sums like 0.7 + 0.30000000000000004 must not fail the "<= 1" checks.
_SUM_SLACK = 1e-9


class SimConfig(BaseModel):
    """How the simulated provider misbehaves. Every field has a harmless default.

    Per call, the first rule that applies wins: `script` (the first len(script) calls answer these
    statuses in order), `fail_status` (every call), `fail_after` (402 once that many calls were
    answered), then one seeded draw split into `fail_rate` / `malformed_rate` / `hang_rate` /
    `junk_rate` (so these four must sum to <= 1). A junk call is a 200 whose JSON body is no usable
    answer but still bills its usage: the answer with `choices: []` (chat; ai-now keeps its top-level
    tokens and costs) or `content: null` (messages); it spends credit and counts toward `fail_after`
    like an answer, and a streaming request gets it as that plain JSON body, not as events.
    `latency_ms` delays every provider answer; `retry_after` goes on 429/503/529 answers.
    `log_limit` bounds the request log (each entry holds the request and the answer): past it, the
    oldest entries are dropped, so a simulator left running does not grow without end.

    `cached_fraction` of each call's input tokens, floor(input_tokens * cached_fraction), is reported
    as read from the prompt cache: in chat as usage.prompt_tokens_details.cached_tokens (still counted
    in prompt_tokens, as OpenAI does), in messages as cache_read_input_tokens. `cache_write_fraction`
    (messages only) is reported likewise as cache_creation_input_tokens; messages' input_tokens is
    then what is left, as Anthropic counts it, so the two fractions must sum to <= 1. A preset whose
    usage has no such fields (prompt_tokens_details, the messages cache fields) reports no caching:
    its counts stay the full input. Caching changes only what is reported, not the cost.

    Before those faults, as at a real provider, come the gates: the API key, the request's validity,
    `credits` (a USD balance: every answered call spends its cost, and once it is <= 0 every call is a
    402) and `rpm` / `tpm` (a sliding 60 s window; over it, a 429 with Retry-After). `preset` makes
    the simulator speak one seed provider's wire format (sim/presets.py); None is the generic
    provider that takes every key header and both dialects. `truncate_rate` is the fraction of
    streamed answers that stop half-way. `answer_bytes` (0: short answers) pads every answer's text to
    about that many UTF-8 bytes, with non-ASCII text made from the request, for benchmarks whose
    payloads must be realistic in size.
    """

    # Typos in a fault name must fail loudly, or a test would silently run with no fault at all.
    model_config = ConfigDict(extra="forbid")

    latency_ms: Annotated[float, Field(ge=0.0)] = 0.0
    seed: int = 0
    fail_status: SimStatus | None = None
    fail_rate: Rate = 0.0
    fail_rate_status: SimStatus = 500
    retry_after: Annotated[float, Field(ge=0.0)] | None = None
    script: list[SimStatus] = Field(default_factory=list)
    fail_after: Annotated[int, Field(ge=0)] | None = None
    malformed_rate: Rate = 0.0
    hang_rate: Rate = 0.0
    hang_seconds: Annotated[float, Field(ge=0.0)] = 30.0
    api_key: str | None = None
    preset: Preset | None = None
    credits: float | None = None
    rpm: Annotated[int, Field(ge=1)] | None = None
    tpm: Annotated[int, Field(ge=1)] | None = None
    truncate_rate: Rate = 0.0
    cached_fraction: Rate = 0.0
    cache_write_fraction: Rate = 0.0
    junk_rate: Rate = 0.0
    log_limit: Annotated[int, Field(ge=1)] = 100_000  # calls the request log keeps (the newest)
    answer_bytes: Annotated[int, Field(ge=0, le=1_000_000)] = 0  # pad answers to about this size (bench/)

    @model_validator(mode="after")
    def _fractions_fit(self) -> SimConfig:
        cache = self.cached_fraction + self.cache_write_fraction
        if cache > 1 + _SUM_SLACK:
            raise ValueError(
                f"cached_fraction + cache_write_fraction must be <= 1, got {self.cached_fraction} + "
                f"{self.cache_write_fraction} = {cache:g}: they are shares of the same input tokens"
            )
        rates = self.fail_rate + self.malformed_rate + self.hang_rate + self.junk_rate
        if rates > 1 + _SUM_SLACK:
            raise ValueError(
                f"fail_rate + malformed_rate + hang_rate + junk_rate must be <= 1, got {rates:g}: "
                "they split one random draw per call"
            )
        return self


@dataclass(frozen=True, slots=True)
class SimOutcome:
    kind: FaultKind
    status: int


ANSWER = SimOutcome("answer", 200)
MALFORMED = SimOutcome("malformed", 200)
HANG = SimOutcome("hang", 200)
JUNK = SimOutcome("junk", 200)


@dataclass(slots=True)
class FaultState:
    """What `decide` remembers between calls: script position, successes so far, the seeded RNGs."""

    seed: int = 0
    script_pos: int = 0
    successes: int = 0
    rng: random.Random = field(default_factory=random.Random)
    # Its own sequence, so streaming calls do not shift the fates `decide` draws for later calls.
    stream_rng: random.Random = field(default_factory=random.Random)

    def __post_init__(self) -> None:
        self.reseed(self.seed)

    def reseed(self, seed: int) -> None:
        self.seed = seed
        self.rng.seed(seed)
        self.stream_rng.seed(f"stream-{seed}")

    def reset(self, seed: int) -> None:
        self.script_pos, self.successes = 0, 0
        self.reseed(seed)

    def truncates(self, rate: float) -> bool:
        """Whether this streamed answer stops half-way; one draw per streamed answer when rate > 0."""
        return rate > 0 and self.stream_rng.random() < rate


def decide(config: SimConfig, state: FaultState) -> SimOutcome:
    """The fate of the next call. Precedence: script, fail_status, fail_after, then the random rates."""
    # Exactly one draw per call, whatever decides it, so call i's random fate depends only on the
    # seed and i: editing the script or a rate mid-run does not reshuffle the calls after it.
    roll = state.rng.random()
    if state.script_pos < len(config.script):
        status = config.script[state.script_pos]
        state.script_pos += 1
        return _answer(state) if status in NORMAL else SimOutcome("error", status)
    if config.fail_status is not None:
        return _answer(state) if config.fail_status in NORMAL else SimOutcome("error", config.fail_status)
    if config.fail_after is not None and state.successes >= config.fail_after:
        return SimOutcome("error", 402)
    # The rates partition [0, 1), so each is exactly "that fraction of calls" while their sum <= 1.
    if roll < config.fail_rate:
        status = config.fail_rate_status
        return _answer(state) if status in NORMAL else SimOutcome("error", status)
    roll -= config.fail_rate
    if roll < config.malformed_rate:
        return MALFORMED
    roll -= config.malformed_rate
    if roll < config.hang_rate:
        _answer(state)
        return HANG
    roll -= config.hang_rate
    if roll < config.junk_rate:
        _answer(state)  # billed like an answer
        return JUNK
    return _answer(state)


def _answer(state: FaultState) -> SimOutcome:
    # Only billed answers (hang and junk included) spend the simulated credit fail_after counts down.
    state.successes += 1
    return ANSWER


@dataclass(slots=True)
class RateWindow:
    """Calls admitted in the last RATE_WINDOW seconds, for rpm / tpm limits; times are monotonic."""

    calls: deque[tuple[float, int]] = field(default_factory=deque)
    tokens: int = 0

    def clear(self) -> None:
        self.calls.clear()
        self.tokens = 0

    def admit(self, now: float, tokens: int, rpm: int | None, tpm: int | None) -> float:
        """0.0 when the call fits (it is then counted), else the seconds until the window admits it.

        Only admitted calls count, so a client hammering through 429s does not extend its own wait.
        A call larger than tpm on its own never fits; it is told to wait the whole window.
        """
        calls, horizon = self.calls, now - RATE_WINDOW
        while calls and calls[0][0] <= horizon:
            self.tokens -= calls.popleft()[1]
        wait = 0.0
        if rpm is not None and len(calls) >= rpm:
            wait = calls[len(calls) - rpm][0] + RATE_WINDOW - now
        if tpm is not None and self.tokens + tokens > tpm:
            if tokens > tpm:
                wait = RATE_WINDOW
            else:
                excess, freed = self.tokens + tokens - tpm, 0
                for t, n in calls:
                    freed += n
                    if freed >= excess:
                        wait = max(wait, t + RATE_WINDOW - now)
                        break
        if wait > 0:
            return wait
        calls.append((now, tokens))
        self.tokens += tokens
        return 0.0
