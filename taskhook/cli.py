"""`taskhook`: one command for every process kind and every operator action (API.md)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import click

from common.settings import Settings, SettingsError
from taskhook.cli_output import echo_json, echo_table, json_option
from taskhook.cli_webhooks import webhooks
from vendors.registry import read_settings

T = TypeVar("T")

# Each command imports what it runs inside its own function, on purpose: `serve` must set
# PROMETHEUS_MULTIPROC_DIR before common.metrics is first imported (it chooses the metrics mode
# then), and `taskhook --help` or `migrate` need not load the web app. No import loop is
# hidden here: taskhook/ is the top floor and nothing below imports it.

ENV_HELP = (
    "Configuration comes from the environment (TASKHOOK_ENV, DATABASE_URL, TASKHOOK_SECRET, "
    "TASKHOOK_S3_BUCKET, REPLICATE_API_TOKEN, ...; see docs/API.md). In development, with no "
    "DATABASE_URL or storage setting, embedded servers are started under TASKHOOK_DATA_DIR; "
    "TASKHOOK_ENV=production embeds and generates nothing."
)


class StartupError(click.ClickException):
    """One line on stderr ("Error: ...") and the exit code of its kind (taskhook/startup.py)."""

    def __init__(self, message: str, *, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code  # type: ignore[misc]  # click reads it per instance


def load_settings() -> Settings:
    """The settings, or every problem with them in one line and exit 2."""
    from taskhook.startup import EXIT_SETTINGS

    try:
        settings = read_settings()
    except SettingsError as exc:
        raise StartupError(str(exc), exit_code=EXIT_SETTINGS) from None
    if settings.production and (problem := vendor_settings_problem(settings)):
        raise StartupError(problem, exit_code=EXIT_SETTINGS)
    from common.logs import configure_logging

    configure_logging(json=not sys.stderr.isatty(), level=settings.log_level)
    return settings


def vendor_settings_problem(settings: Settings) -> str | None:
    """What a configured vendor cannot work with, known without calling anyone (each vendor
    module says: Replicate delivers webhooks only to an https URL it can reach, issue 16.6)."""
    from vendors.registry import BY_NAME

    for name, config in settings.vendor_settings.items():
        if problem := BY_NAME[name].settings_problem(config, settings):
            return problem
    return None


def preflight(settings: Settings, *, storage: bool, schema: bool = True) -> None:
    """Database (and S3) reachable and the schema this release's, or one line and exit."""
    from taskhook.startup import StartupFailed
    from taskhook.startup import preflight as check

    try:
        run(check(settings, storage=storage, schema=schema))
    except StartupFailed as exc:
        raise StartupError(str(exc), exit_code=exc.exit_code) from None


def with_database(settings: Settings, *, schema: bool = True) -> Settings:
    """Settings with a database that answers and (unless `schema` is off) has this release's
    schema: DATABASE_URL, or the embedded server (started and migrated if needed)."""
    from taskhook.embedded import install_signal_handlers, start_postgres

    if settings.database_url is None:
        install_signal_handlers()
        pg = start_postgres(settings.data_dir)
        settings = settings.with_default(
            f"PostgreSQL embedded, data in {pg.pgdata}", database_url=pg.dsn
        )
        _migrate_embedded(settings)
    preflight(settings, storage=False, schema=schema)
    return settings


def _migrate_embedded(settings: Settings) -> None:
    """An embedded database has no release step: every process brings it up to date."""
    from db.migrate import migrate as apply

    run(with_conn(settings, apply))


def with_services(settings: Settings, *, port: int) -> Settings:
    """Settings with everything a process needs, checked: database (embedded and migrated in
    development when not given), storage, and a public URL (development: this host's)."""
    from taskhook.embedded import EmbeddedServiceError, install_signal_handlers
    from taskhook.runtime import resolve_services

    install_signal_handlers()
    embedded_database = settings.database_url is None
    try:
        settings = resolve_services(settings)
    except EmbeddedServiceError as exc:  # an embedded server that will not start
        raise StartupError(str(exc).splitlines()[0], exit_code=1) from None
    if embedded_database:
        _migrate_embedded(settings)
    if settings.public_url is None:
        url = f"http://127.0.0.1:{port}"
        settings = settings.with_default(f"TASKHOOK_PUBLIC_URL set to {url}", public_url=url)
    preflight(settings, storage=True)
    return settings


