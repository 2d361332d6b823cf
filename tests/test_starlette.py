"""Starlette and FastAPI through sflow_app.asgi.SFlowMiddleware: route templates.

``app.add_middleware(SFlowMiddleware)`` is the whole integration: the router records the
matched route on the scope the middleware passed down, and a sampled request carries it
as an ``app_operation`` next to its ``http_request``. In-process here; the last test
serves tests/apps/asgi_fastapi_app.py with uvicorn.
"""

from __future__ import annotations

import asyncio
import gc
import weakref
from typing import Any

import pytest
from apps.asgi_harness import Peer, Uvicorn, call, flush, http_records, http_scope, record
from fastapi import APIRouter, FastAPI
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from sflow_app import transaction
from sflow_app._agent import AGENT
from sflow_app.asgi import SFlowMiddleware
from sflow_app.records import AppOperation, AppParentContext, HttpRequest


def starlette_app() -> Starlette:
    async def hello(request):
        return PlainTextResponse("hi")

    app = Starlette(
        routes=[
            Route("/users/{name}", hello),
            Mount("/admin", routes=[Route("/items/{item_id:int}", hello)]),
        ]
    )
    app.add_middleware(SFlowMiddleware)
    return app


def test_starlette_route_templates(agent, collector):
    agent(sampling=1)
    app = starlette_app()
    for path in ("/users/ann", "/admin/items/42", "/missing"):
        call(app, http_scope(path=path))
    flush(AGENT, collector)
    ops = collector.records(AppOperation)
    assert [(o.operation, o.application, o.status_descr) for o in ops] == [
        ("/users/{name}", "tests", "200"),
        ("/admin/items/{item_id}", "tests", "200"),
    ]
    assert ops[0].attributes == "method=GET&route=/users/{name}"
    assert [r.status for r in http_records(collector)] == [200, 200, 404]


def test_route_fallback_without_scope_route(agent, collector):
    """Starlette versions that do not set scope["route"]: found through scope["endpoint"]."""
    agent(sampling=1)
    inner = starlette_app().router

    async def old_router(scope, receive, send):
        await inner(scope, receive, send)
        scope.pop("route", None)

    app = SFlowMiddleware(old_router)
    call(app, http_scope(path="/users/bob"))
    call(app, http_scope(path="/admin/items/7"))
    flush(AGENT, collector)
    assert [o.operation for o in collector.records(AppOperation)] == [
        "/users/{name}",
        "/admin/items/{item_id}",
    ]


def test_a_mount_that_answered_itself_is_named_once(agent, collector, tmp_path):
    """StaticFiles, a plain ASGI app, or a sub-router with no matching route: the Mount
    stays the scope's route; its path is in root_path already, not doubled."""
    agent(sampling=1)
    (tmp_path / "a.txt").write_text("hi")

    async def plain(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"p"})

    async def hello(request):
        return PlainTextResponse("hi")

    app = Starlette(
        routes=[
            Mount("/static", StaticFiles(directory=tmp_path)),
            Mount("/org/{org}", routes=[Mount("/raw", plain), Route("/x", hello)]),
            Mount("/admin", routes=[Route("/items/{item_id:int}", hello)]),
        ]
    )
    app.add_middleware(SFlowMiddleware)
    for path in ("/static/a.txt", "/org/acme/raw/a/b", "/org/acme/x", "/admin/missing"):
        call(app, http_scope(path=path))
    flush(AGENT, collector)
    assert [o.operation for o in collector.records(AppOperation)] == [
        "/static/{path}",
        "/org/acme/raw/{path}",
        "/org/acme/x",
        "/admin/{path}",
    ]
    assert [r.status for r in http_records(collector)] == [200, 200, 200, 404]


