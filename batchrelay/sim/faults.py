"""Pure logic of the provider simulator: which fault a call gets, what the answer says, what it costs.

No IO here, so every rule is table-testable; `app.py` is the HTTP edge around it. The hot path
(one call = `decide` + `answer_body` or `error_body`) touches no pydantic validation: the config is
validated once when it is set, and per call only its attributes are read.
"""

from __future__ import annotations

import math
import random
from collections import deque
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import orjson
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

SIM_MODEL = "sim-1"
RATE_WINDOW = 60.0  # seconds: rpm and tpm are counted over a sliding minute
# What a call costs the simulated balance at every preset that quotes no prices of its own (all but
# ai-now): USD per input token and per output token, i.e. $1 / $2 per million tokens.
FLAT_INPUT_USD = 1e-6
FLAT_OUTPUT_USD = 2e-6
# Statuses a provider sends Retry-After with; 529 is Anthropic's "overloaded".
RETRY_AFTER_STATUSES = frozenset({429, 503, 529})
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
    streamed answers that stop half-way.
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


def rate_tokens(dialect: SimDialect, body: dict[str, Any], answer: Answer) -> int:
    """What a call counts against tpm: its input estimate plus max_tokens, or the output if unset."""
    limit = max_tokens_of(dialect, body)
    return answer.input_tokens + (limit if _is_int(limit) else answer.output_tokens)


def flat_cost(answer: Answer) -> float:
    """USD a call spends from the balance at a provider that quotes no prices (all but ai-now)."""
    return answer.input_tokens * FLAT_INPUT_USD + answer.output_tokens * FLAT_OUTPUT_USD


def key_matches(
    api_key: str, authorization: str | None, x_api_key: str | None, tt_api_key: str | None
) -> bool:
    """True when any of the three header styles the seed providers use carries the key."""
    return authorization == f"Bearer {api_key}" or api_key in (x_api_key, tt_api_key)


def _is_int(v: Any) -> bool:
    return type(v) is int  # bool is an int subclass, and `true` is not a token count


def invalid_reason(dialect: SimDialect, body: Any) -> str | None:
    """Why the body is not a request this dialect accepts, or None when it is."""
    if not isinstance(body, dict):
        return "request body must be a JSON object"
    if not isinstance(body.get("model"), str) or not body["model"]:
        return "'model' is required and must be a string"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "'messages' is required and must be a non-empty list"
    limit = max_tokens_of(dialect, body)
    if dialect == "messages" and "max_tokens" not in body:
        return "'max_tokens' is required"
    if limit is not None and (not _is_int(limit) or limit < 1):
        return "'max_tokens' must be a positive integer"
    return None


def max_tokens_of(dialect: SimDialect, body: dict[str, Any]) -> Any:
    if dialect == "chat" and "max_completion_tokens" in body:
        return body["max_completion_tokens"]
    return body.get("max_tokens")


def last_user_text(messages: list[Any]) -> str:
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return " ".join(
                    p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)
                )
            return ""
    return ""


def reply_text(messages: list[Any]) -> str:
    """The answer depends only on the request, so reruns and failovers can be compared exactly."""
    return f"Simulated answer to: {last_user_text(messages)[:80]}"


def estimate_input_tokens(messages: list[Any], system: Any = None) -> int:
    """About 4 bytes per token of the compact JSON (as orjson writes it) of messages and system."""
    size = len(orjson.dumps(messages))
    if system is not None:
        size += len(orjson.dumps(system))
    return max(1, math.ceil(size / 4))


def estimate_output_tokens(text: str) -> int:
    return max(1, math.ceil(len(text.encode()) / 4))


@dataclass(frozen=True, slots=True)
class Answer:
    text: str
    input_tokens: int  # all of them, cached or not: what rate limits and costs count
    output_tokens: int
    truncated: bool
    cached_tokens: int = 0  # of input_tokens, read from the prompt cache
    cache_write_tokens: int = 0  # of input_tokens, written to the prompt cache (messages only)

    @property
    def uncached_tokens(self) -> int:
        """Anthropic's input_tokens: those neither read from nor written to the cache."""
        return max(0, self.input_tokens - self.cached_tokens - self.cache_write_tokens)


def plan_answer(
    dialect: SimDialect, body: dict[str, Any], cached_fraction: float = 0.0, cache_write_fraction: float = 0.0
) -> Answer:
    """Reply text and usage for a valid request, cut to max_tokens like a real model would stop."""
    messages = body["messages"]
    text = reply_text(messages)
    input_tokens = estimate_input_tokens(messages, body.get("system") if dialect == "messages" else None)
    cached = math.floor(input_tokens * cached_fraction)
    written = math.floor(input_tokens * cache_write_fraction) if dialect == "messages" else 0
    output_tokens = estimate_output_tokens(text)
    limit = max_tokens_of(dialect, body)
    if limit is not None and output_tokens > limit:
        # "ignore" drops a character split by the cut; the usage still says the model spent `limit`.
        text, output_tokens, truncated = text.encode()[: limit * 4].decode("utf-8", "ignore"), limit, True
    else:
        truncated = False
    return Answer(text, input_tokens, output_tokens, truncated, cached, written)


