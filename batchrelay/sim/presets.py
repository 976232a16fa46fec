"""What each seed provider's document says about its wire format, as one small table per provider.

The simulator is the independent reference the client is tested against, so these facts are written here
from each provider's own API document (the five presets of the README's Presets table) and are NOT
shared with the client's own preset table (`batchrelay/config/presets.py`): a misreading on one side
then shows up as a failing test instead of agreeing with itself. Where a document is silent the table
says so and the simulator falls back to the upstream dialect's usual behaviour (OpenAI's for chat,
Anthropic's for messages). Pure: no IO.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from batchrelay.sim.answers import Answer, chat_body, error_body, error_message, error_type, flat_cost, messages_body
from batchrelay.sim.faults import Preset, SimDialect

# "any": Bearer, x-api-key or TT-API-KEY (the generic simulator); the others accept only that header.
SimAuth = Literal["any", "bearer", "x-api-key", "tt-api-key"]
# openai: {"error": {"message", "type", "code": type}}; anthropic: {"type": "error", "error": {...}};
# ttttt: {"error": {"message", "type", "code": <HTTP status as an int>}} (its document's example).
ErrorStyle = Literal["openai", "anthropic", "ttttt"]
Endpoint = Literal["chat", "messages", "models", "credits", "tokens", "moderate"]

SIM_MODEL = "sim-1"  # the one model the generic simulator lists

CHAT, MESSAGES = "/v1/chat/completions", "/v1/messages"


@dataclass(frozen=True, slots=True)
class Provider:
    name: str
    routes: Mapping[tuple[str, str], Endpoint]  # (method, path) -> what it serves; nothing else exists
    auth: SimAuth = "bearer"
    messages_auth: SimAuth | None = None  # when /v1/messages takes another header than the rest
    errors: ErrorStyle = "openai"
    messages_errors: ErrorStyle = "anthropic"
    error_types: Mapping[int, str] = field(default_factory=dict)  # documented types, by status
    usage_details: bool = False  # chat usage carries prompt_tokens_details.cached_tokens
    cache_fields: bool = True  # messages usage carries cache_creation/cache_read_input_tokens
    models_body: bytes = b'{"data":[]}'
    # ai-now: only these model ids exist (others 404), and each is priced, in USD per 1,000 tokens
    # (input, output). Answers then carry costs at top level instead of `usage`.
    prices: Mapping[str, tuple[float, float]] | None = None
    no_system_models: tuple[str, ...] = ()  # these models (and their dated snapshots) reject "system"

    def auth_for(self, endpoint: Endpoint) -> SimAuth:
        return self.messages_auth if endpoint == "messages" and self.messages_auth else self.auth

    def errors_for(self, dialect: SimDialect) -> ErrorStyle:
        return self.messages_errors if dialect == "messages" else self.errors

    def paths(self) -> set[str]:
        return {path for _, path in self.routes}


def _openai_models(ids: list[tuple[str, str]], created: int, wrap: bool) -> bytes:
    data = [{"id": i, "object": "model", "created": created, "owned_by": owner} for i, owner in ids]
    return orjson.dumps({"object": "list", "data": data} if wrap else {"data": data})


# The simulator's own behaviour when no preset is chosen: every header style, both dialects.
GENERIC = Provider(
    name="generic",
    routes={("POST", CHAT): "chat", ("POST", MESSAGES): "messages", ("GET", "/v1/models"): "models"},
    auth="any",
    usage_details=True,
    models_body=_openai_models([(SIM_MODEL, "batchrelay-sim")], 0, wrap=True),
)

# 000 TTAPI (api.ttapi.io): "TT-API-KEY: <key>" on both endpoints, no Bearer; /v1/messages requires
# max_tokens (as every messages call here does). The example usages carry only the three OpenAI
# counts and only input/output tokens. No models endpoint and no error format are documented.
TTAPI = Provider(
    name="ttapi",
    routes={("POST", CHAT): "chat", ("POST", MESSAGES): "messages"},
    auth="tt-api-key",
    cache_fields=False,
)

# 001 ttonkapi (ttonkapi.com/v1): OpenAI-compatible, Bearer, chat and a model list only. Its error
# table; its plan limits (60/300/1000 rpm, 10k/100k/unlimited tpm) are left to SimConfig.rpm/tpm.
TTONKAPI = Provider(
    name="ttonkapi",
    routes={("POST", CHAT): "chat", ("GET", "/v1/models"): "models"},
    error_types={400: "invalid_request_error", 401: "authentication_error", 402: "insufficient_quota",
                 429: "rate_limit_error", 500: "server_error"},
    models_body=_openai_models(
        [("qwen-turbo", "qwen"), ("qwen-plus", "qwen"), ("qwen-max", "qwen"),
         ("deepseek-chat", "deepseek"), ("deepseek-reasoner", "deepseek")],
        1711353600, wrap=False,  # the document's list has no "object": "list"
    ),
)

# 002 ttttt.ai: Bearer for chat, x-api-key for messages; chat usage bills prompt_tokens_details.
# cached_tokens; "4xx/5xx bodies are a unified error envelope" {"error": {"message", "type", "code"}}
# whose example is {"type": "not_found", "code": 404}; "unified" is read as: on both endpoints.
# Its document names the models gpt-5.5 and gpt-5.4 as examples.
TTTTT = Provider(
    name="ttttt",
    routes={("POST", CHAT): "chat", ("POST", MESSAGES): "messages", ("GET", "/v1/models"): "models"},
    messages_auth="x-api-key",
    errors="ttttt",
    messages_errors="ttttt",
    error_types={404: "not_found"},
    usage_details=True,
    models_body=_openai_models([("gpt-5.5", "ttttt"), ("gpt-5.4", "ttttt")], 0, wrap=True),
)

# 003 PiAPI (api.piapi.ai): Bearer, chat only; "o1-preview & o1-mini does not support 'system' role".
# (Its streaming text says the stream ends with "data:[none]"; read as OpenAI's "data: [DONE]".)
# The gpt-4-gizmo-* $0.005 minimum charge is a billing fact for the client's cost table, not a wire one.
PIAPI = Provider(
    name="piapi",
    routes={("POST", CHAT): "chat"},
    no_system_models=("o1-preview", "o1-mini"),
)

# 004 ai-now (chatapi.ai-now.space): Bearer, NO /v1 prefix, model ids with spaces. Its /models gives
# inputCost / outputCost per model without a unit; they are taken as USD per 1,000 tokens. Only two
# are in the document; the rest of its Supported Models list gets a placeholder price of our own.
_AINOW_PLACEHOLDER = (0.001, 0.002)
AINOW_PRICES: dict[str, tuple[float, float]] = {
    "Claude 3.5 Sonnet": (0.002, 0.003),  # documented
    "GPT-4 Turbo": (0.03, 0.06),  # documented
    **{m: _AINOW_PLACEHOLDER for m in (
        "Gemini 1.5 Pro Exp", "Deepseek Chat", "Llama 3.1 405b", "Mixtral 8x7b", "GPT-4o", "Command-R Plus",
        "Mixtral-8x22B-Instruct-v0.1", "GLM-4", "Llama-3-70b-chat-hf", "WizardLM-13B-V1.2",
        "Command-R Plus Online", "Meta-Llama-3.1-405B-Instruct-Turbo",
    )},
}
AINOW_UNSET_CREDITS = 1000  # what /credits reports when SimConfig.credits is None (the doc's example)
AINOW = Provider(
    name="ainow",
    routes={("POST", "/chat/completions"): "chat", ("GET", "/models"): "models",
            ("GET", "/credits"): "credits", ("POST", "/tokens"): "tokens", ("POST", "/moderate"): "moderate"},
    models_body=orjson.dumps(
        {"data": [{"id": m, "inputCost": i, "outputCost": o} for m, (i, o) in AINOW_PRICES.items()]}
    ),
    prices=AINOW_PRICES,
)

PROVIDERS: dict[Preset | None, Provider] = {
    None: GENERIC, "ttapi": TTAPI, "ttonkapi": TTONKAPI, "ttttt": TTTTT, "piapi": PIAPI, "ainow": AINOW,
}


def key_matches(
    api_key: str, authorization: str | None, x_api_key: str | None, tt_api_key: str | None
) -> bool:
    """True when any of the three header styles the seed providers use carries the key."""
    return authorization == f"Bearer {api_key}" or api_key in (x_api_key, tt_api_key)


def auth_failure(style: SimAuth, api_key: str | None, headers: Mapping[str, str]) -> str | None:
    """Why the call is not authenticated, or None. `headers` has lower-case names."""
    if api_key is None:
        return None
    if style == "any":
        authorization, x_key, tt_key = headers.get("authorization"), headers.get("x-api-key"), headers.get("tt-api-key")
        if key_matches(api_key, authorization, x_key, tt_key):
            return None
        if authorization is None and x_key is None and tt_key is None:
            return "simulated 401: no API key provided"
        return "simulated 401: incorrect API key provided"
    name = "authorization" if style == "bearer" else style
    value = headers.get(name)
    if value == (f"Bearer {api_key}" if style == "bearer" else api_key):
        return None
    shown = "Authorization: Bearer" if style == "bearer" else style.upper() if style == "tt-api-key" else style
    if value is None:
        return f"simulated 401: no API key provided (this provider reads it from {shown})"
    return "simulated 401: incorrect API key provided"


def provider_error(p: Provider, dialect: SimDialect, status: int, message: str | None = None) -> dict[str, Any]:
    style = p.errors_for(dialect)
    if style == "anthropic":
        return error_body("messages", status, message)
    kind, text = p.error_types.get(status) or error_type("chat", status), message or error_message(status)
    return {"error": {"message": text, "type": kind, "code": status if style == "ttttt" else kind}}


def refusal(p: Provider, body: dict[str, Any]) -> tuple[int, str] | None:
    """A provider's own reason to turn down a well-formed request: (status, message), or None."""
    model = body["model"]
    if p.prices is not None and model not in p.prices:
        return 404, f"simulated 404: model '{model}' not found"
    if p.no_system_models and any(model == m or model.startswith(m + "-") for m in p.no_system_models) and any(
        isinstance(m, dict) and m.get("role") == "system" for m in body["messages"]
    ):
        return 400, f"simulated 400: the 'system' role is not supported by model '{model}'"
    return None


