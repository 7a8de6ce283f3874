"""Secrets made on first use: every process racing to create one ends up with the same value."""

from __future__ import annotations

import os
import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common.settings import generated_secret


def test_racing_creators_agree_and_never_read_an_empty_file(tmp_path: Path) -> None:
    for round_ in range(20):
        data_dir = tmp_path / str(round_)
        with ThreadPoolExecutor(max_workers=8) as pool:
            values = list(pool.map(generated_secret, [data_dir] * 16, ["secret"] * 16))
        assert len(set(values)) == 1 and values[0]
        assert stat.S_IMODE(os.stat(data_dir / "secret").st_mode) == 0o600
        assert [p.name for p in data_dir.iterdir()] == ["secret"]  # no temp files left


def test_kept_between_calls(tmp_path: Path) -> None:
    assert generated_secret(tmp_path, "admin_key") == generated_secret(tmp_path, "admin_key")
    assert generated_secret(tmp_path, "admin_key") != generated_secret(tmp_path, "secret")
