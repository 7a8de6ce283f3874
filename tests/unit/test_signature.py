"""Standard Webhooks verification: the published vector and every way it must refuse."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from common.errors import SignatureInvalid, TimestampOutOfRange
from vendors.signature import decode_secret, sign, verify_standard_webhook

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
MSG_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
TIMESTAMP = 1614265330
BODY = b'{"test": 2432232314}'
EXPECTED = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def headers(signature: str = EXPECTED, timestamp: str = str(TIMESTAMP)) -> dict[str, str]:
    return {"webhook-id": MSG_ID, "webhook-timestamp": timestamp, "webhook-signature": signature}


def verify(
    hdrs: dict[str, str],
    *,
    body: bytes = BODY,
    now: float = TIMESTAMP,
    secrets: tuple[str, ...] = (SECRET,),
) -> None:
    verify_standard_webhook(body, hdrs, [decode_secret(s) for s in secrets], now=now, tolerance=300)


def test_published_vector_signs() -> None:
    value = sign(
        secret=decode_secret(SECRET), delivery_id=MSG_ID, timestamp=str(TIMESTAMP), body=BODY
    )
    assert "v1," + value == EXPECTED


def test_published_vector_verifies() -> None:
    delivery = verify_standard_webhook(
        BODY, headers(), [decode_secret(SECRET)], now=TIMESTAMP, tolerance=300
    )
    assert (delivery.delivery_id, delivery.timestamp) == (MSG_ID, TIMESTAMP)


def test_any_of_several_signatures_suffices() -> None:
    verify(headers(f"v1,Zm9vYmFy v2,abc {EXPECTED}"))


def test_any_of_several_secrets_suffices() -> None:
    verify(headers(), secrets=("whsec_" + "QUFBQUFBQUFBQUFBQUFBQQ==", SECRET))


@pytest.mark.parametrize(
    "hdrs",
    [
        {},
        headers(signature=""),
        headers(signature="v1,Zm9vYmFy"),
        headers(signature=EXPECTED.replace("v1,", "v2,")),
        headers(signature=EXPECTED[:-4] + "AAA="),
        {k: v for k, v in headers().items() if k != "webhook-id"},
        {k: v for k, v in headers().items() if k != "webhook-timestamp"},
    ],
)
def test_bad_or_missing_signature(hdrs: dict[str, str]) -> None:
    with pytest.raises(SignatureInvalid):
        verify(hdrs)


def test_tampered_body() -> None:
    with pytest.raises(SignatureInvalid):
        verify(headers(), body=b'{"test": 2432232315}')


def test_wrong_secret() -> None:
    with pytest.raises(SignatureInvalid):
        verify(headers(), secrets=("whsec_" + "QUFBQUFBQUFBQUFBQUFBQQ==",))


def test_signature_over_another_timestamp() -> None:
    with pytest.raises(SignatureInvalid):
        verify(headers(timestamp=str(TIMESTAMP + 1)), now=TIMESTAMP + 1)


@pytest.mark.parametrize("offset", [301, -301, 10_000])
def test_timestamp_outside_window_both_ways(offset: int) -> None:
    with pytest.raises(TimestampOutOfRange):
        verify(headers(), now=TIMESTAMP + offset)


@pytest.mark.parametrize("offset", [300, -300, 0])
def test_timestamp_inside_window(offset: int) -> None:
    verify(headers(), now=TIMESTAMP + offset)


@pytest.mark.parametrize("stamp", ["1614265330.5", "abc", "-1614265330", "１２３"])  # noqa: RUF001 - non-ASCII digits on purpose
def test_timestamp_not_an_integer(stamp: str) -> None:
    secret = decode_secret(SECRET)
    signature = "v1," + sign(secret=secret, delivery_id=MSG_ID, timestamp=stamp, body=BODY)
    with pytest.raises(TimestampOutOfRange):
        verify(headers(signature=signature, timestamp=stamp))


# Issue 16.6: the official library pads a secret's base64 before decoding it, so an unpadded
# secret (as some dashboards show them) is a valid secret there and must be one here.
PADDED = "whsec_QUFBQUFBQUFBQUFBQUFBQQ=="
UNPADDED = "whsec_QUFBQUFBQUFBQUFBQUFBQQ"


def test_an_unpadded_secret_is_the_same_key_as_the_padded_one() -> None:
    assert decode_secret(UNPADDED) == decode_secret(PADDED) == b"A" * 16


def test_what_the_official_library_signs_with_an_unpadded_secret_verifies() -> None:
    from standardwebhooks.webhooks import Webhook

    signed_at = datetime.fromtimestamp(TIMESTAMP, tz=UTC)
    signature = Webhook(UNPADDED).sign(MSG_ID, signed_at, BODY.decode())
    verify(headers(signature), secrets=(UNPADDED,))


@pytest.mark.parametrize("secret", ["whsec_", "whsec_====", "whsec_!!not base64!!"])
def test_an_empty_or_undecodable_secret_is_refused(secret: str) -> None:
    with pytest.raises(ValueError, match="whsec_"):
        decode_secret(secret)
