"""Make SIGTERM and SIGHUP end the process the way Ctrl-C does, so exit handlers run.

Python dies on the spot on SIGTERM (``kill``, ``docker stop``, systemd) and SIGHUP (terminal
closed), skipping ``atexit``. The embedded servers would still stop (their supervisor notices the
last user is gone, see ``_lease.py``), but without waiting for it and without any other cleanup
the program registered. Raising SystemExit instead unwinds ``finally`` blocks and runs atexit.
"""

from __future__ import annotations

import signal
from collections.abc import Iterable
from types import FrameType
from typing import NoReturn

DEFAULT_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


def _exit(signum: int, _frame: FrameType | None) -> NoReturn:
    raise SystemExit(128 + signum)


def install_signal_handlers(signals: Iterable[signal.Signals] = DEFAULT_SIGNALS) -> None:
    """Turn ``signals`` into SystemExit(128 + signum). Call from the main thread.

    Only signals still at their default disposition are changed: a handler something else
    installed (uvicorn installs its own while it serves) is left alone.
    """
    for signum in signals:
        if signal.getsignal(signum) in (signal.SIG_DFL, None):
            signal.signal(signum, _exit)
