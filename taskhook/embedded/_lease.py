"""Share one embedded server among all taskhook processes on a data dir; stop it with the last.

``taskhook serve`` and ``taskhook worker`` in two terminals must not start two servers on the same
files, and the server must not vanish while one of them still runs. So each server is run by a
small supervisor process (``_supervisor.py``) and every process that uses it holds a *lease*:

* ``start.lock`` (exclusive) serialises starting, joining and leaving, so two processes never
  start two servers and a leaving process can wait for the server to really be gone.
* ``users.lock`` (shared, one per lease) is what keeps the server alive. The supervisor waits for
  an exclusive lock on it, which the kernel grants when the last lease is gone, even if its
  process was SIGKILLed. So no process ever has to be trusted to clean up.
* ``users.json`` lists the leases (pid and start time) only so that a leaving process can tell
  whether it was the last one, and then wait until the server has stopped, which makes "stop"
  synchronous for a single user (tests, ``taskhook demo``) instead of fire-and-forget.

Everything here is Linux-flavoured (flock, /proc), as is the rest of taskhook's embedded mode.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from taskhook.embedded.errors import EmbeddedServiceError

T = TypeVar("T")

_SUPERVISOR = Path(__file__).with_name("_supervisor.py")
_POLL = 0.02
LOG_TAIL_LINES = 40


@dataclass(frozen=True)
class LaunchSpec:
    """How to run one server under the supervisor."""

    name: str
    argv: list[str]
    env: dict[str, str]
    cwd: Path
    log_path: Path
    stop_signal: int = signal.SIGTERM
    stop_timeout: float = 10.0
    run_as: tuple[int, int] | None = None
    remove_after: list[str] = field(default_factory=list)  # sockets, or dirs if left empty


class Supervised:
    """A supervisor this process just started, as seen while waiting for its server to be ready."""

    def __init__(self, spec: LaunchSpec, control: Path) -> None:
        self.spec = spec
        self.control = control

    def check(self) -> None:
        """Raise, with the log's tail, if the supervisor (and so the server) has already exited."""
        if not supervisor_running(self.control):
            raise self.fail(f"embedded {self.spec.name} exited during start")

    def fail(self, message: str) -> EmbeddedServiceError:
        return EmbeddedServiceError(f"{message}; {log_tail(self.spec.log_path)}")


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last lines of a server log, formatted to end an error message."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"no log at {path}"
    tail = "\n".join(text.splitlines()[-lines:])
    return f"last lines of {path}:\n{tail}"


def starttime(pid: int) -> int | None:
    """The kernel's start time of ``pid``, or None if it is gone; pid plus this names a process.

    A zombie counts as gone, since where PID 1 does not reap orphans (some container inits) it
    would otherwise look alive forever; but only once all its threads are: a Go server's main
    thread can be a zombie while its other threads still shut down and hold the ports.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] in ("Z", "X", "x") and len(os.listdir(f"/proc/{pid}/task")) <= 1:
            return None
    except OSError:
        return None
    return int(fields[19])


def _alive(pid: int, start: int | None) -> bool:
    now = starttime(pid)
    return now is not None and (start is None or now == start)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def write_json(path: Path, value: Any, mode: int = 0o600) -> None:
    """Atomically, and created with ``mode`` from the start (it may hold secrets)."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        json.dump(value, f, indent=2)
    os.replace(tmp, path)


def _open_lock(path: Path) -> int:
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)


