"""Configuration, read and validated once at start (API.md "Configuration").

Only `Settings.from_env` reads the environment; tests build `Settings(...)` directly.
"""

from __future__ import annotations

import json
import os
import secrets
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TypeVar

from taskhook.whsec import decode_secret

T = TypeVar("T")


KNOWN_VENDORS = ("replicate", "fal", "midjourney")
ENVIRONMENTS = ("development", "production")


class SettingsError(Exception):
    """A configuration value is invalid; the message names the variable."""


@dataclass(frozen=True, kw_only=True)
class ReplicateSettings:
    api_token: str = field(repr=False)
    api_base: str = "https://api.replicate.com/v1"
    # Several `whsec_...` secrets during a rotation; empty = fetch the account's default secret.
    webhook_secrets: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class FalSettings:
    api_key: str = field(repr=False)
    queue_base: str = "https://queue.fal.run"
    jwks_url: str = "https://rest.alpha.fal.ai/.well-known/jwks.json"
    # Our fal account (X-Fal-Webhook-User-Id); None: learned and pinned (receiver/accounts.py).
    user_id: str | None = None


MJ_DIALECTS = ("auto", "novicezk", "trueai")


@dataclass(frozen=True, kw_only=True)
class MidjourneySettings:
    api_base: str
    api_secret: str | None = field(default=None, repr=False)
    # Which fork's follow-up API: novicezk's /mj/submit/change, trueai's /mj/submit/action
    # (v10 removed change); auto tells them apart by the parent task's `buttons`.
    dialect: str = "auto"


@dataclass(frozen=True, kw_only=True)
class ServerLimits:
    """What one web process gives a client connection (taskhook/slow_clients.py): time to send
    a request's headers (from connecting, or from the previous response) and then its body, the
    headers' size, idle keep-alive, open connections and requests in flight."""

    header_timeout: float = 10.0
    body_timeout: float = 30.0
    max_header_bytes: int = 32 * 1024
    keepalive_timeout: float = 5.0
    max_connections: int = 1000
    max_requests: int = 500


@dataclass(frozen=True)
class VendorRoute:
    """One vendor that can serve a model: its id for the model there and the credit price."""

    vendor: str
    model: str
    price: int


