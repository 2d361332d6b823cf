"""sflow_app.asgi driven in-process: protocol edge cases with fake receive/send.

The end-to-end checks with a real uvicorn server are in test_asgi_uvicorn.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from typing import Any

import pytest
from apps.asgi_harness import (
    CLIENT,
    SERVER,
    Peer,
    call,
    counters,
    flush,
    http_records,
    http_scope,
    respond,
)

from sflow_app import _asgi_exchange, asgi
from sflow_app._agent import AGENT
from sflow_app._http import ParentContexts, current_request, parent_context
from sflow_app._memo import KEY_MAX
from sflow_app.asgi import SFlowMiddleware
from sflow_app.records import ExtendedSocketIPv4, ExtendedSocketIPv6


def test_sampled_request_fields(agent, collector):
    agent(sampling=1)
    app = SFlowMiddleware(respond(201, b"x" * 10, chunks=3))
    headers = [
        (b"host", b"shop.example"),
        (b"referer", b"http://ref.example/"),
        (b"user-agent", b"tester/1"),
        (b"x-forwarded-for", b"10.1.1.1"),
        (b"x-forwarded-for", b"10.2.2.2"),
        (b"content-length", b"7"),
    ]
    call(
        app, http_scope("POST", "/cart/add", b"item=3&token=abc", headers), Peer([b"abc", b"defg"])
    )
    flush(AGENT, collector)
    [rec] = http_records(collector)
    assert rec.method == 4 and rec.protocol == 1001
    assert rec.uri == "/cart/add?item=3&token=REDACTED"
    assert rec.host == "shop.example" and rec.referer == "http://ref.example/"
    assert rec.useragent == "tester/1" and rec.xff == "10.1.1.1, 10.2.2.2"
    assert rec.mime_type == "text/plain"
    assert rec.req_bytes == 7
    assert rec.resp_bytes == 30  # bytes sent, not the response's Content-Length
    assert rec.status == 201 and 0 < rec.uS < 5_000_000
    [sock] = collector.records(ExtendedSocketIPv4)
    assert (sock.local_ip, sock.local_port) == SERVER
    assert (sock.remote_ip, sock.remote_port) == CLIENT
    [sample] = collector.flow_samples()
    assert (sample.ds_index, sample.sampling_rate, sample.sample_pool) == (8123, 1, 1)
    c = counters(collector)
    assert c.method_post_count == 1 and c.status_2XX_count == 1
    assert sum(dataclasses.astuple(c)) == 2


def test_header_names_in_any_case(agent, collector):
    # ASGI asks servers for lowercase names; one that sends others is read all the same.
    agent(sampling=1)
    headers = [
        (b"Host", b"shop.example"),
        (b"USER-AGENT", b"tester/1"),
        (b"X-Forwarded-For", b"10.1.1.1"),
        (b"x-forwarded-for", b"10.2.2.2"),
        (b"accept", b"*/*"),
    ]

    async def app(scope, receive, send):
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"Content-Type", b"text/html")],
            }
        )
        await send({"type": "http.response.body", "body": b"ok"})

    call(SFlowMiddleware(app), http_scope("GET", "/", b"", headers), Peer([]))
    flush(AGENT, collector)
    [rec] = http_records(collector)
    assert (rec.host, rec.useragent, rec.xff) == ("shop.example", "tester/1", "10.1.1.1, 10.2.2.2")
    assert rec.mime_type == "text/html"


def test_records_built_later_are_what_the_request_saw(agent, collector, monkeypatch):
    # The exporter builds the records from what the request kept: objects changed once
    # the request is over change nothing it sends; a bug in building them is a drop.
    from sflow_app import asgi

    agent(sampling=1)
    headers = [(b"host", b"shop.example"), (b"user-agent", b"tester/1")]
    scope = http_scope("GET", "/a", b"token=t", headers)
    call(SFlowMiddleware(respond(200, b"ok")), scope, Peer([]))
    # A server reusing its objects once the request is over: not what the request saw.
    headers.append((b"referer", b"http://late.example/"))
    headers[0] = (b"host", b"changed.example")
    scope["path"] = "/changed"
    source = AGENT.http_source()
    drops = source.drops
    flush(AGENT, collector)
    [rec] = http_records(collector)
    assert (rec.host, rec.uri, rec.useragent) == ("shop.example", "/a?token=REDACTED", "tester/1")
    assert rec.referer == ""
    assert source.drops == drops

    def broken(**fields: Any) -> Any:
        raise RuntimeError("a bug in building records")

    monkeypatch.setattr(asgi, "encode_http", broken)
    monkeypatch.setattr(asgi, "http_records", broken)
    monkeypatch.setattr(asgi, "mime_type", broken)  # on every encoding path
    call(SFlowMiddleware(respond(200, b"ok")), http_scope("GET", "/b", b"", []), Peer([]))
    flush(AGENT, collector)
    assert source.drops == drops + 1


def test_request_bytes_counted_without_content_length(agent, collector):
    agent(sampling=1)
    app = SFlowMiddleware(respond())
    call(app, http_scope("PUT", "/x"), Peer([b"12345", b"678", b""]))
    flush(AGENT, collector)
    [rec] = http_records(collector)
    assert rec.req_bytes == 8 and rec.method == 5


def test_head_sends_no_body_bytes(agent, collector):
    agent(sampling=1)
    call(SFlowMiddleware(respond(body=b"abc")), http_scope("HEAD"))
    flush(AGENT, collector)
    [rec] = http_records(collector)
    assert rec.method == 3 and rec.resp_bytes == 0 and rec.status == 200


@pytest.mark.parametrize(
    ("version", "number"), [("1.0", 1000), ("1.1", 1001), ("2", 2000), ("3", 3000)]
)
def test_http_versions(agent, collector, version, number):
    agent(sampling=1)
    call(SFlowMiddleware(respond()), http_scope(http_version=version))
    flush(AGENT, collector)
    assert [r.protocol for r in http_records(collector)] == [number]


def test_uri_from_path_when_no_raw_path_and_query_modes(agent, collector):
    agent(sampling=1)
    scope = http_scope(path="/caf\u00e9", query=b"a=1&password=pw")
    del scope["raw_path"]
    call(SFlowMiddleware(respond()), scope)
    call(SFlowMiddleware(respond(), query="drop"), http_scope(path="/d", query=b"a=1"))
    call(SFlowMiddleware(respond(), query="keep"), http_scope(path="/k", query=b"pwd=1"))
    call(SFlowMiddleware(respond(), query="redact"), http_scope(path="/r", query=b"a=1&b"))
    flush(AGENT, collector)
    assert [r.uri for r in http_records(collector)] == [
        "/caf%C3%A9?a=1&password=REDACTED",
        "/d",
        "/k?pwd=1",
        "/r?a=REDACTED&b",
    ]
    with pytest.raises(ValueError, match="query"):
        SFlowMiddleware(respond(), query="secret")  # type: ignore[arg-type]


def test_a_long_query_the_uri_drops_is_not_remembered(agent, collector):
    """The head memo's keys hold the query as sent: a long one (a JWT the URI redacts,
    any query under "drop") counts toward the memo's bound, so none is kept."""
    agent(sampling=1)
    asgi._HEADS.clear()
    token = b"t" * KEY_MAX
    call(SFlowMiddleware(respond()), http_scope(path="/s", query=b"token=" + token))
    call(SFlowMiddleware(respond(), query="drop"), http_scope(path="/d", query=b"q=" + token))
    call(SFlowMiddleware(respond()), http_scope(path="/short", query=b"token=abc"))
    flush(AGENT, collector)
    assert [r.uri for r in http_records(collector)] == [
        "/s?token=REDACTED",
        "/d",
        "/short?token=REDACTED",
    ]
    assert [key[2] for key in asgi._HEADS] == [b"/short"]


