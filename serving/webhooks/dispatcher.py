"""The webhook dispatcher: claims due events from the outbox and POSTs them, at least once.

It keeps up to ``webhook_batch`` deliveries in flight, claiming due events as slots free up
(``FOR UPDATE SKIP LOCKED``: any number of dispatchers, in any number of replicas, share the
outbox without sending a row twice at once), and settles each attempt with its log row. A
claim moves the event ``webhook_lease_s`` ahead: a dispatcher that dies mid-delivery leaves
the event due again once the lease has passed, and a new one sends it (the receiver may then
see it twice: it dedups on ``X-Newsdesk-Event-Id``). A stopped dispatcher lets the deliveries
under way finish first.

An attempt succeeds on any 2xx answer (redirects are not followed). Anything else (another
status, a timeout, a refused connection) is retried after ``webhook_retry_base_s * 2 ** (n -
1)`` seconds (capped at ``webhook_retry_max_s``), of which a random half is jitter, until
``webhook_max_attempts``; then the event is given up. An address the guard refuses at connect
time (a host that resolves to a private address: DNS rebinding) is given up at once.

Settled events older than ``webhook_retention_days`` are deleted with their log now and then.
When nothing is due it sleeps ``webhook_poll_interval_s``, or less: a committed event wakes it
through PostgreSQL ``LISTEN``. :meth:`WebhookDispatcher.run_forever` runs until
:meth:`~WebhookDispatcher.stop` (the :mod:`serving.deployments.webhooks` deployment, a test).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx

from core.urlguard import BlockedAddressError, GuardedTransport
from serving.settings import ServingSettings
from serving.webhooks import store
from serving.webhooks.signing import EVENT_ID_HEADER, SIGNATURE_HEADER, sign
from serving.webhooks.subscriptions import WEBHOOK_HINTS

log = logging.getLogger(__name__)

USER_AGENT = "Newsdesk-Webhooks/1"
MAX_ANSWER_BYTES = 64 * 1024  # of a receiver's answer body read (then dropped)
PRUNE_EVERY_S = 600.0  # how often a dispatcher deletes events past webhook_retention_days


def backoff_s(attempt: int, base_s: float, max_s: float, rng: random.Random | None = None) -> float:
    """Wait after failed attempt ``attempt`` (1-based): exponential, capped, half of it random
    (so receivers coming back are not hit by every retry at the same instant)."""
    delay = min(max_s, base_s * 2.0 ** (attempt - 1))
    return delay / 2 + (rng or random).uniform(0, delay / 2)


class WebhookDispatcher:
    """Delivers outbox events (see the module docstring); nothing stops it but :meth:`stop`."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        settings: ServingSettings,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.pool = pool
        self.settings = settings
        s = settings
        self.client = httpx.AsyncClient(
            transport=transport
            or GuardedTransport(
                allow_private=s.webhook_allow_private_addresses,
                allow_loopback=s.webhook_allow_loopback,
                max_connections=max(10, s.webhook_batch),
                hints=WEBHOOK_HINTS,
            ),
            timeout=httpx.Timeout(s.webhook_timeout_s),
            follow_redirects=False,
            trust_env=False,
            headers={"User-Agent": USER_AGENT, "Content-Type": "application/json"},
        )
        self.outcomes: Counter[str] = Counter()
        self.rounds = 0
        self.lost_claims = 0
        self.pruned = 0
        self._pruned_at = -PRUNE_EVERY_S
        self.last_error: str | None = None
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()

    async def aclose(self) -> None:
        await self.client.aclose()

    # --- one round --------------------------------------------------------------------------

    async def run_once(self) -> int:
        """Claim due events, deliver them; the number claimed."""
        s = self.settings
        claimed = await store.claim_due(self.pool, limit=s.webhook_batch, lease_s=s.webhook_lease_s)
        if claimed:
            await asyncio.gather(*(self.deliver(e) for e in claimed))
        self.rounds += 1
        return len(claimed)

    async def deliver(self, event: store.Claimed) -> store.Attempt:
        """One attempt at ``event``, settled in the outbox and the log."""
        attempt = await self._post(event)
        if await store.settle(self.pool, event, attempt):
            self.outcomes[attempt.outcome] += 1
        else:
            self.lost_claims += 1  # the lease passed; another dispatcher owns it now
        return attempt

    async def _post(self, event: store.Claimed) -> store.Attempt:
        s = self.settings
        number = event.attempts + 1
        body = event.body.encode()
        headers = {
            SIGNATURE_HEADER: sign(event.secret, body),
            EVENT_ID_HEADER: event.event_id,
            "X-Newsdesk-Event-Type": event.kind,
            "X-Newsdesk-Attempt": str(number),
        }
        started_at = datetime.now(UTC)
        started = time.perf_counter()
        status: int | None = None
        error: str | None = None
        final = False
        try:
            async with asyncio.timeout(s.webhook_timeout_s):
                async with self.client.stream(
                    "POST", event.url, content=body, headers=headers
                ) as response:
                    status = response.status_code
                    read = 0
                    async for chunk in response.aiter_raw():  # keep the connection reusable
                        read += len(chunk)
                        if read > MAX_ANSWER_BYTES:
                            break
            if not 200 <= status < 300:
                error = f"HTTP {status}"
        except BlockedAddressError as exc:
            error, final = exc.reason, True
        except TimeoutError:
            error = f"no answer within {s.webhook_timeout_s:g}s"
        except (httpx.HTTPError, OSError) as exc:
            error = f"{type(exc).__name__}: {exc}".rstrip(": ")
        duration_ms = (time.perf_counter() - started) * 1000.0
        if error is None:
            outcome, retry_in = "delivered", 0.0
        elif final or number >= s.webhook_max_attempts:
            outcome, retry_in = "given_up", 0.0
        else:
            outcome = "retry"
            retry_in = backoff_s(number, s.webhook_retry_base_s, s.webhook_retry_max_s)
        return store.Attempt(
            outcome=outcome,
            status_code=status,
            error=error[:2_000] if error else None,
            started_at=started_at,
            duration_ms=round(duration_ms, 2),
            retry_in_s=retry_in,
        )

    # --- the loop ---------------------------------------------------------------------------

    async def run_forever(self) -> None:
        """Keep up to ``webhook_batch`` deliveries in flight, claiming more (in bunches, once
        half the slots are free) as they end: one slow receiver holds one slot, not a round."""
        s = self.settings
        batch = s.webhook_batch
        listener = await self._listen()
        in_flight: set[asyncio.Task[store.Attempt | None]] = set()
        try:
            while not self._stop.is_set():
                self._wake.clear()
                free = batch - len(in_flight)
                if free < max(1, batch // 2):  # claim in bunches: half the slots free at least
                    await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
                    continue
                claimed: list[store.Claimed] = []
                try:
                    await self._prune_now_and_then()
                    claimed = await store.claim_due(
                        self.pool, limit=free, lease_s=s.webhook_lease_s
                    )
                    self.rounds += 1
                    self.last_error = None
                except Exception as exc:  # database down...: log, wait, retry
                    self.last_error = f"{type(exc).__name__}: {exc}"
                    log.warning("webhook claim failed: %s", self.last_error)
                for event in claimed:
                    task = asyncio.create_task(self._deliver_logged(event))
                    in_flight.add(task)
                    task.add_done_callback(in_flight.discard)
                if not claimed:  # until a new event, a freed slot, or the poll interval
                    await self._sleep(s.webhook_poll_interval_s, in_flight)
            if in_flight:  # stopped: let the deliveries under way finish and settle
                await asyncio.wait(in_flight, timeout=s.webhook_timeout_s + 5)
        finally:
            for task in in_flight:  # stopped or cancelled: unsettled events come back
                task.cancel()  # due once their lease passes
            if listener is not None:
                with contextlib.suppress(Exception):
                    await listener.remove_listener(store.NOTIFY_CHANNEL, self._notified)
                    await self.pool.release(listener)

    async def _prune_now_and_then(self) -> None:
        """Delete old settled events, at most once per PRUNE_EVERY_S per dispatcher."""
        if time.monotonic() - self._pruned_at < PRUNE_EVERY_S:
            return
        self._pruned_at = time.monotonic()
        days = self.settings.webhook_retention_days
        self.pruned += await store.prune(self.pool, older_than_s=days * 86400)

    async def _deliver_logged(self, event: store.Claimed) -> store.Attempt | None:
        try:
            return await self.deliver(event)
        except Exception as exc:  # settling failed (database away): the lease brings it back
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.warning("webhook delivery of %s not settled: %s", event.event_id, exc)
            return None

    async def _listen(self) -> asyncpg.Connection | None:
        """A connection that wakes the loop on each committed event; None: poll only."""
        try:
            conn = await self.pool.acquire()
        except Exception as exc:
            log.warning("webhook dispatcher polls only (no LISTEN connection): %s", exc)
            return None
        try:
            await conn.add_listener(store.NOTIFY_CHANNEL, self._notified)
        except Exception as exc:
            await self.pool.release(conn)
            log.warning("webhook dispatcher polls only (LISTEN failed): %s", exc)
            return None
        return conn

    def _notified(self, *_: Any) -> None:
        self._wake.set()

    async def _sleep(self, seconds: float, in_flight: set[asyncio.Task[Any]]) -> None:
        """Until stopped, woken by a new event, a delivery ends, or ``seconds`` pass."""
        stop = asyncio.ensure_future(self._stop.wait())
        wake = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait(
                {stop, wake, *in_flight}, timeout=seconds, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            stop.cancel()
            wake.cancel()

    def stop(self) -> None:
        self._stop.set()

    def status(self) -> dict[str, Any]:
        return {
            "rounds": self.rounds,
            "outcomes": dict(self.outcomes),
            "lost_claims": self.lost_claims,
            "pruned": self.pruned,
            "last_error": self.last_error,
        }
