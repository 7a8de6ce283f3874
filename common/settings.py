"""Configuration, read and validated once at start (API.md "Configuration").

Only `Settings.from_env` reads the environment; tests build `Settings(...)` directly.
"""

from __future__ import annotations

import json
import os
import secrets
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Protocol

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
class Declared:
    """One environment variable, declared once beside the field it fills: its name, how its
    text becomes the value, and what it means. docs/API.md's settings table is checked against
    these declarations (tests/unit/test_settings_declared.py)."""

    env: str
    doc: str
    # Text -> value; raises ValueError saying what the value must be ("a positive number").
    # None: read in Settings.from_env by hand, because it depends on other settings.
    read: Callable[[str], Any] | None = None
    # A secret's value is never repeated in an error message.
    secret: bool = False


def setting(
    env: str,
    default: Any = MISSING,
    *,
    doc: str,
    read: Callable[[str], Any] | None = None,
    secret: bool = False,
    factory: Callable[[], Any] | None = None,
) -> Any:
    """A settings field declared with its variable (see Declared)."""
    metadata = {"setting": Declared(env=env, doc=doc, read=read, secret=secret)}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata, repr=not secret)
    return field(default=default, metadata=metadata, repr=not secret)


def declarations(cls: type) -> list[tuple[str, Declared]]:
    """(field name, declaration) of every declared field of a settings dataclass."""
    return [(f.name, f.metadata["setting"]) for f in fields(cls) if "setting" in f.metadata]


def read_declared(
    cls: type, get: Callable[[str], str | None], problems: list[str]
) -> dict[str, Any]:
    """The values of `cls`'s declared fields that are set and readable; every unreadable one
    adds a problem (and keeps its default)."""
    values: dict[str, Any] = {}
    for name, declared in declarations(cls):
        raw = get(declared.env)
        if raw is None or declared.read is None:
            continue
        try:
            values[name] = declared.read(raw)
        except ValueError as exc:
            shown = "" if declared.secret else f", got {raw!r}"
            problems.append(f"{declared.env} must be {exc}{shown}")
    return values


class PluggedVendor(Protocol):
    """What reading the settings needs of a vendor (vendors/base.py's VendorPlugin): its name,
    its settings dataclass (fields declared with `setting`) and the variable that turns it on."""

    @property
    def name(self) -> str: ...

    @property
    def settings(self) -> type: ...

    @property
    def enabled_by(self) -> str: ...


# Readers: a variable's text -> its value, or ValueError saying what the value must be.


def text(raw: str) -> str:
    return raw


def http_url(raw: str) -> str:
    if not raw.startswith(("http://", "https://")):
        raise ValueError("an http(s) URL")
    return raw.rstrip("/")


def base_url(raw: str) -> str:
    return raw.rstrip("/")


def postgres_url(raw: str) -> str:
    if not raw.startswith(("postgres://", "postgresql://")):
        raise ValueError("a postgresql:// URL")
    return raw


def one_of(*allowed: str) -> Callable[[str], str]:
    def read(raw: str) -> str:
        value = raw.lower()
        if value not in allowed:
            raise ValueError(f"one of {', '.join(allowed)}")
        return value

    return read


def flag(raw: str) -> bool:
    if raw not in ("0", "1"):
        raise ValueError("0 or 1")
    return raw == "1"


def _number(raw: str, what: str) -> float:
    try:
        return float(raw)
    except ValueError:
        raise ValueError(what) from None


def positive(raw: str) -> float:
    value = _number(raw, "a positive number")
    if not value > 0:
        raise ValueError("a positive number")
    return value


def non_negative(raw: str) -> float:
    value = _number(raw, "a non-negative number")
    if not (0 <= value < float("inf")):
        raise ValueError("a non-negative number")
    return value


def count(raw: str) -> int:
    """A non-negative integer (0 often means "no limit")."""
    try:
        value = int(raw)
    except ValueError:
        raise ValueError("a non-negative integer") from None
    if value < 0:
        raise ValueError("a non-negative integer")
    return value


