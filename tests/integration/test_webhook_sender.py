"""Webhooks out, delivery: a real local receiver, signatures checked with the official
`standardwebhooks` library, retries, 410, timeouts, a receiver that was down, private addresses
refused at delivery, order per task and isolation per destination (issue 18)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from standardwebhooks import Webhook

from common.net import public_only_client
from common.states import TaskStatus, rank
from db import webhooks_out
from db.transition import transition
from lifecycle import client_webhooks
from lifecycle.client_webhooks import ClientWebhook
from lifecycle.retry_schedule import RetrySchedule
from lifecycle.runtime import Runtime
from lifecycle.webhook_sender import WebhookSender
from submit.render import render_task
from taskhook.worker import webhook_render
from tests.factories import make_task, make_user
from tests.webhook_receiver import Received, Reply, WebhookReceiver, eventually

FAST = RetrySchedule((0.05, 0.05, 0.05))


@pytest.fixture
async def receiver() -> AsyncIterator[WebhookReceiver]:
    r = WebhookReceiver()
    await r.start()
    yield r
    await r.close()


def make_sender(rt: Runtime, *, private: bool = True, **kw: Any) -> WebhookSender:
    client = public_only_client(
        allow_private=private,
        timeout=httpx.Timeout(kw.get("timeout", 2.0)),
        resolve=kw.pop("resolve", None),
    )
    assert rt.settings.database_url
    options: dict[str, Any] = {"schedule": FAST, "timeout": 2.0, "idle_poll": 0.05}
    options.update(kw)
    return WebhookSender(
        pool=rt.pool,
        dsn=rt.settings.database_url,
        client=client,
        render=webhook_render(rt),
        **options,
    )


class Running:
    """A sender running in the background for the length of a test."""

    def __init__(self, sender: WebhookSender) -> None:
        self.sender = sender
        self.stop = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> WebhookSender:
        self.task = asyncio.create_task(self.sender.run(self.stop, grace=0))
        return self.sender

    async def __aexit__(self, *exc: object) -> None:
        self.stop.set()
        assert self.task is not None
        await self.task
        await self.sender.client.aclose()


async def new_task(rt: Runtime, url: str, events: tuple[str, ...] = ("completed",)) -> Any:
    async with rt.pool.acquire() as conn:
        user_id, _ = await make_user(conn, credits=50)
        task_id = await make_task(conn, user_id)
        await client_webhooks.attach(
            conn, task_id=task_id, user_id=user_id, webhook=ClientWebhook(url, events)
        )
        secret = await client_webhooks.current_secret(conn, user_id=user_id)
    return user_id, task_id, secret


async def move(rt: Runtime, task_id: uuid.UUID, to: TaskStatus, key: str, **kw: Any) -> None:
    async with rt.pool.acquire() as conn:
        result = await transition(conn, task_id=task_id, to=to, event_key=key, cause="t", **kw)
    assert result.applied


async def fail(rt: Runtime, task_id: uuid.UUID) -> None:
    await move(rt, task_id, TaskStatus.FAILED, "fail", error={"code": "vendor_failed"})


async def outbox_states(rt: Runtime, task_id: uuid.UUID) -> list[str]:
    async with rt.pool.acquire() as conn:
        return [
            r["state"]
            for r in await conn.fetch(
                "SELECT state FROM webhook_outbox WHERE task_id = $1 ORDER BY id", task_id
            )
        ]


async def wait_states(
    rt: Runtime, task_id: uuid.UUID, done: Callable[[list[str]], bool], timeout: float = 10
) -> list[str]:
    async def check() -> list[str] | None:
        states = await outbox_states(rt, task_id)
        return states if done(states) else None

    found: list[str] = await eventually(check, timeout=timeout, what="outbox states")
    return found


def verified(secret: str, got: Received) -> Any:
    return Webhook(secret).verify(got.body, got.headers)


async def test_delivered_signed_and_as_the_api_renders_it(
    runtime: Runtime, receiver: WebhookReceiver, client: httpx.AsyncClient
) -> None:
    user_id, task_id, secret = await new_task(runtime, receiver.url)
    await fail(runtime, task_id)
    async with Running(make_sender(runtime)):
        await wait_states(runtime, task_id, lambda s: s == ["delivered"])
    (got,) = receiver.received
    payload = verified(secret, got)
    async with runtime.pool.acquire() as conn:
        from db import queries

        task = await queries.get_task(conn, task_id=task_id, user_id=user_id)
    assert task is not None
    assert payload == await render_task(task, runtime.store)
    assert payload["status"] == "failed" and payload["refunded"] is True
    assert got.headers["webhook-id"].startswith("msg_")
    assert got.headers["taskhook-event"] == "completed"
    async with runtime.pool.acquire() as conn:
        (event,) = await client_webhooks.task_attempts(conn, task_id=task_id, user_id=user_id)
    assert event["state"] == "delivered" and event["webhook_id"] == got.headers["webhook-id"]
    assert [(a["attempt"], a["status_code"], a["response_body"]) for a in event["attempts"]] == [
        (1, 200, "ok")
    ]


async def test_both_keys_sign_after_a_rotation(runtime: Runtime, receiver: WebhookReceiver) -> None:
    user_id, task_id, old = await new_task(runtime, receiver.url)
    async with runtime.pool.acquire() as conn:
        new = await client_webhooks.rotate_secret(conn, user_id=user_id)
        assert await client_webhooks.current_secret(conn, user_id=user_id) == new
    assert new != old and new.startswith("whsec_")
    await fail(runtime, task_id)
    async with Running(make_sender(runtime)):
        await wait_states(runtime, task_id, lambda s: s == ["delivered"])
    (got,) = receiver.received
    assert len(got.headers["webhook-signature"].split(" ")) == 2
    assert verified(old, got) == verified(new, got)
    # Once the old key's 24 hours are over, only the new one signs.
    async with runtime.pool.acquire() as conn:
        await conn.execute(
            "UPDATE webhook_secrets SET expires_at = now() WHERE user_id = $1 AND"
            " expires_at IS NOT NULL",
            user_id,
        )
        await webhooks_out.replay_outbox(
            conn,
            event_id=await conn.fetchval(
                "SELECT id FROM webhook_outbox WHERE task_id = $1", task_id
            ),
        )
    async with Running(make_sender(runtime)):
        await receiver.wait_for(lambda r: len(r) == 2, timeout=10)
    again = receiver.received[1]
    assert again.headers["webhook-id"] == got.headers["webhook-id"]
    verified(new, again)
    with pytest.raises(Exception, match="signature"):
        verified(old, again)


async def test_errors_and_timeouts_are_retried_under_the_same_id(
    runtime: Runtime, receiver: WebhookReceiver
) -> None:
    receiver.script = [Reply(500, body=b"boom"), Reply(200, delay=1.0), Reply(404), Reply(204)]
    user_id, task_id, secret = await new_task(runtime, receiver.url)
    await fail(runtime, task_id)
    async with Running(make_sender(runtime, timeout=0.3)):
        await wait_states(runtime, task_id, lambda s: s == ["delivered"])
    assert len(receiver.received) == 4
    assert len({g.headers["webhook-id"] for g in receiver.received}) == 1
    for got in receiver.received:
        verified(secret, got)
    async with runtime.pool.acquire() as conn:
        (event,) = await client_webhooks.task_attempts(conn, task_id=task_id, user_id=user_id)
    answers = [(a["status_code"], a["error"]) for a in event["attempts"]]
    assert answers == [(500, None), (None, "no answer within 0.3 s"), (404, None), (204, None)]


async def test_gone_stops_and_retries_run_out(runtime: Runtime, receiver: WebhookReceiver) -> None:
    receiver.decide = lambda got: Reply(410) if b'"progress":10' in got.body else Reply(503)
    _, gone, _ = await new_task(runtime, receiver.url, ("progress", "completed"))
    _, failing, _ = await new_task(runtime, receiver.url)
    await move(runtime, gone, TaskStatus.SUBMITTED, "s")
    await move(runtime, gone, TaskStatus.PROCESSING, "p", progress=10)
    await fail(runtime, failing)
    async with Running(make_sender(runtime)):
        await wait_states(runtime, gone, lambda s: s == ["gone"])
        await wait_states(runtime, failing, lambda s: s == ["failed"])
        await fail(runtime, gone)  # nothing more goes to a URL that answered 410
    assert await outbox_states(runtime, gone) == ["gone"]
    assert len(receiver.received) == 1 + FAST.max_attempts


async def test_a_receiver_down_for_a_while_gets_it_when_up(runtime: Runtime) -> None:
    receiver = WebhookReceiver()
    receiver.reserve()  # down: the port refuses connections
    try:
        user_id, task_id, secret = await new_task(runtime, receiver.url)
        await fail(runtime, task_id)
        schedule = RetrySchedule((0.05, 0.05, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3))
        async with Running(make_sender(runtime, schedule=schedule)):

            async def tried_twice() -> bool:
                async with runtime.pool.acquire() as conn:
                    events = await client_webhooks.task_attempts(
                        conn, task_id=task_id, user_id=None
                    )
                return len(events[0]["attempts"]) >= 2

            await eventually(tried_twice, timeout=10, what="two refused attempts")
            await receiver.start()
            await wait_states(runtime, task_id, lambda s: s == ["delivered"])
        (got,) = receiver.received
        verified(secret, got)
        async with runtime.pool.acquire() as conn:
            (event,) = await client_webhooks.task_attempts(conn, task_id=task_id, user_id=user_id)
        assert event["attempts"][0]["status_code"] is None
        assert "ConnectError" in event["attempts"][0]["error"]
        assert event["attempts"][-1]["status_code"] == 200
    finally:
        await receiver.close()


async def test_a_name_resolving_to_a_private_address_is_refused_at_delivery(
    runtime: Runtime, receiver: WebhookReceiver
) -> None:
    async def rebinding(host: str, port: int) -> list[str]:
        return ["127.0.0.1"]  # a public-looking name whose DNS answers loopback

    _, task_id, _ = await new_task(runtime, f"https://hooks.example.com:{receiver.port}/hook")
    await fail(runtime, task_id)
    sender = make_sender(runtime, private=False, resolve=rebinding, schedule=RetrySchedule(()))
    async with Running(sender):
        await wait_states(runtime, task_id, lambda s: s == ["failed"])
    assert receiver.received == []
    async with runtime.pool.acquire() as conn:
        (event,) = await client_webhooks.task_attempts(conn, task_id=task_id, user_id=None)
    assert "non-public" in event["attempts"][0]["error"]


async def test_a_task_never_shows_an_older_state_after_a_newer_one(
    runtime: Runtime, receiver: WebhookReceiver
) -> None:
    """Moves keep coming while deliveries are slow and some fail: what arrives never goes
    back, and the terminal state always arrives."""
    n = 0

    def flaky(_got: Received) -> Reply:
        nonlocal n
        n += 1
        return Reply(500 if n % 3 == 0 else 200, delay=0.05)

    receiver.decide = flaky
    _, task_id, secret = await new_task(runtime, receiver.url, ("start", "progress", "completed"))
    async with Running(make_sender(runtime)):
        await move(runtime, task_id, TaskStatus.SUBMITTED, "s")
        for p in range(5, 100, 5):
            await move(runtime, task_id, TaskStatus.PROCESSING, f"p{p}", progress=p)
            await asyncio.sleep(0.01)  # moves come while deliveries are in flight
        await move(runtime, task_id, TaskStatus.STORING, "st")
        await move(runtime, task_id, TaskStatus.COMPLETED, "c", result={"files": []})
        await wait_states(runtime, task_id, lambda s: s[-1] == "delivered")
    seen = [verified(secret, got) for got in receiver.received]
    order = [(rank(TaskStatus(s["status"])), s["progress"]) for s in seen]
    assert order == sorted(order)
    assert seen[-1]["status"] == "completed"


async def test_a_slow_destination_never_delays_the_others(runtime: Runtime) -> None:
    slow, fast = WebhookReceiver(default=Reply(delay=30)), WebhookReceiver()
    await slow.start()
    await fast.start()
    try:
        slow_tasks = [(await new_task(runtime, slow.url))[1] for _ in range(6)]
        fast_tasks = [(await new_task(runtime, fast.url))[1] for _ in range(4)]
        for task_id in slow_tasks:
            await fail(runtime, task_id)
        sender = make_sender(runtime, timeout=60, concurrency=6, host_concurrency=2)
        async with Running(sender):
            await slow.wait_for(lambda r: len(r) == 2, timeout=10)
            for task_id in fast_tasks:
                await fail(runtime, task_id)
            await fast.wait_for(lambda r: len(r) == 4, timeout=10)
            assert len(slow.received) == 2  # its cap, not more
    finally:
        await slow.close()
        await fast.close()
    assert len({json.loads(g.body)["id"] for g in fast.received}) == 4