def test_exception_before_response_is_500_and_reraised(agent, collector):
    agent(sampling=1)
    boom = RuntimeError("boom")

    async def app(scope, receive, send):
        raise boom

    with pytest.raises(RuntimeError) as info:
        call(SFlowMiddleware(app), http_scope())
    assert info.value is boom
    flush(AGENT, collector)
    [rec] = http_records(collector)
    assert rec.status == 500 and rec.resp_bytes == 0
    assert counters(collector).status_5XX_count == 1


def test_exception_after_response_started_keeps_status(agent, collector):
    agent(sampling=1)

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"part", "more_body": True})
        raise ValueError("late")

    with pytest.raises(ValueError):
        call(SFlowMiddleware(app), http_scope())
    flush(AGENT, collector)
    [rec] = http_records(collector)
    assert rec.status == 200 and rec.resp_bytes == 4
    assert counters(collector).status_2XX_count == 1


def call_then_leave(app, after: float = 0.05, *expected: type[BaseException]) -> None:
    """Run SFlowMiddleware(app) for a client that goes away ``after`` seconds in."""

    async def main():
        peer = Peer()
        task = asyncio.ensure_future(SFlowMiddleware(app)(http_scope(), peer.receive, peer.send))  # type: ignore[arg-type]
        await asyncio.sleep(after)
        peer.gone.set()
        with contextlib.suppress(*expected):
            await task

    asyncio.run(main())