def run(coro: Coroutine[Any, Any, T]) -> T:
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:  # pragma: no cover - uvloop comes with uvicorn[standard]
        return asyncio.run(coro)


def start_logging(settings: Settings) -> None:
    """A long-running process: JSON lines, and the standard library's (uvicorn's) the same."""
    from common.logs import configure_logging

    configure_logging(json=not sys.stderr.isatty(), level=settings.log_level, stdlib=True)


async def with_conn(settings: Settings, action: Callable[[Any], Awaitable[T]]) -> T:
    from db.pool import connect

    assert settings.database_url
    conn = await connect(settings.database_url)
    try:
        return await action(conn)
    finally:
        await conn.close()


async def until_signal(work: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Run `work(stop)`; SIGINT/SIGTERM set `stop` so the work drains instead of dying."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await work(stop)


@click.group(help="taskhook: slow, unreliable AI jobs behind a clean API.\n\n" + ENV_HELP)
@click.version_option(package_name="taskhook")
def cli() -> None:
    pass


@cli.command(help="Apply database migrations (idempotent; safe to run concurrently).")
def migrate() -> None:
    from db.migrate import migrate_all

    settings = with_database(load_settings(), schema=False)
    applied = run(with_conn(settings, migrate_all))
    echo_json(
        {
            "applied": [f"{m.version:04d}_{m.name}" for m in applied.migrations],
            "functions": applied.functions,
        }
    )


@cli.command(help="Web app: client API, webhook receiver, health and metrics.")
@click.option("--host", default="127.0.0.1", show_default=True, envvar="TASKHOOK_HOST")
@click.option("--port", default=8000, show_default=True, envvar="PORT", type=int)
@click.option(
    "--workers",
    default=1,
    show_default=True,
    type=click.IntRange(1, 64),
    help="uvicorn worker processes (metrics are summed across them)",
)
def serve(host: str, port: int, workers: int) -> None:
    import uvicorn

    from taskhook.slow_clients import guarded_protocol
    from taskhook.startup import announce

    settings = load_settings()
    start_logging(settings)
    settings = with_services(settings, port=port)
    export_settings(settings)
    if workers > 1:
        _multiprocess_metrics()
    metrics = (
        f"{settings.metrics_host}:{settings.metrics_port}"
        if settings.metrics_port is not None
        else ("web port" if settings.metrics_on_web_port else "off")
    )
    announce(settings, process="web", listen=f"{host}:{port}", workers=workers, metrics=metrics)
    uvicorn.run(
        "taskhook.cli:web_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        # Our own JSON access line (taskhook/middleware.py, TASKHOOK_ACCESS_LOG) replaces
        # uvicorn's; its error lines come out as JSON through the standard library's logging.
        access_log=False,
        log_config=None,
        log_level=None,
        proxy_headers=True,
        # SIGTERM: stop accepting, let in-flight requests finish (up to this long), then exit.
        timeout_graceful_shutdown=30,
        # Slow and idle clients (taskhook/slow_clients.py; web_app adds the in-flight cap).
        http=guarded_protocol(settings.server),
        timeout_keep_alive=settings.server.keepalive_timeout,  # type: ignore[arg-type]
    )


def _multiprocess_metrics() -> None:
    """prometheus_client's multiprocess mode for uvicorn's worker processes (they inherit the
    environment): a private directory, emptied, removed at exit."""
    import atexit
    import shutil
    import tempfile
    from pathlib import Path

    from taskhook.metrics_server import MULTIPROC_ENV

    given = os.environ.get(MULTIPROC_ENV)
    if given:
        for stale in Path(given).glob("*.db"):  # a previous run's: they would add up
            stale.unlink()
        return
    path = tempfile.mkdtemp(prefix="taskhook-metrics-")
    os.environ[MULTIPROC_ENV] = path
    atexit.register(shutil.rmtree, path, ignore_errors=True)


def export_settings(settings: Settings) -> None:
    """Resolved embedded endpoints, for processes uvicorn starts (they re-read the env)."""
    assert settings.database_url and settings.public_url
    os.environ["DATABASE_URL"] = settings.database_url
    os.environ["TASKHOOK_PUBLIC_URL"] = settings.public_url
    os.environ["TASKHOOK_SECRET"] = settings.secret
    os.environ["TASKHOOK_ADMIN_KEY"] = settings.admin_key or "off"
    if settings.s3_endpoint_url:
        os.environ["TASKHOOK_S3_ENDPOINT_URL"] = settings.s3_endpoint_url
        os.environ["TASKHOOK_S3_BUCKET"] = settings.s3_bucket
    if settings.s3_embedded:
        os.environ["AWS_ACCESS_KEY_ID"] = settings.aws_access_key_id or ""
        os.environ["AWS_SECRET_ACCESS_KEY"] = settings.aws_secret_access_key or ""
        os.environ["AWS_REGION"] = settings.aws_region or ""


def web_app() -> Any:
    from common.logs import configure_logging
    from taskhook.app import create_app
    from taskhook.slow_clients import InFlightLimit

    settings = read_settings()  # checked by `serve` already, from the same environment
    # A web process: its whole life, one config.
    configure_logging(json=True, level=settings.log_level, cache=True, stdlib=True)
    return InFlightLimit(create_app(settings), limit=settings.server.max_requests)


def metrics_port_option(f: Any) -> Any:
    return click.option(
        "--metrics-port",
        type=click.IntRange(1, 65535),
        default=None,
        envvar="TASKHOOK_METRICS_PORT",
        help="serve this process's Prometheus metrics on TASKHOOK_METRICS_HOST:PORT/metrics "
        "(TASKHOOK_METRICS_HOST: 127.0.0.1 unless set)",
    )(f)


@asynccontextmanager
async def metrics_served(rt: Any, settings: Settings) -> AsyncIterator[None]:
    """Workers and reconcilers count refunds, polls and storage too: let them be scraped."""
    if settings.metrics_port is None:
        yield
        return
    from taskhook.metrics_server import metrics_listener

    async with metrics_listener(rt.pool, host=settings.metrics_host, port=settings.metrics_port):
        yield


@cli.command(help="Store finished results to S3 and retry pending vendor registrations.")
@click.option("--concurrency", default=4, show_default=True, type=click.IntRange(1, 64))
@metrics_port_option
def worker(concurrency: int, metrics_port: int | None) -> None:
    from taskhook.runtime import open_runtime
    from taskhook.startup import announce
    from taskhook.worker import Worker

    settings = load_settings().with_overrides(metrics_port=metrics_port)
    start_logging(settings)
    settings = with_services(settings, port=8000)
    announce(settings, process="worker", listen=_metrics_listen(settings))

    async def work(stop: asyncio.Event) -> None:
        async with open_runtime(settings) as rt, metrics_served(rt, settings):
            await Worker(rt, concurrency=concurrency).run(stop)

    # The signal handlers first: a SIGTERM while the runtime opens stops the work cleanly.
    run(until_signal(work))


def _metrics_listen(settings: Settings) -> str | None:
    if settings.metrics_port is None:
        return None
    return f"{settings.metrics_host}:{settings.metrics_port}"


@cli.command(
    help="Poll vendors for tasks with no recent callback; fail and refund tasks past "
    "their deadline. --once: one pass, a JSON summary, exit 0 (for cron)."
)
@click.option("--once", is_flag=True, help="one pass, then print a JSON summary and exit")
@click.option("--interval", default=5.0, show_default=True, help="seconds between passes")
@metrics_port_option
def reconcile(once: bool, interval: float, metrics_port: int | None) -> None:
    from lifecycle.reconcile import reconcile_once, run_reconciler
    from taskhook.runtime import open_runtime
    from taskhook.startup import announce

    settings = load_settings()
    if not once:  # a cron pass reports in its JSON summary instead
        settings = settings.with_overrides(metrics_port=metrics_port)
    else:
        settings = settings.with_overrides(metrics_port=None)
    start_logging(settings)
    settings = with_services(settings, port=8000)
    announce(settings, process="reconciler", listen=_metrics_listen(settings), once=once)

    async def work(stop: asyncio.Event) -> None:
        async with open_runtime(settings) as rt, metrics_served(rt, settings):
            if once:
                echo_json((await reconcile_once(rt)).as_dict())
            else:
                await run_reconciler(rt, stop, interval=interval)

    # The signal handlers first: a SIGTERM while the runtime opens stops the work cleanly.
    run(until_signal(work))


@cli.command(
    help="Prune the history as the retention settings say (webhook deliveries, task events, "
    "stored results of old tasks) until nothing is due, and fold ended tasks into the "
    "dashboard's counts; prints a JSON summary. The reconciler does the same on its own timer."
)
def prune() -> None:
    from lifecycle.housekeeping import housekeeping
    from taskhook.runtime import open_runtime

    settings = load_settings()
    start_logging(settings)
    settings = with_services(settings, port=8000)

    async def work() -> dict[str, Any]:
        async with open_runtime(settings) as rt:
            return (await housekeeping(rt, until_done=True)).as_dict()

    echo_json(run(work()))


@cli.command(
    help="Check a deployment before it goes live: database reachable and migrated, bucket "
    "writable, each vendor's credentials, Replicate's webhook secret, the public URL reaching "
    "this deployment, secrets, clock skew. Exit 0 only when every check passes."
)
@click.option("--json", "as_json", is_flag=True, help="one JSON document instead of a table")
def check(as_json: bool) -> None:
    from taskhook.check import run_checks

    settings = load_settings()
    if not settings.production:
        # Development: the embedded services a process would start, so they can be checked.
        from taskhook.runtime import resolve_services

        settings = resolve_services(settings)
    results = run(run_checks(settings))
    ok = all(r.ok for r in results)
    if as_json:
        echo_json({"ok": ok, "checks": [r.as_dict() for r in results]})
    else:
        width = max(len(r.name) for r in results)
        click.echo(f"{'check':<{width}}  result  detail")
        for r in results:
            click.echo(f"{r.name:<{width}}  {'pass' if r.ok else 'FAIL':<6}  {r.detail}")
        click.echo(f"{'all checks pass' if ok else 'some checks FAIL'}")
    sys.exit(0 if ok else 1)


@cli.command(
    help="A local vendor speaking the real APIs and webhooks of Replicate (/v1), fal (/fal) "
    "and midjourney-proxy (/mj), with faults."
)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8010, show_default=True, type=int)
@click.option(
    "--drop", default=0.0, type=click.FloatRange(0, 1), help="fraction of webhooks never sent"
)
@click.option("--duplicate", default=0.0, type=click.FloatRange(0, 1), help="fraction sent twice")
@click.option(
    "--delay", default=0.0, type=click.FloatRange(0), help="max extra seconds per webhook"
)
@click.option("--reorder", is_flag=True, help="send a job's webhooks in shuffled order")
@click.option("--fail", default=0.0, type=click.FloatRange(0, 1), help="fraction of jobs that fail")
@click.option(
    "--error-rate",
    default=0.0,
    type=click.FloatRange(0, 1),
    help="fraction of API calls answered 503 or 429",
)
@click.option("--early", is_flag=True, help="send callbacks before the create call returns")
@click.option(
    "--lost-answers",
    default=0.0,
    type=click.FloatRange(0, 1),
    help="fraction of Replicate creates that make the job but answer 504",
)
@click.option(
    "--bad-signature",
    default=0.0,
    type=click.FloatRange(0, 1),
    help="fraction of webhooks preceded by a wrongly signed copy",
)
@click.option("--job-seconds", default=3.0, show_default=True, type=click.FloatRange(0))
@click.option(
    "--time-scale",
    default=1.0,
    show_default=True,
    type=click.FloatRange(0, min_open=True),
    help="factor on the vendors' own clocks: a 429's announced wait, webhook retry schedules, "
    "result retention (1 = the real vendor)",
)
@click.option("--seed", default=None, type=int)
@click.option(
    "--webhook-secret",
    default=None,
    envvar="REPLICATE_WEBHOOK_SECRET",
    help="whsec_... secret to sign with (default: generated, served at "
    "/v1/webhooks/default/secret)",
)
@click.option("--fal-key", default=None, help="require `Authorization: Key <key>` on /fal calls")
@click.option(
    "--fal-payload-error",
    default=0.0,
    type=click.FloatRange(0, 1),
    help="fraction of fal's successful webhooks sent without their payload (payload_error)",
)
@click.option("--mj-secret", default=None, help="require this mj-api-secret on /mj calls")
@click.option(
    "--mj-dialect",
    type=click.Choice(["novicezk", "trueai"]),
    default="novicezk",
    show_default=True,
    help="which midjourney-proxy fork /mj is: novicezk (/mj/submit/change) or trueai "
    "(buttons, /mj/submit/action, MODAL tasks and code 21, 204 for unknown tasks)",
)
@click.option(
    "--mj-lag",
    default=0.0,
    type=click.FloatRange(0),
    help="seconds a finished midjourney job still looks unfinished to fetch and actions",
)
def simulator(
    host: str,
    port: int,
    drop: float,
    duplicate: float,
    delay: float,
    reorder: bool,
    fail: float,
    error_rate: float,
    early: bool,
    lost_answers: float,
    bad_signature: float,
    job_seconds: float,
    time_scale: float,
    seed: int | None,
    webhook_secret: str | None,
    fal_key: str | None,
    fal_payload_error: float,
    mj_secret: str | None,
    mj_dialect: str,
    mj_lag: float,
) -> None:
    from simulator import SimulatorConfig, serve

    extra = {"webhook_secret": webhook_secret.split(",")[0]} if webhook_secret else {}
    config = SimulatorConfig(
        drop=drop,
        duplicate=duplicate,
        delay=delay,
        reorder=reorder,
        fail=fail,
        error_rate=error_rate,
        early=early,
        lost_answers=lost_answers,
        bad_signature=bad_signature,
        seed=seed,
        job_seconds=job_seconds,
        time_scale=time_scale,
        fal_key=fal_key,
        fal_payload_error=fal_payload_error,
        mj_secret=mj_secret,
        mj_dialect=mj_dialect,
        mj_lag=mj_lag,
        **extra,  # type: ignore[arg-type]
    )
    click.echo(
        f"simulator on http://{host}:{port}  webhook secret {config.webhook_secret}", err=True
    )
    run(until_signal(lambda stop: _serve_until(serve(config, host=host, port=port), stop)))


