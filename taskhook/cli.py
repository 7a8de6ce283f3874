"""`taskhook`: one command for every process kind and every operator action (API.md)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import replace
from typing import Any, TypeVar

import click

from taskhook.settings import Settings, SettingsError

T = TypeVar("T")

ENV_HELP = (
    "Configuration comes from the environment (DATABASE_URL, TASKHOOK_DATA_DIR, "
    "TASKHOOK_S3_ENDPOINT_URL, REPLICATE_API_TOKEN, ...; see docs/API.md). With no "
    "DATABASE_URL or S3 endpoint, embedded servers are started under TASKHOOK_DATA_DIR."
)


def load_settings() -> Settings:
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        raise click.UsageError(str(exc)) from None
    if settings.production and (problem := vendor_settings_problem(settings)):
        raise click.UsageError(problem)
    return settings


def vendor_settings_problem(settings: Settings) -> str | None:
    """What a configured vendor cannot work with, known without calling anyone: Replicate
    delivers webhooks only to an https URL it can reach (issue 16.6)."""
    if settings.replicate is not None:
        from vendors.replicate import webhook_base_problem

        return webhook_base_problem(settings.public_url)
    return None


def with_database(settings: Settings) -> Settings:
    """Settings with a database: DATABASE_URL, or the embedded server (started if needed)."""
    if settings.database_url:
        return settings
    from taskhook.embedded import install_signal_handlers, start_postgres

    install_signal_handlers()
    return replace(settings, database_url=start_postgres(settings.data_dir).dsn)


def with_services(settings: Settings, *, port: int) -> Settings:
    from taskhook.embedded import install_signal_handlers
    from taskhook.runtime import resolve_services

    install_signal_handlers()
    settings = resolve_services(settings)
    if settings.public_url is None:
        settings = replace(settings, public_url=f"http://127.0.0.1:{port}")
    return settings


def run(coro: Coroutine[Any, Any, T]) -> T:
    from taskhook.logs import configure_logging

    configure_logging(json=not sys.stderr.isatty())
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:  # pragma: no cover - uvloop comes with uvicorn[standard]
        return asyncio.run(coro)


async def with_conn(settings: Settings, action: Callable[[Any], Awaitable[T]]) -> T:
    from db.pool import connect

    assert settings.database_url
    conn = await connect(settings.database_url)
    try:
        return await action(conn)
    finally:
        await conn.close()


def echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, default=str))


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


@cli.command(
    help="Check that the configured vendors can reach this deployment: prints one JSON document "
    "{ok, checks: [{name, ok, detail}]}, exit 0 only when every check passes."
)
def check() -> None:
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        raise click.UsageError(str(exc)) from None
    results = run(vendor_url_checks(settings))
    echo_json(
        {
            "ok": all(ok for _, ok, _ in results),
            "checks": [{"name": name, "ok": ok, "detail": detail} for name, ok, detail in results],
        }
    )
    if not all(ok for _, ok, _ in results):
        sys.exit(1)


async def vendor_url_checks(settings: Settings) -> list[tuple[str, bool, str]]:
    """Replicate must be able to deliver to TASKHOOK_PUBLIC_URL: https, reachable, and no
    redirect in front of it (it follows none)."""
    if settings.replicate is None:
        return []
    import httpx

    from vendors.replicate import webhook_base_problem, webhook_redirect_problem

    name = "replicate webhook url"
    problem = webhook_base_problem(settings.public_url)
    if problem is None and settings.public_url:
        try:
            async with httpx.AsyncClient(timeout=10.0) as client:
                problem = await webhook_redirect_problem(client, settings.public_url)
        except httpx.HTTPError as exc:
            problem = f"{settings.public_url} did not answer: {exc!r}"
    if problem:
        return [(name, False, problem)]
    return [(name, True, f"{settings.public_url} is https and answers webhooks without a redirect")]


@cli.command(help="Apply database migrations (idempotent; safe to run concurrently).")
def migrate() -> None:
    from db.migrate import migrate as apply

    settings = with_database(load_settings())
    applied = run(with_conn(settings, apply))
    echo_json({"applied": [f"{m.version:04d}_{m.name}" for m in applied]})


@cli.command(help="Web app: client API, webhook receiver, health and metrics.")
@click.option("--host", default="127.0.0.1", show_default=True, envvar="TASKHOOK_HOST")
@click.option("--port", default=8000, show_default=True, envvar="PORT", type=int)
@click.option(
    "--workers",
    default=1,
    show_default=True,
    type=click.IntRange(1, 64),
    help="uvicorn worker processes",
)
def serve(host: str, port: int, workers: int) -> None:
    import uvicorn

    from db.migrate import migrate as apply
    from taskhook.slow_clients import guarded_protocol

    settings = with_services(load_settings(), port=port)
    if load_settings().database_url is None:
        run(with_conn(settings, apply))  # embedded: nobody else runs the release step
    export_settings(settings)
    uvicorn.run(
        "taskhook.cli:web_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        access_log=False,
        log_level="warning",
        proxy_headers=True,
        # SIGTERM: stop accepting, let in-flight requests finish (up to this long), then exit.
        timeout_graceful_shutdown=30,
        # Slow and idle clients (taskhook/slow_clients.py; web_app adds the in-flight cap).
        http=guarded_protocol(settings.server),
        timeout_keep_alive=settings.server.keepalive_timeout,  # type: ignore[arg-type]
    )


def export_settings(settings: Settings) -> None:
    """Resolved embedded endpoints, for processes uvicorn starts (they re-read the env)."""
    assert settings.database_url and settings.public_url
    os.environ["DATABASE_URL"] = settings.database_url
    os.environ["TASKHOOK_PUBLIC_URL"] = settings.public_url
    os.environ["TASKHOOK_SECRET"] = settings.secret
    os.environ["TASKHOOK_ADMIN_KEY"] = settings.admin_key
    if settings.s3_endpoint_url:
        os.environ["TASKHOOK_S3_ENDPOINT_URL"] = settings.s3_endpoint_url
        os.environ["AWS_ACCESS_KEY_ID"] = settings.aws_access_key_id or ""
        os.environ["AWS_SECRET_ACCESS_KEY"] = settings.aws_secret_access_key or ""
        os.environ["AWS_REGION"] = settings.aws_region


def web_app() -> Any:
    from taskhook.app import create_app
    from taskhook.logs import configure_logging
    from taskhook.slow_clients import InFlightLimit

    configure_logging(json=True, cache=True)  # a web process: its whole life, one config
    settings = load_settings()
    return InFlightLimit(create_app(settings), limit=settings.server.max_requests)


def metrics_port_option(f: Any) -> Any:
    return click.option(
        "--metrics-port",
        type=click.IntRange(1, 65535),
        default=None,
        envvar="TASKHOOK_METRICS_PORT",
        help="serve this process's Prometheus metrics on 127.0.0.1:PORT/metrics "
        "(web processes have /metrics already)",
    )(f)


def serve_metrics(port: int | None) -> None:
    """Workers and reconcilers count refunds, polls and storage too: let them be scraped."""
    if port is not None:
        from prometheus_client import start_http_server

        start_http_server(port, addr="127.0.0.1")


@cli.command(help="Store finished results to S3 and retry pending vendor registrations.")
@click.option("--concurrency", default=4, show_default=True, type=click.IntRange(1, 64))
@metrics_port_option
def worker(concurrency: int, metrics_port: int | None) -> None:
    from taskhook.runtime import open_runtime
    from taskhook.worker import Worker

    settings = with_services(load_settings(), port=8000)
    serve_metrics(metrics_port)

    async def main() -> None:
        async with open_runtime(settings) as rt:
            await until_signal(Worker(rt, concurrency=concurrency).run)

    run(main())


@cli.command(
    help="Poll vendors for tasks with no recent callback; fail and refund tasks past "
    "their deadline. --once: one pass, a JSON summary, exit 0 (for cron)."
)
@click.option("--once", is_flag=True, help="one pass, then print a JSON summary and exit")
@click.option("--interval", default=5.0, show_default=True, help="seconds between passes")
@metrics_port_option
def reconcile(once: bool, interval: float, metrics_port: int | None) -> None:
    from reconciler.reconcile import reconcile_once, run_reconciler
    from taskhook.runtime import open_runtime

    settings = with_services(load_settings(), port=8000)
    if not once:
        serve_metrics(metrics_port)  # a cron pass reports in its JSON summary instead

    async def main() -> None:
        async with open_runtime(settings) as rt:
            if once:
                echo_json((await reconcile_once(rt)).as_dict())
            else:
                await until_signal(lambda stop: run_reconciler(rt, stop, interval=interval))

    run(main())


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
    from vendors.simulator import SimulatorConfig, serve

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

    from db.models import format_user_id
    from taskhook.users import create_user

    settings = with_database(load_settings())
    try:
        user_id, key = run(
            with_conn(settings, lambda c: create_user(c, email=email, credits=credits))
        )
    except asyncpg.UniqueViolationError:
        raise click.ClickException(f"a user with email {email!r} already exists") from None
    click.echo(json.dumps({"user_id": format_user_id(user_id), "api_key": key}))


@cli.group(help="Credit administration, always through the ledger.")
def credits() -> None:
    pass


@credits.command("grant", help="Give EMAIL N credits.")
@click.argument("email")
@click.argument("amount", type=click.IntRange(1))
def credits_grant(email: str, amount: int) -> None:
    from taskhook.errors import NotFound
    from taskhook.users import grant

    settings = with_database(load_settings())
    try:
        balance = run(with_conn(settings, lambda c: grant(c, email=email, amount=amount)))
    except NotFound as exc:
        raise click.ClickException(exc.message) from None
    click.echo(json.dumps({"email": email, "credits": balance}))


@credits.command("show", help="Show EMAIL's balance.")
@click.argument("email")
def credits_show(email: str) -> None:
    from db import queries

    settings = with_database(load_settings())
    user = run(with_conn(settings, lambda c: queries.get_user_by_email(c, email=email)))
    if user is None:
        raise click.ClickException(f"no user with email {email!r}")
    click.echo(json.dumps({"email": email, "credits": user.balance}))


@cli.group(help="Operator views of tasks.")
def tasks() -> None:
    pass


def _task_row(task: Any) -> dict[str, Any]:
    return {
        "id": task.public_id,
        "status": task.status.value,
        "progress": task.progress,
        "vendor": task.vendor,
        "vendor_task_id": task.vendor_task_id,
        "model": task.model,
        "created_at": task.created_at,
        "updated_at": task.updated_at,
        "deadline_at": task.deadline_at,
        "attempts": task.attempts,
        "last_error": task.last_error,
        "error": task.error,
        "refunded": task.refunded,
    }


@tasks.command("list", help="Newest tasks first.")
@click.option(
    "--status",
    type=click.Choice(
        ["pending", "submitted", "processing", "storing", "completed", "failed", "canceled"]
    ),
)
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10_000))
def tasks_list(status: str | None, limit: int) -> None:
    from db import queries

    settings = with_database(load_settings())
    found = run(with_conn(settings, lambda c: queries.list_tasks(c, status=status, limit=limit)))
    echo_json([_task_row(t) for t in found])


@tasks.command("show", help="One task with its audit trail.")
@click.argument("task_id")
def tasks_show(task_id: str) -> None:
    from db import queries
    from db.models import parse_task_id

    parsed = parse_task_id(task_id)
    if parsed is None:
        raise click.ClickException(f"{task_id!r} is not a task id (tsk_...)")
    settings = with_database(load_settings())

    async def fetch(conn: Any) -> Any:
        task = await queries.get_task(conn, task_id=parsed, user_id=None)
        events = await conn.fetch(
            "SELECT event_key, from_status::text, to_status::text, applied, cause, created_at"
            " FROM task_events WHERE task_id = $1 ORDER BY id",
            parsed,
        )
        return task, [dict(e) for e in events]

    task, events = run(with_conn(settings, fetch))
    if task is None:
        raise click.ClickException(f"no task {task_id}")
    echo_json({**_task_row(task), "outputs": task.outputs, "result": task.result, "events": events})


@cli.group(help="The webhook inbox and its dead letters.")
def deliveries() -> None:
    pass


@deliveries.command("list", help="Recent deliveries; --rejected for dead letters only.")
@click.option("--rejected", is_flag=True)
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10_000))
def deliveries_list(rejected: bool, limit: int) -> None:
    from db import queries

    settings = with_database(load_settings())
    rows = run(
        with_conn(
            settings,
            lambda c: queries.list_deliveries(
                c, status="rejected" if rejected else None, limit=limit
            ),
        )
    )
    echo_json([dict(r) for r in rows])


@deliveries.command("replay", help="Re-run one rejected delivery through the receiver logic.")
@click.argument("delivery_id", type=int)
def deliveries_replay(delivery_id: int) -> None:
    from receiver.replay import replay_delivery
    from taskhook.errors import NotFound
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
    "open task past its deadline. Exit 1 with a report when one fails."
)
@click.option(
    "--grace",
    type=float,
    default=None,
    help="seconds past a deadline before an open task counts as a violation [default: 60 "
    "(a reconciler interval, at most cron's minute) + TASKHOOK_VENDOR_TIMEOUT (its last poll)]",
)
def audit(grace: float | None) -> None:
    from taskhook.audit import default_grace, run_audit

    settings = with_database(load_settings())
    allowed = default_grace(settings) if grace is None else grace
    report = run(
        with_conn(
            settings,
            lambda c: run_audit(
                c, grace_seconds=allowed, storage_deadline=settings.storage_deadline
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
    from taskhook.embedded import install_signal_handlers

    install_signal_handlers()
    ok = run(run_demo(settings, tasks=count, chaos=chaos, port=port, keep_serving=keep_serving))
    sys.exit(0 if ok else 1)


def main() -> None:
    cli(prog_name="taskhook")


if __name__ == "__main__":
    main()
