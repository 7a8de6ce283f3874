"""Webhooks out, pure parts: our signatures verify with the official `standardwebhooks`
library, the retry schedule, the webhook URL check and the settings (issue 18)."""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest
from standardwebhooks import Webhook

from common.settings import Settings, SettingsError
from lifecycle.client_webhooks import read_webhook
from lifecycle.retry_schedule import RetrySchedule
from lifecycle.webhook_signing import encode_secret, new_key, sign


def test_signatures_verify_with_the_official_library_under_either_key() -> None:
    old, new = new_key(), new_key()
    body = b'{"id":"tsk_1","status":"completed"}'
    now = int(time.time())
    header = sign([new, old], msg_id="msg_1", timestamp=now, body=body)
    headers = {"webhook-id": "msg_1", "webhook-timestamp": str(now), "webhook-signature": header}
    for key in (old, new):
        assert Webhook(encode_secret(key)).verify(body, headers) == {
            "id": "tsk_1",
            "status": "completed",
        }
    with pytest.raises(Exception, match="signature"):
        Webhook(encode_secret(new_key())).verify(body, headers)
    tampered = {**headers, "webhook-id": "msg_2"}
    with pytest.raises(Exception, match="signature"):
        Webhook(encode_secret(new)).verify(body, tampered)


def test_the_default_schedule_is_svixs_with_jitter() -> None:
    schedule = RetrySchedule()
    assert schedule.max_attempts == 8
    rng = random.Random(1)
    delays = [schedule.delay_after(n, rng) for n in range(1, 9)]
    nominal = (5, 300, 1800, 7200, 18000, 36000, 36000)
    assert delays[-1] is None
    for got, want in zip(delays[:-1], nominal, strict=True):
        assert got is not None and 0.8 * want <= got <= 1.2 * want
    assert 0.8 * sum(nominal) / 3600 > 22  # about a day of retries


@pytest.mark.parametrize(
    ("url", "allow_private", "ok"),
    [
        ("https://hooks.example.com/x", False, True),
        ("https://93.184.216.34:8443/x", False, True),
        ("http://hooks.example.com/x", False, False),
        ("http://127.0.0.1:9000/x", True, True),
        ("https://192.168.1.1/x", False, False),
        ("https://[64:ff9b::7f00:1]/x", False, False),
        ("https://printer/x", False, False),
        ("https://169.254.169.254/latest", False, False),
    ],
)
def test_webhook_urls(url: str, allow_private: bool, ok: bool) -> None:
    webhook, problems = read_webhook({"webhook": url}, allow_private=allow_private)
    assert (webhook is not None, not problems) == (ok, ok)


def test_retry_schedule_setting(tmp_path: Path) -> None:
    base = {"TASKHOOK_DATA_DIR": str(tmp_path)}
    settings = Settings.from_env({**base, "TASKHOOK_WEBHOOK_RETRY_SCHEDULE": "1,2.5,60"})
    assert settings.webhook_retry_schedule == (1.0, 2.5, 60.0)
    with pytest.raises(SettingsError, match="TASKHOOK_WEBHOOK_RETRY_SCHEDULE"):
        Settings.from_env({**base, "TASKHOOK_WEBHOOK_RETRY_SCHEDULE": "1,x"})
    with pytest.raises(SettingsError, match="TASKHOOK_WEBHOOK_HOST_CONCURRENCY"):
        Settings.from_env({**base, "TASKHOOK_WEBHOOK_HOST_CONCURRENCY": "0"})
