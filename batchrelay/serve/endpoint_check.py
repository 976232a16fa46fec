"""An OpenAI batch's input checked as OpenAI checks it before anything runs: every request must be
an OpenAI batch request line (`custom_id`, `method`, `url`, `body`) whose `url` is the batch's
endpoint. Any other request (another endpoint's, an Anthropic `params` line, a bare body) would
write a record of another API's shape, so the batch fails with an error naming each such line.
Lines that cannot be read at all stay per-line errors (`invalid_input` records), as batchrelay's
input checks have them. The same pass counts the lines: a file of more than `[serve]
max_batch_lines` is refused before anything of it is stored."""

from __future__ import annotations

from typing import Any

from batchrelay.wire.jobs import URL_DIALECTS, BadLine, LineReader, iter_jobs

MAX_NAMED = 1000  # lines named one by one; the rest are counted in one last error
URL_OF = {dialect: url for url, dialect in URL_DIALECTS.items()}


def _error(code: str, line: int | None, message: str) -> dict[str, Any]:
    return {"code": code, "message": message, "param": "url", "line": line}


class TooManyLines(ValueError):
    """The input has more lines than a batch may have."""


def endpoint_errors(stream: LineReader, endpoint: str, *, max_line_bytes: int, max_lines: int | None = None
                    ) -> list[dict[str, Any]]:
    """The batch's `errors.data` for the lines that are not requests to `endpoint` (none: it may run).
    TooManyLines as soon as it finds more than `max_lines` lines (every non-blank line counts, valid
    or not): the rest of the input is not read."""
    dialect = URL_DIALECTS[endpoint]
    errors: list[dict[str, Any]] = []
    more = 0
    items = iter_jobs(stream, default_dialect=dialect, max_line_bytes=max_line_bytes, dedupe=False)
    for n, item in enumerate(items, 1):
        if max_lines is not None and n > max_lines:
            raise TooManyLines(f"The input file has more than {max_lines} lines: a batch takes at most {max_lines} "
                               "([serve] max_batch_lines).")
        if isinstance(item, BadLine) or (item.fmt == "openai" and item.dialect == dialect):
            continue
        if len(errors) >= MAX_NAMED:
            more += 1
        elif item.fmt == "openai":
            url = URL_OF[item.dialect]
            errors.append(_error("url_mismatch", item.line,
                                 f"Line {item.line}: the url {url!r} is not the batch's endpoint {endpoint!r}."))
        else:
            errors.append(_error("invalid_request", item.line,
                                 f"Line {item.line} is not an OpenAI batch request (custom_id, method, url, body) "
                                 f"for {endpoint!r}."))
    if more:
        errors.append(_error("too_many_errors", None, f"... and {more} more lines like these."))
    return errors
