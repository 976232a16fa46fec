"""Text that reaches a terminal cannot drive it (issue 14): a batch name loses its control characters
at the door (BatchSpec, whichever way the batch comes in), and every line the CLI prints from Redis,
files or providers shows control characters escaped (`\\x1b`), with rich markup in a name shown
literally."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from batchrelay import parse
from batchrelay.cli.text import printable
from batchrelay.config.settings import Settings
from batchrelay.spec import BatchSpec
from batchrelay.store.store import Store

from .conftest import batchrelay, openai_line
from .servekit import KEY, jsonl, serving

# What an attacker names a file. Raw ASCII controls in a form's header are refused at once (400: a
# quoted-string may not hold them); Unicode controls get through the form and out of the name.
REFUSED = "\x1b[31mred\x07\nline.jsonl"
RAW = "red\x85line\u202e[red]x[/red].jsonl"
KEPT = "redline[red]x[/red].jsonl"  # its name once the control characters are out
CONTROL_BYTES = ("\x1b", "\x07", "\r", "\x85", "\u202e")


@pytest.mark.parametrize(("name", "kept"), [
    ("nightly", "nightly"),
    (RAW, KEPT),
    ("tab\there\vand\fform\x00nul\x7fdel", "tabhereandformnuldel"),
    ("c1\x80\x9b31m", "c131m"),  # C1, e.g. the 8-bit CSI
    ("rtl\u202eoverride\u202a\u202b\u202c\u202d", "rtloverride"),
    ("\u2066iso\u2067late\u2068d\u2069", "isolated"),
    ("mark\u200e\u200f\u061cs", "marks"),
    ("line\u2028para\u2029", "linepara"),
    ("é ✓ 日本 👨\u200d👩\u200d👧 [bold]x[/bold]", "é ✓ 日本 👨\u200d👩\u200d👧 [bold]x[/bold]"),  # text, not controls
    ("\x1b\x07\n", None),  # nothing left: no name
])
def test_a_batch_name_loses_its_control_characters_whichever_way_it_comes(name: str, kept: str | None) -> None:
    assert parse.batch_name(name) == kept
    assert BatchSpec.of(_settings(), name=name).name == kept
    assert BatchSpec.checked({"name": name}).name == kept
    assert BatchSpec(name=name).name == kept
    assert BatchSpec().named(name).name == kept  # the default name, from the input's file name


def _settings() -> Settings:
    return Settings()


@pytest.mark.parametrize(("text", "shown"), [
    ("plain [red]x[/red] é ✓", "plain [red]x[/red] é ✓"),
    ("\x1b[31mred\x1b[0m", "\\x1b[31mred\\x1b[0m"),
    ("bell\x07 nl\n cr\r tab\t", "bell\\x07 nl\\n cr\\r tab\\t"),
    ("\x00\x7f\x85\x9b", "\\x00\\x7f\\x85\\x9b"),
    ("\u202eevil\u2066\u2069\u200e\u2028", "\\u202eevil\\u2066\\u2069\\u200e\\u2028"),
    (Path("/tmp/a\x1bb"), "/tmp/a\\x1bb"),
])
def test_printable_text_shows_control_characters_escaped(text: object, shown: str) -> None:
    assert printable(text) == shown


def _upload(base: str, filename: str, data: bytes, status: int = 200) -> str:
    """A file uploaded with its name as raw bytes in the form (the SDKs percent-escape some controls)."""
    body = (b'--BB\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n--BB\r\nContent-Disposition: '
            b'form-data; name="file"; filename="' + filename.encode() + b'"\r\nContent-Type: application/jsonl\r\n\r\n'
            + data + b"\r\n--BB--\r\n")
    r = httpx.post(base + "/v1/files", content=body,
                   headers={"Authorization": f"Bearer {KEY}", "Content-Type": "multipart/form-data; boundary=BB"})
    assert r.status_code == status, r.text
    return str(r.json()["id"]) if status == 200 else str(r.json()["error"]["message"])


def _clean(out: str) -> None:
    for c in CONTROL_BYTES:
        assert c not in out, repr(out)


def _on_a_terminal(args: list[str], env: dict[str, str]) -> str:
    """The CLI's stdout on a pseudo-terminal (rich draws its table there), 300 columns wide."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "batchrelay", *args], env={**env, "COLUMNS": "300"},
                            stdin=subprocess.DEVNULL, stdout=slave, stderr=subprocess.DEVNULL)
    os.close(slave)
    drawn, deadline = b"", time.monotonic() + 60
    while time.monotonic() < deadline:
        if select.select([master], [], [], 0.1)[0]:
            try:
                piece = os.read(master, 65536)
            except OSError:  # the child closed the terminal
                break
            if not piece:
                break
            drawn += piece
        elif proc.poll() is not None:
            break
    proc.wait(timeout=10)
    os.close(master)
    return drawn.decode("utf-8", "replace")