def costs(p: Provider, model: str, answer: Answer) -> dict[str, Any]:
    """ai-now's top-level token counts and USD costs for one answer (prices per 1,000 tokens).

    Each cost is rounded to 10 decimals, which keeps float dust (0.00030000000000000003) out of them.
    """
    assert p.prices is not None
    in_price, out_price = p.prices[model]
    input_cost = round(answer.input_tokens * in_price / 1000, 10)
    output_cost = round(answer.output_tokens * out_price / 1000, 10)
    return {
        "input_tokens": answer.input_tokens,
        "output_tokens": answer.output_tokens,
        "input_tokens_cost": input_cost,
        "output_tokens_cost": output_cost,
        "total_tokens_cost": round(input_cost + output_cost, 10),
    }


def timing(output_tokens: int, elapsed: float) -> dict[str, float]:
    """ai-now's speed figures; seconds, as the document gives no unit."""
    return {"total_time_taken": round(elapsed, 4), "tokens_per_second": round(output_tokens / max(elapsed, 1e-3), 2)}


def call_cost(p: Provider, model: str, answer: Answer) -> float:
    """USD the call takes from the simulated balance: ai-now's total_tokens_cost, else the flat rate."""
    if p.prices is not None and model in p.prices:
        return float(costs(p, model, answer)["total_tokens_cost"])
    return flat_cost(answer)


