"""What a collector sees, issue 12's audit fixes (each test fails on the code before it):
app_operations counters on the HTTP data source, authuser, Starlette 500s, FastAPI's
route template in the parent context."""

from __future__ import annotations

import base64

import httpx
import pytest
from apps.asgi_harness import Peer, call, http_scope, respond
from apps.asgi_harness import flush as asgi_flush
from apps.asgi_harness import http_records as asgi_records
from apps.harness import flush, http_samples, record, serve

from sflow_app._agent import AGENT
from sflow_app.asgi import SFlowMiddleware as AsgiMiddleware
from sflow_app.records import AppOperations, AppParentContext, HttpCounters, HttpRequest
from sflow_app.wsgi import SFlowMiddleware

STATUSES = {
    200: "OK",
    302: "Found",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    408: "Request Timeout",
    413: "Content Too Large",
    418: "I'm a teapot",
    500: "Internal Server Error",
    501: "Not Implemented",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}
# As the sampled app_operation records map them (_http.app_status).
EXPECTED = {
    "success": 2,  # 200, 302
    "bad_request": 2,  # 400, 418
    "unauthorized": 1,
    "forbidden": 1,
    "not_found": 1,
    "timeout": 2,  # 408, 504
    "too_large": 1,
    "internal_error": 1,
    "not_implemented": 1,
    "unavailable": 1,
    "other": 0,
}


def status_app(environ, start_response):
    code = int(environ["PATH_INFO"].strip("/"))
    start_response(f"{code} {STATUSES[code]}", [("Content-Type", "text/plain")])
    return [b"x"]


def app_operations(collector) -> dict[str, int]:
    found = collector.latest_counters(AppOperations)
    assert found is not None, "no app_operations counters on the HTTP source"
    assert collector.latest_counters(HttpCounters) is not None
    return {k: getattr(found, k) for k in EXPECTED}


@pytest.mark.parametrize("sampling", [0, 1])
def test_http_source_sends_app_operations_wsgi(live, collector, sampling):
    """Fix 6: every request the HTTP source counts, in app_operations on the same data
    source, sampled or not."""
    live(sampling=sampling)
    with serve(SFlowMiddleware(status_app)) as url, httpx.Client(base_url=url) as client:
        for code in STATUSES:
            assert client.get(f"/{code}").status_code == code
    flush(collector)
    assert app_operations(collector) == EXPECTED
    [ops] = collector.records(AppOperations)[-1:]
    assert ops.application == "tests"


@pytest.mark.parametrize("sampling", [0, 1])
def test_http_source_sends_app_operations_asgi(agent, collector, sampling):
    agent(sampling=sampling)
    for code in STATUSES:
        call(AsgiMiddleware(respond(code, b"x")), http_scope("GET", f"/{code}"))
    asgi_flush(AGENT, collector)
    assert app_operations(collector) == EXPECTED


