"""The OpenAPI document of the client API: valid, complete, and true to the running app.

The first tests check the document itself: OpenAPI 3.1 (schemathesis' copy of the official
meta-schema), every schema in it valid JSON Schema 2020-12, every `$ref` resolvable, and its
operations exactly the app's `/v1` routes. They need no database.

Then schemathesis generates requests from the document served at `/openapi.json`, positive and
negative, and they go to the app on a real database as real users; every answer must be
documented (status, content type, body, headers) and none may be a 5xx. Hand-made requests cover
the documented errors that random data does not reach (413, 429, 503, ...).

Why the requests take a detour: schemathesis' own ASGI transport runs the app on an event loop of
its own in another thread, but the `runtime` fixture's asyncpg pool belongs to the test's loop. So
Hypothesis runs in a worker thread and each request is handed back to the test's loop
(`_AppAdapter`), where an httpx client sends it to `create_app(settings, runtime=runtime)`.
"""

from __future__ import annotations

import asyncio
import io
import re
from collections.abc import AsyncIterator, Coroutine, Iterator
from dataclasses import dataclass, replace
from typing import Any

import asyncpg
import httpx
import jsonschema_rs
import pytest
import requests
import requests.adapters
import schemathesis
import urllib3
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from schemathesis import BaseSchema, GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from starlette.routing import Route

from common.settings import Settings
from common.states import TaskStatus
from db.transition import transition
from lifecycle.runtime import Runtime
from taskhook.app import create_app
from taskhook.openapi import build_openapi
from tests.factories import make_task, make_user

Conn = asyncpg.Connection

HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]
MAX_EXAMPLES = 25  # per operation and generation mode: 50 per operation
SEND_TIMEOUT = 10.0  # seconds; a hanging event stream fails the test instead of blocking it
BASE_URL = "http://testserver"
VALID_BODY = {"model": "black-forest-labs/flux-schnell", "input": {"prompt": "a red fox"}}


def _operations(doc: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        (method.upper(), path)
        for path, item in doc["paths"].items()
        for method in item
        if method in HTTP_METHODS
    ]


OPERATIONS = _operations(build_openapi())


# -- the document itself ------------------------------------------------------------------------