async def _serve_until(server: Coroutine[Any, Any, None], stop: asyncio.Event) -> None:
    task = asyncio.ensure_future(server)
    stopper = asyncio.ensure_future(stop.wait())
    await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    for t in (task, stopper):
        t.cancel()
    await asyncio.gather(task, stopper, return_exceptions=True)


@cli.group(help="User administration.")
def users() -> None:
    pass


@users.command("create", help='Create a user; prints {"user_id", "api_key"} once.')
@click.argument("email")
@click.option("--credits", default=0, show_default=True, type=click.IntRange(0))
def users_create(email: str, credits: int) -> None:
    import asyncpg

    from common.errors import ValidationFailed
    from common.ids import format_user_id
    from lifecycle.user_accounts import check_email
    from lifecycle.users import create_user

    try:
        check_email(email)  # before any database is started
    except ValidationFailed as exc:
        raise click.ClickException(exc.message) from None
    settings = with_database(load_settings())
    try:
        user_id, key = run(
            with_conn(settings, lambda c: create_user(c, email=email, credits=credits))
        )
    except asyncpg.UniqueViolationError:
        raise click.ClickException(f"a user with email {email!r} already exists") from None
    except ValidationFailed as exc:  # not an email address
        raise click.ClickException(exc.message) from None
    echo_json({"user_id": format_user_id(user_id), "api_key": key})


