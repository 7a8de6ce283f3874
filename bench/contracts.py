"""What request/response models cost on the submit path (issue 19.3): pydantic v2 or msgspec.

Three measurements, each against today's hand-written code in the same run (the baseline):

1. validating a submit body (`{"model", "input", "vendor"}`, already decoded by read_json, which
   keeps its own checks) N times: the hand-written shape checks of submit/routes.py, a pydantic
   model (`model_validate`), a msgspec Struct (`msgspec.convert`); and a bad body (three
   problems) through each, since an error must list every problem (msgspec stops at the first);
2. rendering a task object to JSON bytes N times: today's dict + `json.dumps` (what Starlette's
   JSONResponse does), a pydantic model's `model_dump_json`, a msgspec Struct's `json.encode`;
3. POST /v1/tasks in-process through httpx's ASGI transport with a real database (accept,
   charge, insert; the vendor call is background work), with the body validated by each of
   the three: what the choice costs per request where it matters.

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres .venv/bin/python bench/contracts.py
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import httpx
import msgspec
import pydantic

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

N = 20_000
ROUNDS = 5
REQUESTS = 200
BODY: dict[str, Any] = {
    "model": "black-forest-labs/flux-schnell",
    "input": {"prompt": "a red fox in the snow", "num_outputs": 1, "seed": 42},
    "vendor": "replicate",
}
BAD: dict[str, Any] = {"model": "", "input": [], "colour": "red"}


# -- validation -------------------------------------------------------------------------------


def hand_written(body: Any) -> list[dict[str, str]]:
    """submit/routes.py's shape checks before this issue (routing aside)."""
    if not isinstance(body, dict):
        return [{"field": "", "message": "the body must be a JSON object"}]
    problems = [{"field": n, "message": "unknown field"} for n in sorted(set(body) - FIELDS)]
    vendor = body.get("vendor")
    if "vendor" in body and not isinstance(vendor, str):
        problems.append({"field": "vendor", "message": "must be one of: replicate"})
    model = body.get("model")
    if not isinstance(model, str) or not model.strip() or len(model) > 200:
        problems.append({"field": "model", "message": "required: a model name of 1-200 characters"})
    if not isinstance(body.get("input"), dict):
        problems.append({"field": "input", "message": "required: an object of model inputs"})
    return problems


FIELDS = {"model", "input", "vendor"}


