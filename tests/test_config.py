"""batchrelay.toml: loading, error messages that point at the problem, provider helpers."""

from __future__ import annotations

from pathlib import Path

import pytest

from batchrelay.config.settings import ProviderConfig, Settings, load_settings, parse_settings
from batchrelay.errors import ConfigError

FULL_EXAMPLE = """
[redis]
url = "redis://config-host:6379/2"
prefix = "br:"

[worker]
concurrency = 64
chunk_size = 25
call_timeout = 60
job_timeout = 300

[[providers]]
name = "ttapi"
base_url = "https://api.ttapi.io/"
api_key_env = "TTAPI_KEY"
auth = "tt-api-key"
priority = 20

[[providers]]
name = "ttttt"
base_url = "https://api.ttttt.ai"
api_key_env = "TTTTT_KEY"
auth = "x-api-key"
dialects = ["messages"]
endpoints = { messages = "/anthropic/v1/messages" }
priority = 10
headers = { "X-Client" = "batchrelay" }

[[providers]]
name = "ai-now"
base_url = "https://chatapi.ai-now.space"
api_key_env = "AINOW_KEY"
auth = "bearer"
dialects = ["chat"]
endpoints = { chat = "/chat/completions" }
models = { "gpt-4-turbo" = "GPT-4 Turbo" }
"""


