"""fal webhook verification: ED25519 over the documented message, keys from a JWKS.

Messages are signed here with freshly generated key pairs, independently of the simulator; the
JWKS is served through ``httpx.MockTransport`` and the cache's clock is a plain number, so no
test sleeps or touches the network.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from common.errors import SignatureInvalid, TimestampOutOfRange, VendorUnavailable
from vendors.fal import FalAdapter, UnknownSigningKey, parse_jwks, verify_signature
from vendors.signature import Delivery

JWKS_URL = "https://rest.fal.test/.well-known/jwks.json"
TS = 1_700_000_000
BODY = b'{"request_id":"req-1","status":"OK","payload":{"images":[]}}'
REQUEST_ID = "req-1"
USER_ID = "user-42"


def jwk(key: Ed25519PrivateKey, **extra: str) -> dict[str, str]:
    raw = key.public_key().public_bytes_raw()
    x = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
    return {"kty": "OKP", "crv": "Ed25519", "x": x, **extra}


def signed(
    key: Ed25519PrivateKey,
    body: bytes = BODY,
    *,
    timestamp: str = str(TS),
    request_id: str = REQUEST_ID,
    user_id: str = USER_ID,
) -> dict[str, str]:
    """Headers as fal sends them, written from fal's docs (not from the adapter's code)."""
    message = "\n".join([request_id, user_id, timestamp, hashlib.sha256(body).hexdigest()])
    return {
        "X-Fal-Webhook-Request-Id": request_id,
        "X-Fal-Webhook-User-Id": user_id,
        "X-Fal-Webhook-Timestamp": timestamp,
        "X-Fal-Webhook-Signature": key.sign(message.encode()).hex(),
    }


@dataclass
class Clock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Jwks:
    """fal's JWKS endpoint: the keys it publishes now, and how often it was asked."""

    keys: list[Ed25519PrivateKey]
    status: int = 200
    fetches: int = 0

    def handle(self, request: httpx.Request) -> httpx.Response:
        assert str(request.url) == JWKS_URL
        assert "authorization" not in request.headers  # our fal key never goes to the JWKS
        self.fetches += 1
        return httpx.Response(self.status, json={"keys": [jwk(k) for k in self.keys]})


@pytest.fixture
async def make_adapter() -> AsyncIterator[Callable[..., FalAdapter]]:
    clients: list[httpx.AsyncClient] = []

    def make(jwks: Jwks, clock: Clock | None = None) -> FalAdapter:
        client = httpx.AsyncClient(transport=httpx.MockTransport(jwks.handle))
        clients.append(client)
        return FalAdapter(
            client, api_key="k", jwks_url=JWKS_URL, tolerance=300, clock=clock or Clock()
        )

    yield make
    for client in clients:
        await client.aclose()


KEY = Ed25519PrivateKey.generate()
OTHER = Ed25519PrivateKey.generate()


def verify(headers: dict[str, str], body: bytes = BODY, *, now: float = TS) -> Delivery:
    keys = parse_jwks({"keys": [jwk(KEY)]})
    return verify_signature(body, headers, keys, now=now, tolerance=300)


# -- the signature ------------------------------------------------------------------------


def test_valid_signature_gives_a_delivery_stable_across_retries() -> None:
    delivery = verify(signed(KEY))
    expected_id = f"{REQUEST_ID}:{hashlib.sha256(BODY).hexdigest()[:16]}"
    assert delivery == Delivery(
        delivery_id=expected_id, timestamp=TS, account=USER_ID, job=REQUEST_ID
    )
    # fal's retry: same request, same bytes, a new timestamp and signature.
    retry = verify(signed(KEY, timestamp=str(TS + 60)), now=TS + 60)
    assert retry.delivery_id == expected_id


def test_headers_are_case_insensitive() -> None:
    headers = {k.lower(): v for k, v in signed(KEY).items()}
    assert verify(headers).timestamp == TS


def test_any_published_key_verifies() -> None:
    keys = parse_jwks({"keys": [jwk(OTHER), jwk(KEY)]})
    assert verify_signature(BODY, signed(KEY), keys, now=TS, tolerance=300).timestamp == TS


def test_wrong_key_is_rejected() -> None:
    with pytest.raises(SignatureInvalid):
        verify(signed(OTHER))


def test_tampered_body_is_rejected() -> None:
    with pytest.raises(SignatureInvalid):
        verify(signed(KEY), BODY.replace(b"OK", b"ERROR"))
    with pytest.raises(SignatureInvalid):
        verify(signed(KEY), BODY + b" ")


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("X-Fal-Webhook-Request-Id", "req-2"),
        ("X-Fal-Webhook-User-Id", "someone-else"),
        ("X-Fal-Webhook-Timestamp", str(TS + 1)),
    ],
)
def test_tampered_signed_header_is_rejected(header: str, value: str) -> None:
    headers = signed(KEY)
    headers[header] = value
    with pytest.raises(SignatureInvalid):
        verify(headers)