def at_least_one(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise ValueError("a non-negative integer") from None
    if value < 1:
        raise ValueError("at least 1")
    return value


def retention(raw: str) -> float | None:
    """Seconds, or `keep` (None) for no limit."""
    if raw.lower() == "keep":
        return None
    value = _number(raw, "a positive number or `keep`")
    if not (0 < value < float("inf")):
        raise ValueError("a positive number or `keep`")
    return value


def port(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise ValueError("a port number (1-65535)") from None
    if not 1 <= value <= 65535:
        raise ValueError("a port number (1-65535)")
    return value


def long_enough(raw: str) -> str:
    """A secret we key or compare with: shorter ones are guessable offline from one token."""
    size = len(raw.encode())
    if size < MIN_SECRET_BYTES:
        raise ValueError(
            f"at least {MIN_SECRET_BYTES} bytes, got {size} (make one with "
            "`python3 -c 'import secrets; print(secrets.token_urlsafe(32))'`)"
        )
    return raw


# Seconds between attempts of a client's webhook: Svix's schedule (lifecycle/retry_schedule.py).
WEBHOOK_RETRY_SCHEDULE: tuple[float, ...] = (5, 300, 1800, 7200, 18000, 36000, 36000)


def delays(raw: str) -> tuple[float, ...]:
    try:
        found = tuple(float(part) for part in raw.split(","))
    except ValueError:
        found = ()
    if not found or any(not (0 < d < float("inf")) for d in found):
        raise ValueError("positive seconds, comma-separated")
    return found


@dataclass(frozen=True, kw_only=True)
class ServerLimits:
    """What one web process gives a client connection (taskhook/slow_clients.py): time to send
    a request's headers (from connecting, or from the previous response) and then its body, the
    headers' size, idle keep-alive, open connections and requests in flight."""

    header_timeout: float = setting(
        "TASKHOOK_HEADER_TIMEOUT", 10.0, doc="seconds to send a request's headers", read=positive
    )
    body_timeout: float = setting(
        "TASKHOOK_BODY_TIMEOUT", 30.0, doc="seconds to send a request's body", read=positive
    )
    max_header_bytes: int = setting(
        "TASKHOOK_MAX_HEADER_BYTES", 32 * 1024, doc="largest request head", read=at_least_one
    )
    keepalive_timeout: float = setting(
        "TASKHOOK_KEEPALIVE_TIMEOUT", 5.0, doc="seconds an idle connection stays", read=positive
    )
    max_connections: int = setting(
        "TASKHOOK_MAX_CONNECTIONS", 1000, doc="open connections per process", read=at_least_one
    )
    max_requests: int = setting(
        "TASKHOOK_MAX_REQUESTS", 500, doc="requests in flight per process", read=at_least_one
    )


@dataclass(frozen=True)
class VendorRoute:
    """One vendor that can serve a model: its id for the model there and the credit price."""

    vendor: str
    model: str
    price: int


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Every setting, each declared once beside its field (see `setting`); fields without a
    declaration are not configurable, only set by tests and by taskhook itself."""

    env: str = setting(
        "TASKHOOK_ENV",
        "development",
        doc='"production" embeds and generates nothing (see from_env)',
        read=one_of(*ENVIRONMENTS),
    )
    data_dir: Path = setting(  # noqa: RUF009 - a field() with its declaration, Path immutable
        "TASKHOOK_DATA_DIR",
        Path(".taskhook"),
        doc="where embedded services and generated secrets live",
        read=Path,
    )
    # None: embedded PostgreSQL under data_dir. Not in repr: the DSN may carry a password.
    database_url: str | None = setting(
        "DATABASE_URL", None, doc="PostgreSQL DSN", read=postgres_url, secret=True
    )
    secret: str = setting(
        "TASKHOOK_SECRET",
        doc="key for signed callback tokens and cursors (read in from_env: generated in dev)",
        secret=True,
        factory=lambda: secrets.token_urlsafe(32),
    )
    public_url: str | None = setting(
        "TASKHOOK_PUBLIC_URL",
        None,  # None: http://127.0.0.1:<port of `serve`>
        doc="base URL vendors reach /hooks at",
        read=http_url,
    )
    # None and not s3_embedded: AWS S3 itself (boto3's endpoint for the region).
    s3_endpoint_url: str | None = setting(
        "TASKHOOK_S3_ENDPOINT_URL", None, doc="an S3-compatible store", read=http_url
    )
    # True: start the embedded S3-compatible server under data_dir (development only).
    s3_embedded: bool = False
    s3_bucket: str = setting("TASKHOOK_S3_BUCKET", "taskhook", doc="the results bucket", read=text)
    aws_access_key_id: str | None = setting(
        "AWS_ACCESS_KEY_ID", None, doc="the store's credentials", read=text, secret=True
    )
    aws_secret_access_key: str | None = setting(
        "AWS_SECRET_ACCESS_KEY", None, doc="the store's credentials", read=text, secret=True
    )
    aws_region: str | None = setting(
        "AWS_REGION",
        None,  # None: boto3's default chain (AWS_DEFAULT_REGION, config)
        doc="the store's region",
        read=text,
    )
    task_deadline: float = setting(
        "TASKHOOK_TASK_DEADLINE", 1800.0, doc="seconds a task may take", read=positive
    )
    poll_after: float = setting(
        "TASKHOOK_POLL_AFTER", 15.0, doc="seconds without news before a poll", read=positive
    )
    rate_limit: int = setting(
        "TASKHOOK_RATE_LIMIT", 600, doc="client requests per minute per user", read=count
    )
    max_active_tasks: int = setting(
        "TASKHOOK_MAX_ACTIVE_TASKS", 100, doc="non-terminal tasks per user", read=count
    )
    # None: the admin API is off (TASKHOOK_ADMIN_KEY=off).
    admin_key: str | None = setting(
        "TASKHOOK_ADMIN_KEY",
        doc="key for /admin, or `off` (read in from_env: generated in development)",
        secret=True,
        factory=lambda: secrets.token_urlsafe(24),
    )
    allow_private_urls: bool = setting(
        "TASKHOOK_ALLOW_PRIVATE_URLS",
        False,
        doc="downloads may reach private addresses",
        read=flag,
    )
    # Vendor name -> its settings (the dataclass its module declares), in order of preference:
    # the vendors registered in vendors/registry.py whose variable is set.
    vendor_settings: Mapping[str, Any] = field(default_factory=dict)
    # Model name -> vendors serving it, in order of preference.
    routes: Mapping[str, tuple[VendorRoute, ...]] = setting(
        "TASKHOOK_ROUTES",
        doc="JSON: model name -> its vendors (read in from_env: it names vendors)",
        factory=dict,
    )
    # Model name -> the short description GET /v1/models shows (a route's "description").
    model_descriptions: Mapping[str, str] = field(default_factory=dict)
    # With routes, a model no route lists is refused unless this is set (at task_cost).
    allow_unrouted_models: bool = setting(
        "TASKHOOK_ALLOW_UNROUTED_MODELS",
        False,
        doc="with routes, models no route lists are accepted",
        read=flag,
    )
    task_cost: int = 1
    webhook_tolerance: float = 300.0
    max_body_bytes: int = 1024 * 1024
    max_download_bytes: int = 64 * 1024 * 1024
    registration_timeout: float = setting(
        "TASKHOOK_VENDOR_TIMEOUT", 10.0, doc="seconds one vendor call may take", read=positive
    )
    max_registration_attempts: int = 8
    max_storage_attempts: int = 5
    poll_rate: float = setting(
        "TASKHOOK_POLL_RATE",
        20.0,  # per vendor, all reconcilers together; Replicate allows 50/s
        doc="vendor calls per second, per vendor",
        read=positive,
    )
    # None: the limit the vendor documents (Replicate: 600 a minute).
    create_rate: float | None = setting(
        "TASKHOOK_CREATE_RATE",
        None,
        doc="creates per second for vendors that limit creates apart (Replicate)",
        read=positive,
    )
    poll_concurrency: int = setting(
        "TASKHOOK_POLL_CONCURRENCY", 8, doc="polls in flight per process", read=at_least_one
    )
    breaker_threshold: int = setting(
        "TASKHOOK_BREAKER_THRESHOLD",
        10,
        doc="consecutive vendor failures that open its circuit",
        read=at_least_one,
    )
    breaker_cooldown: float = setting(
        "TASKHOOK_BREAKER_COOLDOWN", 30.0, doc="seconds before a probe call", read=positive
    )
    delivery_retention: float = setting(
        "TASKHOOK_DELIVERY_RETENTION",
        7 * 86400.0,
        doc="seconds accepted deliveries are kept",
        read=positive,
    )
    # Seconds a terminal task's events / a completed task's stored result files are kept
    # after it ended; None keeps them.
    event_retention: float | None = setting(
        "TASKHOOK_EVENT_RETENTION", None, doc="seconds events are kept", read=retention
    )
    result_retention: float | None = setting(
        "TASKHOOK_RESULT_RETENTION", None, doc="seconds stored results are kept", read=retention
    )
    # Seconds between the reconciler's housekeeping steps (pruning, the dashboard's counts).
    prune_interval: float = setting(
        "TASKHOOK_PRUNE_INTERVAL", 300.0, doc="seconds between housekeeping steps", read=positive
    )
    # /metrics: a bearer token for the web port's, and/or a listener of its own.
    metrics_token: str | None = setting(
        "TASKHOOK_METRICS_TOKEN",
        None,
        doc="bearer token /metrics on the web port requires",
        read=long_enough,
        secret=True,
    )
    metrics_port: int | None = setting(
        "TASKHOOK_METRICS_PORT", None, doc="a /metrics listener of its own", read=port
    )
    metrics_host: str = setting(
        "TASKHOOK_METRICS_HOST", "127.0.0.1", doc="the metrics listener's host", read=text
    )
    log_level: str = setting(
        "TASKHOOK_LOG_LEVEL", "info", doc="log level", read=one_of(*LOG_LEVELS)
    )
    access_log: bool = setting("TASKHOOK_ACCESS_LOG", False, doc="one line per request", read=flag)
    # Seconds a starting process keeps retrying an unreachable database or S3 before it exits.
    startup_retry: float = setting(
        "TASKHOOK_STARTUP_RETRY", 30.0, doc="seconds of retries at start", read=non_negative
    )
    # Seconds a starting process waits for `taskhook migrate` when the schema is behind.
    schema_wait: float = setting(
        "TASKHOOK_SCHEMA_WAIT", 0.0, doc="seconds to wait for migrate", read=non_negative
    )
    # Seconds between attempts to prepare a vendor that failed to (doubling up to a minute).
    vendor_prepare_retry: float = 5.0
    # What was filled in rather than configured (development only), announced at start.
    defaults: tuple[str, ...] = field(default=(), compare=False)
    # Storing results (issue 14): one download's wall clock and minimum rate (bytes/s after
    # download_grace seconds, 0 = none), a task's whole time in storing, and its outputs' count
    # and total size.
    download_timeout: float = setting(
        "TASKHOOK_DOWNLOAD_TIMEOUT", 60.0, doc="seconds one download may take", read=positive
    )
    download_min_rate: float = setting(
        "TASKHOOK_DOWNLOAD_MIN_RATE",
        32 * 1024.0,
        doc="bytes per second a download must average",
        read=lambda raw: float(count(raw)),
    )
    download_grace: float = 10.0
    storage_deadline: float = setting(
        "TASKHOOK_STORAGE_DEADLINE", 90.0, doc="seconds a task may stay storing", read=positive
    )
    max_outputs: int = setting(
        "TASKHOOK_MAX_OUTPUTS", 16, doc="output files one task may keep", read=at_least_one
    )
    max_output_bytes: int = setting(
        "TASKHOOK_MAX_OUTPUT_BYTES",
        256 * 1024 * 1024,
        doc="bytes one task's outputs may take",
        read=at_least_one,
    )
    server: ServerLimits = field(default_factory=ServerLimits)
    # Webhooks out to clients (issue 18): one attempt's time in all, attempts in flight per
    # process and per destination host there, and the delays between attempts (Svix's).
    webhook_timeout: float = setting(
        "TASKHOOK_WEBHOOK_TIMEOUT",
        10.0,
        doc="seconds one client webhook attempt may take",
        read=positive,
    )
    webhook_concurrency: int = setting(
        "TASKHOOK_WEBHOOK_CONCURRENCY",
        64,
        doc="client webhook attempts in flight per process",
        read=at_least_one,
    )
    webhook_host_concurrency: int = setting(
        "TASKHOOK_WEBHOOK_HOST_CONCURRENCY",
        8,
        doc="client webhook attempts in flight per destination host",
        read=at_least_one,
    )
    webhook_retry_schedule: tuple[float, ...] = setting(
        "TASKHOOK_WEBHOOK_RETRY_SCHEDULE",
        WEBHOOK_RETRY_SCHEDULE,
        doc="seconds between a client webhook's attempts",
        read=delays,
    )

    @property
    def production(self) -> bool:
        return self.env == "production"

    @property
    def vendors(self) -> tuple[str, ...]:
        """Configured vendors in order of preference; the first is the default."""
        return tuple(self.vendor_settings)

    def vendor(self, name: str) -> Any:
        """One configured vendor's settings (its module's dataclass), or None."""
        return self.vendor_settings.get(name)

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
    def from_env(
        cls, environ: Mapping[str, str] | None = None, *, vendors: Sequence[PluggedVendor] = ()
    ) -> Settings:
        """Read and check every variable, then raise one SettingsError naming every problem
        (an operator fixes them all in one round, not one per restart). `vendors` are the ones
        this build knows (vendors/registry.py's VENDORS, passed by its `read_settings`).

        Every declared variable with a reader is read the same way; what depends on other
        settings (production's requirements, generated secrets, routes naming vendors) is
        checked here."""
        env = os.environ if environ is None else environ
        problems: list[str] = []
        defaults: list[str] = []

        def get(name: str) -> str | None:
            value = env.get(name, "").strip()
            return value or None

        values = read_declared(cls, get, problems)
        production = values.get("env") == "production"
        data_dir: Path = values.get("data_dir", cls.data_dir)

        def secret(name: str, file: str, *, hint: str = "") -> str:
            """A configured secret, else (development only) one generated in the data dir."""
            value = get(name)
            if value is not None:
                return checked_secret(name, value)
            if production:
                problems.append(f"{name} is required in production{hint}")
                return ""
            try:
                value = generated_secret(data_dir, file)
            except SettingsError as exc:
                problems.extend(exc.problems)
                return ""
            defaults.append(f"{name} generated, kept in {data_dir / file}")
            return checked_secret(f"{name} (kept in {data_dir / file})", value)

        def checked_secret(name: str, value: str) -> str:
            try:
                long_enough(value)
            except ValueError as exc:
                problems.append(f"{name} must be {exc}")
            return value

        if get("DATABASE_URL") is None and production:
            problems.append("DATABASE_URL is required in production")
        if production and not values.get("public_url", "").startswith("https://"):
            # Replicate calls only https webhooks, and a callback token must not travel clear.
            problems.append(
                "TASKHOOK_PUBLIC_URL must be the https:// URL vendors reach this deployment at "
                f"in production, got {get('TASKHOOK_PUBLIC_URL')!r}"
            )
        # Storage: an endpoint means any S3-compatible store, a bucket alone AWS S3 itself;
        # nothing at all (development only) the embedded server under the data dir.
        s3_embedded = (
            not production
            and get("TASKHOOK_S3_BUCKET") is None
            and get("TASKHOOK_S3_ENDPOINT_URL") is None
        )
        if production and get("TASKHOOK_S3_BUCKET") is None:
            problems.append(
                "TASKHOOK_S3_BUCKET is required in production (alone for AWS S3, with "
                "TASKHOOK_S3_ENDPOINT_URL for another S3-compatible store)"
            )
        values["secret"] = secret("TASKHOOK_SECRET", "secret")
        if (get("TASKHOOK_ADMIN_KEY") or "").lower() == ADMIN_OFF:
            values["admin_key"] = None
        else:
            values["admin_key"] = secret(
                "TASKHOOK_ADMIN_KEY",
                "admin_key",
                hint=f" (at least {MIN_SECRET_BYTES} bytes, or `off` for no admin API)",
            )

        vendor_settings: dict[str, Any] = {}
        for vendor in vendors:
            if get(vendor.enabled_by) is None:
                continue
            before = len(problems)
            found = read_declared(vendor.settings, get, problems)
            if len(problems) == before:
                vendor_settings[vendor.name] = vendor.settings(**found)

        try:
            values["routes"] = parse_routes(get("TASKHOOK_ROUTES"), known=[v.name for v in vendors])
        except SettingsError as exc:
            problems.extend(exc.problems)

        settings = cls(
            **values,
            s3_embedded=s3_embedded,
            vendor_settings=vendor_settings,
            defaults=tuple(defaults),
            server=ServerLimits(**read_declared(ServerLimits, get, problems)),
        )
        if problems:
            raise SettingsError(problems)
        return settings


def declared_settings(vendors: Sequence[PluggedVendor] = ()) -> list[Declared]:
    """Every declared variable: ours, the web server's and the given vendors'."""
    classes: list[type] = [Settings, ServerLimits, *(v.settings for v in vendors)]
    return [declared for cls in classes for _, declared in declarations(cls)]


def parse_routes(raw: str | None, *, known: Sequence[str]) -> dict[str, tuple[VendorRoute, ...]]:
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
            if entry["vendor"] not in known:
                raise SettingsError(
                    f"TASKHOOK_ROUTES: unknown vendor {entry['vendor']!r} for {name!r} "
                    f"(known: {', '.join(known)})"
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
