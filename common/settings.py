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

from common.whsec import decode_secret

T = TypeVar("T")


KNOWN_VENDORS = ("replicate", "fal", "midjourney")
ENVIRONMENTS = ("development", "production")
LOG_LEVELS = ("debug", "info", "warning", "error")
# Every secret we key or compare with: shorter ones are guessable offline from one signed token.
MIN_SECRET_BYTES = 32
# TASKHOOK_ADMIN_KEY's value that turns the admin API off (not a key: it is too short to be one).
ADMIN_OFF = "off"


class SettingsError(Exception):
    """Configuration values are missing or invalid; the message names every such variable."""

    def __init__(self, problems: str | list[str]) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("; ".join(self.problems))


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
    # fal's platform API (model pricing answers only a valid key: `taskhook check` asks it).
    api_base: str = "https://api.fal.ai/v1"
    # Our fal account (X-Fal-Webhook-User-Id); None: learned and pinned (lifecycle/accounts.py).
    user_id: str | None = None


MJ_DIALECTS = ("auto", "novicezk", "trueai")


@dataclass(frozen=True, kw_only=True)
class MidjourneySettings:
    api_base: str
    api_secret: str | None = field(default=None, repr=False)
    # Which fork's follow-up API: novicezk's /mj/submit/change, trueai's /mj/submit/action
    # (v10 removed change); auto tells them apart by the parent task's `buttons`.
    dialect: str = "auto"