def render(
    p: Provider, dialect: SimDialect, body: dict[str, Any], answer: Answer, number: int, created: int, elapsed: float
) -> dict[str, Any]:
    """The non-streaming answer as this provider words it (streams are derived from it)."""
    if dialect == "messages":
        out = messages_body(body, answer, number)
        if not p.cache_fields:
            # No cache fields, so no caching to report: input_tokens is then all of the input.
            usage = out["usage"]
            del usage["cache_creation_input_tokens"], usage["cache_read_input_tokens"]
            usage["input_tokens"] = answer.input_tokens
        return out
    out = chat_body(body, answer, number, created)
    if p.prices is not None:
        del out["usage"]
        out.update(costs(p, body["model"], answer))
        out.update(timing(answer.output_tokens, elapsed))
    elif not p.usage_details:
        del out["usage"]["prompt_tokens_details"]
    return out


_MODERATION_CATEGORIES = (
    "hate", "hate/threatening", "harassment", "harassment/threatening", "self-harm", "self-harm/intent",
    "self-harm/instructions", "sexual", "sexual/minors", "violence", "violence/graphic",
)


def moderation(inputs: list[str]) -> dict[str, Any]:
    """ai-now's /moderate (OpenAI's moderation shape): nothing is ever flagged."""
    result = {
        "categories": dict.fromkeys(_MODERATION_CATEGORIES, False),
        "category_scores": dict.fromkeys(_MODERATION_CATEGORIES, 0.0),
        "flagged": False,
    }
    return {"results": [result for _ in inputs]}