async def test_names_ids_and_paths_reach_the_terminal_escaped(tmp_path: Path, redis_url: str, prefix: str,
                                                               store: Store) -> None:
    data = jsonl([openai_line(i) for i in range(2)])
    with serving(tmp_path, redis_url, prefix, worker=False) as api:
        assert "malformed" in _upload(api.base, REFUSED, data, status=400)
        file_id = _upload(api.base, RAW, data)
        served = api.openai().batches.create(input_file_id=file_id, endpoint="/v1/chat/completions",
                                             completion_window="24h").id
        cli = ["-c", str(api.config)]
        src = tmp_path / "in.jsonl"
        src.write_bytes(data)
        sub = batchrelay(*cli, "submit", str(src), "--name", "cli\x1b]0;title\x07\x1b[2J[red]x[/red]\n", env=api.env)
        assert sub.returncode == 0, sub.stderr
        submitted = sub.stdout.strip()
        old = batchrelay(*cli, "submit", str(src), env=api.env).stdout.strip()
        # a name kept before names were checked, straight from Redis
        await store.set_fields(old, {"name": "old\x1b[31m\x07\n\r[red]x[/red]"})

        listed = json.loads(batchrelay(*cli, "batches", "--json", env=api.env).stdout)
        names = {b["id"]: b["name"] for b in listed}
        assert names[served] == KEPT and names[submitted] == "cli]0;title[2J[red]x[/red]"

        table = batchrelay(*cli, "batches", env=api.env)
        assert table.returncode == 0, table.stderr
        _clean(table.stdout)
        header, *rows = table.stdout.splitlines()
        assert header.split()[:3] == ["id", "name", "status"] and len(rows) == 3
        assert {r.split()[0] for r in rows} == {served, submitted, old}
        assert "\\x1b[31m\\x07\\n\\r[red]x[/red]" in table.stdout and KEPT in table.stdout

        for batch in (served, submitted, old):
            st = batchrelay(*cli, "status", batch, env=api.env)
            assert st.returncode == 0, st.stderr
            _clean(st.stdout)
            first = st.stdout.splitlines()[0]
            shown_name = "old\\x1b[31m\\x07\\n\\r[red]x[/red]" if batch == old else names[batch]
            assert first.startswith(f"{batch}  ") and f"  {shown_name}  " in first
            assert json.loads(batchrelay(*cli, "status", batch, "--json", env=api.env).stdout)["id"] == batch

        out = tmp_path / "out\x1b[31m.jsonl"
        written = batchrelay(*cli, "results", old, "-o", str(out), env=api.env)
        _clean(written.stdout + written.stderr)
        assert "out\\x1b[31m.jsonl" in written.stdout
        for args in (["cost", old], ["budget", old], ["cancel", old, "--no-wait"], ["retry", old],
                     ["status", "batch_\x1b[31m\x07nope"]):
            shown = batchrelay(*cli, *args, env=api.env)
            _clean(shown.stdout + shown.stderr)
        assert "batch_\\x1b[31m\\x07nope" in shown.stderr

        drawn = _on_a_terminal([*cli, "batches"], api.env)  # rich's table
        assert "\x07" not in drawn and "\x1b[31m" not in drawn and "\x1b[2J" not in drawn
        assert drawn.count("[red]x[/red]") == 3 and "\\x1b[31m\\x07\\n\\r" in drawn
