"""Two test runs on one machine must not break each other (issue 14, item 15).

Every pytest run on a machine shares /tmp/pytest-of-<user>: a new run rotates the numbered
folders in it and takes away the folder permissions the embedded PostgreSQL (run as another
user when we are root) needs. The suite keeps its servers in a folder only it knows.
"""

from __future__ import annotations

import asyncio
import getpass
import subprocess
import sys
import tempfile
from pathlib import Path

import asyncpg
import pytest


def _shared_root() -> Path:
    return Path(tempfile.gettempdir()).resolve() / f"pytest-of-{getpass.getuser()}"


def test_other_runs_leave_this_runs_servers_alone(
    tmp_path_factory: pytest.TempPathFactory, server_dsn: str, tmp_path: Path
) -> None:
    base = tmp_path_factory.getbasetemp().resolve()
    assert not base.is_relative_to(_shared_root()), (
        f"{base} is inside pytest's shared folder, which other runs rotate"
    )
    (tmp_path / "test_other.py").write_text("def test_other(tmp_path):\n    assert tmp_path\n")
    for _ in range(4):  # more than pytest keeps (3): the oldest numbered folder goes
        subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_other.py"],
            cwd=tmp_path,
            check=True,
            capture_output=True,
            timeout=120,
        )
    assert base.is_dir()
    assert asyncio.run(_select_one(server_dsn)) == 1


async def _select_one(dsn: str) -> object:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval("SELECT 1")
    finally:
        await conn.close()
