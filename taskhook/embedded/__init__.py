"""Embedded PostgreSQL and S3 under the data dir: taskhook's defaults with nothing configured.

Both start in about a second, keep their data between runs, work when run as root, are shared by
all taskhook processes on the same data dir and stop when the last of them exits (normally, on
Ctrl-C, SIGTERM or even SIGKILL). See ``_lease.py`` for how.
"""

from __future__ import annotations

from taskhook.embedded.errors import EmbeddedServiceError
from taskhook.embedded.postgres import EmbeddedPostgres, start_postgres
from taskhook.embedded.s3 import EmbeddedS3, start_s3
from taskhook.embedded.signals import install_signal_handlers

__all__ = [
    "EmbeddedPostgres",
    "EmbeddedS3",
    "EmbeddedServiceError",
    "install_signal_handlers",
    "start_postgres",
    "start_s3",
]