def chat_body(body: dict[str, Any], answer: Answer, number: int, created: int) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{number:016x}",
        "object": "chat.completion",
        "created": created,
        "model": body["model"],
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": answer.text},
                "finish_reason": "length" if answer.truncated else "stop",
            }
        ],
        "usage": {
            "prompt_tokens": answer.input_tokens,
            "completion_tokens": answer.output_tokens,
            "total_tokens": answer.input_tokens + answer.output_tokens,
            "prompt_tokens_details": {"cached_tokens": answer.cached_tokens},
        },
    }


def messages_body(body: dict[str, Any], answer: Answer, number: int) -> dict[str, Any]:
    return {
        "id": f"msg_{number:016x}",
        "type": "message",
        "role": "assistant",
        "model": body["model"],
        "content": [{"type": "text", "text": answer.text}],
        "stop_reason": "max_tokens" if answer.truncated else "end_turn",
        "stop_sequence": None,
        # The cache fields are sent by the real API as zeros too; parsers must cope with them.
        # input_tokens excludes both of them, as Anthropic counts it.
        "usage": {
            "input_tokens": answer.uncached_tokens,
            "output_tokens": answer.output_tokens,
            "cache_creation_input_tokens": answer.cache_write_tokens,
            "cache_read_input_tokens": answer.cached_tokens,
        },
    }


def answer_body(dialect: SimDialect, body: dict[str, Any], number: int, created: int) -> dict[str, Any]:
    answer = plan_answer(dialect, body)
    if dialect == "chat":
        return chat_body(body, answer, number, created)
    return messages_body(body, answer, number)


def junk(dialect: SimDialect, payload: dict[str, Any]) -> dict[str, Any]:
    """The rendered answer made useless but still billed: no choices (chat), null content (messages)."""
    if dialect == "chat":
        return {**payload, "choices": []}
    return {**payload, "content": None}


def malformed(raw: bytes) -> bytes:
    """A 200 cut off mid-body: any proper prefix of a JSON object is not valid JSON."""
    return raw[: max(1, len(raw) // 2)]


_CHAT_TYPES = {400: "invalid_request_error", 401: "authentication_error", 402: "insufficient_quota",
               403: "permission_error", 404: "not_found", 429: "rate_limit_error"}
_MESSAGES_TYPES = {400: "invalid_request_error", 401: "authentication_error", 402: "billing_error",
                   403: "permission_error", 404: "not_found_error", 413: "request_too_large",
                   429: "rate_limit_error", 500: "api_error", 503: "overloaded_error",
                   529: "overloaded_error"}
# Keep billing words out of every message but the 402 one: classify.py reads them as "out of credit".
_MESSAGES = {400: "invalid request", 401: "invalid or missing API key",
             402: "insufficient quota: the credit balance is exhausted", 403: "permission denied",
             404: "model not found", 429: "rate limit reached for requests, slow down",
             503: "the service is overloaded, try again later", 529: "the service is overloaded"}


def error_type(dialect: SimDialect, status: int) -> str:
    if dialect == "chat":
        return _CHAT_TYPES.get(status) or ("server_error" if status >= 500 else "invalid_request_error")
    return _MESSAGES_TYPES.get(status) or ("api_error" if status >= 500 else "invalid_request_error")


def error_message(status: int) -> str:
    fallback = "internal server error" if status >= 500 else "error"
    return f"simulated {status}: {_MESSAGES.get(status) or fallback}"


def error_body(dialect: SimDialect, status: int, message: str | None = None) -> dict[str, Any]:
    """The provider's error envelope: OpenAI's for the chat dialect, Anthropic's for messages."""
    kind, text = error_type(dialect, status), message or error_message(status)
    if dialect == "chat":
        return {"error": {"message": text, "type": kind, "code": kind}}
    return {"type": "error", "error": {"type": kind, "message": text}}


def retry_headers(status: int, retry_after: float | None) -> dict[str, str]:
    if retry_after is None or status not in RETRY_AFTER_STATUSES:
        return {}
    # Retry-After may only carry whole seconds, so round up and give the exact value in ms beside it.
    headers = {"retry-after": str(math.ceil(retry_after))}
    if retry_after != int(retry_after):
        headers["retry-after-ms"] = str(round(retry_after * 1000))
    return headers