@cli.group(help="Credit administration, always through the ledger.")
def credits() -> None:
    pass


@credits.command("grant", help="Give EMAIL N credits.")
@click.argument("email")
@click.argument("amount", type=click.IntRange(1))
def credits_grant(email: str, amount: int) -> None:
    from common.errors import NotFound
    from lifecycle.users import grant

    settings = with_database(load_settings())
    try:
        balance = run(with_conn(settings, lambda c: grant(c, email=email, amount=amount)))
    except NotFound as exc:
        raise click.ClickException(exc.message) from None
    echo_json({"email": email, "credits": balance})


@credits.command("show", help="Show EMAIL's balance.")
@click.argument("email")
def credits_show(email: str) -> None:
    from db import queries

    settings = with_database(load_settings())
    user = run(with_conn(settings, lambda c: queries.get_user_by_email(c, email=email)))
    if user is None:
        raise click.ClickException(f"no user with email {email!r}")
    echo_json({"email": email, "credits": user.balance})


@cli.group(help="Operator views of tasks.")
def tasks() -> None:
    pass


@tasks.command("list", help="Newest tasks first; a table, or --json.")
@click.option(
    "--status",
    type=click.Choice(
        [
            "active",
            "pending",
            "submitted",
            "processing",
            "storing",
            "completed",
            "failed",
            "canceled",
        ]
    ),
    help="one state, or `active`: every unfinished one",
)
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10_000))
@json_option
def tasks_list(status: str | None, limit: int, as_json: bool) -> None:
    from db import operations_queries, queries
    from lifecycle.task_detail import task_summary

    settings = with_database(load_settings())

    async def fetch(conn: Any) -> Any:
        if status == "active":
            return await operations_queries.list_tasks_active(conn, limit=limit)
        return await queries.list_tasks(conn, status=status, limit=limit)

    rows = [task_summary(t) for t in run(with_conn(settings, fetch))]
    if as_json:
        echo_json(rows)
        return
    echo_table(
        ["id", "status", "progress", "vendor", "model", "cost", "created", "last error"],
        [
            [
                r["id"],
                r["status"] + (" (refunded)" if r["refunded"] else ""),
                f"{r['progress']}%",
                r["vendor"],
                r["model"],
                r["cost"],
                r["created_at"],
                (r["last_error"] or "")[:60],
            ]
            for r in rows
        ],
    )


