"""The issue-14 limits' settings: defaults, values read, and one clear error per bad variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.settings import ServerLimits, SettingsError
from vendors.registry import read_settings


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {"TASKHOOK_DATA_DIR": str(tmp_path), "TASKHOOK_SECRET": "s" * 43}


def test_defaults(env: dict[str, str]) -> None:
    settings = read_settings(env)
    assert (settings.download_timeout, settings.download_min_rate) == (60.0, 32768.0)
    assert settings.storage_deadline == 90.0
    assert (settings.max_outputs, settings.max_output_bytes) == (16, 256 * 1024 * 1024)
    assert settings.server == ServerLimits()


def test_values_are_read(env: dict[str, str]) -> None:
    env.update(
        TASKHOOK_DOWNLOAD_TIMEOUT="30",
        TASKHOOK_DOWNLOAD_MIN_RATE="0",
        TASKHOOK_STORAGE_DEADLINE="45.5",
        TASKHOOK_MAX_OUTPUTS="4",
        TASKHOOK_MAX_OUTPUT_BYTES="1000000",
        TASKHOOK_HEADER_TIMEOUT="5",
        TASKHOOK_BODY_TIMEOUT="20",
        TASKHOOK_MAX_HEADER_BYTES="16384",
        TASKHOOK_KEEPALIVE_TIMEOUT="2",
        TASKHOOK_MAX_CONNECTIONS="300",
        TASKHOOK_MAX_REQUESTS="100",
    )
    settings = read_settings(env)
    assert (settings.download_timeout, settings.download_min_rate) == (30.0, 0.0)
    assert settings.storage_deadline == 45.5
    assert (settings.max_outputs, settings.max_output_bytes) == (4, 1_000_000)
    assert settings.server == ServerLimits(
        header_timeout=5.0,
        body_timeout=20.0,
        max_header_bytes=16384,
        keepalive_timeout=2.0,
        max_connections=300,
        max_requests=100,
    )


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("TASKHOOK_DOWNLOAD_TIMEOUT", "0"),
        ("TASKHOOK_DOWNLOAD_MIN_RATE", "-1"),
        ("TASKHOOK_DOWNLOAD_MIN_RATE", "fast"),
        ("TASKHOOK_STORAGE_DEADLINE", "soon"),
        ("TASKHOOK_MAX_OUTPUTS", "0"),
        ("TASKHOOK_MAX_OUTPUT_BYTES", "1e9"),
        ("TASKHOOK_HEADER_TIMEOUT", "0"),
        ("TASKHOOK_BODY_TIMEOUT", "-2"),
        ("TASKHOOK_MAX_HEADER_BYTES", "big"),
        ("TASKHOOK_KEEPALIVE_TIMEOUT", "x"),
        ("TASKHOOK_MAX_CONNECTIONS", "0"),
        ("TASKHOOK_MAX_REQUESTS", "-5"),
    ],
)
def test_a_bad_value_names_its_variable(env: dict[str, str], name: str, value: str) -> None:
    env[name] = value
    with pytest.raises(SettingsError) as caught:
        read_settings(env)
    assert name in str(caught.value)


def test_fal_user_id_is_read(env: dict[str, str]) -> None:
    env.update(FAL_KEY="k", FAL_USER_ID="user-123")
    fal = read_settings(env).vendor("fal")
    assert fal is not None and fal.user_id == "user-123"
    del env["FAL_USER_ID"]
    fal = read_settings(env).vendor("fal")
    assert fal is not None and fal.user_id is None  # learned and pinned instead
