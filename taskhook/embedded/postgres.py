"""Embedded PostgreSQL: what taskhook runs on when no ``DATABASE_URL`` is given.

The server binaries come from the ``pgserver`` wheel (PostgreSQL 16); its start/stop machinery is
not used, because taskhook needs the same lifetime rules for PostgreSQL and S3 (shared by all
processes on a data dir, stopped with the last one even if that one is SIGKILLed), see
``_lease.py``. Layout under the data dir:

* ``postgres/``: the cluster (PGDATA), created by initdb on first start and kept between runs;
* ``postgres-control/``: locks, the supervisor's state and ``postgres.log``.

The server listens on a unix socket only (no TCP port to collide with the machine's own
PostgreSQL), normally inside PGDATA; when that path would exceed the kernel's 107-byte limit for
socket paths, in a short private directory under /tmp instead.

PostgreSQL refuses to run as root. When taskhook runs as root, the server runs as the system user
``pgserver`` (created if missing, the same user the pgserver package uses), and the directories
above the data dir get "others may traverse" (o+x) so that user can reach PGDATA.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import pwd
import re
import signal
import stat
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from taskhook.embedded._lease import (
    LaunchSpec,
    Lease,
    Supervised,
    lease_service,
    poll_until,
    running_child,
)
from taskhook.embedded.errors import EmbeddedServiceError

RUN_AS_USER = "pgserver"
SUPERUSER = "postgres"
PORT = 5432  # only names the socket file (.s.PGSQL.5432); no TCP listener
_SOCKET_NAME = f".s.PGSQL.{PORT}"
_MAX_SOCKET_PATH = 107  # sizeof(sockaddr_un.sun_path) - 1 on Linux
_DATABASE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


@dataclass(frozen=True)
class EmbeddedPostgres:
    """A running embedded PostgreSQL, shared with other taskhook processes on the same data dir.

    ``dsn`` is a unix-socket URL (``postgresql://postgres@/taskhook?host=/dir&port=5432``) that
    asyncpg and libpq both accept. ``stop()`` gives up this process's use; the server stops when
    no process uses it any more (and at the latest when this process exits).
    """

    dsn: str
    pgdata: Path
    log_path: Path
    _lease: Lease = field(repr=False, compare=False)

    def stop(self) -> None:
        self._lease.release()


def bin_dir() -> Path:
    """The PostgreSQL binaries shipped in the pgserver wheel (found without importing it)."""
    spec = importlib.util.find_spec("pgserver")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedServiceError(
            "embedded PostgreSQL needs the 'pgserver' package (pip install pgserver), "
            "or set DATABASE_URL"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    if not (path / "postgres").exists():
        raise EmbeddedServiceError(f"no PostgreSQL binaries in {path}; reinstall pgserver")
    return path


def _clean_env() -> dict[str, str]:
    """Our environment minus PG* variables, which would otherwise redirect psql or the server."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PG")}


def _run_as(pgdata: Path) -> tuple[int, int] | None:
    """Who runs the server: us, unless we are root; then the cluster's owner, or ``pgserver``."""
    if os.geteuid() != 0:
        return None
    if (pgdata / "PG_VERSION").exists():
        st = pgdata.stat()
        if st.st_uid != 0:
            return st.st_uid, st.st_gid
    try:
        entry = pwd.getpwnam(RUN_AS_USER)
    except KeyError:
        subprocess.run(  # noqa: S603 - fixed arguments
            ["useradd", "--system", "--user-group", "--no-create-home", RUN_AS_USER],  # noqa: S607
            capture_output=True,
            check=False,
        )
        try:
            entry = pwd.getpwnam(RUN_AS_USER)
        except KeyError:
            raise EmbeddedServiceError(
                f"PostgreSQL cannot run as root and creating the system user {RUN_AS_USER!r} "
                "failed; create it (useradd --system pgserver) or run taskhook as a normal user"
            ) from None
    return entry.pw_uid, entry.pw_gid


