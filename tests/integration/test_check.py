"""`taskhook check` as an operator runs it: a process, its table or JSON, its exit code.

The deployment it checks is real: PostgreSQL and the S3-compatible server reached by endpoint,
the vendor simulator for every vendor, and a web app on a socket for the public URL's self-call.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from common.settings import Settings
from simulator import RunningSimulator, SimulatorConfig, running_simulator
from taskhook.app import create_app
from taskhook.runtime import open_runtime
from taskhook.serving import bind, running_app, url_for
from tests.conftest import S3Config

SECRET = "check-secret-" + "c" * 32
ADMIN_KEY = "check-admin-" + "a" * 32
SIM = SimulatorConfig(api_token="r8-check", fal_key="fal-check", mj_secret="mj-check")


@dataclass
class Deployment:
    env: dict[str, str]
    url: str


@pytest.fixture
async def sim() -> AsyncIterator[RunningSimulator]:
    async with running_simulator(SIM) as running:
        yield running


def env_for(
    db_url: str, s3: S3Config, tmp_path: Path, sim: RunningSimulator, public_url: str
) -> dict[str, str]:
    keep = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("TASKHOOK_", "REPLICATE_", "FAL_", "MJ_", "AWS_", "DATABASE_URL"))
    }
    return {
        **keep,
        "DATABASE_URL": db_url,
        "TASKHOOK_DATA_DIR": str(tmp_path / "data"),
        "TASKHOOK_SECRET": SECRET,
        "TASKHOOK_ADMIN_KEY": ADMIN_KEY,
        "TASKHOOK_PUBLIC_URL": public_url,
        "TASKHOOK_S3_ENDPOINT_URL": s3.endpoint_url,
        "TASKHOOK_S3_BUCKET": s3.bucket,
        "AWS_ACCESS_KEY_ID": s3.access_key_id or "",
        "AWS_SECRET_ACCESS_KEY": s3.secret_access_key or "",
        "AWS_REGION": s3.region,
        "REPLICATE_API_TOKEN": "r8-check",
        "REPLICATE_API_BASE": f"{sim.url}/v1",
        "FAL_KEY": "fal-check",
        "FAL_QUEUE_BASE": f"{sim.url}/fal",
        "FAL_JWKS_URL": f"{sim.url}/fal/.well-known/jwks.json",
        "FAL_API_BASE": f"{sim.url}/fal-api/v1",
        "MJ_PROXY_BASE": sim.url,
        "MJ_PROXY_SECRET": "mj-check",
    }


@pytest.fixture
async def deployment(
    settings: Settings, db_url: str, s3: S3Config, tmp_path: Path, sim: RunningSimulator
) -> AsyncIterator[Deployment]:
    """A web app holding the deployment's secret, on a socket: the public URL's target."""
    sock = bind("127.0.0.1", 0)
    url = url_for(sock)
    serving = settings.with_overrides(secret=SECRET, public_url=url)
    async with open_runtime(serving) as rt, running_app(create_app(serving, runtime=rt), sock=sock):
        yield Deployment(env_for(db_url, s3, tmp_path, sim, url), url)


async def taskhook(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "taskhook.cli",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=90)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def by_name(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in report["checks"]}


async def test_a_healthy_deployment_passes_every_check(deployment: Deployment) -> None:
    code, out, err = await taskhook(deployment.env, "check", "--json")
    report = json.loads(out)
    assert code == 0, out + err
    assert report["ok"] is True
    checks = by_name(report)
    assert set(checks) == {
        "database",
        "storage",
        "replicate credentials",
        "replicate webhook secret",
        "replicate webhook url",
        "fal credentials",
        "fal webhook keys",
        "midjourney credentials",
        "public url",
        "secrets",
        "clock",
    }
    assert all(c["status"] == "pass" for c in checks.values()), checks
    assert "taskhook-simulator" in checks["replicate credentials"]["detail"]
    assert "reaches this deployment" in checks["public url"]["detail"]
    assert "TASKHOOK_SECRET 45 bytes (configured)" in checks["secrets"]["detail"]

    code, table, _ = await taskhook(deployment.env, "check")
    lines = table.splitlines()
    assert code == 0
    assert lines[0].split() == ["check", "result", "detail"]
    assert len(lines) == 1 + len(checks) + 1 and lines[-1] == "all checks pass"
    assert all("  pass  " in line for line in lines[1:-1])


async def test_every_failure_is_reported_and_the_exit_code_says_so(
    deployment: Deployment, settings: Settings, sim: RunningSimulator
) -> None:
    # An app with another secret answers at the public URL: some server, not this deployment.
    sock = bind("127.0.0.1", 0)
    stranger = settings.with_overrides(secret="another-" + "s" * 40, public_url=url_for(sock))
    env = {
        **deployment.env,
        "REPLICATE_API_TOKEN": "r8-wrong",
        "MJ_PROXY_SECRET": "mj-wrong",
        "TASKHOOK_S3_BUCKET": "no-such-bucket-for-check",
        "TASKHOOK_PUBLIC_URL": url_for(sock),
    }
    async with (
        open_runtime(stranger) as rt,
        running_app(create_app(stranger, runtime=rt), sock=sock),
    ):
        code, out, _ = await taskhook(env, "check", "--json")
    checks = by_name(json.loads(out))
    assert code == 1
    failed = {name for name, c in checks.items() if c["status"] == "fail"}
    assert failed == {
        "replicate credentials",
        "replicate webhook secret",  # fetched with the same token
        "midjourney credentials",
        "storage",
        "public url",
    }
    assert "refused our token (401)" in checks["replicate credentials"]["detail"]
    assert "not as this deployment" in checks["public url"]["detail"]
    assert "no-such-bucket-for-check" in checks["storage"]["detail"]
    assert "404" in checks["storage"]["detail"]


async def test_a_schema_behind_fails_the_database_check(
    deployment: Deployment, db_url: str
) -> None:
    conn = await asyncpg.connect(db_url)
    try:
        await conn.execute("DELETE FROM schema_migrations WHERE version = 9")
    finally:
        await conn.close()
    code, out, _ = await taskhook(deployment.env, "check", "--json")
    database = by_name(json.loads(out))["database"]
    assert code == 1 and database["status"] == "fail"
    assert "0009" in database["detail"] and "taskhook migrate" in database["detail"]


async def test_production_refuses_a_public_url_that_is_not_https(deployment: Deployment) -> None:
    env = {**deployment.env, "TASKHOOK_ENV": "production"}
    code, out, err = await taskhook(env, "check")
    assert code == 2 and out == ""
    assert err.strip().splitlines() == [err.strip()]  # one line, no traceback
    assert "TASKHOOK_PUBLIC_URL must be the https://" in err
    # https, but nothing of ours answers there: the self-call fails, the rest still runs.
    env["TASKHOOK_PUBLIC_URL"] = "https://127.0.0.1:9"
    code, out, _ = await taskhook(env, "check", "--json")
    checks = by_name(json.loads(out))
    assert code == 1 and checks["public url"]["status"] == "fail"
    assert checks["database"]["status"] == "pass"
