"""A request parameter that cannot be used (BadParam: each API answers it with a 400 in its own error
shape), and how much of a client's value an error message repeats (`clip`). Pure."""

from __future__ import annotations

ECHO = 64  # characters of a client's value that an error message repeats


class BadParam(ValueError):
    """A request parameter that cannot be used; `param` names it. Each API answers it with a 400 in
    its own error shape."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


def clip(value: object) -> str:
    """A client's value as an error message repeats it: the string (repr of anything else), cut to
    `ECHO` characters and "…"."""
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= ECHO else text[:ECHO] + "…"