def test_disconnect_before_response_is_499(agent, collector):
    agent(sampling=1)

    async def app(scope, receive, send):
        await receive()  # the body
        message = await receive()  # waits for the client to go
        assert message["type"] == "http.disconnect"
        gone.append(time.monotonic())
        await asyncio.sleep(0.2)  # work after the disconnect is not the client's time
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"too late"})

    gone: list[float] = []
    started = time.monotonic()
    call_then_leave(app)
    flush(AGENT, collector)
    [rec] = http_records(collector)
    assert rec.status == 499 and rec.resp_bytes == 0
    # The client left 50 ms in; the clock stops before the app hears of it (not 200 ms later).
    assert 20_000 <= rec.uS <= (gone[0] - started) * 1e6
    # Counted as the unsampled path counts it (the app's answer): sampling never skews
    # the counters. The record tells what the client saw.
    assert counters(collector).status_2XX_count == 1


@pytest.mark.parametrize("outcome", ["answers", "raises", "returns"])
def test_late_outcomes_count_alike_sampled_or_not(agent, collector, outcome):
    """After the client left: the counters the same whether the request was sampled."""

    async def app(scope, receive, send):
        await receive()
        await receive()  # http.disconnect
        if outcome == "answers":
            await send({"type": "http.response.start", "status": 404, "headers": []})
            await send({"type": "http.response.body", "body": b"late"})
        elif outcome == "raises":
            raise RuntimeError("after the client left")

    seen = []
    for sampling in (1, 0):
        agent(sampling=sampling)
        call_then_leave(app, 0.02, RuntimeError)
        snapshot = AGENT.http_source().counters.snapshot()
        seen.append(dict(zip(AGENT.http_source().counters.names, snapshot, strict=True)))
    assert seen[0] == seen[1]
    want = {
        "answers": "status_4XX_count",
        "raises": "status_5XX_count",
        "returns": "status_4XX_count",
    }[outcome]
    assert seen[0][want] == 1


def test_pathsend_bytes_are_the_files(agent, collector, tmp_path):
    agent(sampling=1)
    body = tmp_path / "page.bin"
    body.write_bytes(b"x" * 12345)

    def app_with(headers):
        async def app(scope, receive, send):
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.pathsend", "path": str(body)})

        return app

    peer = Peer()
    asyncio.run(SFlowMiddleware(app_with([]))(http_scope(), peer.receive, peer.send))  # type: ignore[arg-type]
    asyncio.run(
        SFlowMiddleware(app_with([(b"content-length", b"12345")]))(
            http_scope(),
            peer.receive,
            peer.send,  # type: ignore[arg-type]
        )
    )
    flush(AGENT, collector)
    assert [rec.resp_bytes for rec in http_records(collector)] == [12345, 12345]


def test_disconnect_mid_stream_keeps_bytes_sent_until_then(agent, collector):
    agent(sampling=1)

    async def app(scope, receive, send):
        await receive()
        await send({"type": "http.response.start", "status": 206, "headers": []})
        await send({"type": "http.response.body", "body": b"12345", "more_body": True})
        await receive()  # http.disconnect
        gone.append(time.monotonic())
        await asyncio.sleep(0.2)
        await send({"type": "http.response.body", "body": b"dropped", "more_body": False})

    gone: list[float] = []
    started = time.monotonic()
    call_then_leave(app)
    flush(AGENT, collector)
    [rec] = http_records(collector)
    assert (rec.status, rec.resp_bytes) == (206, 5)
    # The client left 50 ms in; the clock stops before the app hears of it (not 200 ms later).
    assert 20_000 <= rec.uS <= (gone[0] - started) * 1e6


