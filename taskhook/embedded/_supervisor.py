"""Keeps one embedded server process alive exactly as long as some taskhook process uses it.

Run as a script, by path, with the standard library only (``python -I -S _supervisor.py
CONTROL_DIR``), so it starts in milliseconds and does not depend on how taskhook was installed.
The process that starts a server spawns this supervisor in a new session (so a Ctrl-C meant for
one terminal does not take the server away from another one), and the supervisor runs the server
as its child. Lifetime is decided by locks in CONTROL_DIR (see ``_lease.py``):

* ``supervisor.lock``: held exclusively for the supervisor's whole life; others probe it to tell
  whether a server is running. It is released only after the server process has exited.
* ``users.lock``: every taskhook process using the server holds a shared lock on it. The
  supervisor waits for an exclusive lock, which the kernel grants once the last user has let go,
  however it went: a normal exit, SIGINT, SIGTERM, or SIGKILL (the kernel drops the locks of a
  dead process). Then it stops the server.
* The server child gets ``PR_SET_PDEATHSIG``, so if the supervisor itself is SIGKILLed the server
  is signalled too instead of lingering as an orphan.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

_PR_SET_PDEATHSIG = 1


def _log(message: str) -> None:
    """One timestamped line in the server log (our stdout is that log)."""
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    print(f"{stamp} [taskhook supervisor {os.getpid()}] {message}", flush=True)


def _starttime(pid: int) -> int | None:
    """The kernel's start time of ``pid`` (field 22 of /proc/PID/stat), to survive pid reuse."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def _write_json(path: Path, value: Any) -> None:
    """Atomically, so a reader never sees half a file."""
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(value))
    os.replace(tmp, path)


def _preexec(parent: int, death_signal: int, run_as: list[int] | None) -> Any:
    """Runs in the forked child before exec: drop privileges, then ask for a parent-death signal.

    The order matters: changing credentials clears PDEATHSIG, so the prctl comes last.
    """
    libc = ctypes.CDLL(None, use_errno=True)

    def setup() -> None:
        if run_as is not None:
            uid, gid = run_as
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
        libc.prctl(_PR_SET_PDEATHSIG, death_signal, 0, 0, 0)
        if os.getppid() != parent:  # the supervisor died before the prctl took effect
            os.kill(os.getpid(), death_signal)

    return setup


def main(argv: list[str]) -> int:
    control = Path(argv[1])
    spec = json.loads((control / "supervisor.json").read_text())
    lock_fd = os.open(control / "supervisor.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        _log("another supervisor already runs this server; exiting")
        return 3
    # Daemonize: the starting process waits for this first process to exit, which proves the
    # lock is held; the forked child keeps the lock (same open file) and is nobody's zombie.
    daemon = os.fork()
    if daemon > 0:
        _write_json(control / "supervisor.pid", {"pid": daemon, "starttime": _starttime(daemon)})
        os._exit(0)

    stop_signal = int(spec["stop_signal"])
    stop_timeout = float(spec["stop_timeout"])
    child = subprocess.Popen(  # noqa: S603 - argv comes from our own spec file
        spec["argv"],
        cwd=spec["cwd"],
        stdin=subprocess.DEVNULL,
        preexec_fn=_preexec(os.getpid(), stop_signal, spec.get("run_as")),
    )
    _write_json(
        control / "child.json",
        {"supervisor": os.getpid(), "pid": child.pid, "starttime": _starttime(child.pid)},
    )
    _log(f"started {spec['name']} (pid {child.pid})")

    stopping = threading.Lock()

    def request_stop(reason: str) -> None:
        """Idempotent: signal the server once, and escalate to SIGKILL if it hangs."""
        if not stopping.acquire(blocking=False):
            return
        _log(f"stopping {spec['name']}: {reason}")
        child.send_signal(stop_signal)
        killer = threading.Timer(stop_timeout, child.kill)
        killer.daemon = True
        killer.start()

    def on_signal(signum: int, _frame: object) -> None:
        request_stop(signal.Signals(signum).name)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, on_signal)

    def watch_users() -> None:
        users_fd = os.open(control / "users.lock", os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(users_fd, fcntl.LOCK_EX)  # granted once no taskhook process uses the server
        request_stop("no taskhook process uses it any more")
        # users_fd stays locked until this process exits, so nobody joins a dying server.

    threading.Thread(target=watch_users, daemon=True).start()

    code = child.wait()
    if stopping.acquire(blocking=False):
        _log(f"{spec['name']} exited unexpectedly with code {code}")
        result = 1
    else:
        _log(f"{spec['name']} stopped (code {code})")
        result = 0
    (control / "child.json").unlink(missing_ok=True)
    for leftover in spec.get("remove_after", []):
        path = Path(leftover)
        if path.is_socket():
            path.unlink(missing_ok=True)
        elif path.is_dir() and not path.is_symlink():
            with contextlib.suppress(OSError):
                path.rmdir()  # only if the server left it empty
    os.close(lock_fd)  # only now may the next process start a fresh server
    return result


if __name__ == "__main__":
    sys.exit(main(sys.argv))
