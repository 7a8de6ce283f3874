"""One deployment on many hosts (issue 15.2): two web processes, a worker and a reconciler,
each started from a directory of its own with TASKHOOK_ENV=production, sharing only what
production shares: one PostgreSQL, one S3-compatible store reached by endpoint, and the same
configuration. Vendors reach the deployment at its public https URL through a "load balancer"
(the simulator's webhook client, which sends that URL's requests on to one of the web
processes), so a callback minted by one host is verified by another.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from simulator import SimulatorConfig, create_app
from taskhook.serving import running_app
from tests.acceptance.stack import TERMINAL, wait_for
from tests.conftest import S3Config
from tests.ports import free_port

PUBLIC = "https://taskhook.example"
SECRET = "multi-host-secret-" + "s" * 32
ADMIN_KEY = "multi-host-admin-" + "a" * 32
SIM = SimulatorConfig(api_token="r8-multi", job_seconds=0.3, seed=15)
WAIT = 90.0


class LoadBalancer(httpx.AsyncBaseTransport):
    """What stands between vendors and the web processes: the public URL's requests go to
    `target` (a web process's address), or fail to connect while `down`."""

    def __init__(self) -> None:
        self.target = ""
        self.down = False
        self.forwarded = 0
        self._inner = httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        assert str(request.url).startswith(PUBLIC), request.url
        if self.down:
            raise httpx.ConnectError("the load balancer is down", request=request)
        self.forwarded += 1
        request.url = httpx.URL(self.target + str(request.url)[len(PUBLIC) :])
        request.headers["host"] = request.url.netloc.decode()
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


@dataclass
class Host:
    name: str
    proc: subprocess.Popen[str]
    cwd: Path
    url: str = ""
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log = self.cwd / "stderr.log"


def production_env(db_url: str, s3: S3Config, sim_url: str) -> dict[str, str]:
    keep = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("TASKHOOK_", "REPLICATE_", "FAL_", "MJ_", "AWS_", "DATABASE_URL"))
    }
    return {
        **keep,
        "PYTHONUNBUFFERED": "1",
        "TASKHOOK_ENV": "production",
        "DATABASE_URL": db_url,
        "TASKHOOK_SECRET": SECRET,
        "TASKHOOK_ADMIN_KEY": ADMIN_KEY,
        "TASKHOOK_PUBLIC_URL": PUBLIC,
        "TASKHOOK_S3_ENDPOINT_URL": s3.endpoint_url,
        "TASKHOOK_S3_BUCKET": s3.bucket,
        "AWS_ACCESS_KEY_ID": s3.access_key_id or "",
        "AWS_SECRET_ACCESS_KEY": s3.secret_access_key or "",
        "AWS_REGION": s3.region,
        "REPLICATE_API_TOKEN": "r8-multi",
        "REPLICATE_API_BASE": f"{sim_url}/v1",  # its webhook secret is fetched, by each host
        "TASKHOOK_ALLOW_PRIVATE_URLS": "1",  # the simulator serves results on 127.0.0.1
        "TASKHOOK_POLL_AFTER": "1",
        "TASKHOOK_RATE_LIMIT": "0",
    }


@contextmanager
def hosts(env: dict[str, str], root: Path) -> Iterator[dict[str, Host]]:
    """web-a, web-b, worker and reconciler, each in its own directory, as separate machines
    would run them (no TASKHOOK_DATA_DIR: production needs none)."""
    commands = {
        "web-a": ["serve", "--port", str(free_port())],
        "web-b": ["serve", "--port", str(free_port())],
        "worker": ["worker"],
        "reconciler": ["reconcile", "--interval", "0.2"],
    }
    started: dict[str, Host] = {}
    try:
        for name, args in commands.items():
            cwd = root / name
            cwd.mkdir()
            stderr = (cwd / "stderr.log").open("w")
            proc = subprocess.Popen(  # noqa: S603 - our own CLI
                [sys.executable, "-m", "taskhook.cli", *args],
                env=env,
                cwd=cwd,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                text=True,
            )
            host = Host(name, proc, cwd)
            if args[0] == "serve":
                host.url = f"http://127.0.0.1:{args[-1]}"
            started[name] = host
        yield started
    finally:
        for host in started.values():
            host.proc.terminate()
        for host in started.values():
            try:
                host.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                host.proc.kill()
                host.proc.wait()


def events(host: Host) -> list[dict[str, Any]]:
    return [json.loads(x) for x in host.log.read_text().splitlines() if x.startswith("{")]


async def until_serving(host: Host) -> None:
    async def answers() -> bool:
        if host.proc.poll() is not None:
            raise AssertionError(f"{host.name} exited:\n{host.log.read_text()}")
        if not host.url:
            return any(e["event"] == "taskhook_started" for e in events(host))
        try:
            async with httpx.AsyncClient(timeout=2) as c:
                return bool((await c.get(f"{host.url}/readyz")).json().get("status") == "ready")
        except (httpx.HTTPError, ValueError):
            return False

    await wait_for(answers, timeout=WAIT, what=f"{host.name} to start")