def test_send_raising_oserror_ends_the_exchange(agent, collector):
    agent(sampling=1)

    class Gone(OSError):
        pass

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"abc", "more_body": True})
        await send({"type": "http.response.body", "body": b"defgh", "more_body": False})

    peer = Peer()
    real_send = peer.send

    async def send(message):
        if message.get("body") == b"defgh":
            raise Gone()
        await real_send(message)

    with pytest.raises(Gone):
        asyncio.run(SFlowMiddleware(app)(http_scope(), peer.receive, send))
    flush(AGENT, collector)
    [rec] = http_records(collector)
    assert (rec.status, rec.resp_bytes) == (200, 3)


def test_cancelled_before_response_is_499(agent, collector):
    agent(sampling=1)

    async def app(scope, receive, send):
        await asyncio.sleep(10)

    async def main():
        peer = Peer()
        task = asyncio.ensure_future(SFlowMiddleware(app)(http_scope(), peer.receive, peer.send))  # type: ignore[arg-type]
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    flush(AGENT, collector)
    [rec] = http_records(collector)
    assert rec.status == 499
    assert counters(collector).status_4XX_count == 1


def test_duration_is_clamped(agent, collector, monkeypatch):
    agent(sampling=1)
    clock = iter([0, 2**40 * 1000])
    monkeypatch.setattr(_asgi_exchange, "perf_counter_ns", lambda: next(clock))
    call(SFlowMiddleware(respond(chunks=1)), http_scope())
    flush(AGENT, collector)
    assert [r.uS for r in http_records(collector)] == [2**32 - 1]


def test_unsampled_path_counts_without_wrapping_receive(agent, collector):
    agent(sampling=0)  # counters only
    seen: list[Any] = []
    inner = respond(404)

    async def app(scope, receive, send):
        seen.append(receive)
        await inner(scope, receive, send)

    mw = SFlowMiddleware(app)
    peers = [Peer() for _ in range(5)]
    for i, peer in enumerate(peers):
        call(mw, http_scope("DELETE" if i % 2 else "PATCH"), peer)
    # The first candidate takes the slow path (identity, exporter start); none is sampled,
    # and every app saw the server's own receive callable.
    assert [r.__self__ for r in seen] == peers
    assert all(peer.sent[0]["status"] == 404 for peer in peers)
    flush(AGENT, collector)
    assert http_records(collector) == []
    c = counters(collector)
    assert (c.method_delete_count, c.method_other_count, c.status_4XX_count) == (2, 3, 5)


@pytest.mark.parametrize("kind", ["http", "websocket"])
def test_unsampled_send_hands_the_app_the_servers_own_awaitable(agent, collector, kind):
    # No coroutine of ours between the app and the server's send (one per message fewer):
    # what the app awaits is what the server's send returned.
    agent(sampling=0)
    returned: list[Any] = []
    awaited: list[Any] = []

    async def server_send(message):
        pass

    def send(message):
        returned.append(server_send(message))
        return returned[-1]

    if kind == "http":
        messages = [
            {"type": "http.response.start", "status": 404, "headers": []},
            {"type": "http.response.body", "body": b"gone"},
        ]
        scope = http_scope()
    else:
        messages = [{"type": "websocket.accept"}, {"type": "websocket.close", "code": 1000}]
        scope = http_scope(type="websocket", scheme="ws")

    async def app(scope, receive, send):
        for message in messages:
            pending = send(message)
            awaited.append(pending)
            await pending

    asyncio.run(SFlowMiddleware(app)(scope, Peer().receive, send))
    assert len(awaited) == 2 and all(a is r for a, r in zip(awaited, returned, strict=True))
    flush(AGENT, collector)
    c = counters(collector)
    assert (c.status_4XX_count, c.status_1XX_count) == ((1, 0) if kind == "http" else (0, 1))


def test_unsampled_exception_and_silent_return(agent, collector):
    agent(sampling=0)

    async def boom(scope, receive, send):
        raise KeyError("x")

    async def silent(scope, receive, send):
        return None

    with pytest.raises(KeyError):
        call(SFlowMiddleware(boom), http_scope())
    call(SFlowMiddleware(silent), http_scope())  # the server answers it 500 (uvicorn's)
    gone = Peer()
    gone.gone.set()  # the client left: the server answers nothing (499)
    call(SFlowMiddleware(silent), http_scope(), gone)
    flush(AGENT, collector)
    c = counters(collector)
    assert (c.status_5XX_count, c.status_4XX_count, c.method_get_count) == (2, 1, 3)