class PydanticNewTask(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", strict=True)
    model: str = pydantic.Field(min_length=1, max_length=200, pattern=r"\S")
    input: dict[str, Any]
    vendor: str | None = None


_PYDANTIC = PydanticNewTask


def with_pydantic(body: Any) -> list[dict[str, str]]:
    try:
        _PYDANTIC.model_validate(body)
    except pydantic.ValidationError as exc:
        return [{"field": ".".join(map(str, e["loc"])), "message": e["msg"]} for e in exc.errors()]
    return []


class MsgspecNewTask(msgspec.Struct, forbid_unknown_fields=True):
    model: str
    input: dict[str, Any]
    vendor: str | None = None


def with_msgspec(body: Any) -> list[dict[str, str]]:
    try:
        task = msgspec.convert(body, type=MsgspecNewTask)
    except msgspec.ValidationError as exc:
        return [{"field": "", "message": str(exc)}]  # the first problem only
    if not task.model.strip() or len(task.model) > 200:
        return [{"field": "model", "message": "required: a model name of 1-200 characters"}]
    return []


# -- rendering --------------------------------------------------------------------------------

TASK: dict[str, Any] = {
    "id": "tsk_" + "0" * 32,
    "status": "completed",
    "progress": 100,
    "vendor": "replicate",
    "model": "black-forest-labs/flux-schnell",
    "input": BODY["input"],
    "cost": 1,
    "created_at": "2026-12-06T12:00:00.123456Z",
    "updated_at": "2026-12-06T12:00:03.5Z",
    "deadline_at": "2026-12-06T12:30:00.123456Z",
    "completed_at": "2026-12-06T12:00:03.5Z",
    "result": {
        "url": "https://s3.example.com/results/x/0.png?X-Amz-Signature=" + "a" * 64,
        "content_type": "image/png",
        "bytes": 123456,
        "sha256": "b" * 64,
    },
    "error": None,
    "refunded": False,
    "parent_id": None,
}


class PydanticResult(pydantic.BaseModel):
    url: str
    content_type: str
    bytes: int
    sha256: str


class PydanticTask(pydantic.BaseModel):
    id: str
    status: Literal["pending", "submitted", "processing", "storing", "completed", "failed"]
    progress: int | None
    vendor: str
    model: str
    input: dict[str, Any]
    cost: int
    created_at: str
    updated_at: str
    deadline_at: str
    completed_at: str | None
    result: PydanticResult | None
    error: dict[str, str] | None
    refunded: bool
    parent_id: str | None


class MsgspecResult(msgspec.Struct):
    url: str
    content_type: str
    bytes: int
    sha256: str


class MsgspecTask(msgspec.Struct):
    id: str
    status: str
    progress: int | None
    vendor: str
    model: str
    input: dict[str, Any]
    cost: int
    created_at: str
    updated_at: str
    deadline_at: str
    completed_at: str | None
    result: MsgspecResult | None
    error: dict[str, str] | None
    refunded: bool
    parent_id: str | None


def render_dict() -> bytes:
    task = dict(TASK)
    task["result"] = dict(TASK["result"])
    return json.dumps(task, ensure_ascii=False, separators=(",", ":")).encode()


def render_pydantic() -> bytes:
    fields = {**TASK, "result": PydanticResult(**TASK["result"])}
    return PydanticTask.model_construct(**fields).model_dump_json().encode()


_ENCODER = msgspec.json.Encoder()


def render_msgspec() -> bytes:
    return _ENCODER.encode(MsgspecTask(**{**TASK, "result": MsgspecResult(**TASK["result"])}))


# -- timing -----------------------------------------------------------------------------------


def per_call(fn: Callable[[], object]) -> float:
    """Median over ROUNDS of the mean microseconds per call over N calls."""
    samples = []
    for _ in range(ROUNDS):
        started = time.perf_counter()
        for _ in range(N):
            fn()
        samples.append((time.perf_counter() - started) / N * 1e6)
    return statistics.median(samples)


def table(title: str, rows: dict[str, Callable[[], object]]) -> dict[str, float]:
    print(f"\n{title} (median of {ROUNDS} rounds of {N} calls)")
    results = {name: per_call(fn) for name, fn in rows.items()}
    base = next(iter(results.values()))
    for name, us in results.items():
        print(f"  {name:<34} {us:8.2f} us/call   x{us / base:5.2f} of baseline")
    return results


async def endpoint() -> None:
    """POST /v1/tasks through ASGI with each validator plugged into submit/routes.py."""
    from dataclasses import replace

    from seeding import fresh_database
    from webhook_ingest import s3_env

    from common.logs import configure_logging
    from common.settings import Settings
    from lifecycle.users import create_user
    from submit import routes as submit_routes
    from taskhook.app import create_app
    from taskhook.runtime import open_runtime
    from vendors.replicate import ReplicateSettings

    configure_logging(json=True, level="error")
    original = submit_routes.check_shape
    shapes: dict[str, Callable[[Any], tuple[Any, dict[str, str]]]] = {
        "hand-written (before 19.3)": legacy_shape,
        "pydantic (submit/contracts.py)": original,
        "msgspec": msgspec_shape,
    }
    data_dir = Path("/tmp/taskhook-bench")  # noqa: S108 - bench scratch, outside the repo
    env = await s3_env(data_dir)
    async with fresh_database() as (_admin, _name, dsn):
        settings = replace(
            Settings(data_dir=data_dir, database_url=dsn, public_url="http://bench"),
            secret="s" * 43,
            s3_endpoint_url=env["TASKHOOK_S3_ENDPOINT_URL"],
            s3_bucket=env.get("TASKHOOK_S3_BUCKET", "taskhook"),
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
            rate_limit=0,
            max_active_tasks=0,
            registration_timeout=0.01,
            max_registration_attempts=1,
            vendor_settings={
                "replicate": ReplicateSettings(
                    api_token="t",  # noqa: S106 - a stand-in vendor nobody calls
                    api_base="http://127.0.0.1:9/v1",
                )
            },
        )
        async with open_runtime(settings, apply_migrations=True) as rt:
            async with rt.pool.acquire() as conn:
                _, key = await create_user(conn, email="bench@example.com", credits=10**9)
            app = create_app(settings, runtime=rt)
            transport = httpx.ASGITransport(app=app)
            headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
            body = json.dumps({k: v for k, v in BODY.items() if k != "vendor"}).encode()
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                print(
                    f"\nPOST /v1/tasks in-process (ASGI, real PostgreSQL), {ROUNDS} rounds of "
                    f"{REQUESTS} requests per variant, the variants interleaved"
                )
                samples: dict[str, list[float]] = {name: [] for name in shapes}
                for _ in range(ROUNDS):
                    for name, shape in shapes.items():
                        submit_routes.check_shape = shape
                        started = time.perf_counter()
                        for _ in range(REQUESTS):
                            r = await client.post(
                                "/v1/tasks",
                                content=body,
                                headers={**headers, "Idempotency-Key": uuid.uuid4().hex},
                            )
                            assert r.status_code == 202, r.text
                        samples[name].append((time.perf_counter() - started) / REQUESTS * 1000)
                base_ms = statistics.median(next(iter(samples.values())))
                for name, each in samples.items():
                    ms = statistics.median(each)
                    print(f"  {name:<34} {ms:8.3f} ms/request  x{ms / base_ms:5.2f} of baseline")
                submit_routes.check_shape = original


def legacy_shape(body: Any) -> tuple[Any, dict[str, str]]:
    """The hand-written checks; the model built unchecked (model_construct) for the handler."""
    from submit.contracts import NewTask

    if problems := hand_written(body):
        return None, {p["field"]: p["message"] for p in problems}
    return NewTask.model_construct(**body), {}


def msgspec_shape(body: Any) -> tuple[Any, dict[str, str]]:
    from submit.contracts import NewTask

    if problems := with_msgspec(body):
        return None, {p["field"]: p["message"] for p in problems}
    return NewTask.model_construct(**body), {}


def main() -> None:
    assert with_pydantic(BODY) == with_msgspec(BODY) == hand_written(BODY) == []
    print("problems found in a body with three:", end=" ")
    print(
        f"hand-written {len(hand_written(BAD))}, pydantic {len(with_pydantic(BAD))}, "
        f"msgspec {len(with_msgspec(BAD))}"
    )
    table(
        "validate a submit body",
        {
            "hand-written (baseline)": lambda: hand_written(BODY),
            "pydantic model_validate": lambda: with_pydantic(BODY),
            "msgspec convert": lambda: with_msgspec(BODY),
        },
    )
    table(
        "validate a bad body (3 problems)",
        {
            "hand-written (baseline)": lambda: hand_written(BAD),
            "pydantic model_validate": lambda: with_pydantic(BAD),
            "msgspec convert": lambda: with_msgspec(BAD),
        },
    )
    table(
        "render a task object to JSON bytes",
        {
            "dict + json.dumps (baseline)": render_dict,
            "pydantic model_dump_json": render_pydantic,
            "msgspec Struct + encode": render_msgspec,
        },
    )
    if "--no-endpoint" not in sys.argv:
        asyncio.run(endpoint())


if __name__ == "__main__":
    main()
