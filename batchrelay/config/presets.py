"""What the five seed provider documents say, as ProviderConfig defaults.

A config entry with `preset = "..."` starts from these fields; anything it sets itself wins
(`models`, `headers`, `prices` and `plans` are merged key by key). Prices are USD per 1M tokens
and keyed by the provider's own model id (glob patterns allowed, e.g. `gpt-4-gizmo-*`).
"""

from __future__ import annotations

from typing import Any

AINOW_MODELS = {
    # canonical id -> ai-now's id (its "Supported Models" list uses display names with spaces)
    "claude-3-5-sonnet-20240620": "Claude 3.5 Sonnet",
    "claude-3-5-sonnet": "Claude 3.5 Sonnet",
    "gpt-4-turbo": "GPT-4 Turbo",
    "gpt-4o": "GPT-4o",
    "gemini-1.5-pro-exp": "Gemini 1.5 Pro Exp",
    "deepseek-chat": "Deepseek Chat",
    "llama-3.1-405b": "Llama 3.1 405b",
    "mixtral-8x7b": "Mixtral 8x7b",
    "command-r-plus": "Command-R Plus",
    "glm-4": "GLM-4",
}

PRESETS: dict[str, dict[str, Any]] = {
    "ttapi": {
        "base_url": "https://api.ttapi.io",
        "auth": "tt-api-key",  # header TT-API-KEY, no Bearer, on both endpoints
        "dialects": ["chat", "messages"],
        "anthropic_version": None,  # the document sends none
        "error_envelope": "openai",
    },
    "ttonkapi": {
        "base_url": "https://ttonkapi.com",
        "auth": "bearer",
        "dialects": ["chat"],
        "models_path": "/v1/models",
        "catalog": ["qwen-turbo", "qwen-plus", "qwen-max", "deepseek-chat", "deepseek-reasoner"],
        "error_envelope": "openai",
        "plans": {
            "starter": {"rpm": 60, "tpm": 10_000},
            "pro": {"rpm": 300, "tpm": 100_000},
            "business": {"rpm": 1000, "tpm": None},
        },
        "plan": "starter",
    },
    "ttttt": {
        "base_url": "https://api.ttttt.ai",
        "auth": {"chat": "bearer", "messages": "x-api-key"},
        "dialects": ["chat", "messages"],
        "anthropic_version": None,
        "models_path": "/v1/models",
        "error_envelope": "openai",
    },
    "piapi": {
        "base_url": "https://api.piapi.ai",
        "auth": "bearer",
        "dialects": ["chat"],
        "no_system_models": ["o1-preview", "o1-mini"],  # "does not support system role"
        "catalog": ["gpt-4o-mini", "gpt-4o", "o1-mini", "o1-preview", "claude-3-5-haiku-20241022",
                    "claude-3-5-sonnet-20240620", "claude-3-5-sonnet-20241022", "gpt-4-gizmo-*"],
        "price_multiplier": "0.75",  # "75% of OpenAI's/Anthropic's official pricing"
        "prices": {
            "gpt-4o-mini": {"input": "0.1125", "output": "0.45"},
            "gpt-4o": {"input": "1.875", "output": "7.5"},
            "o1-mini": {"input": "2.25", "output": "9"},
            "o1-preview": {"input": "11.25", "output": "45"},
            "claude-3-5-haiku-20241022": {"input": "0.75", "output": "3.75"},
            "claude-3-5-sonnet-20240620": {"input": "2.25", "output": "11.25"},
            "claude-3-5-sonnet-20241022": {"input": "2.25", "output": "11.25"},
            # "equal to OpenAI gpt-4o price", with "a $0.005 minimum charge" per completion call
            "gpt-4-gizmo-*": {"input": "2.5", "output": "10", "min_charge": "0.005"},
        },
        "error_envelope": "openai",
    },
    "ainow": {
        "base_url": "https://chatapi.ai-now.space",
        "auth": "bearer",
        "dialects": ["chat"],
        "endpoints": {"chat": "/chat/completions"},  # no /v1 prefix
        "variant": "ainow",  # tokens and costs at the top level of the response, no `usage`
        "models": AINOW_MODELS,
        "catalog": sorted(set(AINOW_MODELS.values())),
        "models_path": "/models",
        "credits_path": "/credits",
        "cost_source": "reported",  # it quotes and reports its own cost per call
        "prices": {
            # its /models quotes inputCost/outputCost per 1K tokens; here per 1M
            "Claude 3.5 Sonnet": {"input": "2", "output": "3"},
            "GPT-4 Turbo": {"input": "30", "output": "60"},
        },
        "error_envelope": "openai",
    },
}

MERGED_FIELDS = ("models", "headers", "prices", "plans", "endpoints")


def apply_preset(data: dict[str, Any]) -> dict[str, Any]:
    """The config entry's fields laid over its preset's; unknown presets raise ValueError."""
    name = data.get("preset")
    if name is None:
        return data
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r} (known: {', '.join(PRESETS)})")
    merged = {**PRESETS[name], **data}
    for field in MERGED_FIELDS:
        if isinstance(PRESETS[name].get(field), dict) and isinstance(data.get(field), dict):
            merged[field] = {**PRESETS[name][field], **data[field]}
    merged.setdefault("name", name)
    return merged