@pytest.mark.parametrize("skew", [-301, 301, -100_000])
def test_stale_or_future_timestamp_is_out_of_range(skew: int) -> None:
    timestamp = str(TS + skew)
    with pytest.raises(TimestampOutOfRange):
        verify(signed(KEY, timestamp=timestamp))


@pytest.mark.parametrize("skew", [-300, 0, 300])
def test_timestamp_inside_the_window_passes(skew: int) -> None:
    assert verify(signed(KEY, timestamp=str(TS + skew))).timestamp == TS + skew


@pytest.mark.parametrize("timestamp", ["1700000000.5", "abc", "-1700000000", " 1700000000", "١٢"])
def test_non_integer_timestamp_is_out_of_range(timestamp: str) -> None:
    with pytest.raises(TimestampOutOfRange):
        verify(signed(KEY, timestamp=timestamp))


def test_a_wrong_signature_is_never_reported_as_stale() -> None:
    with pytest.raises(SignatureInvalid):
        verify(signed(OTHER, timestamp=str(TS - 10_000)))
    with pytest.raises(SignatureInvalid):
        verify(signed(OTHER, timestamp="not-a-number"))


@pytest.mark.parametrize(
    "missing",
    [
        "X-Fal-Webhook-Request-Id",
        "X-Fal-Webhook-User-Id",
        "X-Fal-Webhook-Timestamp",
        "X-Fal-Webhook-Signature",
    ],
)
def test_missing_header_is_invalid(missing: str) -> None:
    headers = signed(KEY)
    del headers[missing]
    with pytest.raises(SignatureInvalid) as caught:
        verify(headers)
    assert not isinstance(caught.value, UnknownSigningKey)


@pytest.mark.parametrize("signature", ["zz" * 64, "abc", "00" * 63, "00" * 65])
def test_malformed_signature_is_invalid(signature: str) -> None:
    headers = signed(KEY)
    headers["X-Fal-Webhook-Signature"] = signature
    with pytest.raises(SignatureInvalid) as caught:
        verify(headers)
    assert not isinstance(caught.value, UnknownSigningKey)


def test_no_keys_means_nothing_verifies() -> None:
    with pytest.raises(UnknownSigningKey):
        verify_signature(BODY, signed(KEY), (), now=TS, tolerance=300)


# -- the JWKS -----------------------------------------------------------------------------


def test_jwks_keeps_only_ed25519_signing_keys_and_accepts_padding() -> None:
    padded = jwk(KEY)
    padded["x"] += "="  # fal's live JWKS pads its base64url
    keys = parse_jwks(
        {
            "keys": [
                {"kty": "RSA", "n": "abc", "e": "AQAB"},
                {"kty": "OKP", "crv": "X25519", "x": padded["x"]},
                jwk(OTHER, use="enc"),
                {"kty": "OKP", "crv": "Ed25519", "x": "c2hvcnQ"},
                padded,
            ]
        }
    )
    assert len(keys) == 1
    verify_signature(BODY, signed(KEY), keys, now=TS, tolerance=300)


@pytest.mark.parametrize("document", [{}, {"keys": []}, {"keys": "x"}, [], {"keys": [{}]}])
def test_jwks_without_a_usable_key_is_an_error(document: object) -> None:
    with pytest.raises(ValueError):
        parse_jwks(document)


# -- the adapter's cache and refresh --------------------------------------------------------


async def test_prepare_fetches_the_jwks(make_adapter: Callable[..., FalAdapter]) -> None:
    jwks = Jwks([KEY])
    adapter = make_adapter(jwks)
    await adapter.prepare()
    assert jwks.fetches == 1
    assert adapter.verify(BODY, signed(KEY), now=TS).timestamp == TS


@pytest.mark.parametrize("status", [404, 500, 503])
async def test_prepare_fails_when_the_jwks_cannot_be_had(
    make_adapter: Callable[..., FalAdapter], status: int
) -> None:
    with pytest.raises(VendorUnavailable):
        await make_adapter(Jwks([KEY], status=status)).prepare()


async def test_prepare_fails_on_a_jwks_without_keys(
    make_adapter: Callable[..., FalAdapter],
) -> None:
    with pytest.raises(VendorUnavailable):
        await make_adapter(Jwks([])).prepare()


async def test_prepare_fails_when_unreachable() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    async with httpx.AsyncClient(transport=httpx.MockTransport(refuse)) as client:
        adapter = FalAdapter(client, api_key="k", jwks_url=JWKS_URL)
        with pytest.raises(VendorUnavailable):
            await adapter.prepare()