def test_status_outside_known_classes(agent, collector):
    agent(sampling=1)
    call(SFlowMiddleware(respond(status=99)), http_scope())
    call(SFlowMiddleware(respond(status=600)), http_scope())
    flush(AGENT, collector)
    assert [r.status for r in http_records(collector)] == [99, 600]
    assert counters(collector).status_other_count == 2


@pytest.mark.parametrize("sampling", [0, 1])
@pytest.mark.parametrize("kind", ["http", "websocket"])
def test_an_unhashable_status_is_counted_as_other_not_raised(agent, collector, sampling, kind):
    # An app's (or a lenient server's) odd status must not turn into our TypeError.
    agent(sampling=sampling)
    if kind == "http":
        start: dict[str, Any] = {"type": "http.response.start", "status": [200], "headers": []}
        messages = [start, {"type": "http.response.body", "body": b"x"}]
        scope = http_scope()
    else:
        start = {"type": "websocket.http.response.start", "status": [403], "headers": []}
        messages = [start, {"type": "websocket.http.response.body", "body": b"x"}]
        scope = http_scope(type="websocket", scheme="ws")

    async def app(scope, receive, send):
        for message in messages:
            await send(message)

    peer = call(SFlowMiddleware(app), scope)
    assert peer.sent[0]["status"] == start["status"]
    flush(AGENT, collector)
    c = counters(collector)
    assert (c.status_other_count, c.method_get_count) == (1, 1)


@pytest.mark.parametrize("sampling", [0, 1])
def test_a_scope_without_a_method_is_counted_not_raised(agent, collector, sampling):
    """A lenient server's scope with no "method": the app answers as it would bare; the
    request is counted as another method (we raised KeyError after the response)."""
    agent(sampling=sampling)
    scope = http_scope()
    del scope["method"]
    peer = call(SFlowMiddleware(respond(status=200)), scope)
    assert peer.sent[0]["status"] == 200
    flush(AGENT, collector)
    c = counters(collector)
    assert (c.method_other_count, c.status_2XX_count) == (1, 1)


def test_odd_bodies_and_payloads_are_counted_not_raised(agent, collector):
    """Sampled: a body of None from the server, a websocket text with a lone surrogate --
    the server's to accept or refuse, never our counting's to raise on."""
    agent(sampling=1)

    async def app(scope, receive, send):
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": None})

    class NoneBody(Peer):
        async def receive(self) -> dict:
            return {"type": "http.request", "body": None, "more_body": False}

    peer = call(SFlowMiddleware(app), http_scope(), NoneBody())
    assert [m["type"] for m in peer.sent] == ["http.response.start", "http.response.body"]
    ws = WsPeer([])

    async def ws_app(scope, receive, send):
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "text": "bad \ud800"})
        await send({"type": "websocket.close"})

    asyncio.run(SFlowMiddleware(ws_app)(ws_scope(), ws.receive, ws.send))  # type: ignore[arg-type]
    assert ws.sent[1] == {"type": "websocket.send", "text": "bad \ud800"}
    flush(AGENT, collector)
    assert len(http_records(collector)) == 2


def test_exclude_prefixes_and_predicate(agent, collector):
    agent(sampling=1)
    mw = SFlowMiddleware(respond(), exclude=["/health", "/metrics"])
    for path in ("/health", "/healthz", "/metrics/x", "/shop"):
        call(mw, http_scope(path=path))
    mw2 = SFlowMiddleware(respond(), exclude=lambda path: path.endswith(".png"))
    call(mw2, http_scope(path="/a.png"))
    call(mw2, http_scope(path="/a.html"))
    flush(AGENT, collector)
    assert [r.uri for r in http_records(collector)] == ["/shop", "/a.html"]
    assert counters(collector).method_get_count == 2


