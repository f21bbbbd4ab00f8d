"""Webhook delivery against a real receiving HTTP server: retries with backoff recorded in the
log, exactly one successful delivery, a dispatcher that dies mid-delivery losing nothing, two
dispatchers never sending the same event at once, giving up, the address guard at connect time
(a name that resolves to a loopback address), the signature and its verification."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import random
import re
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from cluster.settings import Settings
from serving.deployments.local import LocalBackend, local_app
from serving.deployments.webhooks import WebhookDispatcherRunner
from serving.webhooks import store
from serving.webhooks.dispatcher import WebhookDispatcher, backoff_s
from serving.webhooks.schemas import WebhookCreate, WebhookEvent
from serving.webhooks.signing import sign, verify_signature
from serving.webhooks.subscriptions import SubscribePolicy, subscribe
from tests.support.webhooks import Receiver, add_articles, assign, events, summarize

SECRET = "test-secret-0123456789abcdef"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.stop()


@pytest.fixture
def hook_settings(settings: Settings) -> Settings:
    """Loopback receivers allowed; quick retries."""
    return settings.model_copy(
        update={
            "webhook_allow_loopback": True,
            "webhook_retry_base_s": 0.05,
            "webhook_retry_max_s": 0.2,
            "webhook_timeout_s": 5.0,
            "webhook_poll_interval_s": 0.05,
        }
    )


async def _subscribe(pool: asyncpg.Pool, url: str, **fields: object) -> int:
    request = WebhookCreate(url=url, secret=SECRET, **fields)  # type: ignore[arg-type]
    policy = SubscribePolicy(allow_loopback=True)
    return (await subscribe(pool, request, policy)).id


async def _one_event(pool: asyncpg.Pool, settings: Settings) -> None:
    """A story that matches every webhook: one event per webhook in the outbox."""
    articles = await add_articles(pool, "quake")
    await summarize(pool, articles, 70, ["world"])
    await assign(pool, settings)


async def _until(condition) -> None:  # type: ignore[no-untyped-def]
    async with asyncio.timeout(20):
        while not await condition():  # noqa: ASYNC110 (polling the database)
            await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def _running(dispatcher: WebhookDispatcher) -> AsyncIterator[asyncio.Task]:
    task = asyncio.create_task(dispatcher.run_forever())
    try:
        yield task
    finally:
        dispatcher.stop()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 10)
        await dispatcher.aclose()


async def _state(pool: asyncpg.Pool) -> str:
    return await pool.fetchval("SELECT state FROM webhook_events")


async def test_failing_twice_then_ok_is_delivered_once_with_two_retries_logged(
    pool: asyncpg.Pool, hook_settings: Settings, receiver: Receiver
) -> None:
    receiver.statuses = [500, 500, 200]
    hook = await _subscribe(pool, receiver.url())
    await _one_event(pool, hook_settings)
    async with _running(WebhookDispatcher(pool, hook_settings)):
        await _until(lambda: _delivered(pool))
        await asyncio.sleep(0.3)  # a few more rounds: nothing is sent again
    assert [r.status for r in receiver.received] == [500, 500, 200]
    (event,) = await events(pool, hook)
    ids = {r.headers["x-newsdesk-event-id"] for r in receiver.received}
    assert ids == {event["event_id"]}  # the same event each time, for receiver-side dedup
    for r in receiver.received:  # each attempt signed over the exact body
        assert r.body == event["body"].encode()
        assert verify_signature(SECRET, r.headers["x-newsdesk-signature"], r.body)
        assert r.headers["content-type"] == "application/json"
        assert r.headers["x-newsdesk-event-type"] == "story.matched"
    assert [r.headers["x-newsdesk-attempt"] for r in receiver.received] == ["1", "2", "3"]
    parsed = WebhookEvent.model_validate_json(receiver.received[-1].body)
    assert parsed.story.topics == ["world"] and parsed.story.importance == 70

    # the delivery log, through the API
    backend = LocalBackend(hook_settings, lambda: pytest.fail("no model"))
    await backend.startup()
    try:
        transport = httpx.ASGITransport(app=local_app(backend))
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as c:
            r = await c.get(f"/v1/webhooks/{hook}/deliveries")
            hooks = (await c.get("/v1/webhooks")).json()["webhooks"]
            pending = await c.get(f"/v1/webhooks/{hook}/deliveries", params={"state": "pending"})
            bad = await c.get(f"/v1/webhooks/{hook}/deliveries", params={"state": "lost"})
    finally:
        await backend.shutdown()
    assert r.status_code == 200, r.text
    (delivery,) = r.json()["deliveries"]
    assert delivery["event_id"] == event["event_id"] and delivery["story_id"] == event["story_id"]
    assert delivery["state"] == "delivered" and delivery["attempts"] == 3
    assert delivery["delivered_at"] and delivery["given_up_at"] is None
    assert delivery["last_status_code"] == 200 and delivery["last_error"] is None
    log = delivery["log"]
    assert [(a["attempt"], a["status_code"], a["outcome"]) for a in log] == [
        (1, 500, "retry"),
        (2, 500, "retry"),
        (3, 200, "delivered"),
    ]
    assert [a["error"] for a in log] == ["HTTP 500", "HTTP 500", None]
    assert log[0]["started_at"] < log[1]["started_at"] < log[2]["started_at"]
    assert hooks[0]["delivered"] == 1 and hooks[0]["pending"] == 0
    assert pending.json()["count"] == 0 and bad.status_code == 422


async def _delivered(pool: asyncpg.Pool) -> bool:
    return await _state(pool) == "delivered"


async def test_a_dispatcher_dying_mid_delivery_loses_nothing(
    pool: asyncpg.Pool, hook_settings: Settings, receiver: Receiver
) -> None:
    receiver.hold_first = True  # the first POST hangs: the dispatcher dies while it is in flight
    await _subscribe(pool, receiver.url())
    await _one_event(pool, hook_settings)
    lease = hook_settings.model_copy(update={"webhook_lease_s": 1.0})
    first = WebhookDispatcher(pool, lease)
    task = asyncio.create_task(first.run_forever())
    assert await asyncio.to_thread(receiver.first_arrived.wait, 10)
    claimed_at = time.monotonic()
    task.cancel()  # a crash: nothing settled, the row stays claimed
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await first.aclose()
    row = await pool.fetchrow("SELECT state, attempts, claim FROM webhook_events")
    assert (row["state"], row["attempts"]) == ("pending", 0) and row["claim"] is not None

    # a new dispatcher (a restarted replica) sends it once the lease has passed
    async with _running(WebhookDispatcher(pool, lease)):
        await _until(lambda: _delivered(pool))
    assert time.monotonic() - claimed_at >= 0.9  # not before the lease ran out
    receiver.release()
    (event,) = await events(pool)
    assert [r.headers["x-newsdesk-event-id"] for r in receiver.received] == [event["event_id"]] * 2
    assert event["attempts"] == 1  # the dead dispatcher's attempt was never settled
    log = await pool.fetch("SELECT outcome, status_code FROM webhook_deliveries")
    assert [(r["outcome"], r["status_code"]) for r in log] == [("delivered", 200)]


async def test_two_dispatchers_share_the_outbox_without_sending_twice(
    pool: asyncpg.Pool, hook_settings: Settings, receiver: Receiver
) -> None:
    for _ in range(4):
        await _subscribe(pool, receiver.url())
    for group in ("quake", "flood", "storm", "fire", "strike"):
        await summarize(pool, await add_articles(pool, group), 50)
    await assign(pool, hook_settings)
    assert len(await events(pool)) == 20
    one_each = hook_settings.model_copy(update={"webhook_batch": 3})
    a, b = WebhookDispatcher(pool, one_each), WebhookDispatcher(pool, one_each)
    sent = await asyncio.gather(*(d.run_once() for d in (a, b) for _ in range(4)))
    while await pool.fetchval("SELECT count(*) FROM webhook_events WHERE state = 'pending'"):
        sent.extend(await asyncio.gather(a.run_once(), b.run_once()))
    await a.aclose()
    await b.aclose()
    ids = [r.headers["x-newsdesk-event-id"] for r in receiver.received]
    assert len(ids) == len(set(ids)) == 20 == sum(sent)
    assert a.outcomes["delivered"] > 0 and b.outcomes["delivered"] > 0


async def test_a_slow_receiver_does_not_hold_up_the_others(
    pool: asyncpg.Pool, hook_settings: Settings, receiver: Receiver
) -> None:
    slow = Receiver(hold_first=True)
    try:
        await _subscribe(pool, slow.url())
        fast = await _subscribe(pool, receiver.url())
        async with _running(WebhookDispatcher(pool, hook_settings)):
            await _one_event(pool, hook_settings)
            assert await asyncio.to_thread(slow.first_arrived.wait, 10)
            await _until(lambda: _webhook_delivered(pool, fast))  # while the slow one hangs
            slow.release()
            await _until(_all_delivered(pool))
    finally:
        slow.stop()
    assert len(receiver.received) == len(slow.received) == 1


async def _webhook_delivered(pool: asyncpg.Pool, hook: int) -> bool:
    return bool(
        await pool.fetchval(
            "SELECT count(*) FROM webhook_events WHERE webhook_id = $1 AND state = 'delivered'",
            hook,
        )
    )


def _all_delivered(pool: asyncpg.Pool):  # type: ignore[no-untyped-def]
    async def check() -> bool:
        return not await pool.fetchval(
            "SELECT count(*) FROM webhook_events WHERE state <> 'delivered'"
        )

    return check


async def test_the_serve_deployment_runs_the_dispatcher(
    pool: asyncpg.Pool, hook_settings: Settings, receiver: Receiver
) -> None:
    """The deployment's class, without Ray: it starts a dispatcher on its own pool, reports its
    counters and the outbox, and stops."""
    await _subscribe(pool, receiver.url())
    runner = _Runner.__new__(_Runner)
    await runner.__init__(hook_settings)  # type: ignore[misc]  # Serve awaits the async init
    try:
        await _one_event(pool, hook_settings)
        await _until(lambda: _delivered(pool))
        await runner.check_health()
        status = await runner.status()
        assert status["outcomes"] == {"delivered": 1} and status["events"] == {"delivered": 1}
    finally:
        await runner.shutdown()
        with contextlib.suppress(asyncio.CancelledError):
            await runner._task
    assert len(receiver.received) == 1


class _Runner(WebhookDispatcherRunner):
    """The deployment's class as Serve drives it: Serve awaits ``__del__`` on shutdown; here
    the test does (``shutdown``) and the garbage collector's call does nothing."""

    async def shutdown(self) -> None:
        await WebhookDispatcherRunner.__del__(self)  # type: ignore[misc]

    def __del__(self) -> None:
        pass