async def test_new_key_verifies_on_its_first_delivery_after_a_refresh(
    make_adapter: Callable[..., FalAdapter],
) -> None:
    clock = Clock()
    jwks = Jwks([KEY])
    adapter = make_adapter(jwks, clock)
    await adapter.prepare()
    clock.now += 3600
    jwks.keys = [OTHER]  # fal rotated its key

    with pytest.raises(UnknownSigningKey):
        verify_signature(BODY, signed(OTHER), adapter.keys, now=TS, tolerance=300)
    delivery = await adapter.verify_async(BODY, signed(OTHER), now=TS)

    assert delivery.timestamp == TS
    assert jwks.fetches == 2
    assert adapter.verify(BODY, signed(OTHER), now=TS).timestamp == TS  # now cached


async def test_refresh_is_rate_limited_against_forged_webhooks(
    make_adapter: Callable[..., FalAdapter],
) -> None:
    clock = Clock()
    jwks = Jwks([KEY])
    adapter = make_adapter(jwks, clock)
    await adapter.prepare()
    forged = signed(OTHER)

    clock.now += 59
    for _ in range(5):
        with pytest.raises(SignatureInvalid):
            await adapter.verify_async(BODY, forged, now=TS)
    assert jwks.fetches == 1  # within a minute of the last fetch: no new one

    clock.now += 1
    with pytest.raises(SignatureInvalid):
        await adapter.verify_async(BODY, forged, now=TS)
    assert jwks.fetches == 2
    with pytest.raises(SignatureInvalid):
        await adapter.verify_async(BODY, forged, now=TS)
    assert jwks.fetches == 2


async def test_failed_refresh_is_rate_limited_too(make_adapter: Callable[..., FalAdapter]) -> None:
    clock = Clock()
    jwks = Jwks([KEY], status=503)
    adapter = make_adapter(jwks, clock)
    with pytest.raises(SignatureInvalid):
        await adapter.verify_async(BODY, signed(KEY), now=TS)
    with pytest.raises(SignatureInvalid):
        await adapter.verify_async(BODY, signed(KEY), now=TS)
    assert jwks.fetches == 1

    jwks.status = 200
    clock.now += 60
    assert (await adapter.verify_async(BODY, signed(KEY), now=TS)).timestamp == TS
    assert jwks.fetches == 2


async def test_without_prepare_the_first_webhook_fetches_the_keys(
    make_adapter: Callable[..., FalAdapter],
) -> None:
    jwks = Jwks([KEY])
    adapter = make_adapter(jwks)
    assert (await adapter.verify_async(BODY, signed(KEY), now=TS)).timestamp == TS
    assert jwks.fetches == 1


async def test_sync_verify_refreshes_in_the_background_for_the_retry(
    make_adapter: Callable[..., FalAdapter],
) -> None:
    clock = Clock()
    jwks = Jwks([KEY])
    adapter = make_adapter(jwks, clock)
    await adapter.prepare()
    clock.now += 60
    jwks.keys = [OTHER]

    with pytest.raises(UnknownSigningKey):
        adapter.verify(BODY, signed(OTHER), now=TS)
    await adapter.drain()

    assert jwks.fetches == 2
    assert adapter.verify(BODY, signed(OTHER), now=TS).timestamp == TS  # fal's retry passes


async def test_wrong_signature_with_a_bad_timestamp_is_still_invalid_signature(
    make_adapter: Callable[..., FalAdapter],
) -> None:
    adapter = make_adapter(Jwks([KEY]))
    await adapter.prepare()
    with pytest.raises(SignatureInvalid):
        await adapter.verify_async(BODY, signed(OTHER, timestamp=str(TS - 5000)), now=TS)
    with pytest.raises(TimestampOutOfRange):
        await adapter.verify_async(BODY, signed(KEY, timestamp=str(TS - 5000)), now=TS)


async def test_keys_older_than_a_day_are_refreshed_after_a_good_delivery(
    make_adapter: Callable[..., FalAdapter],
) -> None:
    clock = Clock()
    jwks = Jwks([KEY])
    adapter = make_adapter(jwks, clock)
    await adapter.prepare()

    adapter.verify(BODY, signed(KEY), now=TS)
    await adapter.drain()
    assert jwks.fetches == 1

    clock.now += 24 * 3600
    assert adapter.verify(BODY, signed(KEY), now=TS).timestamp == TS
    await adapter.drain()
    assert jwks.fetches == 2


def test_sync_verify_outside_an_event_loop_does_not_try_to_refresh() -> None:
    client = httpx.AsyncClient(transport=httpx.MockTransport(Jwks([KEY]).handle))
    adapter = FalAdapter(client, api_key="k", jwks_url=JWKS_URL)
    with pytest.raises(UnknownSigningKey):
        adapter.verify(BODY, signed(KEY), now=TS)
