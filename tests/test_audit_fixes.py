"""What a collector sees, issue 12's audit fixes (each test fails on the code before it):
app_operations counters on the HTTP data source, authuser, Starlette 500s, FastAPI's
route template in the parent context."""

from __future__ import annotations

import httpx
import pytest
from apps.asgi_harness import call, http_scope, respond
from apps.asgi_harness import flush as asgi_flush
from apps.harness import flush, serve

from sflow_app._agent import AGENT
from sflow_app.asgi import SFlowMiddleware as AsgiMiddleware
from sflow_app.records import AppOperations, HttpCounters
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
