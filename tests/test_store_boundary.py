"""The Store owns Redis: no module outside batchrelay/store/ talks to Redis, and no Lua lives outside
batchrelay/store/lua/. The source is parsed (ast), so comments and strings do not count, and the rule
is precise:

Outside batchrelay/store/ a module may not
- import redis-py (`redis`, `redis.asyncio`, ...), except `redis.exceptions` (an edge may catch a
  Redis error, which is not a call) and imports under `if TYPE_CHECKING:` (annotations only);
- import `connect` from batchrelay.store.connection (it hands out a bare client: `Store.connect`
  and `check_reachable` are the ways in);
- read a `.redis` attribute (`store.redis`, a Store's client), unless it is the `[redis]` config
  section read for one of its fields (`settings.redis.prefix`: the names are RedisConfig's own);
- call `register_script`, `eval`, `evalsha`, `script_load` or `pipeline`.
arq's use of its own pool where a worker is driven (`ctx["redis"]` handed to `Store`, the worker's
`pool.ping()`) is arq's, not ours, and none of the above.

Inside batchrelay/store/ only scripts.py registers or evaluates Lua, and Lua source (`redis.call`,
`KEYS[`, `ARGV[`) appears in no file but store/lua/*.lua.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from batchrelay.config.settings import RedisConfig

PACKAGE = Path(__file__).resolve().parent.parent / "batchrelay"
STORE = PACKAGE / "store"
LUA_DIR = STORE / "lua"
CONFIG_FIELDS = set(RedisConfig.model_fields)
LUA_CALLS = {"register_script", "eval", "evalsha", "script_load"}
LUA_MARKERS = ("redis.call(", "redis.pcall(", "KEYS[", "ARGV[")


def _sources(outside_store: bool) -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if (STORE not in p.parents) == outside_store)


def _type_checking_only(tree: ast.Module) -> set[ast.AST]:
    """The import statements inside `if TYPE_CHECKING:` blocks."""
    found: set[ast.AST] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            found.update(n for stmt in node.body for n in ast.walk(stmt) if isinstance(n, ast.Import | ast.ImportFrom))
    return found


def _is_redis_py(module: str) -> bool:
    return (module == "redis" or module.startswith("redis.")) and not module.startswith("redis.exceptions")


def redis_use(tree: ast.Module) -> Iterator[tuple[int, str]]:
    """(line, what) for every use of Redis the rule above forbids outside store/."""
    typing_only = _type_checking_only(tree)
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and node not in typing_only:
            for alias in node.names:
                if _is_redis_py(alias.name):
                    yield node.lineno, f"import {alias.name}"
        elif isinstance(node, ast.ImportFrom) and node not in typing_only and node.level == 0:
            module = node.module or ""
            if _is_redis_py(module):
                yield node.lineno, f"from {module} import ..."
            if module == "batchrelay.store.connection" and any(a.name == "connect" for a in node.names):
                yield node.lineno, "imports store.connection.connect (a bare client)"
        elif isinstance(node, ast.Attribute) and node.attr == "redis":
            up = parents.get(node)
            if not (isinstance(up, ast.Attribute) and up.attr in CONFIG_FIELDS):
                yield node.lineno, f"{ast.unparse(node)} (a Redis client)"
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and (
                node.func.attr in LUA_CALLS | {"pipeline"}):
            yield node.lineno, f"{ast.unparse(node.func)}(...)"


def _parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def test_the_rule_catches_what_it_should_and_nothing_else() -> None:
    forbidden = '''
from redis.asyncio import Redis
import redis
from batchrelay.store.connection import DEFAULT_URL, connect
async def f(store, settings):
    await store.redis.hset("k", "f", "v")
    Health(store.redis, store.keys)
    async with store.redis.pipeline() as pipe: ...
    redis_client.register_script("return 1")
    await client.evalsha("abc", 0)
'''
    allowed = '''
from typing import TYPE_CHECKING
from redis.exceptions import RedisError
from batchrelay.store.connection import DEFAULT_URL, check_reachable
if TYPE_CHECKING:
    from redis.asyncio import Redis
def f(settings, ctx, worker):
    Keys(settings.redis.prefix)
    url = settings.redis.url or settings.redis_url
    Store(ctx["redis"], keys)
    return worker.pool.ping()
'''
    found = sorted(redis_use(ast.parse(forbidden)))
    assert found == [(2, "from redis.asyncio import ..."), (3, "import redis"),
                     (4, "imports store.connection.connect (a bare client)"), (6, "store.redis (a Redis client)"),
                     (7, "store.redis (a Redis client)"), (8, "store.redis (a Redis client)"),
                     (8, "store.redis.pipeline(...)"), (9, "redis_client.register_script(...)"),
                     (10, "client.evalsha(...)")]
    assert list(redis_use(ast.parse(allowed))) == []


@pytest.mark.parametrize("path", _sources(outside_store=True), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_outside_the_store_talks_to_redis(path: Path) -> None:
    uses = [f"{path.relative_to(PACKAGE)}:{line}: {what}" for line, what in redis_use(_parse(path))]
    assert not uses, "Redis is the Store's: give batchrelay/store/ a method for these\n" + "\n".join(uses)


def test_only_scripts_py_registers_or_evaluates_lua() -> None:
    calls = [f"{path.relative_to(PACKAGE)}:{node.lineno}" for path in _sources(outside_store=False)
             if path.name != "scripts.py"
             for node in ast.walk(_parse(path))
             if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in LUA_CALLS]
    assert not calls, "Lua is registered once per client, in store/scripts.py: " + ", ".join(calls)


def test_lua_source_lives_only_in_store_lua() -> None:
    stray = [str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.lua") if p.parent != LUA_DIR]
    for path in PACKAGE.rglob("*"):
        if path.is_file() and path.parent != LUA_DIR and path.suffix in (".py", ".toml", ".txt", ".json", ""):
            text = path.read_text(encoding="utf-8", errors="replace")
            stray += [f"{path.relative_to(PACKAGE)} ({m})" for m in LUA_MARKERS if m in text]
    assert not stray, "Lua belongs in batchrelay/store/lua/*.lua: " + ", ".join(stray)