def _flock(fd: int, operation: int, deadline: float, what: str) -> None:
    """flock with a deadline (flock itself has none): try, and retry until the deadline."""
    while True:
        try:
            fcntl.flock(fd, operation | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise EmbeddedServiceError(f"timed out waiting for {what}") from None
            time.sleep(_POLL)


@contextlib.contextmanager
def _locked(path: Path, deadline: float, what: str) -> Iterator[None]:
    fd = _open_lock(path)
    try:
        _flock(fd, fcntl.LOCK_EX, deadline, what)
        yield
    finally:
        os.close(fd)


def supervisor_running(control: Path) -> bool:
    """True while a supervisor holds ``supervisor.lock``, i.e. its server has not yet exited."""
    fd = _open_lock(control / "supervisor.lock")
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def running_child(control: Path) -> int | None:
    """The pid of the server process, if its supervisor reported it and it still runs."""
    info = _read_json(control / "child.json")
    if not isinstance(info, dict):
        return None
    pid, start = int(info["pid"]), info.get("starttime")
    return pid if _alive(pid, start) else None


def _gone(control: Path, pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while running_child(control) == pid:
        if time.monotonic() >= deadline:
            return False
        time.sleep(_POLL)
    return True


def _clear_stale_child(control: Path, timeout: float = 15.0) -> None:
    """A previous supervisor was killed: wait for its server (signalled by PDEATHSIG) to exit.

    Starting a second server on the same files while the old one is still flushing them would
    be the one thing worse than waiting a moment; a server that ignores the signal is killed.
    """
    if not (control / "child.json").exists():
        return  # the last supervisor cleaned up after itself
    pid = running_child(control)
    if pid is not None and not _gone(control, pid, timeout):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        if not _gone(control, pid, 5.0):
            raise EmbeddedServiceError(f"a previous embedded server (pid {pid}) will not exit")
    previous = _read_json(control / "supervisor.json")
    for leftover in previous.get("remove_after", []) if isinstance(previous, dict) else []:
        path = Path(leftover)  # what the killed supervisor would have removed
        if path.is_socket():
            path.unlink(missing_ok=True)
        elif path.is_dir() and not path.is_symlink():
            with contextlib.suppress(OSError):
                path.rmdir()
    (control / "child.json").unlink(missing_ok=True)


def _me() -> list[int]:
    pid = os.getpid()
    return [pid, starttime(pid) or 0]


def _users_update(control: Path, add: bool) -> list[list[int]]:
    """Add or remove one lease of this process (under start.lock), prune dead processes' leases,
    and return the leases that remain (other leases of this process included)."""
    path = control / "users.json"
    entries = _read_json(path)
    users: list[list[int]] = [
        [int(p), int(s)]
        for p, s in (entries if isinstance(entries, list) else [])
        if _alive(int(p), int(s) or None)
    ]
    me = _me()
    if add:
        users.append(me)
    elif me in users:
        users.remove(me)
    write_json(path, users)
    return users


def _spawn(control: Path, spec: LaunchSpec, deadline: float) -> Supervised:
    """Start the supervisor, which daemonizes once it holds ``supervisor.lock``; wait for that."""
    write_json(
        control / "supervisor.json",
        {
            "name": spec.name,
            "argv": spec.argv,
            "cwd": str(spec.cwd),
            "stop_signal": int(spec.stop_signal),
            "stop_timeout": spec.stop_timeout,
            "run_as": list(spec.run_as) if spec.run_as else None,
            "remove_after": spec.remove_after,
        },
    )
    if spec.log_path.exists() and spec.log_path.stat().st_size > 0:
        os.replace(spec.log_path, spec.log_path.with_name(spec.log_path.name + ".1"))
    fd = os.open(spec.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        process = subprocess.Popen(  # noqa: S603 - our own interpreter and script
            [sys.executable, "-I", "-S", str(_SUPERVISOR), str(control)],
            cwd=control,
            env=spec.env,
            stdin=subprocess.DEVNULL,
            stdout=fd,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C in this terminal must not reach a shared server
        )
    finally:
        os.close(fd)
    try:
        code = process.wait(max(deadline - time.monotonic(), 1.0))
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        code = None
    if code != 0:
        raise EmbeddedServiceError(
            f"could not start the supervisor of embedded {spec.name} (code {code}); "
            + log_tail(spec.log_path)
        )
    return Supervised(spec, control)


def _stop_spawned(supervised: Supervised) -> None:
    """Undo a start that failed half-way: stop the supervisor we started and wait for it."""
    control = supervised.control
    info = _read_json(control / "supervisor.pid")
    if isinstance(info, dict) and _alive(int(info["pid"]), info.get("starttime")):
        pid = int(info["pid"])
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + supervised.spec.stop_timeout + 5
        while supervisor_running(control) and time.monotonic() < deadline:
            time.sleep(_POLL)
        if supervisor_running(control):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    _clear_stale_child(control)


_LEASES: weakref.WeakSet[Lease] = weakref.WeakSet()


def _forget_leases_in_forked_child() -> None:
    """A forked child inherits the parent's lock descriptors but is not a user: drop them, or the
    server would live as long as the child and the parent would wait for it on exit."""
    for lease in list(_LEASES):
        lease._forget()


os.register_at_fork(after_in_child=_forget_leases_in_forked_child)


class Lease:
    """This process's hold on a shared server. ``release`` is idempotent and runs at exit."""

    def __init__(self, control: Path, users_fd: int, name: str, stop_timeout: float) -> None:
        self.control = control
        self.name = name
        self._users_fd = users_fd
        self._stop_timeout = stop_timeout
        self._pid = os.getpid()
        self._released = False
        self._mutex = threading.Lock()
        atexit.register(self.release)
        _LEASES.add(self)

    @property
    def released(self) -> bool:
        return self._released

    def _forget(self) -> None:
        self._released = True
        self._mutex = threading.Lock()  # the parent's may have been held at fork time
        if self._users_fd >= 0:
            os.close(self._users_fd)
            self._users_fd = -1

    def release(self) -> None:
        """Let go; if no other process uses the server, wait until it has stopped."""
        with self._mutex:
            if self._released or os.getpid() != self._pid:  # a forked child owns nothing
                return
            self._released = True
        atexit.unregister(self.release)
        wait = self._stop_timeout + 5
        try:
            with _locked(self.control / "start.lock", time.monotonic() + wait, "start.lock"):
                others = _users_update(self.control, add=False)
                os.close(self._users_fd)
                self._users_fd = -1
                if not others:
                    deadline = time.monotonic() + wait
                    while supervisor_running(self.control) and time.monotonic() < deadline:
                        time.sleep(_POLL)
                    if not supervisor_running(self.control):
                        _clear_stale_child(self.control)  # tidy up after a killed supervisor
        except EmbeddedServiceError:
            pass  # another process is busy starting; our shared lock still goes below
        finally:
            if self._users_fd >= 0:
                os.close(self._users_fd)
                self._users_fd = -1


def lease_service(
    control: Path,
    *,
    name: str,
    timeout: float,
    launch: Callable[[], LaunchSpec],
    wait_ready: Callable[[Supervised, float], None],
    connect: Callable[[], T],
    stop_timeout: float = 10.0,
) -> tuple[Lease, T]:
    """Join the running server in ``control``, or start it, and return a lease plus ``connect()``.

    ``launch`` (only when no server runs) prepares files and says how to run the server;
    ``wait_ready(supervised, deadline)`` blocks until it serves; ``connect`` (always, under the
    start lock so it may create databases or buckets without racing) returns what callers need.
    """
    control.mkdir(mode=0o700, parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout
    with _locked(control / "start.lock", deadline, f"another process starting embedded {name}"):
        users_fd = _open_lock(control / "users.lock")
        try:
            _flock(users_fd, fcntl.LOCK_SH, deadline, f"the previous embedded {name} to stop")
            if not supervisor_running(control):
                _clear_stale_child(control)
                supervised = _spawn(control, launch(), deadline)
                try:
                    wait_ready(supervised, deadline)
                except BaseException:
                    _stop_spawned(supervised)
                    raise
            info = connect()
            _users_update(control, add=True)
        except BaseException:
            os.close(users_fd)
            raise
    return Lease(control, users_fd, name, stop_timeout), info


def poll_until(
    supervised: Supervised, deadline: float, probe: Callable[[], bool], interval: float = 0.05
) -> None:
    """Call ``probe`` until it returns True, failing early if the server exits, or at deadline."""
    while True:
        supervised.check()
        if probe():
            return
        if time.monotonic() >= deadline:
            raise supervised.fail(f"embedded {supervised.spec.name} did not become ready in time")
        time.sleep(interval)