def test_a_task_the_request_started_has_no_parent_after_it(agent, collector):
    """asyncio copies the context into tasks a request creates: a decorated call made in
    one after the request ended names no parent, and the request's scope is let go."""
    agent(sampling=1)

    @transaction("work")
    def work() -> None:
        pass

    class Scope(dict):  # a dict that can be weakly referenced
        pass

    later = asyncio.Event()
    tasks: list[asyncio.Task] = []

    async def poller() -> None:
        work()  # inside the request
        await later.wait()
        work()  # after it

    async def start(request):
        tasks.append(asyncio.create_task(poller()))
        await asyncio.sleep(0)
        return PlainTextResponse("started")

    app: Any = Starlette(routes=[Route("/start/{n}", start)])  # Peer's untyped messages
    app.add_middleware(SFlowMiddleware)

    async def main() -> bool:
        peer, scope = Peer(), Scope(http_scope(path="/start/1"))
        await app(scope, peer.receive, peer.send)
        ref = weakref.ref(scope)
        del scope
        gc.collect()
        kept = ref() is not None  # only the task's context could hold it
        later.set()
        await tasks[0]
        return kept

    assert not asyncio.run(main()), "the task's context kept the request's scope"
    flush(AGENT, collector)
    calls = [
        [r.operation for r in s.records if isinstance(r, AppParentContext)]
        for s in collector.flow_samples()
        if any(isinstance(r, AppOperation) and r.operation == "work" for r in s.records)
    ]
    assert calls == [["/start/{n}"], []]


def test_fastapi_route_templates(agent, collector):
    agent(sampling=1)
    app = FastAPI()
    router = APIRouter()

    @app.get("/items/{item_id}")
    def item(item_id: int) -> dict:
        return {"id": item_id}

    @router.post("/users/{uid}")
    def user(uid: str) -> dict:
        return {"uid": uid}

    app.include_router(router, prefix="/api")
    sub = FastAPI()

    @sub.get("/deep/{z}")
    def deep(z: str) -> dict:
        return {}

    app.mount("/sub", sub)
    app.add_middleware(SFlowMiddleware)
    call(app, http_scope(path="/items/3"))
    call(app, http_scope("POST", "/api/users/bob"))
    call(app, http_scope(path="/sub/deep/q"))
    flush(AGENT, collector)
    assert [o.operation for o in collector.records(AppOperation)] == [
        "/items/{item_id}",
        "/api/users/{uid}",
        "/sub/deep/{z}",
    ]
    assert [(r.status, r.mime_type) for r in http_records(collector)] == [
        (200, "application/json")
    ] * 3


def test_starlette_exception_counts_500_and_reaches_server_error_middleware(agent, collector):
    agent(sampling=1)

    async def fail(request):
        raise RuntimeError("boom")

    app = Starlette(routes=[Route("/fail", fail)])
    app.add_middleware(SFlowMiddleware)
    peer = Peer()
    with pytest.raises(RuntimeError):
        call(app, http_scope(path="/fail"), peer)
    assert peer.sent[0]["status"] == 500  # Starlette's ServerErrorMiddleware answered
    flush(AGENT, collector)
    [rec] = http_records(collector)
    assert rec.status == 500
    assert [o.operation for o in collector.records(AppOperation)] == ["/fail"]


