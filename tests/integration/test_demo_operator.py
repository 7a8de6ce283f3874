"""The demo shows the operator half (issue 17.6): the /admin URL and admin key, a whole result
URL, the faults `--chaos` injected as the simulator counted them; Ctrl-C and SIGTERM end it
cleanly, exit 0, no traceback."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.conftest import S3Config


def _env(db_url: str, s3: S3Config, tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "DATABASE_URL": db_url,
        "TASKHOOK_DATA_DIR": str(tmp_path),
        "TASKHOOK_S3_ENDPOINT_URL": s3.endpoint_url,
        "TASKHOOK_S3_BUCKET": s3.bucket,
        "AWS_ACCESS_KEY_ID": s3.access_key_id or "",
        "AWS_SECRET_ACCESS_KEY": s3.secret_access_key or "",
        "AWS_REGION": s3.region,
        "COLUMNS": "80",  # narrow: a URL must still come out whole
        "PYTHONUNBUFFERED": "1",
    }


def _start(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(  # noqa: S603 - our own interpreter and fixed arguments
        [sys.executable, "-m", "taskhook.cli", "demo", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _read_until(proc: subprocess.Popen[str], marker: str, *, timeout: float) -> str:
    """Output up to and including the first line containing `marker`."""
    assert proc.stdout is not None
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(line)
        if marker in line:
            return "".join(seen)
    proc.kill()
    raise AssertionError(f"no {marker!r} within {timeout} s; output:\n{''.join(seen)}")


def test_chaos_demo_shows_the_operator_half_and_ctrl_c_ends_it(
    db_url: str, s3: S3Config, tmp_path: Path
) -> None:
    proc = _start(_env(db_url, s3, tmp_path), "--tasks", "3", "--chaos", "--keep-serving")
    try:
        out = _read_until(proc, "Serving until Ctrl-C", timeout=150)
        admin = re.search(r"dashboard at (\S+/admin), admin key (\S+)", out)
        assert admin, out
        r = httpx.get(
            admin.group(1) + "/api/overview",
            headers={"Authorization": f"Bearer {admin.group(2)}"},
        )
        assert r.status_code == 200, r.text  # the key printed is the dashboard's
        url = re.search(r"^A result: (\S+)$", out, re.MULTILINE)
        assert url and "X-Amz-Signature=" in url.group(1), out
        assert httpx.get(url.group(1)).content.startswith(b"\x89PNG")  # whole: it works
        assert "faults the simulator injected" in out
        assert re.search(r"webhooks duplicated\s+│\s+\d+", out), out

        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out + rest
    assert "Traceback" not in out + rest and "Stopped" in rest


def test_sigterm_mid_run_ends_cleanly(db_url: str, s3: S3Config, tmp_path: Path) -> None:
    proc = _start(_env(db_url, s3, tmp_path), "--tasks", "40")
    try:
        out = _read_until(proc, "dashboard at", timeout=150)
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out + rest
    assert "Traceback" not in out + rest and "Stopped" in rest
