"""`[serve]`: the batch HTTP API's address, client keys and limits (README: "What `serve` refuses")."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from batchrelay import parse


class ServeConfig(BaseModel):
    """`batchrelay serve`: the OpenAI/Anthropic-compatible batch HTTP API. Client keys are never in
    this file: `api_keys_env` names the environment variables that hold the accepted keys."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=1, le=65535)
    api_keys_env: tuple[str, ...] = ()
    files_dir: Path | None = None  # uploaded files; default: `files` in the state directory
    # Where clients reach it (an Anthropic batch's `results_url` is built on it); default: the address
    # the request came in on, never the request's Host header.
    public_url: str | None = None
    # Limits (README: "What `serve` refuses"): each guards memory or time against a client that
    # sends too much, too slowly or too often.
    max_connections: int = Field(default=1000, ge=1)  # open at once; more are closed at once
    max_header_kb: int = Field(default=16, ge=1, le=1024)  # a request line + headers; 431 past it
    header_timeout_s: float = Field(default=10, gt=0)  # a request's head must arrive within this
    body_timeout_s: float = Field(default=30, gt=0)  # a body that sends nothing this long: 408
    max_json_kb: int = Field(default=1024, ge=1)  # a JSON body (a message batch's excepted): 413 past it
    max_upload_mb: int = Field(default=512, ge=1)  # an uploaded file, or a message batch's body
    max_batch_lines: int = Field(default=50_000, ge=1)  # lines of an OpenAI batch's input file
    max_batch_requests: int = Field(default=100_000, ge=1)  # requests of an Anthropic message batch
    # how long a batch of either API runs before it expires (both APIs' 24 h); the wire still says
    # "24h": a shorter one stands in for a slow upstream in tests of batch-API lanes (config/lanes.py)
    batch_window_s: float = Field(default=86400, gt=0)
    auth_failures_per_min: int = Field(default=30, ge=1)  # wrong keys per client address; 429 past it
    # /metrics without a client key (Prometheus on a private network); by default it needs one (Bearer)
    metrics_public: bool = False

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, v: str | None) -> str | None:
        return None if v is None else parse.http_url(v, "public_url", "https://batches.example.com").rstrip("/")

    def api_keys(self) -> list[str]:
        """The accepted keys, read from the environment now (blank values and whitespace dropped)."""
        return [v.strip() for name in self.api_keys_env if (v := os.environ.get(name)) and v.strip()]