@dataclass(frozen=True, kw_only=True)
class Settings:
    # TASKHOOK_ENV: in production a process refuses to start with settings that cannot work.
    env: str = "development"
    data_dir: Path = Path(".taskhook")
    # None: embedded PostgreSQL under data_dir. Not in repr: the DSN may carry a password.
    database_url: str | None = field(default=None, repr=False)
    secret: str = field(default_factory=lambda: secrets.token_urlsafe(32), repr=False)
    public_url: str | None = None  # None: http://127.0.0.1:<port of `serve`>
    s3_endpoint_url: str | None = None  # None: embedded S3 under data_dir
    s3_bucket: str = "taskhook"
    aws_access_key_id: str | None = field(default=None, repr=False)
    aws_secret_access_key: str | None = field(default=None, repr=False)
    aws_region: str = "us-east-1"
    task_deadline: float = 1800.0
    poll_after: float = 15.0
    rate_limit: int = 600
    max_active_tasks: int = 100
    admin_key: str = field(default_factory=lambda: secrets.token_urlsafe(24), repr=False)
    allow_private_urls: bool = False
    replicate: ReplicateSettings | None = None
    fal: FalSettings | None = None
    midjourney: MidjourneySettings | None = None
    # Model name -> vendors serving it, in order of preference (TASKHOOK_ROUTES).
    routes: Mapping[str, tuple[VendorRoute, ...]] = field(default_factory=dict)
    # With routes, a model no route lists is refused unless this is set (at task_cost).
    allow_unrouted_models: bool = False
    task_cost: int = 1
    webhook_tolerance: float = 300.0
    max_body_bytes: int = 1024 * 1024
    max_download_bytes: int = 64 * 1024 * 1024
    registration_timeout: float = 10.0
    max_registration_attempts: int = 8
    max_storage_attempts: int = 5
    poll_rate: float = 20.0  # per vendor, all reconcilers together; Replicate allows 50/s
    # Creates per second for vendors that limit creates apart (Replicate); None: the limit
    # the vendor documents (Replicate: 600 a minute).
    create_rate: float | None = None
    poll_concurrency: int = 8
    breaker_threshold: int = 10
    breaker_cooldown: float = 30.0
    delivery_retention: float = 7 * 86400.0
    # Storing results (issue 14): one download's wall clock and minimum rate (bytes/s after
    # download_grace seconds, 0 = none), a task's whole time in storing, and its outputs' count
    # and total size.
    download_timeout: float = 60.0
    download_min_rate: float = 32 * 1024.0
    download_grace: float = 10.0
    storage_deadline: float = 90.0
    max_outputs: int = 16
    max_output_bytes: int = 256 * 1024 * 1024
    server: ServerLimits = field(default_factory=ServerLimits)

    @property
    def production(self) -> bool:
        return self.env == "production"

    @property
    def vendors(self) -> tuple[str, ...]:
        """Configured vendors in order of preference; the first is the default."""
        configured = (
            ("replicate", self.replicate),
            ("fal", self.fal),
            ("midjourney", self.midjourney),
        )
        return tuple(name for name, value in configured if value is not None)

    @property
    def registration_lease(self) -> float:
        """How long a registration in flight keeps other processes off the task."""
        return self.registration_timeout + 5

    def with_overrides(self, **changes: object) -> Settings:
        return replace(self, **changes)  # type: ignore[arg-type]

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ

        def get(name: str) -> str | None:
            value = env.get(name, "").strip()
            return value or None

        def parse(name: str, convert: Callable[[str], T], default: T, check: str = "") -> T:
            raw = get(name)
            if raw is None:
                return default
            try:
                value = convert(raw)
            except ValueError:
                raise SettingsError(f"{name} must be {check or 'valid'}, got {raw!r}") from None
            if check == "a positive number" and not (isinstance(value, float) and value > 0):
                raise SettingsError(f"{name} must be {check}, got {raw!r}")
            if check == "a non-negative integer" and not (isinstance(value, int) and value >= 0):
                raise SettingsError(f"{name} must be {check}, got {raw!r}")
            return value

        def positive_int(name: str, default: int) -> int:
            value = parse(name, int, default, "a non-negative integer")
            if value < 1:
                raise SettingsError(f"{name} must be at least 1, got {value}")
            return value

        env_name = (get("TASKHOOK_ENV") or "development").lower()
        if env_name not in ENVIRONMENTS:
            raise SettingsError(
                f"TASKHOOK_ENV must be one of {', '.join(ENVIRONMENTS)}, got {env_name!r}"
            )
        data_dir = Path(get("TASKHOOK_DATA_DIR") or ".taskhook")
        database_url = get("DATABASE_URL")
        if database_url and not database_url.startswith(("postgres://", "postgresql://")):
            raise SettingsError(f"DATABASE_URL must be a postgresql:// URL, got {database_url!r}")
        public_url = get("TASKHOOK_PUBLIC_URL")
        if public_url and not public_url.startswith(("http://", "https://")):
            raise SettingsError(f"TASKHOOK_PUBLIC_URL must be an http(s) URL, got {public_url!r}")
        allow_private = get("TASKHOOK_ALLOW_PRIVATE_URLS") or "0"
        if allow_private not in ("0", "1"):
            raise SettingsError(
                f"TASKHOOK_ALLOW_PRIVATE_URLS must be 0 or 1, got {allow_private!r}"
            )
        allow_unrouted = get("TASKHOOK_ALLOW_UNROUTED_MODELS") or "0"
        if allow_unrouted not in ("0", "1"):
            raise SettingsError(
                f"TASKHOOK_ALLOW_UNROUTED_MODELS must be 0 or 1, got {allow_unrouted!r}"
            )

        replicate = None
        token = get("REPLICATE_API_TOKEN")
        if token:
            base = (get("REPLICATE_API_BASE") or "https://api.replicate.com/v1").rstrip("/")
            secrets_raw = get("REPLICATE_WEBHOOK_SECRET") or ""
            webhook_secrets = tuple(s.strip() for s in secrets_raw.split(",") if s.strip())
            for s in webhook_secrets:
                if not s.startswith("whsec_") or not _decodes(s):
                    raise SettingsError(
                        "REPLICATE_WEBHOOK_SECRET must be whsec_<base64> secrets, comma-separated"
                    )
            replicate = ReplicateSettings(
                api_token=token, api_base=base, webhook_secrets=webhook_secrets
            )

        fal = None
        fal_key = get("FAL_KEY")
        if fal_key:
            fal = FalSettings(
                api_key=fal_key,
                queue_base=(get("FAL_QUEUE_BASE") or FalSettings.queue_base).rstrip("/"),
                jwks_url=get("FAL_JWKS_URL") or FalSettings.jwks_url,
                user_id=get("FAL_USER_ID"),
            )
        midjourney = None
        mj_base = get("MJ_PROXY_BASE")
        if mj_base:
            if not mj_base.startswith(("http://", "https://")):
                raise SettingsError(f"MJ_PROXY_BASE must be an http(s) URL, got {mj_base!r}")
            dialect = (get("MJ_PROXY_DIALECT") or "auto").lower()
            if dialect not in MJ_DIALECTS:
                raise SettingsError(
                    f"MJ_PROXY_DIALECT must be one of {', '.join(MJ_DIALECTS)}, got {dialect!r}"
                )
            midjourney = MidjourneySettings(
                api_base=mj_base.rstrip("/"), api_secret=get("MJ_PROXY_SECRET"), dialect=dialect
            )

        return cls(
            env=env_name,
            data_dir=data_dir,
            database_url=database_url,
            secret=get("TASKHOOK_SECRET") or generated_secret(data_dir, "secret"),
            public_url=public_url.rstrip("/") if public_url else None,
            s3_endpoint_url=get("TASKHOOK_S3_ENDPOINT_URL"),
            s3_bucket=get("TASKHOOK_S3_BUCKET") or "taskhook",
            aws_access_key_id=get("AWS_ACCESS_KEY_ID"),
            aws_secret_access_key=get("AWS_SECRET_ACCESS_KEY"),
            aws_region=get("AWS_REGION") or "us-east-1",
            task_deadline=parse("TASKHOOK_TASK_DEADLINE", float, 1800.0, "a positive number"),
            poll_after=parse("TASKHOOK_POLL_AFTER", float, 15.0, "a positive number"),
            rate_limit=parse("TASKHOOK_RATE_LIMIT", int, 600, "a non-negative integer"),
            max_active_tasks=parse("TASKHOOK_MAX_ACTIVE_TASKS", int, 100, "a non-negative integer"),
            admin_key=get("TASKHOOK_ADMIN_KEY") or generated_secret(data_dir, "admin_key"),
            allow_private_urls=allow_private == "1",
            replicate=replicate,
            fal=fal,
            midjourney=midjourney,
            routes=parse_routes(get("TASKHOOK_ROUTES")),
            allow_unrouted_models=allow_unrouted == "1",
            registration_timeout=parse("TASKHOOK_VENDOR_TIMEOUT", float, 10.0, "a positive number"),
            poll_rate=parse("TASKHOOK_POLL_RATE", float, 20.0, "a positive number"),
            create_rate=parse("TASKHOOK_CREATE_RATE", float, None, "a positive number"),
            poll_concurrency=positive_int("TASKHOOK_POLL_CONCURRENCY", 8),
            breaker_threshold=positive_int("TASKHOOK_BREAKER_THRESHOLD", 10),
            breaker_cooldown=parse("TASKHOOK_BREAKER_COOLDOWN", float, 30.0, "a positive number"),
            delivery_retention=parse(
                "TASKHOOK_DELIVERY_RETENTION", float, 7 * 86400.0, "a positive number"
            ),
            download_timeout=parse("TASKHOOK_DOWNLOAD_TIMEOUT", float, 60.0, "a positive number"),
            download_min_rate=float(
                parse("TASKHOOK_DOWNLOAD_MIN_RATE", int, 32 * 1024, "a non-negative integer")
            ),
            storage_deadline=parse("TASKHOOK_STORAGE_DEADLINE", float, 90.0, "a positive number"),
            max_outputs=positive_int("TASKHOOK_MAX_OUTPUTS", 16),
            max_output_bytes=positive_int("TASKHOOK_MAX_OUTPUT_BYTES", 256 * 1024 * 1024),
            server=ServerLimits(
                header_timeout=parse("TASKHOOK_HEADER_TIMEOUT", float, 10.0, "a positive number"),
                body_timeout=parse("TASKHOOK_BODY_TIMEOUT", float, 30.0, "a positive number"),
                max_header_bytes=positive_int("TASKHOOK_MAX_HEADER_BYTES", 32 * 1024),
                keepalive_timeout=parse(
                    "TASKHOOK_KEEPALIVE_TIMEOUT", float, 5.0, "a positive number"
                ),
                max_connections=positive_int("TASKHOOK_MAX_CONNECTIONS", 1000),
                max_requests=positive_int("TASKHOOK_MAX_REQUESTS", 500),
            ),
        )