def write(tmp_path: Path, text: str, name: str = "batchrelay.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def provider(**overrides: object) -> ProviderConfig:
    return ProviderConfig.model_validate({"name": "p", "base_url": "https://example.test", **overrides})


@pytest.fixture(autouse=True)
def no_ambient_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.delenv("BATCHRELAY_CONFIG", raising=False)


def test_full_example_config_loads_every_setting(tmp_path: Path) -> None:
    path = write(tmp_path, FULL_EXAMPLE)
    s = load_settings(path)
    assert s.source == str(path)
    assert (s.redis.url, s.redis.prefix) == ("redis://config-host:6379/2", "br:")
    assert (s.worker.concurrency, s.worker.chunk_size, s.worker.call_timeout, s.worker.job_timeout) == (64, 25, 60, 300)
    ttapi, ttttt, ainow = s.providers
    assert ttapi.name == "ttapi"
    assert ttapi.base_url == "https://api.ttapi.io"  # trailing slash dropped so paths join cleanly
    assert (ttapi.auth, ttapi.api_key_env, ttapi.priority) == ("tt-api-key", "TTAPI_KEY", 20)
    assert ttapi.path("chat") == "/v1/chat/completions"
    assert ttapi.path("messages") == "/v1/messages"
    assert ttttt.auth == "x-api-key"
    assert ttttt.path("messages") == "/anthropic/v1/messages"
    assert ttttt.speaks("messages")
    assert not ttttt.speaks("chat")
    assert ttttt.headers == {"X-Client": "batchrelay"}
    assert ainow.auth == "bearer"
    assert ainow.path("chat") == "/chat/completions"
    assert ainow.priority == 100
    assert ainow.models == {"gpt-4-turbo": "GPT-4 Turbo"}


def test_no_config_file_gives_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    s = load_settings()
    assert s.providers == ()
    assert s.worker.call_timeout < s.worker.job_timeout


def test_batchrelay_config_env_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATCHRELAY_CONFIG", str(write(tmp_path, FULL_EXAMPLE, "elsewhere.toml")))
    assert [p.name for p in load_settings().providers] == ["ttapi", "ttttt", "ai-now"]


def test_json_config_is_accepted(tmp_path: Path) -> None:
    path = write(tmp_path, '{"providers": [{"name": "a", "base_url": "http://127.0.0.1:9"}]}', "c.json")
    assert load_settings(path).providers[0].name == "a"


@pytest.mark.parametrize(
    ("text", "parts"),
    [
        ('[[providers]]\nname = "a"\nbase_url = "https://x"\nauth = "basic"\n',
         ["providers[0].auth", "bearer", "tt-api-key", "x-api-key"]),
        ('[[providers]]\nname = "a"\nbase_url = "https://x"\n[[providers]]\nname = "b"\n',
         ["providers[1].base_url", "required"]),
        ('[[providers]]\nname = "a"\nbase_url = "ftp://x"\n', ["providers[0].base_url", "http://"]),
        ('[[providers]]\nname = "a"\nbase_url = "https://x"\nendpoints = { chat = "v1/chat" }\n',
         ["providers[0].endpoints", "start with '/'"]),
        ('[[providers]]\nname = "a"\nbase_url = "https://x"\napi_key = "sk-secret"\n', ["providers[0].api_key"]),
        ('[[providers]]\nname = "a"\nbase_url = "https://x"\n[[providers]]\nname = "a"\nbase_url = "https://y"\n',
         ["provider names must be unique", "a"]),
        ("[worker]\ncall_timeout = 600\njob_timeout = 600\n", ["worker", "call_timeout must be below job_timeout"]),
        ("[worker]\ncall_timeout = 900\njob_timeout = 600\n", ["worker", "call_timeout must be below job_timeout"]),
        ("[worker]\nconcurrency = 0\n", ["worker.concurrency"]),
        ('[redis\nurl = "x"\n', ["not valid TOML"]),
        ('[redis]\nurl = "unterminated\n', ["not valid TOML"]),
    ],
    ids=[
        "wrong-auth", "missing-base-url", "non-http-base-url", "relative-endpoint", "api-key-in-file",
        "duplicate-names", "call-timeout-equals-job-timeout", "call-timeout-above-job-timeout", "zero-concurrency",
        "invalid-toml-table", "invalid-toml-string",
    ],
)
def test_config_error_names_the_file_the_key_and_the_problem(tmp_path: Path, text: str, parts: list[str]) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as exc:
        load_settings(path)
    message = str(exc.value)
    assert message.startswith(f"{path}: ")
    for part in parts:
        assert part in message


def test_every_problem_in_the_file_is_reported_at_once(tmp_path: Path) -> None:
    text = '[[providers]]\nname = "a"\nbase_url = "https://x"\nauth = "basic"\n[[providers]]\nname = "b"\n'
    with pytest.raises(ConfigError) as exc:
        load_settings(write(tmp_path, text))
    assert "providers[0].auth" in str(exc.value)
    assert "providers[1].base_url" in str(exc.value)


@pytest.mark.parametrize("name", ["missing.toml", "a-directory"])
def test_unreadable_config_file_is_a_config_error_naming_the_file(tmp_path: Path, name: str) -> None:
    (tmp_path / "a-directory").mkdir()
    path = tmp_path / name
    with pytest.raises(ConfigError, match="cannot read config") as exc:
        load_settings(path)
    assert str(path) in str(exc.value)


def test_config_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "batchrelay.toml"
    path.write_bytes(b'[redis]\nprefix = "\xff"\n')
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(path)


def test_parse_settings_names_its_source_in_errors() -> None:
    with pytest.raises(ConfigError, match=r"^from-cli: providers\[0\]\.name"):
        parse_settings({"providers": [{"name": "", "base_url": "https://x"}]}, "from-cli")


def test_ordered_providers_sorts_by_priority_keeping_file_order_for_ties() -> None:
    s = Settings(providers=(
        provider(name="c", priority=50), provider(name="a", priority=10), provider(name="d", priority=50),
        provider(name="b", priority=20),
    ))
    assert [p.name for p in s.ordered_providers()] == ["a", "b", "c", "d"]


@pytest.mark.parametrize(
    ("model", "expected"),
    [("gpt-4-turbo", "GPT-4 Turbo"), ("claude-3-5-sonnet", "Claude 3.5 Sonnet"), ("gpt-4o-mini", "gpt-4o-mini")],
)
def test_provider_model_maps_listed_models_and_passes_others_through(model: str, expected: str) -> None:
    p = provider(models={"gpt-4-turbo": "GPT-4 Turbo", "claude-3-5-sonnet": "Claude 3.5 Sonnet"})
    assert p.provider_model(model) == expected


def test_redis_url_env_wins_over_the_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = load_settings(write(tmp_path, FULL_EXAMPLE))
    assert s.redis_url == "redis://config-host:6379/2"
    monkeypatch.setenv("REDIS_URL", "redis://from-env:6380/0")
    assert s.redis_url == "redis://from-env:6380/0"


def test_redis_url_is_none_when_neither_env_nor_file_sets_it() -> None:
    assert Settings().redis_url is None


def test_api_key_is_read_from_the_named_env_var_at_call_time(monkeypatch: pytest.MonkeyPatch) -> None:
    p = provider(api_key_env="BATCHRELAY_TEST_KEY")
    monkeypatch.delenv("BATCHRELAY_TEST_KEY", raising=False)
    assert p.api_key() is None
    monkeypatch.setenv("BATCHRELAY_TEST_KEY", "sk-first")
    assert p.api_key() == "sk-first"
    monkeypatch.setenv("BATCHRELAY_TEST_KEY", "sk-rotated")
    assert p.api_key() == "sk-rotated"


def test_provider_without_api_key_env_has_no_key() -> None:
    assert provider().api_key() is None


def test_api_key_value_never_appears_in_a_config_dump(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATCHRELAY_TEST_KEY", "sk-do-not-print")
    s = Settings(providers=(provider(api_key_env="BATCHRELAY_TEST_KEY"),))
    assert "sk-do-not-print" not in s.model_dump_json()
    assert "sk-do-not-print" not in repr(s)