async def test_old_settled_events_are_pruned_pending_ones_kept(
    pool: asyncpg.Pool, hook_settings: Settings, receiver: Receiver
) -> None:
    hook = await _subscribe(pool, receiver.url())
    for group in ("quake", "flood", "storm", "fire"):
        await summarize(pool, await add_articles(pool, group), 50)
    await assign(pool, hook_settings)
    dispatcher = WebhookDispatcher(pool, hook_settings)
    assert await dispatcher.run_once() == 4
    await dispatcher.aclose()
    old, pending, live, recent = (r["id"] for r in await events(pool, hook))
    # 8 days old: a delivered event of a quiet story, a pending one, a delivered one of a
    # story still alive (the growth rule counts from it); and a recent one
    await pool.execute(
        "UPDATE webhook_events SET created_at = now() - interval '8 days', "
        "state = CASE WHEN id = $2 THEN 'pending' ELSE state END WHERE id = ANY($1::bigint[])",
        [old, pending, live],
        pending,
    )
    await pool.execute(
        "UPDATE stories SET last_published_at = now() - interval '8 days' "
        "WHERE id IN (SELECT story_id FROM webhook_events WHERE id = ANY($1::bigint[]))",
        [old, pending],
    )
    assert await store.prune(pool, older_than_s=7 * 86400) == 1
    left = {r["id"]: r["state"] for r in await events(pool, hook)}
    assert left == {pending: "pending", live: "delivered", recent: "delivered"}
    log = await pool.fetchval("SELECT count(*) FROM webhook_deliveries WHERE event_row = $1", old)
    assert log == 0