@pytest.mark.slow
def test_fastapi_under_uvicorn(tmp_path):
    import httpx
    from websockets.sync.client import connect

    srv = Uvicorn(tmp_path, app="tests.apps.asgi_fastapi_app:app", name="fastapi-e2e")
    try:
        with httpx.Client(base_url=srv.url) as client:
            assert client.get("/items/5").json() == {"item_id": 5}
            srv.sent("GET", 200)
            assert client.post("/api/users/bob", content=b"x" * 11).json() == {
                "uid": "bob",
                "size": 11,
            }
            srv.sent("POST", 200)
            assert client.get("/legacy/hello/ann").text == "hello ann"
            srv.sent("GET", 200)
            assert client.get("/nothing").status_code == 404
            srv.sent("GET", 404)
        # uvicorn closes a connection whose app raised: no keep-alive for this one.
        assert httpx.get(f"{srv.url}/boom").status_code == 500
        srv.sent("GET", 500)
        with connect(f"ws://127.0.0.1:{srv.port}/ws/lobby") as ws:
            ws.send("hi")
            assert ws.recv() == "lobby:hi"
        srv.sent("GET", 101)

        expected = {
            "/items/5": ("/items/{item_id}", "GET", 200, 0),
            "/api/users/bob": ("/api/users/{uid}", "POST", 200, 0),
            "/legacy/hello/ann": ("/legacy/hello/{name}", "GET", 200, 0),
            "/boom": ("/boom", "GET", 500, 3),  # INTERNAL_ERROR
            "/ws/lobby": ("/ws/{room}", "GET", 101, 0),
        }
        for uri, (route, method, status, app_status) in expected.items():
            sample = srv.sample_for(uri)
            http = record(sample, HttpRequest)
            op = record(sample, AppOperation)
            assert http.status == status, uri
            assert (op.application, op.operation, op.attributes, op.status_descr) == (
                "fastapi-e2e",
                route,
                f"method={method}&route={route}",
                str(status),
            )
            assert (op.req_bytes, op.resp_bytes, op.uS, op.status) == (
                http.req_bytes,
                http.resp_bytes,
                http.uS,
                app_status,
            )
        assert record(srv.sample_for("/api/users/bob"), HttpRequest).req_bytes == 11
        nothing = srv.sample_for("/nothing")
        assert not [r for r in nothing.records if isinstance(r, AppOperation)]
        srv.wait_counters()
    finally:
        srv.stop()
        srv.collector.close()
    assert "boom (expected by the tests)" in srv.log.read_text()


def test_uvicorn_root_path_left_out_of_the_uri_not_a_mount(agent, collector):
    """The scopes uvicorn --root-path /api gives (root path in path and raw_path), to the
    middleware at the top and inside a Starlette Mount: the URI is the request line's
    target, /sub/x, with the mount's prefix (root_path holds it there, app_root_path the
    server's)."""
    import uvicorn.protocols.http.h11_impl  # noqa: F401  (this process serves with uvicorn)

    agent(sampling=1)

    async def plain(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"p"})

    inside = Starlette(routes=[Mount("/sub", SFlowMiddleware(plain))])
    for app in (SFlowMiddleware(plain), inside):
        call(app, http_scope(path="/api/sub/x", raw_path=b"/api/sub/x", root_path="/api"))
    flush(AGENT, collector)
    assert [r.uri for r in http_records(collector)] == ["/sub/x", "/sub/x"]


@pytest.mark.slow
def test_fastapi_under_uvicorn_root_path(tmp_path):
    """uvicorn --root-path /api (behind a proxy that strips /api): uvicorn puts the root
    path in scope["raw_path"] too, but the request line it received was for /items/5.
    The URI is that request-target, as WSGI's RAW_URI; routes are the app's templates."""
    import httpx

    srv = Uvicorn(tmp_path, app="tests.apps.asgi_fastapi_app:app", args=("--root-path", "/api"))
    try:
        with httpx.Client(base_url=srv.url) as client:
            assert client.get("/items/5?q=1").json() == {"item_id": 5}
            assert client.get("/legacy/hello/ann").text == "hello ann"
            # The prefix sent by the client itself (uvicorn routes /api/api/items/6): kept.
            assert client.get("/api/items/6").status_code == 404
        found = {}
        for uri in ("/items/5?q=1", "/legacy/hello/ann", "/api/items/6"):
            ops = [r for r in srv.sample_for(uri).records if isinstance(r, AppOperation)]
            found[uri] = ops[0].operation if ops else None
        assert found == {
            "/items/5?q=1": "/items/{item_id}",
            "/legacy/hello/ann": "/legacy/hello/{name}",
            "/api/items/6": None,
        }
    finally:
        srv.stop()
        srv.collector.close()
