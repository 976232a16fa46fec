"""Completion webhooks: when a batch that has a webhook URL ends (completed, failed, cancelled or
expired), its batch object is POSTed there, signed when a secret is configured, and retried with
backoff until the receiver answers 2xx or `[webhooks] max_attempts` are used up.

The message follows the Standard Webhooks spec (standardwebhooks.com): a JSON body
`{"type": "batch.completed", "timestamp": ISO-8601, "data": <the batch object of status --json>}`
with the headers `webhook-id` (the same on every retry, so a receiver can drop repeats),
`webhook-timestamp` and, with a secret, `webhook-signature: v1,<base64 HMAC-SHA256>`.

Redis holds the outbox: a sorted set of batch ids scored by when each is next due (`keys.webhooks`),
added with the batch. Workers look at it every two seconds (an arq cron). Before its POST a worker
moves the entry's score past the call's timeout (a compare-and-set, lua/webhook_claim.lua), so two workers never
send the same attempt; delivery is at least once (a worker killed between the receiver's 2xx and
recording it sends again, with the same webhook-id).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import os
import random
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson

from batchrelay.config.settings import Settings
from batchrelay.errors import BatchNotFound, ConfigError, InvalidValue
from batchrelay.store.spending import status_object
from batchrelay.store.status import FINISHED
from batchrelay.store.store import Store

log = logging.getLogger("batchrelay.store.webhooks")

PER_TICK = 50  # batches looked at per poll; the rest wait for the next one
NOT_DUE_YET_S = 2.0  # a batch still running is looked at again this much later
EVENTS = {status: f"batch.{status}" for status in FINISHED}

def backoff_s(attempts: int, base_s: float, cap_s: float) -> float:
    """The wait after the `attempts`-th failed delivery (1, 2, ...): base, 2 x base, 4 x base, ... up to cap."""
    return float(min(cap_s, base_s * 2.0 ** min(attempts - 1, 32)))


def secret_bytes(secret: str) -> bytes:
    """A Standard Webhooks secret (`whsec_` + base64) as its bytes; any other string as UTF-8."""
    if secret.startswith("whsec_"):
        try:
            return base64.b64decode(secret[len("whsec_"):], validate=True)
        except ValueError:
            raise InvalidValue("a webhook secret starting with whsec_ must be base64 after it") from None
    return secret.encode()


def signature(secret: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """`v1,` + base64(HMAC-SHA256(secret, "{msg_id}.{timestamp}.{body}")), as Standard Webhooks signs."""
    digest = hmac.new(secret, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def message(batch: dict[str, Any], now: float) -> tuple[str, bytes]:
    """(event type, body) for a finished batch's object."""
    event = EVENTS[batch["status"]]
    when = datetime.fromtimestamp(now, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return event, orjson.dumps({"type": event, "timestamp": when, "data": batch})


def message_id(batch_id: str, event: str, retries: bytes | str | None) -> str:
    """The same for every delivery attempt of one end of a batch; a `retry`'s new end gets a new one."""
    return f"msg_{batch_id}_{event}" + (f"_r{int(retries)}" if retries and int(retries) else "")


def headers(msg_id: str, event: str, body: bytes, now: float, secret: bytes | None, user_agent: str) -> dict[str, str]:
    ts = int(now)
    h = {"content-type": "application/json", "user-agent": user_agent, "webhook-id": msg_id,
         "webhook-timestamp": str(ts), "batchrelay-event": event}
    if secret is not None:
        h["webhook-signature"] = signature(secret, msg_id, ts, body)
    return h


def outcome_of(response: httpx.Response | None, error: BaseException | None) -> tuple[bool, str]:
    """(accepted, what to record): only a 2xx is accepted; a redirect is not followed."""
    if response is not None:
        return 200 <= response.status_code < 300, f"HTTP {response.status_code}"
    return False, type(error).__name__ if error is not None else "no answer"


@dataclass(frozen=True, slots=True)
class Delivery:
    """How webhooks are sent (`[webhooks]` in the config); `secret` is read from the environment."""

    timeout_s: float
    max_attempts: int
    backoff_s: float
    max_backoff_s: float
    secret: bytes | None
    user_agent: str


async def batch_object(store: Store, batch_id: str) -> dict[str, Any]:
    """The batch as `status --json` shows it (without the webhook's own delivery state)."""
    obj = await status_object(store, await store.info(batch_id))
    obj.pop("webhook", None)
    return obj


class Outbox:
    def __init__(self, store: Store, delivery: Delivery, http: httpx.AsyncClient) -> None:
        self.store, self.delivery, self.http = store, delivery, http
        self.key = store.keys.webhooks

    async def deliver_due(self, now: float | None = None) -> int:
        """Send every due webhook of a finished batch (at most PER_TICK); returns how many were accepted."""
        now = time.time() if now is None else now
        due = await self.store.redis.zrangebyscore(self.key, "-inf", now, start=0, num=PER_TICK, withscores=True)
        sent = await asyncio.gather(*(self._one(member.decode(), score, now) for member, score in due))
        return sum(sent)

    async def _one(self, batch_id: str, score: float, now: float) -> bool:
        try:
            batch = await batch_object(self.store, batch_id)
            url, retries = await self.store.redis.hmget(  # type: ignore[misc]
                self.store.keys.meta(batch_id), ["webhook", "retries"])
        except BatchNotFound:
            await self.store.redis.zrem(self.key, batch_id)  # deleted (retention) before it was sent
            return False
        if not url:
            await self.store.redis.zrem(self.key, batch_id)
            return False
        if batch["status"] not in EVENTS:
            await self.store.scripts.claim_webhook(self.store.keys, batch_id, seen=score, score=now + NOT_DUE_YET_S)
            return False
        lease = now + self.delivery.timeout_s + 5
        if not await self.store.scripts.claim_webhook(self.store.keys, batch_id, seen=score, score=lease):
            return False  # another worker took this attempt
        event, body = message(batch, now)
        sent_at = time.time()
        response = error = None
        try:
            response = await self.http.post(url.decode(), content=body, timeout=self.delivery.timeout_s,
                                            headers=headers(message_id(batch_id, event, retries), event, body, sent_at,
                                                            self.delivery.secret, self.delivery.user_agent))
        except httpx.HTTPError as e:
            error = e
        ok, what = outcome_of(response, error)
        await self._record(batch_id, ok, what)
        return ok

    async def _record(self, batch_id: str, ok: bool, what: str) -> None:
        meta = self.store.keys.meta(batch_id)
        attempts = int(await self.store.redis.hincrby(meta, "webhook_attempts", 1))  # type: ignore[misc]
        d = self.delivery
        given_up = not ok and attempts >= d.max_attempts
        async with self.store.redis.pipeline(transaction=True) as pipe:
            pipe.hset(meta, mapping={"webhook_last": what, "webhook_at": time.time(),
                                     "webhook_status": "delivered" if ok else "failed" if given_up else "retrying"})
            if ok or given_up:
                pipe.zrem(self.key, batch_id)
            else:
                wait = backoff_s(attempts, d.backoff_s, d.max_backoff_s) * random.uniform(1.0, 1.2)
                pipe.zadd(self.key, {batch_id: time.time() + wait}, xx=True)
            await pipe.execute()
        if given_up:
            log.warning("webhook of %s not accepted after %d attempts (last: %s); giving up", batch_id, attempts, what)
        elif not ok:
            log.info("webhook of %s: %s (attempt %d), retrying", batch_id, what, attempts)


def delivery_of(settings: Settings) -> Delivery:
    """The worker's delivery settings (`[webhooks]`). A configured secret variable that is unset or
    blank is a ConfigError: sending unsigned when signing was asked for would be worse than not sending."""
    from batchrelay._version import __version__

    c = settings.webhooks
    secret = None
    if c.secret_env:
        raw = os.environ.get(c.secret_env, "").strip()
        if not raw:
            raise ConfigError(f"[webhooks] secret_env names {c.secret_env}, which is not set")
        try:
            secret = secret_bytes(raw)
        except InvalidValue as e:
            raise ConfigError(f"{c.secret_env}: {e}") from None
    return Delivery(c.timeout_s, c.max_attempts, c.backoff_s, c.max_backoff_s, secret,
                    f"batchrelay/{__version__} (webhook)")
