"""The vendors' own libraries against taskhook's simulator (issue 16, Proof): what the official
Standard Webhooks and Replicate verifiers accept, and what the official `replicate` and
`fal-client` clients do, over a real socket. If the simulator drifted from the vendors' wire
formats, their own code would say so here."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import fal_client
import fal_client.client
import httpx
import pytest
from replicate.client import Client as ReplicateClient
from replicate.webhook import Webhooks, WebhookSigningSecret
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from simulator import SimulatorConfig, create_app, running_simulator

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
TOKEN = "r8_official_client"
FAL_KEY = "fal-official-client"
HOOK = "https://taskhook.test/hooks/replicate/tok"
WAIT = 10.0


async def test_the_official_verifiers_accept_every_simulated_replicate_webhook() -> None:
    captured: list[httpx.Request] = []

    def receive(request: httpx.Request) -> httpx.Response:
        request.read()
        captured.append(request)
        return httpx.Response(200)

    hooks = httpx.AsyncClient(transport=httpx.MockTransport(receive))
    app = create_app(SimulatorConfig(job_seconds=0.02, webhook_secret=SECRET), webhook_client=hooks)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://sim") as api,
    ):
        created = await api.post(
            "/v1/models/acme/painter/predictions",
            json={"input": {"prompt": "a lighthouse"}, "webhook": HOOK},
        )
        assert created.status_code == 201
        async with asyncio.timeout(WAIT):
            await app.state.simulator.wait_idle()
    await hooks.aclose()
    assert len(captured) == 7
    for request in captured:
        headers = dict(request.headers)
        body = request.content
        # standardwebhooks: verify over the raw bytes, then it parses them
        assert Webhook(SECRET).verify(body, headers)["id"] == created.json()["id"]
        # replicate-python's own validator (raises on a bad signature or timestamp)
        Webhooks.validate(
            headers=headers,
            body=body.decode(),
            secret=WebhookSigningSecret(key=SECRET),
            tolerance=60,
        )
    tampered = dict(captured[-1].headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(captured[-1].content + b" ", tampered)


@pytest.fixture
async def simulator() -> AsyncIterator[Any]:
    config = SimulatorConfig(
        job_seconds=0.3, webhook_secret=SECRET, api_token=TOKEN, fal_key=FAL_KEY, time_scale=0.01
    )
    async with running_simulator(config) as running:
        yield running


async def test_the_official_replicate_client_creates_gets_lists_and_cancels(simulator: Any) -> None:
    client = ReplicateClient(api_token=TOKEN, base_url=simulator.url)
    prediction = await client.predictions.async_create(
        model="black-forest-labs/flux-schnell", input={"prompt": "a fox"}, webhook=HOOK
    )
    assert prediction.status == "starting"
    async with asyncio.timeout(WAIT):
        await prediction.async_wait()
    # async_wait() updates the prediction: mypy keeps the narrowing from before it.
    assert prediction.status == "succeeded"  # type: ignore[comparison-overlap]
    assert isinstance(prediction.output, list) and prediction.output[0].startswith(simulator.url)
    again = await client.predictions.async_get(prediction.id)
    assert again.id == prediction.id and again.status == "succeeded"
    page = await client.predictions.async_list()
    assert [p.id for p in page.results] == [prediction.id]

    running = await client.predictions.async_create(
        model="black-forest-labs/flux-schnell", input={"prompt": "a slow fox"}
    )
    canceled = await client.predictions.async_cancel(running.id)
    assert canceled.status == "canceled"


async def test_the_official_replicate_client_waits_with_prefer_wait(simulator: Any) -> None:
    client = ReplicateClient(api_token=TOKEN, base_url=simulator.url)
    # (client.predictions.async_create drops `wait` when given a model; the models API keeps it)
    prediction = await client.models.predictions.async_create(
        model="black-forest-labs/flux-schnell", input={"prompt": "an owl"}, wait=True
    )
    assert prediction.status == "succeeded"
    assert prediction.output is not None
    assert prediction.output[0].startswith("data:image/png;base64,")


async def test_the_official_fal_client_submits_polls_reads_and_cancels(
    simulator: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # fal-client talks to https://queue.fal.run/...; the submit answer's URLs (the
    # simulator's) carry every later call, as fal's docs say they should.
    monkeypatch.setattr(fal_client.client, "QUEUE_URL_FORMAT", f"{simulator.url}/fal/")
    client = fal_client.AsyncClient(key=FAL_KEY)
    handle = await client.submit("fal-ai/flux/dev", {"prompt": "a heron"}, webhook_url=HOOK)
    status = await handle.status(with_logs=True)
    assert isinstance(status, fal_client.Queued | fal_client.InProgress | fal_client.Completed)
    async with asyncio.timeout(WAIT):
        result = await handle.get()
    assert result["images"] and result["images"][0]["url"].startswith(simulator.url)
    done = await handle.status()
    assert isinstance(done, fal_client.Completed) and done.error is None

    slow = await client.submit("fal-ai/flux/dev", {"prompt": "a slow heron"})
    await slow.cancel()
    assert isinstance(await slow.status(), fal_client.Completed)
    with pytest.raises(fal_client.client.FalClientHTTPError) as caught:
        await slow.get()
    assert caught.value.status_code == 400 and "cancel" in caught.value.message.lower()