@tasks.command(
    "show",
    help="One task's whole story: owner, input, cost, vendor job, errors in full, ledger "
    "rows, events and webhooks.",
)
@click.argument("task_id")
@json_option
def tasks_show(task_id: str, as_json: bool) -> None:
    from common.ids import parse_task_id
    from lifecycle.task_detail import task_detail

    parsed = parse_task_id(task_id)
    if parsed is None:
        raise click.ClickException(f"{task_id!r} is not a task id (tsk_...)")
    settings = with_database(load_settings())
    detail = run(with_conn(settings, lambda c: task_detail(c, task_id=parsed)))
    if detail is None:
        raise click.ClickException(f"no task {task_id}")
    if as_json:
        echo_json(detail)
        return
    owner = detail["owner"] or {}
    fields = [
        ("task", detail["id"]),
        ("status", detail["status"] + (" (refunded)" if detail["refunded"] else "")),
        ("owner", f"{owner.get('email')} ({owner.get('id')})"),
        ("model", f"{detail['model']} (at {detail['vendor']}: {detail['vendor_model']})"),
        ("vendor job", detail["vendor_task_id"]),
        ("input", json.dumps(detail["input"])),
        ("cost", detail["cost"]),
        ("progress", f"{detail['progress']}%"),
        ("created", detail["created_at"]),
        ("updated", detail["updated_at"]),
        ("deadline", detail["deadline_at"]),
        ("completed", detail["completed_at"]),
        ("attempts", detail["attempts"]),
        ("last error", detail["last_error"]),
        ("error", json.dumps(detail["error"]) if detail["error"] else None),
        ("parent", detail["parent_id"]),
        ("trace", detail["trace_id"]),
    ]
    for name, value in fields:
        click.echo(f"{name + ':':<11} {'-' if value in (None, '') else value}")
    click.echo("\nledger")
    echo_table(
        ["kind", "amount", "note", "when"],
        [[r["kind"], r["amount"], r["note"], r["created_at"]] for r in detail["ledger"]],
    )
    click.echo("\nevents")
    echo_table(
        ["when", "from", "to", "applied", "cause", "key"],
        [
            [
                e["created_at"],
                e["from_status"],
                e["to_status"],
                e["applied"],
                e["cause"],
                e["event_key"],
            ]
            for e in detail["events"]
        ],
    )
    click.echo("\nwebhooks")
    echo_table(
        ["id", "vendor", "status", "outcome", "received", "error"],
        [
            [d["id"], d["vendor"], d["status"], d["outcome"], d["received_at"], d["error"]]
            for d in detail["deliveries"]
        ],
    )