async def test_gives_up_after_the_last_attempt(
    pool: asyncpg.Pool, hook_settings: Settings, receiver: Receiver
) -> None:
    receiver.statuses = [503]
    hook = await _subscribe(pool, receiver.url())
    await _one_event(pool, hook_settings)
    settings = hook_settings.model_copy(update={"webhook_max_attempts": 3})
    async with _running(WebhookDispatcher(pool, settings)):
        await _until(lambda: _given_up(pool))
        await asyncio.sleep(0.3)
    assert len(receiver.received) == 3
    (delivery,) = await store.list_deliveries(pool, hook)
    assert delivery.state == "given_up" and delivery.given_up_at and delivery.attempts == 3
    assert [a.outcome for a in delivery.log] == ["retry", "retry", "given_up"]
    assert delivery.last_error == "HTTP 503"


async def _given_up(pool: asyncpg.Pool) -> bool:
    return await _state(pool) == "given_up"


async def test_unreachable_receiver_is_retried_later_not_at_once(
    pool: asyncpg.Pool, hook_settings: Settings
) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    hook = await _subscribe(pool, f"http://127.0.0.1:{port}/hook")
    await _one_event(pool, hook_settings)
    slow = hook_settings.model_copy(
        update={"webhook_retry_base_s": 30.0, "webhook_retry_max_s": 3600.0}
    )
    dispatcher = WebhookDispatcher(pool, slow)
    assert await dispatcher.run_once() == 1
    assert await dispatcher.run_once() == 0  # not due again for 15-30 s
    await dispatcher.aclose()
    (delivery,) = await store.list_deliveries(pool, hook)
    assert delivery.state == "pending" and delivery.log[0].status_code is None
    assert "ConnectError" in (delivery.last_error or "")
    wait = (delivery.next_attempt_at - delivery.log[0].started_at).total_seconds()
    assert 14 <= wait <= 31