def test_the_request_as_the_client_sent_it_not_as_rewritten_inside(agent, collector):
    """An inner middleware that rewrites the scope in place (a path normaliser, a header
    it adds or replaces) does not change what the sample says the client sent."""
    agent(sampling=1)

    async def rewriting(scope, receive, send):
        scope["path"], scope["raw_path"], scope["query_string"] = "/new", b"/new", b"b=2"
        scope["headers"][:] = [(b"host", b"rewritten"), (b"user-agent", b"inner")]
        scope["http_version"] = "2"
        await respond()(scope, receive, send)

    headers = [(b"host", b"example.org"), (b"user-agent", b"client/1")]
    call(SFlowMiddleware(rewriting), http_scope(path="/Old/", query=b"a=1", headers=headers))
    flush(AGENT, collector)
    [rec] = http_records(collector)
    assert (rec.uri, rec.host, rec.useragent, rec.protocol) == (
        "/Old/?a=1",
        "example.org",
        "client/1",
        1001,
    )


def test_exclude_prefixes_under_a_root_path(agent, collector):
    """uvicorn --root-path /api puts the root path in path, hypercorn's root_path does
    not: a prefix as the app routes it excludes under both; the full path still does."""
    agent(sampling=1)
    mw = SFlowMiddleware(respond(), exclude=iter(["/health", "/api/metrics"]))
    for path in ("/api/health", "/api/metrics", "/api/shop", "/api/healthy/x"):
        call(mw, http_scope(path=path, raw_path=path.encode(), root_path="/api"))  # uvicorn
    call(mw, http_scope(path="/health", root_path="/api"))  # hypercorn
    call(mw, http_scope(path="/other/health", root_path="/api"))
    flush(AGENT, collector)
    assert [r.uri for r in http_records(collector)] == ["/api/shop", "/other/health"]
    assert counters(collector).method_get_count == 2


def test_lifespan_passes_through_untouched(agent, collector):
    agent(sampling=1)
    calls = []

    async def app(scope, receive, send):
        calls.append((scope, receive, send))
        message = await receive()
        await send({"type": message["type"] + ".complete"})

    scope = {"type": "lifespan", "asgi": {"version": "3.0"}}
    peer_sent = []

    async def receive():
        return {"type": "lifespan.startup"}

    async def send(message):
        peer_sent.append(message)

    asyncio.run(SFlowMiddleware(app)(scope, receive, send))
    assert calls == [(scope, receive, send)]
    assert calls[0][0] is scope and calls[0][1] is receive and calls[0][2] is send
    assert peer_sent == [{"type": "lifespan.startup.complete"}]
    assert AGENT.http_source().sampler.sample_pool == 0


def test_asgi2_app_through_asgiref(agent, collector):
    agent(sampling=1)

    class Legacy:
        def __init__(self, scope):
            self.scope = scope

        async def __call__(self, receive, send):
            await send({"type": "http.response.start", "status": 202, "headers": []})
            await send({"type": "http.response.body", "body": b"v2"})

    peer = call(SFlowMiddleware(Legacy), http_scope())  # type: ignore[arg-type]
    assert peer.sent[0]["status"] == 202
    flush(AGENT, collector)
    assert [(r.status, r.resp_bytes) for r in http_records(collector)] == [(202, 2)]


def test_identity_from_server_port_then_unix_socket(agent, collector, caplog):
    agent(sampling=1)
    call(SFlowMiddleware(respond()), http_scope(server=("127.0.0.1", 8443)))
    assert AGENT.http_source().ds_index == 8443

    agent(sampling=1)
    with caplog.at_level("WARNING", logger="sflow_app"):
        call(SFlowMiddleware(respond()), http_scope(server=("/run/app.sock", None), client=None))
    index = AGENT.http_source().ds_index
    assert index is not None and 65536 <= index <= 99999
    assert "/run/app.sock" in caplog.text
    flush(AGENT, collector)  # the agent reset above sent the first request's sample
    assert [r.status for r in http_records(collector)] == [200, 200]
    assert len(collector.records(ExtendedSocketIPv4)) == 1  # none for the unix socket
    assert collector.flow_samples()[-1].ds_index == index


def test_ipv6_sockets(agent, collector):
    agent(sampling=1)
    call(SFlowMiddleware(respond()), http_scope(server=("::1", 8000), client=("::1", 40000)))
    flush(AGENT, collector)
    [sock] = collector.records(ExtendedSocketIPv6)
    assert (sock.local_ip, sock.local_port, sock.remote_port) == ("::1", 8000, 40000)


