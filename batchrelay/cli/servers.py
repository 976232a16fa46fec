"""The two long-running servers of the command line: `serve` (the batch HTTP API) and `simulate`
(a fake provider)."""

from __future__ import annotations

from typing import Any

import click

from batchrelay.cli.guard import sigterm_as_interrupt
from batchrelay.cli.kit import handles_errors, run_async, settings_of
from batchrelay.cli.logs import LogSetup, log_options, notice, secrets_of, setup_logging
from batchrelay.store.connection import check_reachable
from batchrelay.store.embedded import redis_for


@click.command()
@click.option("--host", help="Address to bind (default: [serve] host, 127.0.0.1).")
@click.option("--port", type=click.IntRange(1, 65535), help="Port (default: [serve] port, 8080).")
@log_options()
@click.pass_context
@handles_errors
def serve(ctx: click.Context, host: str | None, port: int | None, logs: LogSetup) -> None:
    """Serve the OpenAI Files + Batches and Anthropic Message Batches APIs on this Redis.

    Point the official SDKs at it (base_url) to submit, poll, download and cancel batches;
    `batchrelay worker` processes run them. Clients need one of the keys held by the environment
    variables that `[serve] api_keys_env` names (Authorization: Bearer, or x-api-key).

    \b
    Examples:
      # batchrelay.toml:  [serve]  api_keys_env = ["BATCHRELAY_CLIENT_KEY"]
      BATCHRELAY_CLIENT_KEY=secret batchrelay serve --port 8080
      OpenAI(base_url="http://127.0.0.1:8080/v1", api_key="secret")
      Anthropic(base_url="http://127.0.0.1:8080", api_key="secret")
      batchrelay serve --log-format json --log-level debug   # debug: with the access log
    """
    from batchrelay.serve.app import create_app

    settings = settings_of(ctx)
    setup_logging(logs, secrets_of(settings))
    cfg = settings.serve
    create_app(settings)  # a missing key is a clean error before anything binds
    from batchrelay.serve.app import serve as run_server

    # uvicorn answers SIGTERM by shutting down, then raises it again once our handler is back: as an
    # exception here (guard.py), so the embedded Redis this command started is shut down too
    sigterm_as_interrupt()
    with redis_for(settings.redis_url) as url:
        run_async(check_reachable(url))  # a clear error now beats one per request
        run_server(settings, host or cfg.host, port or cfg.port, announce=notice, redis_url=url,
                   log_level=None, access_log=logs.access_log)


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8787, show_default=True)
@click.option("--latency-ms", type=float, default=0.0, show_default=True)
@click.option("--fail-status", type=int, help="Answer every call with this status.")
@click.option("--fail-rate", type=click.FloatRange(0, 1), default=0.0, help="Fraction of calls that fail.")
@click.option("--fail-rate-status", type=int, default=500, show_default=True)
@click.option("--retry-after", type=float, help="Retry-After seconds on 429/503.")
@click.option("--fail-after", type=int, help="402 insufficient quota after this many calls.")
@click.option("--malformed-rate", type=click.FloatRange(0, 1), default=0.0)
@click.option("--hang-rate", type=click.FloatRange(0, 1), default=0.0)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--preset", type=click.Choice(["ttapi", "ttonkapi", "ttttt", "piapi", "ainow"]),
              help="Serve this seed provider's documented wire format (paths, auth header, shapes).")
@click.option("--api-key", help="Require this key (in the preset's header style).")
@click.option("--credits", type=float, help="USD balance; 402 once it is spent.")
@click.option("--rpm", type=click.IntRange(1), help="Requests per minute before 429 with Retry-After.")
@click.option("--tpm", type=click.IntRange(1), help="Tokens per minute before 429 with Retry-After.")
@click.option("--truncate-rate", type=click.FloatRange(0, 1), default=0.0, help="Fraction of streams cut short.")
@click.option("--log-limit", type=click.IntRange(1), default=100_000, show_default=True,
              help="Calls the request log (/_sim/log) keeps; older ones are dropped.")
def simulate(host: str, port: int, **faults: Any) -> None:
    """Serve a fake OpenAI/Anthropic-compatible provider on 127.0.0.1 (for demos and tests).

    Control endpoints: GET/POST /_sim/config, GET /_sim/log[?full=1], GET /_sim/stats, POST /_sim/reset.

    \b
    Examples:
      batchrelay simulate --port 8787
      batchrelay simulate --port 8788 --fail-rate 0.2 --fail-rate-status 503 --retry-after 1
      batchrelay simulate --port 8789 --preset ainow --api-key test --credits 0.05
    """
    from batchrelay.sim.app import SimConfig, serve

    config = SimConfig(**{k: v for k, v in faults.items() if v is not None})  # a bad value fails before the banner
    click.echo(f"simulating {config.preset or 'a provider'} at http://{host}:{port} (control: /_sim/config, "
               "/_sim/log); Ctrl-C stops it", err=True)
    serve(config, host=host, port=port)


def _metrics_address(ctx: click.Context, param: click.Parameter, value: str | int | None) -> None:
    """Put `--metrics-port` / `--metrics-host` into the command's `[worker]` settings (after `-c`, which is eager)."""
    if value is not None:
        settings = settings_of(ctx)
        field = "metrics_port" if param.name == "metrics_port" else "metrics_host"
        tuned = settings.worker.model_copy(update={field: value})
        ctx.find_object(dict)["settings"] = settings.model_copy(update={"worker": tuned})  # type: ignore[index]


def metrics_options(f: Any) -> Any:
    """`worker`'s own Prometheus metrics server (worker/metrics.py; README "Metrics")."""
    f = click.option("--metrics-host", expose_value=False, callback=_metrics_address,
                     help="Address of the metrics server (default: [worker] metrics_host, 127.0.0.1).")(f)
    return click.option("--metrics-port", type=click.IntRange(1, 65535), expose_value=False,
                        callback=_metrics_address,
                        help="Serve this process's Prometheus metrics on this port (default: [worker] "
                             "metrics_port; none).")(f)