def parse_routes(raw: str | None) -> dict[str, tuple[VendorRoute, ...]]:
    """TASKHOOK_ROUTES: {"<model>": [{"vendor": ..., "model": ..., "price": N}, ...], ...}."""
    if raw is None:
        return {}
    usage = (
        'TASKHOOK_ROUTES must be JSON like {"flux-schnell": [{"vendor": "replicate", '
        '"model": "black-forest-labs/flux-schnell", "price": 1}, ...]}'
    )
    try:
        doc = json.loads(raw)
    except ValueError:
        raise SettingsError(f"{usage}; it is not valid JSON") from None
    if not isinstance(doc, dict) or not doc:
        raise SettingsError(usage)
    routes: dict[str, tuple[VendorRoute, ...]] = {}
    for name, entries in doc.items():
        if not name.strip() or not isinstance(entries, list) or not entries:
            raise SettingsError(f"{usage}; {name!r} needs a non-empty list of routes")
        parsed = []
        for entry in entries:
            if (
                not isinstance(entry, dict)
                or set(entry) - {"vendor", "model", "price"}
                or not isinstance(entry.get("vendor"), str)
                or not isinstance(entry.get("model", name), str)
                or type(entry.get("price", 1)) is not int
                or entry.get("price", 1) < 0
            ):
                raise SettingsError(f"{usage}; bad route for {name!r}: {entry!r}")
            if entry["vendor"] not in KNOWN_VENDORS:
                raise SettingsError(
                    f"TASKHOOK_ROUTES: unknown vendor {entry['vendor']!r} for {name!r} "
                    f"(known: {', '.join(KNOWN_VENDORS)})"
                )
            parsed.append(
                VendorRoute(entry["vendor"], str(entry.get("model", name)), entry.get("price", 1))
            )
        vendors = [r.vendor for r in parsed]
        if len(set(vendors)) != len(vendors):
            raise SettingsError(f"{usage}; {name!r} lists a vendor twice")
        routes[name] = tuple(parsed)
    return routes


def _decodes(secret: str) -> bool:
    try:
        decode_secret(secret)
    except ValueError:
        return False
    return True


def generated_secret(data_dir: Path, name: str) -> str:
    """A random secret made on first use and kept (mode 0600) so restarts agree with it."""
    path = data_dir / name
    try:
        existing = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        existing = None
    if existing:
        return existing
    if existing is not None:
        # Never rotate silently: tokens and cursors signed with the old value would break.
        raise SettingsError(f"{path} is empty; delete it to have a new secret generated")
    data_dir.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(32)
    # Write a private temp file, then link it into place: readers never see a half-written
    # file, and when two processes race the first link wins and both use its value.
    fd, temp = tempfile.mkstemp(dir=data_dir, prefix=f".{name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(value + "\n")
        os.link(temp, path)
    except FileExistsError:
        return path.read_text(encoding="utf-8").strip()
    finally:
        os.unlink(temp)
    return value