async def test_a_name_resolving_to_loopback_is_refused_at_connect_time(
    pool: asyncpg.Pool, hook_settings: Settings, receiver: Receiver
) -> None:
    """The URL passes the subscribe-time check (a name, not an address); the connection is
    refused because the name resolves to a loopback address (DNS rebinding, closed)."""
    name = socket.gethostname()
    try:
        addresses = {i[4][0] for i in socket.getaddrinfo(name, receiver.port)}
    except socket.gaierror:
        pytest.skip(f"{name} does not resolve here")
    if not all(a.startswith("127.") or a == "::1" for a in addresses):
        pytest.skip(f"{name} resolves to {addresses}, not loopback only")
    request = WebhookCreate(url=receiver.url(host=name), secret=SECRET)
    hook = (await subscribe(pool, request, SubscribePolicy(allow_loopback=False))).id
    await _one_event(pool, hook_settings)
    guarded = hook_settings.model_copy(update={"webhook_allow_loopback": False})
    dispatcher = WebhookDispatcher(pool, guarded)
    assert await dispatcher.run_once() == 1
    await dispatcher.aclose()
    assert receiver.received == []  # never connected
    (delivery,) = await store.list_deliveries(pool, hook)
    assert delivery.state == "given_up" and delivery.attempts == 1  # at once: no retries
    assert "NEWSDESK_WEBHOOK_ALLOW_LOOPBACK" in (delivery.last_error or "")
    assert name in (delivery.last_error or "")


# --- signatures --------------------------------------------------------------------------------


def test_signature_verifies_and_refuses_wrong_secret_tampering_and_replays() -> None:
    body = b'{"id": "evt_1", "type": "story.matched"}'
    now = 1_800_000_000
    header = sign(SECRET, body, now)
    t, v1 = header.split(",")
    expected = hmac.new(SECRET.encode(), f"{now}.".encode() + body, hashlib.sha256).hexdigest()
    assert t == f"t={now}" and v1 == f"v1={expected}"  # the documented construction
    assert verify_signature(SECRET, header, body, now=now + 10)
    assert not verify_signature("another-secret-0123456789", header, body, now=now)
    assert not verify_signature(SECRET, header, body + b" ", now=now)
    assert not verify_signature(SECRET, header, body, tolerance_s=300, now=now + 301)  # replay
    assert not verify_signature(SECRET, header, body, tolerance_s=300, now=now - 301)
    assert verify_signature(SECRET, header, body, tolerance_s=600, now=now + 301)
    rotated = f"{header},v1={'0' * 64}"  # an extra signature (a rotation) does not hurt
    assert verify_signature(SECRET, rotated, body, now=now)
    for broken in ("", "t=abc,v1=00", f"v1={expected}", f"t={now}", "garbage"):
        assert not verify_signature(SECRET, broken, body, now=now)


def test_the_documented_event_and_verification_snippet_hold() -> None:
    """docs/webhooks.md: its event example is a valid event, its snippet verifies as the
    module does."""
    text = (Path(__file__).resolve().parents[3] / "docs" / "webhooks.md").read_text()
    example = re.search(r"```json\n(.*?)```", text, re.S)
    assert example is not None
    event = WebhookEvent.model_validate_json(example.group(1))
    assert event.type == "story.grew" and event.growth is not None
    snippet = re.search(r"```python\n(import hashlib.*?)```", text, re.S)
    assert snippet is not None
    scope: dict = {}
    exec(snippet.group(1), scope)
    body, now = example.group(1).encode(), 1_800_000_000
    header = sign(SECRET, body, now)
    for secret, at in ((SECRET, now), ("wrong-secret-0123456789", now), (SECRET, now + 301)):
        assert scope["verify_signature"](secret, header, body, now=at) == verify_signature(
            secret, header, body, now=at
        )


def test_backoff_grows_exponentially_with_jitter_up_to_the_cap() -> None:
    rng = random.Random(7)
    for attempt, full in ((1, 10), (2, 20), (3, 40), (4, 80), (10, 300)):
        waits = [backoff_s(attempt, 10, 300, rng) for _ in range(200)]
        assert all(full / 2 <= w <= full for w in waits)
        assert max(waits) - min(waits) > full / 4  # jittered, not a fixed delay