def test_current_request_is_set_only_while_sampled(agent, collector, monkeypatch):
    agent(sampling=1)
    monkeypatch.setattr(ParentContexts, "wanted", True)  # as once a function is decorated
    seen = []

    async def app(scope, receive, send):
        seen.append(parent_context())
        await respond(read_body=False)(scope, receive, send)

    call(SFlowMiddleware(app), http_scope("POST", "/orders/7"))
    assert seen == [("tests", "POST", "/orders/7")]
    assert current_request.get() is None and parent_context() is None


def test_concurrent_requests_keep_their_own_state(agent, collector):
    """Interleaved requests on one loop: every record carries its own size and status."""
    agent(sampling=1)

    async def app(scope, receive, send):
        size = int(scope["path"][1:])
        await asyncio.sleep((size * 7 % 13) / 1000)
        await send({"type": "http.response.start", "status": 200 + size % 7, "headers": []})
        for _ in range(2):
            await asyncio.sleep(0)
            await send({"type": "http.response.body", "body": b"r" * size, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        await asyncio.sleep((size * 5 % 11) / 1000)  # work after the response

    mw = SFlowMiddleware(app)

    async def main():
        await asyncio.gather(
            *(
                mw(
                    http_scope(path=f"/{i}", headers=[(b"content-length", str(i * 3).encode())]),
                    Peer().receive,
                    Peer().send,  # type: ignore[arg-type]
                )
                for i in range(1, 201)
            )
        )

    asyncio.run(main())
    flush(AGENT, collector)
    collector.wait_for(lambda c: len(http_records(c)) >= 200, timeout=5)
    recs = http_records(collector)
    assert len(recs) == 200
    for rec in recs:
        size = int(rec.uri[1:])
        assert (rec.req_bytes, rec.resp_bytes, rec.status) == (3 * size, 2 * size, 200 + size % 7)


# -- websockets ------------------------------------------------------------------------


def ws_scope(path: str = "/ws") -> dict:
    return {
        "type": "websocket",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "scheme": "ws",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"h")],
        "server": SERVER,
        "client": CLIENT,
        "subprotocols": [],
    }


class WsPeer:
    def __init__(self, incoming: list[dict]) -> None:
        self.incoming = [{"type": "websocket.connect"}, *incoming]
        self.sent: list[dict] = []

    async def receive(self) -> dict:
        if self.incoming:
            return self.incoming.pop(0)
        return {"type": "websocket.disconnect", "code": 1000}

    async def send(self, message: dict) -> None:
        self.sent.append(message)


async def echo_ws(scope, receive, send):
    await receive()  # connect
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        await asyncio.sleep(0.02)
        if message.get("text") is not None:
            await send({"type": "websocket.send", "text": message["text"] * 2})
        else:
            await send({"type": "websocket.send", "bytes": message["bytes"] * 2})


def test_websocket_sampled_as_get_101(agent, collector):
    agent(sampling=1)
    peer = WsPeer(
        [
            {"type": "websocket.receive", "text": "h\u00e9"},
            {"type": "websocket.receive", "bytes": b"\x00\x01\x02"},
        ]
    )
    asyncio.run(SFlowMiddleware(echo_ws)(ws_scope(), peer.receive, peer.send))  # type: ignore[arg-type]
    assert [m["type"] for m in peer.sent] == [
        "websocket.accept",
        "websocket.send",
        "websocket.send",
    ]
    flush(AGENT, collector)
    [rec] = http_records(collector)
    assert (rec.method, rec.status, rec.uri, rec.host) == (2, 101, "/ws", "h")
    assert (rec.req_bytes, rec.resp_bytes) == (3 + 3, 6 + 6)
    assert rec.uS >= 40_000  # the connection's lifetime
    c = counters(collector)
    assert (c.method_get_count, c.status_1XX_count) == (1, 1)


def test_websocket_rejected_and_unsampled(agent, collector):
    agent(sampling=0)

    async def reject(scope, receive, send):
        await receive()
        await send({"type": "websocket.close", "code": 1008})

    asyncio.run(SFlowMiddleware(reject)(ws_scope(), WsPeer([]).receive, WsPeer([]).send))  # type: ignore[arg-type]
    mw = SFlowMiddleware(echo_ws)
    for _ in range(2):
        asyncio.run(mw(ws_scope(), WsPeer([]).receive, WsPeer([]).send))  # type: ignore[arg-type]
    flush(AGENT, collector)
    c = counters(collector)
    assert (c.method_get_count, c.status_1XX_count, c.status_4XX_count) == (3, 2, 1)
