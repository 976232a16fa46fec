"""Refusals before a command sends anything: outputs that would destroy the input, and providers
whose key is not set.

A provider whose `api_key_env` is unset could only fail every call it gets, after each line's
deadline logic, so `run` and `worker` leave it out with one warning; `run` refuses (exit 2) when
a model of its file could be served only by such providers, naming them and their variables.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from batchrelay.cli.logs import notice
from batchrelay.config.settings import ProviderConfig, Settings
from batchrelay.errors import InputError
from batchrelay.providers.routing import candidates
from batchrelay.spec import BatchSpec
from batchrelay.store.export import check_paths, check_writable
from batchrelay.wire.dialect import Dialect
from batchrelay.wire.jobs import JobLine, iter_jobs


def keyless(providers: Iterable[ProviderConfig]) -> list[ProviderConfig]:
    """The providers that need a key (`api_key_env`) whose variable is unset or blank."""
    return [p for p in providers if p.api_key_env and not p.api_key()]


def needs(providers: Iterable[ProviderConfig]) -> str:
    return ", ".join(f"{p.name} needs {p.api_key_env}" for p in providers)


def with_keys(settings: Settings, check: Callable[[list[ProviderConfig], list[ProviderConfig]], None] | None = None
              ) -> Settings:
    """The settings without the providers whose key is unset, after one warning naming them; a
    usage error when every configured provider lacks its key (a configured setup never falls back
    on the simulator). `check(kept, left_out)` may refuse first."""
    missing = keyless(settings.providers)
    if not missing:
        return settings
    kept = [p for p in settings.providers if p not in missing]
    if not kept:
        raise InputError(f"no provider has its key: {needs(missing)} (set the variables; "
                         "`batchrelay providers` shows which keys are set)")
    if check:
        check(kept, missing)
    notice(f"warning: left out, their key variable is not set: {needs(missing)}", logging.WARNING)
    return settings.with_providers(kept)


def stranded(models: Iterable[tuple[Dialect, str]], settings: Settings, kept: Sequence[ProviderConfig],
             left_out: Sequence[ProviderConfig], allow: Sequence[str] | None) -> dict[str, list[ProviderConfig]]:
    """Per model no kept provider may serve: the left-out providers that could have. Pure."""
    routes = settings.routing.routes
    out: dict[str, list[ProviderConfig]] = {}
    for dialect, model in models:
        if model in out or candidates(dialect, model, kept, routes=routes, allow=allow):
            continue
        could = [p for p, _ in candidates(dialect, model, left_out, routes=routes, allow=allow)]
        if could:
            out[model] = could
    return out


def _models(path: Path, endpoint: Dialect, max_line_bytes: int) -> set[tuple[Dialect, str]]:
    try:
        stream = path.open("rb")
    except OSError as e:
        raise InputError(f"{path}: cannot read input file: {e.strerror}") from None
    with stream:
        return {(job.dialect, str(job.body["model"]))
                for job in iter_jobs(stream, default_dialect=endpoint, max_line_bytes=max_line_bytes, dedupe=False)
                if isinstance(job, JobLine)}


def before_run(settings: Settings, file: Path, out: Path, errors: Path | None, spec: BatchSpec) -> Settings:
    """What `run` checks before it starts anything: its outputs, and the providers' keys. Returns
    the settings without the providers that lack their key."""
    check_paths(out, errors, inputs=[file])
    check_writable(out, errors)

    def served(kept: list[ProviderConfig], missing: list[ProviderConfig]) -> None:
        models = sorted(_models(file, spec.endpoint, spec.max_line_bytes))
        if lost := stranded(models, settings, kept, missing, spec.providers):
            raise InputError("no provider with its key set can serve " + "; ".join(
                f"{model} ({needs(could)}, not set)" for model, could in lost.items()))

    return with_keys(settings, served)
