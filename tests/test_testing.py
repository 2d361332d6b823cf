"""sflow_app.testing: capture() as a user's test suite uses it, and reset()."""

from __future__ import annotations

import asyncio
import logging
import threading

import pytest
from flask import Flask
from helpers import Collector
from memcached import running
from pymemcache.client.base import Client

import sflow_app
import sflow_app.memcache as sfm
from sflow_app._agent import AGENT
from sflow_app.asgi import SFlowMiddleware as ASGIMiddleware
from sflow_app.integrations.flask import init_app
from sflow_app.records import (
    AppOperation,
    AppOperations,
    CountersSample,
    FlowSample,
    HttpCounters,
    HttpRequest,
    MemcacheCmd,
    MemcacheOperation,
)
from sflow_app.testing import capture, reset


@pytest.fixture(autouse=True)
def agent_with_collector(auto_file, monkeypatch: pytest.MonkeyPatch, collector: Collector):
    """hsflowd configured for a real collector, 1-in-1000: a capture must still take every
    request, and send nothing to that collector."""
    monkeypatch.setenv("SFLOW_APP_NAME", "tests")
    reset()
    auto_file(sampling=1000, polling=1)
    yield
    reset()


def flask_app() -> Flask:
    app = Flask(__name__)

    @app.get("/users/<int:user_id>")
    def user(user_id: int) -> tuple[str, int]:
        return f"user {user_id}", 404 if user_id == 0 else 200

    init_app(app)
    return app


def counters_of(cap, cls: type) -> list:
    return [
        r
        for s in cap.samples
        if isinstance(s, CountersSample)
        for r in s.records
        if isinstance(r, cls)
    ]


def test_flask_test_client_responses_never_closed(collector: Collector) -> None:
    """The issue's case: five client.get() whose responses are never closed."""
    client = flask_app().test_client()
    with capture() as cap:
        responses = [client.get(f"/users/{i}?token=secret{i}&page=2") for i in range(5)]
        assert collector.poll(1.5) == []  # past the 1 s polling interval: nothing sent
    assert [r.status_code for r in responses] == [404, 200, 200, 200, 200]
    records = cap.records(HttpRequest)
    assert [(r.uri, r.status) for r in records] == [
        (f"/users/{i}?token=REDACTED&page=2", 404 if i == 0 else 200) for i in range(5)
    ]
    assert all(isinstance(r.uri, str) for r in records)  # decoded as a collector would
    ops = cap.records(AppOperation)
    assert [o.operation for o in ops] == ["/users/<int:user_id>"] * 5
    [counters] = counters_of(cap, HttpCounters)
    assert (counters.method_get_count, counters.status_4XX_count) == (5, 1)
    assert all(s.sampling_rate == 1 for s in cap.samples if isinstance(s, FlowSample))
    # After the block the agent reports again, without what the capture counted.
    assert collector.wait_for(lambda c: c.latest_counters(HttpCounters) is not None, 10)
    assert collector.latest_counters(HttpCounters).method_get_count == 0
    assert collector.flow_samples() == []