# Seconds between attempts of a client's webhook: Svix's schedule (lifecycle/retry_schedule.py).
WEBHOOK_RETRY_SCHEDULE: tuple[float, ...] = (5, 300, 1800, 7200, 18000, 36000, 36000)


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
    # TASKHOOK_ENV: "production" embeds and generates nothing (see from_env).
    env: str = "development"
    data_dir: Path = Path(".taskhook")
    # None: embedded PostgreSQL under data_dir. Not in repr: the DSN may carry a password.
    database_url: str | None = field(default=None, repr=False)
    secret: str = field(default_factory=lambda: secrets.token_urlsafe(32), repr=False)
    public_url: str | None = None  # None: http://127.0.0.1:<port of `serve`>
    # None and not s3_embedded: AWS S3 itself (boto3's endpoint for the region).
    s3_endpoint_url: str | None = None
    # True: start the embedded S3-compatible server under data_dir (development only).
    s3_embedded: bool = False
    s3_bucket: str = "taskhook"
    aws_access_key_id: str | None = field(default=None, repr=False)
    aws_secret_access_key: str | None = field(default=None, repr=False)
    aws_region: str | None = None  # None: boto3's default chain (AWS_DEFAULT_REGION, config)
    task_deadline: float = 1800.0
    poll_after: float = 15.0
    rate_limit: int = 600
    max_active_tasks: int = 100
    # None: the admin API is off (TASKHOOK_ADMIN_KEY=off).
    admin_key: str | None = field(default_factory=lambda: secrets.token_urlsafe(24), repr=False)
    allow_private_urls: bool = False
    replicate: ReplicateSettings | None = None
    fal: FalSettings | None = None
    midjourney: MidjourneySettings | None = None
    # Model name -> vendors serving it, in order of preference (TASKHOOK_ROUTES).
    routes: Mapping[str, tuple[VendorRoute, ...]] = field(default_factory=dict)
    # Model name -> the short description GET /v1/models shows (a route's "description").
    model_descriptions: Mapping[str, str] = field(default_factory=dict)
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
    # Seconds a terminal task's events / a completed task's stored result files are kept
    # after it ended; None keeps them (TASKHOOK_EVENT_RETENTION, TASKHOOK_RESULT_RETENTION).
    event_retention: float | None = None
    result_retention: float | None = None
    # Seconds between the reconciler's housekeeping steps (pruning, the dashboard's counts).
    prune_interval: float = 300.0
    # /metrics: a bearer token for the web port's, and/or a listener of its own.
    metrics_token: str | None = field(default=None, repr=False)
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    log_level: str = "info"
    access_log: bool = False
    # Seconds a starting process keeps retrying an unreachable database or S3 before it exits.
    startup_retry: float = 30.0
    # Seconds a starting process waits for `taskhook migrate` when the schema is behind.
    schema_wait: float = 0.0
    # Seconds between attempts to prepare a vendor that failed to (doubling up to a minute).
    vendor_prepare_retry: float = 5.0
    # What was filled in rather than configured (development only), announced at start.
    defaults: tuple[str, ...] = field(default=(), compare=False)
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
    # Webhooks out to clients (issue 18): one attempt's time in all, attempts in flight per
    # process and per destination host there, and the delays between attempts (Svix's).
    webhook_timeout: float = 10.0
    webhook_concurrency: int = 64
    webhook_host_concurrency: int = 8
    webhook_retry_schedule: tuple[float, ...] = WEBHOOK_RETRY_SCHEDULE

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

    @property
    def metrics_on_web_port(self) -> bool:
        """Whether the web port answers /metrics: with a token (it is then required), or in
        development when no listener of its own was asked for. In production an open /metrics
        would show queue depths and vendor health to anyone who reaches the API."""
        if self.metrics_token is not None:
            return True
        return self.metrics_port is None and not self.production

    def with_overrides(self, **changes: object) -> Settings:
        return replace(self, **changes)  # type: ignore[arg-type]

    def with_default(self, note: str, **changes: object) -> Settings:
        """These settings with `changes` filled in by taskhook, noted for the announcement."""
        return replace(self, defaults=(*self.defaults, note), **changes)  # type: ignore[arg-type]

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read and check every variable, then raise one SettingsError naming every problem
        (an operator fixes them all in one round, not one per restart)."""
        env = os.environ if environ is None else environ
        problems: list[str] = []
        defaults: list[str] = []

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
                problems.append(f"{name} must be {check or 'valid'}, got {raw!r}")
                return default
            if check == "a positive number" and not (isinstance(value, float) and value > 0):
                problems.append(f"{name} must be {check}, got {raw!r}")
                return default
            if check == "a non-negative number" and not (
                isinstance(value, float) and value >= 0 and value != float("inf")
            ):
                problems.append(f"{name} must be {check}, got {raw!r}")
                return default
            if check == "a non-negative integer" and not (isinstance(value, int) and value >= 0):
                problems.append(f"{name} must be {check}, got {raw!r}")
                return default
            return value

        def retention(name: str) -> float | None:
            raw = get(name)
            if raw is None or raw.strip().lower() == "keep":
                return None
            value: float | None = parse(name, float, None, "a positive number or `keep`")
            if value is not None and not (0 < value < float("inf")):
                problems.append(f"{name} must be a positive number or `keep`, got {raw!r}")
                return None
            return value

        def positive_int(name: str, default: int) -> int:
            value = parse(name, int, default, "a non-negative integer")
            if value < 1:
                problems.append(f"{name} must be at least 1, got {value}")
                return default
            return value

        def delays(name: str, default: tuple[float, ...]) -> tuple[float, ...]:
            raw = get(name)
            if raw is None:
                return default
            try:
                found = tuple(float(part) for part in raw.split(","))
            except ValueError:
                found = ()
            if not found or any(not (0 < d < float("inf")) for d in found):
                problems.append(f"{name} must be positive seconds, comma-separated, got {raw!r}")
                return default
            return found

        def choice(name: str, allowed: tuple[str, ...], default: str) -> str:
            raw = (get(name) or default).lower()
            if raw not in allowed:
                problems.append(f"{name} must be one of {', '.join(allowed)}, got {raw!r}")
                return default
            return raw

        def http_url(name: str) -> str | None:
            value = get(name)
            if value and not value.startswith(("http://", "https://")):
                problems.append(f"{name} must be an http(s) URL, got {value!r}")
                return None
            return value.rstrip("/") if value else None

        def long_enough(name: str, value: str) -> str:
            size = len(value.encode())
            if size < MIN_SECRET_BYTES:
                problems.append(
                    f"{name} must be at least {MIN_SECRET_BYTES} bytes, got {size} (make one "
                    "with `python3 -c 'import secrets; print(secrets.token_urlsafe(32))'`)"
                )
            return value

        def secret(name: str, file: str, *, hint: str = "") -> str:
            """A configured secret, else (development only) one generated in the data dir."""
            value = get(name)
            if value is not None:
                return long_enough(name, value)
            if production:
                problems.append(f"{name} is required in production{hint}")
                return ""
            try:
                value = generated_secret(data_dir, file)
            except SettingsError as exc:
                problems.extend(exc.problems)
                return ""
            defaults.append(f"{name} generated, kept in {data_dir / file}")
            return long_enough(f"{name} (kept in {data_dir / file})", value)

        production = choice("TASKHOOK_ENV", ENVIRONMENTS, "development") == "production"
        data_dir = Path(get("TASKHOOK_DATA_DIR") or ".taskhook")
        database_url = get("DATABASE_URL")
        if database_url and not database_url.startswith(("postgres://", "postgresql://")):
            problems.append(f"DATABASE_URL must be a postgresql:// URL, got {database_url!r}")
        elif database_url is None and production:
            problems.append("DATABASE_URL is required in production")
        public_url = http_url("TASKHOOK_PUBLIC_URL")
        if production and not (public_url or "").startswith("https://"):
            # Replicate calls only https webhooks, and a callback token must not travel clear.
            problems.append(
                "TASKHOOK_PUBLIC_URL must be the https:// URL vendors reach this deployment at "
                f"in production, got {get('TASKHOOK_PUBLIC_URL')!r}"
            )
        allow_private = get("TASKHOOK_ALLOW_PRIVATE_URLS") or "0"
        if allow_private not in ("0", "1"):
            problems.append(f"TASKHOOK_ALLOW_PRIVATE_URLS must be 0 or 1, got {allow_private!r}")
        access_log = get("TASKHOOK_ACCESS_LOG") or "0"
        if access_log not in ("0", "1"):
            problems.append(f"TASKHOOK_ACCESS_LOG must be 0 or 1, got {access_log!r}")

        # Storage: an endpoint means any S3-compatible store, a bucket alone AWS S3 itself;
        # nothing at all (development only) the embedded server under the data dir.
        s3_endpoint_url = http_url("TASKHOOK_S3_ENDPOINT_URL")
        s3_bucket = get("TASKHOOK_S3_BUCKET")
        s3_embedded = (
            not production and s3_bucket is None and get("TASKHOOK_S3_ENDPOINT_URL") is None
        )
        if production and s3_bucket is None:
            problems.append(
                "TASKHOOK_S3_BUCKET is required in production (alone for AWS S3, with "
                "TASKHOOK_S3_ENDPOINT_URL for another S3-compatible store)"
            )
        allow_unrouted = get("TASKHOOK_ALLOW_UNROUTED_MODELS") or "0"
        if allow_unrouted not in ("0", "1"):
            problems.append(
                f"TASKHOOK_ALLOW_UNROUTED_MODELS must be 0 or 1, got {allow_unrouted!r}"
            )

        secret_value = secret("TASKHOOK_SECRET", "secret")
        admin_key: str | None
        if (get("TASKHOOK_ADMIN_KEY") or "").lower() == ADMIN_OFF:
            admin_key = None
        else:
            admin_key = secret(
                "TASKHOOK_ADMIN_KEY",
                "admin_key",
                hint=f" (at least {MIN_SECRET_BYTES} bytes, or `off` for no admin API)",
            )
        metrics_token = get("TASKHOOK_METRICS_TOKEN")
        if metrics_token is not None:
            long_enough("TASKHOOK_METRICS_TOKEN", metrics_token)
        metrics_port = parse("TASKHOOK_METRICS_PORT", int, None, "a port number (1-65535)")
        if metrics_port is not None and not 1 <= metrics_port <= 65535:
            problems.append(f"TASKHOOK_METRICS_PORT must be a port number, got {metrics_port}")

        replicate = None
        token = get("REPLICATE_API_TOKEN")
        if token:
            base = (get("REPLICATE_API_BASE") or "https://api.replicate.com/v1").rstrip("/")
            secrets_raw = get("REPLICATE_WEBHOOK_SECRET") or ""
            webhook_secrets = tuple(s.strip() for s in secrets_raw.split(",") if s.strip())
            if any(not s.startswith("whsec_") or not _decodes(s) for s in webhook_secrets):
                problems.append(
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
                api_base=(get("FAL_API_BASE") or FalSettings.api_base).rstrip("/"),
                user_id=get("FAL_USER_ID"),
            )
        midjourney = None
        mj_base = http_url("MJ_PROXY_BASE")
        if mj_base:
            dialect = (get("MJ_PROXY_DIALECT") or "auto").lower()
            if dialect not in MJ_DIALECTS:
                problems.append(
                    f"MJ_PROXY_DIALECT must be one of {', '.join(MJ_DIALECTS)}, got {dialect!r}"
                )
                dialect = "auto"
            midjourney = MidjourneySettings(
                api_base=mj_base, api_secret=get("MJ_PROXY_SECRET"), dialect=dialect
            )

        try:
            routes = parse_routes(get("TASKHOOK_ROUTES"))
            model_descriptions = parse_model_descriptions(get("TASKHOOK_ROUTES"))
        except SettingsError as exc:
            problems.extend(exc.problems)
            routes, model_descriptions = {}, {}

        settings = cls(
            env="production" if production else "development",
            data_dir=data_dir,
            database_url=database_url,
            secret=secret_value,
            public_url=public_url,
            s3_endpoint_url=s3_endpoint_url,
            s3_embedded=s3_embedded,
            s3_bucket=s3_bucket or "taskhook",
            aws_access_key_id=get("AWS_ACCESS_KEY_ID"),
            aws_secret_access_key=get("AWS_SECRET_ACCESS_KEY"),
            aws_region=get("AWS_REGION"),
            task_deadline=parse("TASKHOOK_TASK_DEADLINE", float, 1800.0, "a positive number"),
            poll_after=parse("TASKHOOK_POLL_AFTER", float, 15.0, "a positive number"),
            rate_limit=parse("TASKHOOK_RATE_LIMIT", int, 600, "a non-negative integer"),
            max_active_tasks=parse("TASKHOOK_MAX_ACTIVE_TASKS", int, 100, "a non-negative integer"),
            admin_key=admin_key,
            allow_private_urls=allow_private == "1",
            replicate=replicate,
            fal=fal,
            midjourney=midjourney,
            routes=routes,
            model_descriptions=model_descriptions,
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
            event_retention=retention("TASKHOOK_EVENT_RETENTION"),
            result_retention=retention("TASKHOOK_RESULT_RETENTION"),
            prune_interval=parse("TASKHOOK_PRUNE_INTERVAL", float, 300.0, "a positive number"),
            metrics_token=metrics_token,
            metrics_port=metrics_port,
            metrics_host=get("TASKHOOK_METRICS_HOST") or "127.0.0.1",
            log_level=choice("TASKHOOK_LOG_LEVEL", LOG_LEVELS, "info"),
            access_log=access_log == "1",
            startup_retry=parse("TASKHOOK_STARTUP_RETRY", float, 30.0, "a non-negative number"),
            schema_wait=parse("TASKHOOK_SCHEMA_WAIT", float, 0.0, "a non-negative number"),
            defaults=tuple(defaults),
            download_timeout=parse("TASKHOOK_DOWNLOAD_TIMEOUT", float, 60.0, "a positive number"),
            download_min_rate=float(
                parse("TASKHOOK_DOWNLOAD_MIN_RATE", int, 32 * 1024, "a non-negative integer")
            ),
            storage_deadline=parse("TASKHOOK_STORAGE_DEADLINE", float, 90.0, "a positive number"),
            max_outputs=positive_int("TASKHOOK_MAX_OUTPUTS", 16),
            max_output_bytes=positive_int("TASKHOOK_MAX_OUTPUT_BYTES", 256 * 1024 * 1024),
            webhook_timeout=parse("TASKHOOK_WEBHOOK_TIMEOUT", float, 10.0, "a positive number"),
            webhook_concurrency=positive_int("TASKHOOK_WEBHOOK_CONCURRENCY", 64),
            webhook_host_concurrency=positive_int("TASKHOOK_WEBHOOK_HOST_CONCURRENCY", 8),
            webhook_retry_schedule=delays(
                "TASKHOOK_WEBHOOK_RETRY_SCHEDULE", WEBHOOK_RETRY_SCHEDULE
            ),
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
        if problems:
            raise SettingsError(problems)
        return settings


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
                or set(entry) - {"vendor", "model", "price", "description"}
                or not isinstance(entry.get("description", ""), str)
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


def parse_model_descriptions(raw: str | None) -> dict[str, str]:
    """A model's description for the catalogue (GET /v1/models): the first `description` one
    of its routes gives in TASKHOOK_ROUTES (checked by parse_routes)."""
    if raw is None:
        return {}
    described: dict[str, str] = {}
    for name, entries in json.loads(raw).items():
        for entry in entries:
            text = entry.get("description", "").strip()
            if text:
                described[name] = text
                break
    return described


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