def _walk(node: Any, pointer: str = "#") -> Iterator[tuple[str, Any]]:
    yield pointer, node
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _walk(value, f"{pointer}/{key.replace('~', '~0').replace('/', '~1')}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _walk(value, f"{pointer}/{index}")


def _resolve(doc: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), f"only local references: {ref}"
    node: Any = doc
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def _schema_objects(doc: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    """Every Schema Object of the document, with where it is."""
    for pointer, node in _walk(doc):
        if not isinstance(node, dict):
            continue
        if pointer == "#/components/schemas":
            for name, schema in node.items():
                yield f"{pointer}/{name}", schema
        elif isinstance(node.get("schema"), dict):  # parameter, header and media type objects
            yield f"{pointer}/schema", node["schema"]


def test_the_document_is_valid_openapi_3_1() -> None:
    doc = build_openapi()
    assert doc["openapi"].startswith("3.1.")
    schema = schemathesis.openapi.from_dict(doc)
    schema.validate()  # the OpenAPI 3.1 meta-schema, which does not look inside Schema Objects
    for pointer, node in _schema_objects(doc):
        try:
            jsonschema_rs.meta.validate(node)
        except jsonschema_rs.ValidationError as exc:
            pytest.fail(f"{pointer} is not a valid JSON Schema: {exc}")
    for pointer, node in _walk(doc):
        if isinstance(node, dict) and isinstance(node.get("$ref"), str):
            try:
                _resolve(doc, node["$ref"])
            except (KeyError, IndexError, TypeError):
                pytest.fail(f"{pointer}: unresolvable $ref {node['$ref']}")
    operation_ids = [
        doc["paths"][path][method.lower()]["operationId"] for method, path in OPERATIONS
    ]
    assert len(operation_ids) == len(set(operation_ids))
    for pointer, node in _walk(doc):
        if pointer.endswith("/links"):
            for link in node.values():
                assert link["operationId"] in operation_ids, pointer
    for path, item in doc["paths"].items():
        declared = {
            _resolve(doc, p["$ref"])["name"] if "$ref" in p else p["name"]
            for p in item.get("parameters", [])
        }
        assert declared == set(re.findall(r"{(\w+)}", path)), path
    for method, path in OPERATIONS:
        assert schema[path][method].label == f"{method} {path}"  # schemathesis can load it


def test_the_document_lists_exactly_the_client_routes() -> None:
    app = create_app(Settings())
    served: set[tuple[str, str]] = set()
    for route in app.routes:
        if isinstance(route, Route) and route.path.startswith("/v1"):
            served |= {(method, route.path) for method in route.methods or () if method != "HEAD"}
    assert served == set(OPERATIONS)


def test_every_operation_documents_auth_rate_limit_and_database_errors() -> None:
    doc = build_openapi()
    for method, path in OPERATIONS:
        responses = doc["paths"][path][method.lower()]["responses"]
        assert {"401", "429", "503"} <= set(responses), f"{method} {path}"
        assert any(code.startswith("2") for code in responses), f"{method} {path}"


async def test_openapi_json_is_served_without_a_key() -> None:
    transport = httpx.ASGITransport(app=create_app(Settings()))
    async with httpx.AsyncClient(transport=transport, base_url=BASE_URL) as c:
        r = await c.get("/openapi.json")
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    assert r.json() == build_openapi()


# -- the app, on a real database ----------------------------------------------------------------


@pytest.fixture
def settings(settings: Settings) -> Settings:
    # The rate limit counts per wall-clock minute and the active-task cap depends on how many
    # submissions succeeded so far: both would make the generated run's answers depend on its
    # own speed and history. Their 429s are checked by test_documented_errors_conform.
    return replace(settings, rate_limit=0, max_active_tasks=0)


@pytest.fixture
def no_vendor_calls(runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    """Registration after a 202 would call the vendor; here it is dropped unstarted."""

    def close(coro: Coroutine[Any, Any, None]) -> None:
        coro.close()

    monkeypatch.setattr(runtime, "spawn", close)


@pytest.fixture
async def api(runtime: Runtime, settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """Like `client`, but a crash is a 500 answer to check rather than an exception raised in
    the test (Starlette re-raises after its error handler has answered)."""
    transport = httpx.ASGITransport(
        app=create_app(settings, runtime=runtime), raise_app_exceptions=False
    )
    async with httpx.AsyncClient(transport=transport, base_url=BASE_URL) as c:
        yield c


@pytest.fixture
async def schema(api: httpx.AsyncClient) -> BaseSchema:
    """The document as the app serves it."""
    served = await api.get("/openapi.json")
    assert served.status_code == 200
    return schemathesis.openapi.from_dict(served.json())


def assert_documented(
    schema: BaseSchema, method: str, path: str, r: httpx.Response, *, may_be_5xx: bool = False
) -> None:
    """`r` (to a request made by hand) is a documented, non-5xx answer of the operation."""
    pattern = re.sub(r"{(\w+)}", r"(?P<\1>[^/]+)", path)
    match = re.fullmatch(pattern, r.request.url.path)
    assert match is not None, (path, r.request.url.path)
    case = schema[path][method].Case(path_parameters=match.groupdict() or None)
    checks = [c for c in CHECKS if not (may_be_5xx and c is not_a_server_error)]
    case.validate_response(r, checks=checks)


class _AppAdapter(requests.adapters.HTTPAdapter):
    """A requests transport that sends through an httpx client on the test's own event loop."""

    def __init__(self, client: httpx.AsyncClient, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self.client = client
        self.loop = loop

    async def _send(self, request: requests.PreparedRequest) -> httpx.Response:
        assert request.method is not None and request.url is not None
        body = request.body.encode() if isinstance(request.body, str) else request.body
        assert body is None or isinstance(body, bytes)
        # Header values go on the wire as latin-1, as http.client would send them.
        headers = [
            (name.encode("latin-1"), value if isinstance(value, bytes) else value.encode("latin-1"))
            for name, value in request.headers.items()
        ]
        return await asyncio.wait_for(
            self.client.request(request.method, request.url, headers=headers, content=body),
            SEND_TIMEOUT,
        )

    def send(
        self, request: requests.PreparedRequest, *args: Any, **kwargs: Any
    ) -> requests.Response:
        answer = asyncio.run_coroutine_threadsafe(self._send(request), self.loop).result()
        headers = urllib3.HTTPHeaderDict()
        for name, value in answer.headers.multi_items():
            headers.add(name, value)
        raw = urllib3.HTTPResponse(
            body=io.BytesIO(answer.content),
            headers=headers,
            status=answer.status_code,
            reason=answer.reason_phrase,
            version=11,
            preload_content=False,
            decode_content=False,
        )
        return self.build_response(request, raw)


@dataclass(frozen=True)
class World:
    """What the generated requests run into: users, and tasks in every state."""

    keys: dict[str, str | None]  # who -> API key (None: no Authorization header)
    task_ids: list[str]  # the rich user's tasks, one per status
    terminal_ids: list[str]  # those of them whose event stream ends by itself


async def _world(conn: Conn) -> World:
    rich_id, rich = await make_user(conn, credits=1_000_000)
    _, poor = await make_user(conn, credits=0)
    made = {
        status: await make_task(conn, rich_id, input={"prompt": status.value, "n": 1})
        for status in TaskStatus
    }
    files = [
        {
            "key": f"results/{made[TaskStatus.COMPLETED].hex}/{i}.png",
            "content_type": "image/png",
            "bytes": 1234 + i,
            "sha256": f"{i:x}" * 64,
        }
        for i in range(2)
    ]
    outputs = ["https://vendor.test/a.png", "https://vendor.test/b.png"]
    moves: dict[TaskStatus, list[tuple[TaskStatus, dict[str, Any]]]] = {
        TaskStatus.PENDING: [],
        TaskStatus.SUBMITTED: [(TaskStatus.SUBMITTED, {"vendor_task_id": "v-1"})],
        TaskStatus.PROCESSING: [(TaskStatus.PROCESSING, {"progress": 40})],
        TaskStatus.STORING: [(TaskStatus.STORING, {"outputs": outputs[:1]})],
        TaskStatus.COMPLETED: [
            (TaskStatus.STORING, {"outputs": outputs}),
            (TaskStatus.COMPLETED, {"result": {"files": files}}),
        ],
        TaskStatus.FAILED: [
            (TaskStatus.FAILED, {"error": {"code": "vendor_failed", "message": "it said no"}})
        ],
        TaskStatus.CANCELED: [(TaskStatus.CANCELED, {})],
    }
    for status, steps in moves.items():
        for index, (to, extra) in enumerate(steps):
            await transition(
                conn, task_id=made[status], to=to, event_key=f"seed:{index}", cause="t", **extra
            )
    public = {status: f"tsk_{task_id.hex}" for status, task_id in made.items()}
    terminal = (TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELED)
    return World(
        keys={"rich": rich, "poor": poor, "anonymous": None},
        task_ids=list(public.values()),
        terminal_ids=[public[s] for s in terminal],
    )


_KEEP = "<as generated>"
_DROP = "<left out>"


@dataclass(frozen=True)
class Submit:
    """Nudges for POST /v1/tasks. The document cannot say which model names a vendor takes, so
    random ones almost never get past validation; and 402, 409 and 415 need a poor user, a
    reused Idempotency-Key or another Content-Type, which random data rarely produces."""

    model: str
    vendor: str
    idempotency_key: str
    content_type: str

    def apply(self, case: Any, headers: dict[str, str]) -> None:
        if isinstance(case.body, dict):
            body = dict(case.body)
            if self.model != _KEEP:
                body["model"] = self.model
            if self.vendor == _DROP:
                body.pop("vendor", None)
            elif self.vendor != _KEEP:
                body["vendor"] = self.vendor
            case.body = body
        if self.idempotency_key != _KEEP:
            headers["Idempotency-Key"] = self.idempotency_key
        if self.content_type != _KEEP:
            headers["Content-Type"] = self.content_type


_SUBMIT_NUDGES = st.builds(
    Submit,
    model=st.sampled_from(
        [_KEEP, "black-forest-labs/flux-schnell", "owner/model:v1", "0123456789abcdef" * 4]
    ),
    vendor=st.sampled_from([_KEEP, _DROP, "replicate"]),
    idempotency_key=st.sampled_from([_KEEP, _KEEP, "retry-1", "retry-2"]),
    content_type=st.sampled_from([_KEEP, _KEEP, _KEEP, "text/plain"]),
)


def _fuzz(operation: Any, session: requests.Session, world: World, mode: GenerationMode) -> None:
    """Runs in a worker thread: Hypothesis drives, the test's event loop serves."""
    has_task_id = "{task_id}" in operation.path
    is_submit = (operation.method.upper(), operation.path) == ("POST", "/v1/tasks")
    # The event stream of an unfinished task never ends (API.md) and httpx' ASGI transport waits
    # for the whole body, so the stream is only asked of tasks that are terminal, or unknown.
    ids = world.terminal_ids if operation.path.endswith("/events") else world.task_ids

    @hypothesis_settings(
        max_examples=MAX_EXAMPLES,
        derandomize=True,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.filter_too_much,
            HealthCheck.data_too_large,
            HealthCheck.large_base_example,
        ],
    )
    @given(
        case=operation.as_strategy(generation_mode=mode),
        who=st.sampled_from(["rich", "rich", "rich", "poor", "anonymous"]),
        task_id=st.one_of(st.none(), st.sampled_from(ids)) if has_task_id else st.none(),
        nudge=_SUBMIT_NUDGES if is_submit else st.none(),
    )
    def run(case: Any, who: str, task_id: str | None, nudge: Submit | None) -> None:
        headers: dict[str, str] = {}
        key = world.keys[who]
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        if task_id is not None:
            case.path_parameters = {**(case.path_parameters or {}), "task_id": task_id}
        if nudge is not None:
            nudge.apply(case, headers)
        case.call_and_validate(session=session, base_url=BASE_URL, headers=headers, checks=CHECKS)

    run()


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
async def test_the_app_answers_as_documented(
    api: httpx.AsyncClient,
    schema: BaseSchema,
    conn: Conn,
    no_vendor_calls: None,
    method: str,
    path: str,
    mode: GenerationMode,
) -> None:
    world = await _world(conn)
    session = requests.Session()
    session.mount("http://", _AppAdapter(api, asyncio.get_running_loop()))
    await asyncio.to_thread(_fuzz, schema[path][method], session, world, mode)


async def test_documented_errors_conform(
    api: httpx.AsyncClient,
    schema: BaseSchema,
    conn: Conn,
    runtime: Runtime,
    no_vendor_calls: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The error answers random requests do not reach, each checked against the document."""
    _, key = await make_user(conn, credits=3)
    auth = {"Authorization": f"Bearer {key}"}
    _, poor = await make_user(conn, credits=0)

    async def post(body: str | bytes, **headers: str) -> httpx.Response:
        r = await api.post(
            "/v1/tasks",
            content=body,
            headers={"Content-Type": "application/json", **auth, **headers},
        )
        assert_documented(schema, "POST", "/v1/tasks", r)
        return r

    assert (await post(b"{" + b" " * (1024 * 1024) + b"}")).status_code == 413
    assert (await post("{not json")).status_code == 400
    assert (await post("{}", **{"Content-Type": "text/plain"})).status_code == 415
    r = await post('{"model": "a/b", "input": {}}', Authorization=f"Bearer {poor}")
    assert r.status_code == 402
    first = await post('{"model": "a/b", "input": {}}', **{"Idempotency-Key": "k"})
    again = await post('{"model": "a/b", "input": {}}', **{"Idempotency-Key": "k"})
    assert (first.status_code, again.status_code) == (202, 202)
    assert again.headers["Idempotent-Replayed"] == "true"
    conflict = await post('{"model": "a/b", "input": {"x": 1}}', **{"Idempotency-Key": "k"})
    assert conflict.status_code == 409
    task_id = first.json()["id"]
    for _ in range(2):
        r = await api.post(f"/v1/tasks/{task_id}/cancel", headers=auth)
        assert_documented(schema, "POST", "/v1/tasks/{task_id}/cancel", r)
    assert r.status_code == 409

    monkeypatch.setattr(runtime, "settings", replace(runtime.settings, max_active_tasks=1))
    assert (await post('{"model": "a/b", "input": {"n": 1}}')).status_code == 202
    r = await post('{"model": "a/b", "input": {"n": 2}}')
    assert (r.status_code, r.json()["error"]["code"]) == (429, "active_task_limit")

    limited = replace(runtime.settings, rate_limit=1, max_active_tasks=0)
    monkeypatch.setattr(runtime, "settings", limited)
    assert (await api.get("/v1/me", headers=auth)).status_code == 200  # the one this minute
    for method, path in OPERATIONS:
        if path.endswith("/events"):
            continue  # its 200 would be a stream that does not end; the 429 is the same code
        url = path.replace("{task_id}", task_id)
        r = await api.request(method, url, headers=auth, json=VALID_BODY)
        assert_documented(schema, method, path, r)
        assert r.status_code == 429 and "retry-after" in r.headers, (method, path)
    r = await api.get(f"/v1/tasks/{task_id}/events", headers=auth)
    assert_documented(schema, "GET", "/v1/tasks/{task_id}/events", r)
    assert r.status_code == 429

    class DownPool:
        def acquire(self, *args: Any, **kwargs: Any) -> Any:
            raise ConnectionRefusedError("database down")

    monkeypatch.setattr(runtime, "pool", DownPool())
    for method, path in OPERATIONS:
        r = await api.request(method, path.replace("{task_id}", task_id), headers=auth)
        assert_documented(schema, method, path, r, may_be_5xx=True)
        assert r.status_code == 503, (method, path)


# -- findings: real 5xx in product code, reported, not fixed here ------------------------------


async def _user(conn: Conn) -> dict[str, str]:
    _, key = await make_user(conn, credits=100)
    return {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}


@pytest.mark.parametrize(
    "task_input",
    [
        '{"prompt": "a\\u0000b"}',
        '{"a\\u0000": 1}',
        '{"prompt": "\\ud800"}',
        '{"x": NaN}',
        '{"x": 1e400}',
        '{"x": ' + "[" * 100_000 + "]" * 100_000 + "}",
    ],
    ids=["nul-in-value", "nul-in-key", "lone-surrogate", "nan", "infinity", "deep-nesting"],
)
async def test_regression_submit_input_postgres_cannot_store_is_400(
    api: httpx.AsyncClient,
    schema: BaseSchema,
    conn: Conn,
    no_vendor_calls: None,
    task_input: str,
) -> None:
    body = '{"model": "black-forest-labs/flux-schnell", "input": ' + task_input + "}"
    r = await api.post("/v1/tasks", content=body, headers=await _user(conn))
    assert r.status_code < 500, r.text
    assert_documented(schema, "POST", "/v1/tasks", r)


async def test_regression_vendor_null_is_422(
    api: httpx.AsyncClient, schema: BaseSchema, conn: Conn, no_vendor_calls: None
) -> None:
    body = {**VALID_BODY, "vendor": None}
    r = await api.post("/v1/tasks", json=body, headers=await _user(conn))
    assert r.status_code < 500, r.text
    assert_documented(schema, "POST", "/v1/tasks", r)


async def test_regression_limit_superscript_digit_is_422(
    api: httpx.AsyncClient, schema: BaseSchema, conn: Conn
) -> None:
    r = await api.get("/v1/tasks", params={"limit": "²"}, headers=await _user(conn))
    assert r.status_code < 500, r.text
    assert_documented(schema, "GET", "/v1/tasks", r)


async def test_regression_last_event_id_superscript_digit(
    api: httpx.AsyncClient, schema: BaseSchema, conn: Conn
) -> None:
    user_id, key = await make_user(conn, credits=1)
    task_id = await make_task(conn, user_id)
    await transition(conn, task_id=task_id, to=TaskStatus.CANCELED, event_key="c", cause="t")
    # Any byte 0x80-0xFF is a legal header value for h11 and httptools; Starlette reads latin-1.
    headers = [(b"authorization", f"Bearer {key}".encode()), (b"last-event-id", b"\xb2")]
    r = await api.get(f"/v1/tasks/tsk_{task_id.hex}/events", headers=headers)
    assert r.status_code < 500, r.text
    assert_documented(schema, "GET", "/v1/tasks/{task_id}/events", r)