@cli.group(help="The webhook inbox and its dead letters.")
def deliveries() -> None:
    pass


@deliveries.command(
    "list", help="Recent deliveries, a table (or --json); --rejected for dead letters only."
)
@click.option("--rejected", is_flag=True)
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10_000))
@json_option
def deliveries_list(rejected: bool, limit: int, as_json: bool) -> None:
    from common.ids import format_task_id
    from common.times import iso_time
    from db import queries

    settings = with_database(load_settings())
    found = run(
        with_conn(
            settings,
            lambda c: queries.list_deliveries(
                c, status="rejected" if rejected else None, limit=limit
            ),
        )
    )
    rows = [
        {
            **dataclasses.asdict(r),
            "task_id": format_task_id(r.task_id) if r.task_id else None,
            "received_at": iso_time(r.received_at),
        }
        for r in found
    ]
    if as_json:
        echo_json(rows)
        return
    echo_table(
        ["id", "vendor", "status", "outcome", "task", "received", "bytes", "error"],
        [
            [
                r["id"],
                r["vendor"],
                r["status"],
                r["outcome"],
                r["task_id"],
                r["received_at"],
                r["bytes"],
                (r["error"] or "")[:60],
            ]
            for r in rows
        ],
    )


@deliveries.command("replay", help="Re-run one rejected delivery through the receiver logic.")
@click.argument("delivery_id", type=int)
def deliveries_replay(delivery_id: int) -> None:
    from common.errors import NotFound
    from lifecycle.replay import replay_delivery
    from taskhook.runtime import open_runtime

    settings = with_services(load_settings(), port=8000)

    async def main() -> Any:
        async with open_runtime(settings) as rt:
            return await replay_delivery(rt, delivery_id)

    try:
        result = run(main())
    except NotFound as exc:
        raise click.ClickException(exc.message) from None
    echo_json({"id": result.delivery_row_id, "status": result.status, "message": result.message})
    sys.exit(0 if result.status != "rejected" else 1)


