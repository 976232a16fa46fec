"""`python -m batchrelay.sim`: the simulator's command line (flags for every SimConfig field)."""

from __future__ import annotations

import argparse
import sys
from typing import Any, get_args

import orjson

from batchrelay.sim.app import serve
from batchrelay.sim.faults import Preset, SimConfig


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m batchrelay.sim",
        description="Fake LLM provider (OpenAI chat + Anthropic messages, or one seed provider's wire format)"
        " with fault injection.",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8787)
    p.add_argument("--log-level", default="warning")
    p.add_argument("--config-json", help="SimConfig fields as JSON; the flags below override it")
    p.add_argument("--latency-ms", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--fail-status", type=int, help="every call answers this status")
    p.add_argument("--fail-rate", type=float, help="this fraction of calls fails")
    p.add_argument("--fail-rate-status", type=int, help="status of those failures (default 500)")
    p.add_argument("--retry-after", type=float, help="seconds, sent on 429/503/529")
    p.add_argument("--script", help="comma-separated statuses for the first calls, 200 = normal")
    p.add_argument("--fail-after", type=int, help="402 after this many successful calls")
    p.add_argument("--malformed-rate", type=float, help="this fraction answers 200 with a non-JSON body")
    p.add_argument("--hang-rate", type=float, help="this fraction sleeps --hang-seconds first")
    p.add_argument("--hang-seconds", type=float)
    p.add_argument("--api-key", help="require this key (Bearer, x-api-key or TT-API-KEY; a preset's own header)")
    p.add_argument("--preset", choices=get_args(Preset), help="speak this seed provider's wire format")
    p.add_argument("--credits", type=float, help="USD balance; once spent every call is a 402")
    p.add_argument("--rpm", type=int, help="requests per sliding minute, then 429 with Retry-After")
    p.add_argument("--tpm", type=int, help="tokens (input estimate + max_tokens) per sliding minute")
    p.add_argument("--truncate-rate", type=float, help="this fraction of streamed answers stops half-way")
    p.add_argument("--cached-fraction", type=float,
                   help="this fraction of input tokens is reported as read from the prompt cache")
    p.add_argument("--cache-write-fraction", type=float,
                   help="messages: this fraction of input tokens is reported as written to the prompt cache")
    p.add_argument("--junk-rate", type=float,
                   help="this fraction answers 200 with usage but no choices (chat) / null content (messages)")
    return p


def config_from_args(args: argparse.Namespace) -> SimConfig:
    fields: dict[str, Any] = orjson.loads(args.config_json) if args.config_json else {}
    for name in SimConfig.model_fields:
        value = getattr(args, name, None)
        if value is not None:
            fields[name] = value
    if args.script is not None:
        fields["script"] = [int(s) for s in args.script.split(",") if s.strip()]
    return SimConfig.model_validate(fields)


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
    except (ValueError, orjson.JSONDecodeError) as e:  # pydantic's ValidationError is a ValueError
        parser.error(str(e))
    print(f"batchrelay simulator on http://{args.host}:{args.port}", file=sys.stderr, flush=True)
    serve(config, host=args.host, port=args.port, log_level=args.log_level)


if __name__ == "__main__":
    main()