# -- fix 3: authuser ----------------------------------------------------------------------
def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def hello(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hi"]


def wsgi_users(collector, requests: list[dict[str, str]], app=hello) -> list[str]:
    with serve(SFlowMiddleware(app)) as url, httpx.Client(base_url=url) as client:
        for headers in requests:
            assert client.get("/", headers=headers).status_code == 200
    flush(collector)
    raw = b"".join(collector.raw)
    assert b"s3cret" not in raw, "a password went out"
    return [record(s, HttpRequest).authuser for s in http_samples(collector)]


def test_wsgi_basic_authorization_user(live, collector):
    live(sampling=1)
    users = wsgi_users(
        collector,
        [{"Authorization": basic("alice", "s3cret")}, {"Authorization": "Bearer abc"}, {}],
    )
    assert users == ["alice", "", ""]


def test_wsgi_remote_user_first(live, collector):
    """REMOTE_USER (set by the server or an auth layer outside ours) wins."""
    live(sampling=1)
    middleware = SFlowMiddleware(hello)
    with serve(lambda env, start: middleware({**env, "REMOTE_USER": "bob"}, start)) as url:
        httpx.get(url + "/", headers={"Authorization": basic("alice", "s3cret")})
    flush(collector)
    assert [record(s, HttpRequest).authuser for s in http_samples(collector)] == ["bob"]


def test_authuser_off(live, collector, monkeypatch):
    """SFLOW_APP_AUTHUSER=0: no user names (personal data) at all."""
    monkeypatch.setenv("SFLOW_APP_AUTHUSER", "0")
    live(sampling=1)
    users = wsgi_users(collector, [{"Authorization": basic("alice", "s3cret")}])
    assert users == [""]


def test_asgi_basic_and_scope_user(agent, collector):
    agent(sampling=1)
    app = AsgiMiddleware(respond(200, b"x"))
    call(
        app, http_scope("GET", "/", headers=[(b"authorization", basic("carol", "s3cret").encode())])
    )

    class User:
        is_authenticated = True
        display_name = "dave"

    inner = respond(200, b"x")

    async def auth(scope, receive, send):  # an auth middleware inside ours
        scope["user"] = User()
        await inner(scope, receive, send)

    call(AsgiMiddleware(auth), http_scope("GET", "/"))
    asgi_flush(AGENT, collector)
    assert b"s3cret" not in b"".join(collector.raw)
    assert [r.authuser for r in asgi_records(collector)] == ["carol", "dave"]


def test_starlette_authentication_user(agent, collector):
    """A real Starlette AuthenticationMiddleware sets scope["user"]."""
    from starlette.applications import Starlette
    from starlette.authentication import AuthCredentials, AuthenticationBackend, SimpleUser
    from starlette.middleware import Middleware
    from starlette.middleware.authentication import AuthenticationMiddleware
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    class Backend(AuthenticationBackend):
        async def authenticate(self, conn):
            return AuthCredentials(["authenticated"]), SimpleUser("erin")

    app = Starlette(
        routes=[Route("/", lambda request: PlainTextResponse("hi"))],
        middleware=[Middleware(AuthenticationMiddleware, backend=Backend())],
    )
    agent(sampling=1)
    call(AsgiMiddleware(app), http_scope("GET", "/"))
    asgi_flush(AGENT, collector)
    assert [r.authuser for r in asgi_records(collector)] == ["erin"]


# -- fix 4: Starlette / FastAPI 500s -----------------------------------------------------
def starlette_failing(handler=None):
    from starlette.applications import Starlette
    from starlette.routing import Route

    async def fail(request):
        raise RuntimeError("boom")

    handlers = {500: handler} if handler else {}
    app = Starlette(routes=[Route("/fail/{n}", fail)], exception_handlers=handlers)
    app.add_middleware(AsgiMiddleware)
    return app


def fastapi_failing():
    from fastapi import FastAPI

    app = FastAPI()

    @app.get("/fail/{n}")
    async def fail(n: int):
        raise RuntimeError("boom")

    app.add_middleware(AsgiMiddleware)
    return app


def client_received(peer) -> tuple[int, int, str]:
    [start] = [m for m in peer.sent if m["type"] == "http.response.start"]
    body = sum(len(m.get("body", b"")) for m in peer.sent if m["type"] == "http.response.body")
    mime = dict(start["headers"]).get(b"content-type", b"").decode()
    return start["status"], body, mime


def json_500(request, exc):
    from starlette.responses import JSONResponse

    return JSONResponse({"error": "sorry"}, status_code=500)


@pytest.mark.parametrize(
    "make", [starlette_failing, fastapi_failing, lambda: starlette_failing(json_500)]
)
def test_server_error_page_recorded_as_received(agent, collector, make):
    """Fix 4: ServerErrorMiddleware sends the 500 page outside our middleware; the sample
    says what the client received (status, bytes, MIME type), and the counters count it."""
    agent(sampling=1)
    peer = Peer()
    with pytest.raises(RuntimeError):
        call(make(), http_scope(path="/fail/1"), peer)
    status, body, mime = client_received(peer)
    assert status == 500 and body > 0 and mime
    asgi_flush(AGENT, collector)
    [rec] = asgi_records(collector)
    assert (rec.status, rec.resp_bytes, rec.mime_type) == (status, body, mime)
    assert collector.latest_counters(HttpCounters).status_5XX_count == 1


# -- fix 5: FastAPI's parent context carries the route template ------------------------------
def test_fastapi_parent_context_is_the_route_template(agent, collector):
    from fastapi import FastAPI

    from sflow_app import transaction

    @transaction("lookup", application="users")
    def lookup(user_id: int) -> int:
        return user_id

    app = FastAPI()

    @app.get("/users/{user_id}")
    async def user(user_id: int):
        return {"id": lookup(user_id)}

    app.add_middleware(AsgiMiddleware)
    agent(sampling=1)
    call(app, http_scope(path="/users/1"))
    asgi_flush(AGENT, collector)
    [parent] = collector.records(AppParentContext)
    assert (parent.application, parent.operation) == ("tests", "/users/{user_id}")
    assert parent.attributes == "method=GET"


def test_authuser_setting_resolves_once_per_reload():
    from sflow_app import _config

    def resolve(value: str) -> _config.Settings:
        return _config.resolve({}, {"SFLOW_APP_AUTHUSER": value}, None, "/nonexistent")

    assert resolve("").authuser and resolve("1").authuser
    assert not resolve("0").authuser and not resolve("off").authuser
    bad = resolve("maybe")
    assert bad.authuser and any("SFLOW_APP_AUTHUSER" in w for w in bad.warnings)