@cli.command(
    help="Check invariants: balance = sum(ledger), one refund at most per task, no "
    "open task past its deadline; what changed since the last clean run, or --full. Exit 1 "
    "with a report when one fails."
)
@click.option(
    "--grace",
    type=float,
    default=None,
    help="seconds past a deadline before an open task counts as a violation [default: 60 "
    "(a reconciler interval, at most cron's minute) + TASKHOOK_VENDOR_TIMEOUT (its last poll)]",
)
@click.option(
    "--full",
    is_flag=True,
    help="check the whole history, not only what changed since the last clean run",
)
def audit(grace: float | None, full: bool) -> None:
    from lifecycle.audit import default_grace, run_audit

    settings = with_database(load_settings())
    allowed = default_grace(settings) if grace is None else grace
    report = run(
        with_conn(
            settings,
            lambda c: run_audit(
                c,
                grace_seconds=allowed,
                storage_deadline=settings.storage_deadline,
                incremental=not full,
            ),
        )
    )
    echo_json(report.as_dict())
    sys.exit(0 if report.ok else 1)


@cli.command(
    help="The main job on embedded defaults: PostgreSQL, S3, the vendor simulator, "
    "web app, worker and reconciler; submits N tasks as a client would, shows "
    "live progress and prints a summary."
)
@click.option("--tasks", "count", default=20, show_default=True, type=click.IntRange(1, 100_000))
@click.option("--chaos", is_flag=True, help="turn on the simulator's faults")
@click.option("--port", default=0, type=int, help="web port (default: any free port)")
@click.option("--keep-serving", is_flag=True, help="keep running after the summary")
def demo(count: int, chaos: bool, port: int, keep_serving: bool) -> None:
    from taskhook.demo import run_demo

    settings = load_settings()
    if settings.production:
        raise StartupError(
            "taskhook demo runs on embedded services and the simulator; it does not run with "
            "TASKHOOK_ENV=production",
            exit_code=2,
        )
    from taskhook.embedded import install_signal_handlers

    install_signal_handlers()
    ok = run(run_demo(settings, tasks=count, chaos=chaos, port=port, keep_serving=keep_serving))
    sys.exit(0 if ok else 1)


def _add_account_commands() -> None:
    """users list, keys, credits adjust, models (taskhook/cli_accounts.py)."""
    from taskhook import cli_accounts

    users.add_command(cli_accounts.users_list)
    credits.add_command(cli_accounts.credits_adjust)
    cli.add_command(cli_accounts.keys)
    cli.add_command(cli_accounts.models)


_add_account_commands()
cli.add_command(webhooks)

__all__ = ["cli", "main"]


def main() -> None:
    cli(prog_name="taskhook")


if __name__ == "__main__":
    main()