def _let_others_traverse(path: Path) -> None:
    """Add o+x to ``path`` and its ancestors so another user can reach what lies below."""
    for directory in (path, *path.parents):
        mode = directory.stat().st_mode
        if not mode & stat.S_IXOTH:
            directory.chmod(stat.S_IMODE(mode) | stat.S_IXOTH)


def _let_others_run(binaries: Path) -> None:
    """Make the PostgreSQL install readable and runnable by the server's user, if it is not.

    A wheel unpacked under a strict umask leaves it usable by root only (pgserver has the same
    fix); the normal case is a single stat.
    """
    _let_others_traverse(binaries)
    if (binaries / "postgres").stat().st_mode & stat.S_IXOTH:
        return
    for root, dirs, files in os.walk(binaries.parent):
        for name in dirs:
            path = Path(root) / name
            path.chmod(stat.S_IMODE(path.stat().st_mode) | 0o005)
        for name in files:
            path = Path(root) / name
            mode = stat.S_IMODE(path.lstat().st_mode)
            if not path.is_symlink():
                path.chmod(mode | 0o004 | (0o001 if mode & stat.S_IXUSR else 0))


def _prepare_pgdata(pgdata: Path, run_as: tuple[int, int] | None, binaries: Path) -> None:
    """Create PGDATA with initdb on first start; on later starts only check ownership."""
    pgdata.mkdir(mode=0o700, exist_ok=True)
    if run_as is not None:
        uid, gid = run_as
        _let_others_traverse(pgdata.parent)
        _let_others_run(binaries)
        if pgdata.stat().st_uid != uid:
            for root, dirs, files in os.walk(pgdata):
                for name in [*dirs, *files]:
                    os.lchown(Path(root) / name, uid, gid)
            os.chown(pgdata, uid, gid)
    if (pgdata / "PG_VERSION").exists():
        return
    if any(pgdata.iterdir()):
        raise EmbeddedServiceError(
            f"{pgdata} is not empty but holds no PostgreSQL cluster (no PG_VERSION); "
            "move it away or set DATABASE_URL"
        )
    result = subprocess.run(  # noqa: S603 - our binaries, fixed arguments
        [
            str(binaries / "initdb"),
            "-D",
            str(pgdata),
            "-U",
            SUPERUSER,
            "--auth=trust",  # only reachable through the private socket directory
            "--no-locale",
            "--encoding=UTF8",
        ],
        cwd=pgdata,
        env=_clean_env(),
        capture_output=True,
        text=True,
        check=False,
        user=run_as[0] if run_as else None,
        group=run_as[1] if run_as else None,
        extra_groups=[] if run_as else None,
    )
    if result.returncode != 0:
        output = result.stdout + result.stderr
        code = result.returncode
        raise EmbeddedServiceError(f"initdb failed for {pgdata} (code {code}):\n{output}")


def _socket_dir(pgdata: Path, run_as: tuple[int, int] | None) -> Path:
    """PGDATA if the socket path fits the kernel's limit, else a short private dir under /tmp."""
    if len(os.fsencode(pgdata / _SOCKET_NAME)) <= _MAX_SOCKET_PATH:
        return pgdata
    digest = hashlib.sha256(os.fsencode(pgdata)).hexdigest()[:16]
    for base in (Path(tempfile.gettempdir()), Path("/tmp")):  # noqa: S108 - private, checked below
        short = base / f"taskhook-pg-{digest}"
        if len(os.fsencode(short / _SOCKET_NAME)) <= _MAX_SOCKET_PATH:
            break
    with contextlib.suppress(FileExistsError):
        short.mkdir(mode=0o700)
    st = os.lstat(short)
    owner = run_as[0] if run_as else os.geteuid()
    if not stat.S_ISDIR(st.st_mode) or st.st_uid not in (owner, os.geteuid()):
        raise EmbeddedServiceError(f"{short} exists and is not ours; remove it")
    if run_as is not None and st.st_uid != owner:
        os.chown(short, *run_as)
    short.chmod(0o700)
    return short