@pytest.fixture
async def balancer() -> AsyncIterator[LoadBalancer]:
    lb = LoadBalancer()
    yield lb
    await lb.aclose()


async def test_one_deployment_on_four_hosts(
    db_url: str, s3: S3Config, tmp_path: Path, balancer: LoadBalancer
) -> None:
    webhooks = httpx.AsyncClient(transport=balancer, timeout=10)
    async with running_app(create_app(SIM, webhook_client=webhooks)) as sim:
        env = production_env(db_url, s3, sim.url)
        with hosts(env, tmp_path) as running:
            await asyncio.gather(*(until_serving(h) for h in running.values()))
            a, b = running["web-a"], running["web-b"]
            balancer.target = b.url  # every vendor callback lands on B
            await drive(env, a, b, balancer, db_url, tmp_path)
    await webhooks.aclose()
    for name in ("web-a", "web-b", "worker", "reconciler"):
        assert not (tmp_path / name / ".taskhook").exists()  # production: nothing written


async def drive(
    env: dict[str, str], a: Host, b: Host, balancer: LoadBalancer, db_url: str, root: Path
) -> None:
    operator = root / "operator"
    operator.mkdir()
    command = ["users", "create", "ops@example.com", "--credits", "20"]
    made = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "taskhook.cli", *command],
        env=env,
        cwd=operator,
        capture_output=True,
        text=True,
        check=True,
    )
    key = json.loads(made.stdout)["api_key"]
    auth = {"Authorization": f"Bearer {key}"}
    async with (
        httpx.AsyncClient(base_url=a.url, headers=auth, timeout=30) as on_a,
        httpx.AsyncClient(base_url=b.url, headers=auth, timeout=30) as on_b,
    ):
        # Submitted on A: A mints the callback URLs, B verifies every callback.
        submitted = []
        for n in range(4):
            r = await on_a.post(
                "/v1/tasks",
                json={"model": "black-forest-labs/flux-schnell", "input": {"prompt": f"fox {n}"}},
            )
            assert r.status_code == 202, r.text
            submitted.append(r.json()["id"])
        done = await all_terminal(on_b, submitted)
        assert {t["status"] for t in done.values()} == {"completed"}, done
        assert balancer.forwarded >= 4

        # Results: stored by the worker host, presigned by B, read back from S3.
        async with httpx.AsyncClient(timeout=30) as anyone:
            for task in done.values():
                result = task["result"]
                body = (await anyone.get(result["url"])).content
                assert hashlib.sha256(body).hexdigest() == result["sha256"]

        # A cursor from A is one B accepts, and the pages add up.
        first = (await on_a.get("/v1/tasks", params={"limit": 2})).json()
        second = await on_b.get("/v1/tasks", params={"limit": 2, "cursor": first["next_cursor"]})
        assert second.status_code == 200, second.text
        paged = [t["id"] for t in first["data"] + second.json()["data"]]
        assert sorted(paged) == sorted(submitted)

        # While no callback gets through, the reconciler host finds out from the vendor.
        balancer.down = True
        r = await on_b.post(
            "/v1/tasks",
            json={"model": "black-forest-labs/flux-schnell", "input": {"prompt": "quiet"}},
        )
        quiet = r.json()["id"]
        done = await all_terminal(on_a, [quiet])
        assert done[quiet]["status"] == "completed"
        conn = await asyncpg.connect(db_url)
        try:
            causes = await conn.fetch(
                "SELECT DISTINCT e.cause FROM task_events AS e JOIN tasks AS t ON t.id = e.task_id"
                " WHERE t.id = $1::uuid",
                quiet.removeprefix("tsk_"),
            )
        finally:
            await conn.close()
        assert "reconciler" in {c["cause"] for c in causes}

        # The admin key works on both, and both see the same books.
        admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
        views = [(await c.get("/admin/api/overview", headers=admin)).json() for c in (on_a, on_b)]
        assert views[0]["counts"] == views[1]["counts"]
        assert views[0]["counts"]["completed"] == 5


async def all_terminal(client: httpx.AsyncClient, ids: list[str]) -> dict[str, dict[str, Any]]:
    latest: dict[str, dict[str, Any]] = {}

    async def check() -> bool:
        for task_id in ids:
            if latest.get(task_id, {}).get("status") not in TERMINAL:
                r = await client.get(f"/v1/tasks/{task_id}")
                assert r.status_code == 200, r.text
                latest[task_id] = r.json()
        return all(latest[i]["status"] in TERMINAL for i in ids)

    deadline = time.monotonic() + WAIT
    try:
        await wait_for(check, timeout=deadline - time.monotonic(), what="the tasks to finish")
    except AssertionError:
        raise AssertionError(f"still open: {latest}") from None
    return latest
