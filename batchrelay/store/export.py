"""Writing a batch's results (and errors) as JSONL files in input order."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from batchrelay.errors import InputError
from batchrelay.store.store import Store


@dataclass(frozen=True, slots=True)
class Exported:
    results: int
    errors: int
    results_path: Path
    errors_path: Path


def default_errors_path(out: Path) -> Path:
    name = out.name[: -len(".jsonl")] if out.name.endswith(".jsonl") else out.name
    return out.with_name(name + ".errors.jsonl")


def _same_file(a: Path, b: Path) -> bool:
    """Whether writing `a` would write `b`: the same file (also through a symlink or a hard link), or
    the same place once `..` and symlinks are resolved when one of them does not exist yet."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return a.resolve() == b.resolve()


def check_paths(out: Path, errors: Path | None, inputs: Iterable[Path] = ()) -> None:
    """InputError when the results or errors file would overwrite an input, or each other: the
    export replaces both files whole, so the input would be lost and one output would hide the other."""
    errors = errors or default_errors_path(out)
    for path, what in ((out, "output"), (errors, "errors file")):
        for source in inputs:
            if _same_file(path, source):
                raise InputError(f"the {what} {path} is the input {source}: writing it would destroy the input; "
                                 "choose another path")
    if _same_file(out, errors):
        raise InputError(f"the output {out} and the errors file {errors} are the same file: choose two paths")


def check_writable(out: Path, errors: Path | None) -> None:
    for path in (out, errors or default_errors_path(out)):
        probe = path.with_name(path.name + ".part")
        try:
            probe.open("wb").close()
            probe.unlink()
        except OSError as e:
            raise InputError(f"cannot write {path}: {e.strerror}") from None


async def export(store: Store, batch_id: str, out: Path, errors: Path | None = None) -> Exported:
    """Successes to `out`, failed and invalid lines to `errors`; each file appears whole or not at all."""
    errors = errors or default_errors_path(out)
    check_paths(out, errors)
    tmp_out, tmp_err = out.with_name(out.name + ".part"), errors.with_name(errors.name + ".part")
    n_ok = n_err = 0
    try:
        with tmp_out.open("wb") as fo, tmp_err.open("wb") as fe:
            async for ok, record in store.iter_results(batch_id):
                if ok:
                    fo.write(record + b"\n")
                    n_ok += 1
                else:
                    fe.write(record + b"\n")
                    n_err += 1
        os.replace(tmp_out, out)
        os.replace(tmp_err, errors)
    except OSError as e:
        raise InputError(f"cannot write results: {e.strerror}: {e.filename}") from None
    finally:
        tmp_out.unlink(missing_ok=True)
        tmp_err.unlink(missing_ok=True)
    return Exported(n_ok, n_err, out, errors)