def _postmaster(pgdata: Path) -> list[str]:
    """The lines of postmaster.pid (pid, dir, start, port, socket dir, host, shmem, status)."""
    try:
        return (pgdata / "postmaster.pid").read_text().splitlines()
    except OSError:
        return []


def _ready(pgdata: Path, control: Path) -> bool:
    """Ready when postmaster.pid is our server's (not a stale file) and says so."""
    lines = _postmaster(pgdata)
    pid = running_child(control)
    return (
        pid is not None
        and len(lines) >= 8
        and lines[0].strip() == str(pid)
        and lines[7].strip() == "ready"
    )


def _psql(binaries: Path, socket_dir: Path, sql: str) -> str:
    result = subprocess.run(  # noqa: S603 - our binary; sql built from validated names only
        [
            str(binaries / "psql"),
            *("-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"),
            *("-h", str(socket_dir), "-p", str(PORT), "-U", SUPERUSER, "-d", "postgres"),
            *("-c", sql),
        ],
        env=_clean_env(),
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    if result.returncode != 0:
        raise EmbeddedServiceError(f"embedded PostgreSQL: {sql!r} failed: {result.stderr.strip()}")
    return result.stdout.strip()


def make_dsn(socket_dir: Path, database: str) -> str:
    """A unix-socket URL asyncpg and libpq both understand; the port names the socket file."""
    host = quote(str(socket_dir), safe="/")
    return f"postgresql://{SUPERUSER}@/{database}?host={host}&port={PORT}"


def start_postgres(
    data_dir: Path, *, database: str = "taskhook", timeout: float = 60
) -> EmbeddedPostgres:
    """Start (or join) the embedded PostgreSQL for ``data_dir`` and make sure ``database`` exists.

    Blocks until the server accepts connections: about a second on first start (initdb), less
    afterwards, near nothing when another taskhook process already runs it.
    """
    if not _DATABASE_NAME.fullmatch(database):
        raise ValueError(f"database name {database!r} must match {_DATABASE_NAME.pattern}")
    data_dir = Path(data_dir).expanduser().absolute()
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    pgdata = data_dir / "postgres"
    control = data_dir / "postgres-control"
    log_path = control / "postgres.log"
    binaries = bin_dir()

    def launch() -> LaunchSpec:
        run_as = _run_as(pgdata)
        _prepare_pgdata(pgdata, run_as, binaries)
        socket_dir = _socket_dir(pgdata, run_as)
        return LaunchSpec(
            name="PostgreSQL",
            argv=[
                str(binaries / "postgres"),
                *("-D", str(pgdata), "-k", str(socket_dir), "-h", "", "-p", str(PORT)),
            ],
            env=_clean_env(),
            cwd=pgdata,
            log_path=log_path,
            stop_signal=signal.SIGINT,  # "fast" shutdown: roll back sessions, checkpoint, exit
            stop_timeout=30,
            run_as=run_as,
            remove_after=[] if socket_dir == pgdata else [str(socket_dir)],
        )

    def wait_ready(supervised: Supervised, deadline: float) -> None:
        poll_until(supervised, deadline, lambda: _ready(pgdata, control), interval=0.02)

    def connect() -> str:
        lines = _postmaster(pgdata)
        if len(lines) < 5 or not lines[4].strip():
            raise EmbeddedServiceError(f"embedded PostgreSQL in {pgdata} reports no socket")
        socket_dir = Path(lines[4].strip())
        if _psql(binaries, socket_dir, f"SELECT 1 FROM pg_database WHERE datname = '{database}'"):
            return make_dsn(socket_dir, database)
        _psql(binaries, socket_dir, f'CREATE DATABASE "{database}"')
        return make_dsn(socket_dir, database)

    lease, dsn = lease_service(
        control,
        name="PostgreSQL",
        timeout=timeout,
        launch=launch,
        wait_ready=wait_ready,
        connect=connect,
        stop_timeout=30,
    )
    return EmbeddedPostgres(dsn=dsn, pgdata=pgdata, log_path=log_path, _lease=lease)