def test_a_test_client_inside_a_capture_logs_no_listener_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A test client has no listening socket: expected in a test, not worth a warning."""
    caplog.set_level(logging.WARNING, "sflow_app")
    with capture() as cap:
        flask_app().test_client().get("/users/1").close()
    assert [r.uri for r in cap.records(HttpRequest)] == ["/users/1"]
    assert caplog.messages == []


def test_a_new_capture_starts_empty_and_sampling_returns_after() -> None:
    client = flask_app().test_client()
    with capture() as first:
        client.get("/users/1").close()
    with capture() as second:
        client.get("/users/2").close()
    assert [r.uri for r in first.records(HttpRequest)] == ["/users/1"]
    assert [r.uri for r in second.records(HttpRequest)] == ["/users/2"]
    [counters] = counters_of(second, HttpCounters)
    assert counters.method_get_count == 1  # what was counted inside this block only
    assert AGENT.http_source().sampler.rate == 1000  # the configured rate again


def test_exclusions_apply_as_in_production() -> None:
    app = Flask(__name__)
    app.add_url_rule("/healthz", "healthz", lambda: "ok")
    app.add_url_rule("/work", "work", lambda: "done")
    init_app(app, exclude=["/healthz"])
    with capture() as cap:
        app.test_client().get("/healthz").close()
        app.test_client().get("/work").close()
    assert [r.uri for r in cap.records(HttpRequest)] == ["/work"]


def test_disabled_agent_still_captures(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SFLOW_APP_DISABLE", "1")
    reset()
    client = flask_app().test_client()
    with capture() as cap:
        client.get("/users/3").close()
    assert [r.uri for r in cap.records(HttpRequest)] == ["/users/3"]


async def made(scope, receive, send):
    """An ASGI app that answers 201."""
    await send({"type": "http.response.start", "status": 201, "headers": []})
    await send({"type": "http.response.body", "body": b"made"})


def asgi_request(app, method: str, path: str) -> None:
    """One request to ``app`` as a server on 127.0.0.1:8000 would make it."""
    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [],
        "http_version": "1.1",
        "server": ("127.0.0.1", 8000),
        "client": ("127.0.0.1", 5000),
    }

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        pass

    asyncio.run(app(scope, receive, send))


def test_asgi_memcache_decorator_and_threads(collector: Collector) -> None:
    @sflow_app.transaction("lookup", application="shop")
    def lookup(i: int) -> int:
        return i

    with running() as server:
        sfm.instrument()
        try:
            with capture() as cap:
                asgi_request(ASGIMiddleware(made), "POST", "/orders")
                c = Client(server.server, default_noreply=False)
                c.set("k", b"value")
                assert c.get("k") == b"value"
                c.close()
                threads = [threading.Thread(target=lookup, args=(i,)) for i in range(8)]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
        finally:
            sfm.uninstrument()
    assert [(r.uri, r.status) for r in cap.records(HttpRequest)] == [("/orders", 201)]
    got = [(m.cmd, m.key) for m in cap.records(MemcacheOperation)]
    assert got == [(MemcacheCmd.SET, "k"), (MemcacheCmd.GET, "k")]
    ops = [o for o in cap.records(AppOperation) if o.application == "shop"]
    assert len(ops) == 8 and {o.operation for o in ops} == {"lookup"}
    assert collector.poll(0.3) == []


def test_nested_capture_is_an_error() -> None:
    with capture(), pytest.raises(RuntimeError, match="already active"), capture():
        pass


def test_pytest_fixture(sflow_capture) -> None:
    """The fixture comes from the package's pytest11 entry point."""
    flask_app().test_client().get("/users/9").close()
    [req] = sflow_capture.records(HttpRequest)
    assert (req.uri, req.status) == ("/users/9", 200)


def test_reset_restarts_from_a_fresh_agent() -> None:
    source = AGENT.http_source()
    assert AGENT.runner.started  # building a surface starts the exporter
    reset()
    assert not AGENT.runner.started and AGENT.sources() == [] and AGENT.capture is None
    assert AGENT.http_source() is not source


@sflow_app.transaction("checkout")
def checkout() -> str:
    return "paid"


def test_decorated_functions_report_to_the_agent_after_reset(
    collector: Collector, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A function decorated once (at import) and called before a reset() is captured,
    counted and shown by status() after it, under the service name read again: it kept
    the reset agent's data source, which nothing captured, sent or showed any more."""
    assert checkout() == "paid"
    monkeypatch.setenv("SFLOW_APP_NAME", "after")
    reset()
    with capture() as cap:
        assert checkout() == "paid"
    assert [(o.application, o.operation) for o in cap.records(AppOperation)] == [
        ("after", "checkout")
    ]
    assert [c.success for c in counters_of(cap, AppOperations)] == [1]
    reset()
    checkout()  # the first call since reset(): the configuration is read now
    status = sflow_app.status()
    assert status["service_name"] == "after"
    assert status["data_sources"]["app:after"]["counters"]["success"] == 1


def test_middlewares_and_memcache_report_to_the_agent_after_reset(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An app built once (at import) and served before a reset() is captured and counted
    after it: its middleware kept the reset agent's data source, which nothing captured
    or sent any more. Its first request after the reset is captured too."""
    wsgi_client = flask_app().test_client()
    asgi = ASGIMiddleware(made)

    with running() as server:
        client = Client(server.server, default_noreply=False)
        sfm.wrap(client)
        try:
            wsgi_client.get("/users/1").close()
            asgi_request(asgi, "PUT", "/before")
            client.set("before", b"x")
            monkeypatch.setenv("SFLOW_APP_QUERY", "keep")  # read again after the reset
            reset()
            with capture() as cap:
                wsgi_client.get("/users/2?token=t").close()
                asgi_request(asgi, "PUT", "/after")
                assert client.get("before") == b"x"
        finally:
            client.close()
    assert [(r.uri, r.status) for r in cap.records(HttpRequest)] == [
        ("/users/2?token=t", 200),
        ("/after", 201),
    ]
    assert [(m.cmd, m.key) for m in cap.records(MemcacheOperation)] == [(MemcacheCmd.GET, "before")]
    [http] = counters_of(cap, HttpCounters)
    assert (http.method_get_count, http.method_put_count, http.status_2XX_count) == (1, 1, 2)
