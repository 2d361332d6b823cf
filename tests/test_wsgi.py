"""sflow_app.wsgi in process: Werkzeug's real server on loopback, or direct calls, always
under Werkzeug's LintMiddleware on both sides; datagrams decoded from a UDP collector."""

from __future__ import annotations

import dataclasses
import http.client
import inspect
import io
import socket
import threading
import time
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler
from wsgiref.simple_server import make_server as wsgiref_make_server
from wsgiref.util import FileWrapper as WsgirefFileWrapper

import httpx
import pytest
from apps.harness import (
    expect,
    flush,
    http_counters,
    http_samples,
    other_samples,
    record,
    serve,
)
from helpers import wait_until
from werkzeug.middleware.lint import LintMiddleware
from werkzeug.test import EnvironBuilder
from werkzeug.wsgi import ClosingIterator

from sflow_app import wsgi
from sflow_app._agent import AGENT
from sflow_app._memo import MEMO_MAX
from sflow_app._transaction import transaction
from sflow_app.records import (
    AppOperation,
    AppParentContext,
    ExtendedSocketIPv4,
    ExtendedSocketIPv6,
    HostParent,
    HttpCounters,
    HttpRequest,
)
from sflow_app.wsgi import SFlowMiddleware, set_route

pytestmark = pytest.mark.filterwarnings("error")

ZERO_COUNTERS = dict.fromkeys((f.name for f in dataclasses.fields(HttpCounters)), 0)


# -- harness --------------------------------------------------------------------------


counters = http_counters


class QuietHandler(WSGIRequestHandler):
    def log_message(self, *args):
        pass


def linted(app):
    """Lint on both sides: ours as an application and as a server for ``app``."""
    return LintMiddleware(SFlowMiddleware(LintMiddleware(app)))


def call(app, path: str = "/", method: str = "GET", **builder) -> tuple[str, bytes, list]:
    """Run ``app`` as a server would (direct call): start_response, iterate, close."""
    environ = EnvironBuilder(path=path, method=method, **builder).get_environ()
    environ.pop("RAW_URI", None)
    environ.pop("REQUEST_URI", None)
    seen: list = []

    def start_response(status, headers, exc_info=None):
        seen[:] = [status, headers]
        return lambda data: None

    result = app(environ, start_response)
    try:
        body = b"".join(result)
    finally:
        if hasattr(result, "close"):
            result.close()
    return seen[0], body, seen[1]


def hello(environ, start_response):
    start_response(
        "200 OK", [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", "5")]
    )
    return [b"hello"]


def router(environ, start_response):
    """A small app covering statuses, bodies and uploads."""
    path = environ["PATH_INFO"]
    method = environ["REQUEST_METHOD"]
    if path == "/missing":
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"no"]
    if path == "/redirect":
        start_response("302 Found", [("Location", "http://127.0.0.1/x"), ("Content-Length", "0")])
        return []
    if path == "/error":
        start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
        return [b"down"]
    if path == "/upload":
        stream = environ["wsgi.input"]
        length = environ.get("CONTENT_LENGTH")
        got = 0
        if length:
            while got < int(length):
                got += len(stream.read(min(4096, int(length) - got)))
        else:  # chunked: the server ends the stream (wsgi.input_terminated)
            while chunk := stream.read(4096):
                got += len(chunk)
        body = str(got).encode()
        start_response(
            "201 Created", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))]
        )
        return [body]
    if path.startswith("/size/"):
        size = int(path.rsplit("/", 1)[1])
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return [b"x" * size]
    body = f"{method} {path}".encode()
    if method == "HEAD":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return []
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


# -- counting -------------------------------------------------------------------------


def test_every_request_counted_with_sampling_off(live, collector):
    live(sampling=0)
    with serve(linted(router)) as url, httpx.Client(base_url=url) as client:
        for _ in range(3):
            assert client.get("/").status_code == 200
        assert client.post("/upload", content=b"abc").status_code == 201
        assert client.put("/").status_code == 200
        assert client.delete("/").status_code == 200
        assert client.options("/").status_code == 200
        assert client.head("/").status_code == 200
        assert client.request("PATCH", "/").status_code == 200
        assert client.get("/missing").status_code == 404
        assert client.get("/redirect", follow_redirects=False).status_code == 302
        assert client.get("/error").status_code == 503
    flush(collector)
    assert counters(collector) == expect(
        method_get_count=6,
        method_post_count=1,
        method_put_count=1,
        method_delete_count=1,
        method_option_count=1,
        method_head_count=1,
        method_other_count=1,
        status_2XX_count=9,
        status_3XX_count=1,
        status_4XX_count=1,
        status_5XX_count=1,
    )
    assert http_samples(collector) == []
    status = AGENT.status()["data_sources"]["http"]
    assert status["sample_pool"] == 12 and status["sampling_rate"] == 0


def test_identity_from_werkzeug_socket_and_host_parent(live, collector):
    live(sampling=1)
    with serve(SFlowMiddleware(hello)) as url:
        port = int(url.rsplit(":", 1)[1])
        # A lying Host header must not become the identity.
        assert httpx.get(url + "/", headers={"Host": "evil.example:9999"}).status_code == 200
    flush(collector)
    dg = collector.datagrams[-1]
    assert dg.agent_address == "127.0.0.1" and dg.sub_agent_id == port
    cs = collector.counter_samples()[-1]
    assert (cs.ds_class, cs.ds_index) == (3, port)
    assert HostParent(container_type=2, container_index=1) in cs.records
    fs = http_samples(collector)[0]
    assert (fs.ds_class, fs.ds_index) == (3, port)
    assert record(fs, HttpRequest).host == "evil.example:9999"


def test_configured_ds_index_wins(live, collector, monkeypatch):
    monkeypatch.setenv("SFLOW_APP_DS_INDEX", "4242")
    live(sampling=1)
    with serve(SFlowMiddleware(hello)) as url:
        httpx.get(url)
    flush(collector)
    assert collector.counter_samples()[-1].ds_index == 4242
    assert collector.datagrams[-1].sub_agent_id == 4242


# -- the sampled record ---------------------------------------------------------------


def test_sampled_request_fields(live, collector):
    live(sampling=1)

    def with_user(environ, start_response):
        environ["REMOTE_USER"] = "alice"
        return inner(environ, start_response)

    inner = linted(router)
    with serve(with_user) as url:
        port = int(url.rsplit(":", 1)[1])
        response = httpx.post(
            url + "/upload?page=2&password=hunter2&api_key=k1&x=",
            content=b"q" * 1234,
            headers={
                "Referer": "http://ref.example/a",
                "User-Agent": "sflow-test/1.0",
                "X-Forwarded-For": "203.0.113.9, 10.0.0.1",
                "Host": "shop.example",
            },
        )
        assert response.text == "1234"
    flush(collector)
    (fs,) = http_samples(collector)
    assert (fs.sampling_rate, fs.sample_pool, fs.drops) == (1, 1, 0)
    assert (fs.input_format, fs.input_value, fs.output_format, fs.output_value) == (
        0,
        0,
        0,
        0x3FFFFFFF,
    )
    req = record(fs, HttpRequest)
    assert req.method == 4 and req.protocol == 1001
    assert req.uri == "/upload?page=2&password=REDACTED&api_key=REDACTED&x="
    assert req.host == "shop.example"
    assert req.referer == "http://ref.example/a"
    assert req.useragent == "sflow-test/1.0"
    assert req.xff == "203.0.113.9, 10.0.0.1"
    assert req.authuser == "alice"
    assert req.mime_type == "text/plain"
    assert req.req_bytes == 1234 and req.resp_bytes == 4
    assert req.status == 201
    assert 0 < req.uS < 5_000_000
    sock = record(fs, ExtendedSocketIPv4)
    assert sock.protocol == 6
    assert (sock.local_ip, sock.local_port) == ("127.0.0.1", port)
    assert sock.remote_ip == "127.0.0.1" and 0 < sock.remote_port < 65536
    assert sock.remote_port != port
    assert counters(collector) == expect(method_post_count=1, status_2XX_count=1)


def test_http10_head_patch_and_statuses(live, collector):
    live(sampling=1)
    with serve(linted(router)) as url:
        host, port = url[7:].split(":")
        conn = socket.create_connection((host, int(port)))
        conn.sendall(b"GET /missing HTTP/1.0\r\nHost: a\r\n\r\n")
        while conn.recv(4096):
            pass
        conn.close()
        assert httpx.head(url + "/").status_code == 200
        assert httpx.request("PATCH", url + "/p").status_code == 200
        assert httpx.get(url + "/error").status_code == 503
    flush(collector)
    reqs = [record(s, HttpRequest) for s in http_samples(collector)]
    assert [(r.method, r.protocol, r.status) for r in reqs] == [
        (2, 1000, 404),
        (3, 1001, 200),
        (0, 1001, 200),
        (2, 1001, 503),
    ]
    head = reqs[1]
    assert head.resp_bytes == 0 and head.mime_type == "text/plain"
    assert reqs[2].resp_bytes == len(b"PATCH /p")


def test_query_modes(live, collector):
    live(sampling=1)
    query = "?user=bob&token=t0k&sessionid=s&next=%2Fhome&flag"
    for mode, want in [
        ("sensitive", "/q?user=bob&token=REDACTED&sessionid=REDACTED&next=%2Fhome&flag"),
        ("keep", "/q" + query),
        ("redact", "/q?user=REDACTED&token=REDACTED&sessionid=REDACTED&next=REDACTED&flag"),
        ("drop", "/q"),
    ]:
        middleware = SFlowMiddleware(hello, query=mode)  # type: ignore[arg-type]
        with serve(middleware) as url:
            httpx.get(url + "/q" + query)
        flush(collector)
        assert record(http_samples(collector)[-1], HttpRequest).uri == want, mode
    with pytest.raises(ValueError):
        SFlowMiddleware(hello, query="nope")  # type: ignore[arg-type]


def test_query_setting_is_the_middlewares_default(live, collector, monkeypatch):
    """SFLOW_APP_QUERY sets what middlewares built without ``query=`` keep; an explicit
    ``query=`` wins."""
    monkeypatch.setenv("SFLOW_APP_QUERY", "drop")
    live(sampling=1)
    for middleware, want in [
        (SFlowMiddleware(hello), "/q"),
        (SFlowMiddleware(hello, query="keep"), "/q?token=t"),
    ]:
        with serve(middleware) as url:
            httpx.get(url + "/q?token=t")
        flush(collector)
        assert record(http_samples(collector)[-1], HttpRequest).uri == want


def test_redaction_without_gaps(live, collector):
    """Brackets, dots, ';' separators and %-escaped names are redacted; the rest stays."""
    live(sampling=1)
    for query, want in [
        ("user[password]=x&page=2", "user[password]=REDACTED&page=2"),
        ("a=1;password=x;b=2", "a=1;password=REDACTED;b=2"),
        ("pass%77ord=x", "pass%77ord=REDACTED"),
        ("user.Password=x", "user.Password=REDACTED"),
        ("x[y][API_KEY]=k&passenger=3", "x[y][API_KEY]=REDACTED&passenger=3"),
        ("Pass+Word=w&flag", "Pass+Word=REDACTED&flag"),
    ]:
        with serve(SFlowMiddleware(hello)) as url:
            httpx.get(url + "/q?" + query)
        flush(collector)
        assert record(http_samples(collector)[-1], HttpRequest).uri == "/q?" + want, query


def test_redaction_decisions_are_remembered_within_bounds():
    from sflow_app import _http

    _http._SENSITIVE_SEEN.clear()
    query = b"page=2&token=t&user[password]=p&" + b"n" * 100 + b"=1"
    want = b"page=2&token=REDACTED&user[password]=REDACTED&" + b"n" * 100 + b"=1"
    assert _http.redact_query(query) == want
    assert _http._SENSITIVE_SEEN == {b"page": False, b"token": True, b"user[password]": True}
    assert _http.redact_query(query) == want  # the same answers from what it remembers
    for i in range(MEMO_MAX + 10):  # a client inventing names: the memory stays bounded
        _http.redact_query(b"p%d=1&secret_%d=2" % (i, i))
    assert 0 < len(_http._SENSITIVE_SEEN) <= MEMO_MAX
    assert _http.redact_query(b"secret_7=x") == b"secret_7=REDACTED"


def test_uri_non_ascii_and_over_long(live, collector):
    live(sampling=1)
    long_path = "/" + "a" * 600
    with serve(linted(router)) as url:
        httpx.get(url + "/caf%C3%A9?q=%E2%82%AC")  # what real clients send
        host, port = url[7:].split(":")
        conn = socket.create_connection((host, int(port)))
        conn.sendall("GET /naïve/€?k=ü HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n".encode())
        while conn.recv(4096):
            pass
        conn.close()
        httpx.get(url + long_path)
    flush(collector)
    uris = [record(s, HttpRequest).uri for s in http_samples(collector)]
    assert uris[0] == "/caf%C3%A9?q=%E2%82%AC"
    assert uris[1] == "/naïve/€?k=ü"  # the raw UTF-8 bytes as received
    assert uris[2] == long_path[:255]
    assert len(uris[2].encode()) == 255


def test_uri_rebuilt_without_raw_uri(live, collector):
    live(sampling=1)
    AGENT.configure(ds_index=8000)

    mw = SFlowMiddleware(hello)

    def mounted(environ, start_response):
        environ["SCRIPT_NAME"] = "/app"
        return mw(environ, start_response)

    status, body, _ = call(mounted, "/caf\u00e9 x", query_string="a=1&secret=s")
    assert status == "200 OK" and body == b"hello"
    flush(collector)
    req = record(http_samples(collector)[-1], HttpRequest)
    # PATH_INFO holds the UTF-8 bytes as latin-1 text: re-quoted as on the wire.
    assert req.uri == "/app/caf%C3%A9%20x?a=1&secret=REDACTED"
    # No socket in a direct call: no socket record, counters still sent (ds_index 8000).
    assert record(http_samples(collector)[-1], ExtendedSocketIPv4) is None
    assert collector.counter_samples()[-1].ds_index == 8000


def test_exclude_prefixes_and_predicate(live, collector):
    live(sampling=1)
    mw = SFlowMiddleware(router, exclude=["/health", "/metrics"])
    with serve(mw) as url:
        for path in ("/health", "/healthz", "/metrics/x", "/missing", "/"):
            httpx.get(url + path)
    flush(collector)
    assert counters(collector) == expect(method_get_count=2, status_2XX_count=1, status_4XX_count=1)
    assert [record(s, HttpRequest).uri for s in http_samples(collector)] == ["/missing", "/"]
    assert http_samples(collector)[-1].sample_pool == 2

    mw = SFlowMiddleware(router, exclude=lambda path: path.endswith(".png"))
    assert call(mw, "/logo.png")[0] == "200 OK"
    assert call(mw, "/page")[0] == "200 OK"
    flush(collector)
    assert http_samples(collector)[-1].sample_pool == 3
    with pytest.raises(TypeError):
        SFlowMiddleware(router, exclude="/health")


# -- WSGI correctness -----------------------------------------------------------------


class Boom(Exception):
    pass


@pytest.mark.parametrize("sampling", [0, 1])
def test_app_raising_before_start_response(live, collector, sampling):
    live(sampling=sampling)
    AGENT.configure(ds_index=8000)
    error = Boom("no")

    def app(environ, start_response):
        raise error

    mw = SFlowMiddleware(app)
    with pytest.raises(Boom) as caught:
        call(mw, "/boom")
    assert caught.value is error and caught.value.__traceback__ is not None
    flush(collector)
    assert counters(collector) == expect(method_get_count=1, status_5XX_count=1)
    if sampling:
        req = record(http_samples(collector)[-1], HttpRequest)
        assert (req.status, req.resp_bytes, req.uri) == (500, 0, "/boom")
    else:
        assert http_samples(collector) == []


@pytest.mark.parametrize("sampling", [0, 1])
def test_app_raising_after_start_response(live, collector, sampling):
    live(sampling=sampling)
    AGENT.configure(ds_index=8000)

    def app(environ, start_response):
        start_response("202 Accepted", [])
        raise Boom

    with pytest.raises(Boom):
        call(SFlowMiddleware(app))
    flush(collector)
    assert counters(collector) == expect(method_get_count=1, status_2XX_count=1)
    if sampling:
        assert record(http_samples(collector)[-1], HttpRequest).status == 202


@pytest.mark.parametrize("sampling", [0, 1])
def test_body_raising_still_closes(live, collector, sampling):
    live(sampling=sampling)
    AGENT.configure(ds_index=8000)
    closed = []

    class Body:
        def __iter__(self):
            yield b"abc"
            raise Boom

        def close(self):
            closed.append(True)

    def app(environ, start_response):
        start_response("200 OK", [])
        return Body()

    with pytest.raises(Boom):
        call(SFlowMiddleware(app))
    assert closed == [True]
    flush(collector)
    assert counters(collector) == expect(method_get_count=1, status_2XX_count=1)
    if sampling:
        req = record(http_samples(collector)[-1], HttpRequest)
        assert (req.status, req.resp_bytes) == (200, 3)


@pytest.mark.parametrize("sampling", [0, 1])
def test_status_lines_counted_each_time(live, collector, sampling):
    """Each status line's counting is remembered (a class counter, and a status
    app_operations tells apart): a line seen again counts again, the same way."""
    from sflow_app._source import HTTP_COUNTERS

    live(sampling=sampling)
    AGENT.configure(ds_index=8000)
    lines: list[str | bytes] = [
        "200 OK",
        "404 Not Found",
        "404 Not Found",
        "503 Busy",
        "200 OK",
        "999 Odd",
    ]
    lines += ["", "404", "418 Teapot", "404 Not Found", b"200 OK"]  # bytes: not a line
    status = iter(lines)

    def app(environ, start_response):
        start_response(next(status), [])
        return [b""]

    mw = SFlowMiddleware(app)
    before = mw._source.counters.snapshot()
    for _ in lines:
        environ = EnvironBuilder(path="/").get_environ()
        result = mw(environ, lambda s, h, e=None: None)  # type: ignore[arg-type]
        list(result)
        getattr(result, "close", lambda: None)()
    after = mw._source.counters.snapshot()
    counted = {n: a - b for n, a, b in zip(HTTP_COUNTERS, after, before, strict=True) if a != b}
    assert counted == {
        "method_get_count": 11,
        "status_2XX_count": 2,
        "status_4XX_count": 5,
        "status_5XX_count": 1,
        "status_other_count": 3,
        "status_404": 4,
        "status_503": 1,
    }


def test_server_stopping_early_and_a_body_failing_before_its_status(live, collector):
    """The body a server iterates is a generator of ours: a server that stops early (a
    client gone) has counted what it took and fails nothing; a body that raises before
    start_response is a 500."""
    live(sampling=1)
    AGENT.configure(ds_index=8000)

    def chunks(environ, start_response):
        start_response("200 OK", [])
        yield from (b"12345", b"67890", b"abcde")

    def broken(environ, start_response):
        raise Boom
        yield b""  # a generator: the raise comes at the first iteration

    for app, path in ((chunks, "/early"), (broken, "/broken")):
        environ = EnvironBuilder(path=path).get_environ()
        result = SFlowMiddleware(app)(environ, lambda s, h, e=None: None)  # type: ignore[arg-type]
        taken = iter(result)
        try:
            next(taken)
        except Boom:
            pass
        result.close()  # type: ignore[attr-defined]
        del taken  # a server letting go of the iterator: GeneratorExit inside it
    flush(collector)
    assert counters(collector) == expect(method_get_count=2, status_2XX_count=1, status_5XX_count=1)
    reqs = [record(s, HttpRequest) for s in http_samples(collector)]
    assert [(r.uri, r.status, r.resp_bytes) for r in reqs] == [
        ("/early", 200, 5),
        ("/broken", 500, 0),
    ]


def test_list_and_tuple_bodies_are_the_servers_to_iterate(live, collector):
    """A list or tuple body goes to the server as it is (its own iterator, its length):
    its bytes summed at close(), none for HEAD, and a chunk without a length raises
    nothing into the server."""
    live(sampling=1)
    AGENT.configure(ds_index=8000)
    bodies: list[tuple[str, list[Any] | tuple[Any, ...]]] = [
        ("GET", [b"12345", b"678"]),
        ("GET", (b"ab", b"", b"cde")),
        ("HEAD", [b"12345"]),  # a server sends no body for HEAD
        ("GET", [7]),  # not bytes (PEP 3333 asks for bytes): no length
    ]
    for method, body in bodies:

        def app(environ, start_response, body=body):
            start_response("200 OK", [])
            return body

        environ = EnvironBuilder(path="/", method=method).get_environ()
        result = SFlowMiddleware(app)(environ, lambda s, h, e=None: None)  # type: ignore[arg-type]
        assert len(result) == len(body)  # type: ignore[arg-type]
        assert type(iter(result)) is type(iter(body))  # no wrapper in between
        assert list(result) == list(body)
        result.close()  # type: ignore[attr-defined]
    flush(collector)
    reqs = [record(s, HttpRequest) for s in http_samples(collector)]
    assert [r.resp_bytes for r in reqs] == [8, 5, 0, 0]
    assert counters(collector) == expect(
        method_get_count=3, method_head_count=1, status_2XX_count=4
    )


@pytest.mark.parametrize("sampling", [0, 1])
def test_close_forwarded_and_lazy_start_response(live, collector, sampling):
    """Generators call start_response on first iteration: counted at close()."""
    live(sampling=sampling)
    AGENT.configure(ds_index=8000)
    closed = []

    def gen_app(environ, start_response):
        try:
            start_response("404 Not Found", [("Content-Type", "text/html")])
            yield b"<p>"
            yield b"gone</p>"
        finally:
            closed.append("gen")

    class Listy(list):
        def close(self):
            closed.append("list")

    def list_app(environ, start_response):
        start_response("200 OK", [])
        return Listy([b"a", b"b"])

    mw = SFlowMiddleware(LintMiddleware(gen_app))
    assert call(LintMiddleware(mw), "/g") == (
        "404 Not Found",
        b"<p>gone</p>",
        [("Content-Type", "text/html")],
    )
    assert call(LintMiddleware(SFlowMiddleware(list_app)), "/l")[1] == b"ab"
    # Closed before iterating: the status was never set.
    environ = EnvironBuilder(path="/never").get_environ()
    result = SFlowMiddleware(gen_app)(environ, lambda s, h, e=None: None)  # type: ignore[arg-type]
    result.close()  # type: ignore[attr-defined]
    generator = result._result  # type: ignore[attr-defined]
    assert inspect.getgeneratorstate(generator) == inspect.GEN_CLOSED
    assert closed == ["gen", "list"]
    flush(collector)
    assert counters(collector) == expect(method_get_count=3, status_2XX_count=1, status_4XX_count=2)
    if sampling:
        reqs = [record(s, HttpRequest) for s in http_samples(collector)]
        assert [(r.status, r.resp_bytes, r.mime_type) for r in reqs] == [
            (404, 11, "text/html"),
            (200, 2, ""),
            (499, 0, ""),
        ]


def test_sized_results_keep_their_length(live, collector):
    live(sampling=1)
    AGENT.configure(ds_index=8000)
    environ = EnvironBuilder(path="/").get_environ()
    result = SFlowMiddleware(hello)(environ, lambda s, h, e=None: None)  # type: ignore[arg-type]
    # Servers may set Content-Length from a 1-item list.
    assert len(result) == 1  # type: ignore[arg-type]
    assert list(result) == [b"hello"]
    result.close()  # type: ignore[attr-defined]


def test_exc_info_replaces_the_status(live, collector):
    live(sampling=1)
    AGENT.configure(ds_index=8000)

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        try:
            raise Boom
        except Boom:
            import sys

            start_response(
                "500 Internal Server Error", [("Content-Type", "text/html")], sys.exc_info()
            )
        return [b"oops"]

    assert call(LintMiddleware(SFlowMiddleware(LintMiddleware(app))))[0].startswith("500")
    flush(collector)
    req = record(http_samples(collector)[-1], HttpRequest)
    assert (req.status, req.mime_type, req.resp_bytes) == (500, "text/html", 4)
    assert counters(collector) == expect(method_get_count=1, status_5XX_count=1)


def test_write_callable_bytes_counted(live, collector):
    live(sampling=1)

    def app(environ, start_response):
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"12345")
        write(b"678")
        return [b"9"]

    with serve(linted(app)) as url:
        assert httpx.get(url).text == "123456789"
    flush(collector)
    assert record(http_samples(collector)[-1], HttpRequest).resp_bytes == 9


def test_chunked_upload_counts_bytes_read(live, collector):
    live(sampling=1)

    def chunks():
        for _ in range(10):
            yield b"z" * 1000

    with serve(linted(router)) as url:
        response = httpx.post(url + "/upload", content=chunks())
        assert response.request.headers.get("transfer-encoding") == "chunked"
        assert response.text == "10000"
    flush(collector)
    req = record(http_samples(collector)[-1], HttpRequest)
    assert (req.req_bytes, req.status) == (10000, 201)


def test_input_wrapped_only_for_a_body_without_length(live, collector):
    """A request without Content-Length or Transfer-Encoding has no body: the app gets
    the server's own wsgi.input; a chunked one gets it counted."""
    live(sampling=1)
    AGENT.configure(ds_index=8000)
    seen = []

    def app(environ, start_response):
        seen.append(environ["wsgi.input"])
        environ["wsgi.input"].read()
        start_response("200 OK", [])
        return [b""]

    mw = SFlowMiddleware(app)
    streams = []
    for headers in ([], [("Transfer-Encoding", "chunked")]):
        streams.append(io.BytesIO(b"x" * 7))
        environ = EnvironBuilder(path="/", method="POST", headers=headers).get_environ()
        environ.pop("CONTENT_LENGTH", None)
        environ["wsgi.input"] = streams[-1]
        result = mw(environ, lambda s, h, e=None: None)  # type: ignore[arg-type]
        b"".join(result)
        result.close()  # type: ignore[attr-defined]
    assert seen[0] is streams[0] and seen[1] is not streams[1]
    flush(collector)
    reqs = [record(s, HttpRequest) for s in http_samples(collector)]
    assert [r.req_bytes for r in reqs] == [0, 7]


def test_streamed_body_timed_to_its_end(live, collector):
    live(sampling=1)

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "application/octet-stream")])

        def body():
            for _ in range(5):
                time.sleep(0.05)
                yield b"s" * 100_000

        return body()

    closed: list[float] = []

    def server_side(environ, start_response):
        # The server's close() ends our clock, and may come after the client has the
        # last byte: note when it returned, outside the middleware.
        result = linted(app)(environ, start_response)
        return ClosingIterator(result, lambda: closed.append(time.monotonic()))

    with serve(server_side) as url:
        started = time.monotonic()
        assert len(httpx.get(url).content) == 500_000
        assert wait_until(lambda: bool(closed))
    flush(collector)
    req = record(http_samples(collector)[-1], HttpRequest)
    assert req.resp_bytes == 500_000
    assert 250_000 <= req.uS <= (closed[0] - started) * 1e6


def test_file_wrapper_fast_path_survives(live, collector, tmp_path):
    """The server's own file_wrapper object comes back, its close() is intercepted."""
    live(sampling=1)
    AGENT.configure(ds_index=8000)
    path = tmp_path / "blob.bin"
    path.write_bytes(b"f" * 70_000)
    opened = []

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "application/pdf")])
        f = open(path, "rb")  # noqa: SIM115 - closed through the wrapper
        f.seek(10_000)
        opened.append(f)
        return environ["wsgi.file_wrapper"](f, 8192)

    mw = SFlowMiddleware(app)
    environ = EnvironBuilder(path="/file").get_environ()
    environ["wsgi.file_wrapper"] = WsgirefFileWrapper
    result = mw(environ, lambda s, h, e=None: None)  # type: ignore[arg-type]
    assert type(result) is WsgirefFileWrapper  # not re-wrapped into a generator
    assert environ["wsgi.file_wrapper"] is WsgirefFileWrapper  # restored for the server
    time.sleep(0.1)
    flush(collector)
    assert http_samples(collector) == []  # not finished before close()
    assert sum(map(len, result)) == 60_000
    result.close()
    assert opened[0].closed
    flush(collector)
    req = record(http_samples(collector)[-1], HttpRequest)
    assert (req.resp_bytes, req.mime_type, req.status) == (60_000, "application/pdf", 200)
    assert req.uS >= 100_000
    assert counters(collector) == expect(method_get_count=1, status_2XX_count=1)


def test_file_wrapper_returning_the_file_itself(live, collector, tmp_path):
    """uWSGI's file_wrapper hands back the app's own file object: its close is hooked."""
    live(sampling=1)
    AGENT.configure(ds_index=8000)
    path = tmp_path / "f.txt"
    path.write_bytes(b"abcdef")

    def uwsgi_like(filelike, blksize=8192):
        return filelike

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return environ["wsgi.file_wrapper"](open(path, "rb"), 4096)

    environ = EnvironBuilder(path="/").get_environ()
    environ["wsgi.file_wrapper"] = uwsgi_like
    result = SFlowMiddleware(app)(environ, lambda s, h, e=None: None)  # type: ignore[arg-type]
    assert type(result) is io.BufferedReader
    flush(collector)
    assert http_samples(collector) == []
    result.close()
    assert result.closed and "close" not in vars(result)
    flush(collector)
    assert record(http_samples(collector)[-1], HttpRequest).resp_bytes == 6


def test_file_wrapper_without_settable_close_ends_at_return(live, collector):
    live(sampling=1)
    AGENT.configure(ds_index=8000)

    class Slotted:
        __slots__ = ("data",)

        def __init__(self, data):
            self.data = data

        def __iter__(self):
            return iter([self.data])

        def close(self):
            pass

    def app(environ, start_response):
        start_response("200 OK", [("Content-Length", "3")])
        return environ["wsgi.file_wrapper"](b"abc")

    environ = EnvironBuilder(path="/").get_environ()
    environ["wsgi.file_wrapper"] = Slotted
    result = SFlowMiddleware(app)(environ, lambda s, h, e=None: None)  # type: ignore[arg-type]
    assert type(result) is Slotted
    flush(collector)
    assert record(http_samples(collector)[-1], HttpRequest).resp_bytes == 3
    result.close()


def test_route_and_decorator_parent(live, collector):
    live(sampling=1)

    @transaction("lookup")
    def lookup(user_id):
        return {"id": user_id}

    def app(environ, start_response):
        set_route(environ, "/users/<int:id>")
        lookup(7)
        start_response("200 OK", [("Content-Type", "application/json")])
        return [b"{}"]

    with serve(linted(app)) as url:
        httpx.get(url + "/users/7")
    flush(collector)
    (fs,) = http_samples(collector)
    op = record(fs, AppOperation)
    assert (op.application, op.operation, op.status) == ("tests", "/users/<int:id>", 0)
    assert op.attributes == "method=GET&route=/users/<int:id>"
    (child,) = other_samples(collector)
    assert record(child, AppOperation).operation == "lookup"
    assert record(child, AppParentContext) == AppParentContext(
        application="tests", operation="/users/<int:id>", attributes="method=GET"
    )


def test_unsampled_request_touches_only_what_counting_needs(live, collector):
    """No header parsing, no URL building, no environ writes on the unsampled path."""
    live(sampling=0)
    AGENT.configure(ds_index=8000)
    mw = SFlowMiddleware(hello)
    call(mw)  # the first request takes the slow path (start-up work)

    class Spy(dict):
        seen: list

        def __getitem__(self, key):
            self.seen.append(key)
            return super().__getitem__(key)

        def get(self, key, default=None):
            self.seen.append(key)
            return super().get(key, default)

        def __setitem__(self, key, value):
            raise AssertionError(f"environ[{key!r}] written")

        def __contains__(self, key):
            self.seen.append(key)
            return super().__contains__(key)

    environ = Spy(EnvironBuilder(path="/").get_environ())
    environ.seen = []
    result = mw(environ, lambda s, h, e=None: None)  # type: ignore[arg-type]
    assert environ.seen == ["REQUEST_METHOD"]
    assert result == [b"hello"]  # the app's own iterable, not a wrapper
    environ.seen = []
    SFlowMiddleware(hello, exclude=["/x"])(environ, lambda s, h, e=None: None)  # type: ignore[arg-type]
    assert environ.seen == ["PATH_INFO", "REQUEST_METHOD"]


def test_per_request_state_never_shared(live, collector):
    """Concurrent sampled requests of different sizes each get their own numbers."""
    live(sampling=1)

    def app(environ, start_response):
        size = int(environ["PATH_INFO"].rsplit("/", 1)[1])
        start_response("200 OK", [("Content-Type", f"x/{size}")])

        def body():
            for _ in range(size):
                time.sleep(0.001)
                yield b"b"

        return body()

    sizes = list(range(1, 41))
    middleware = SFlowMiddleware(app)
    assert not hasattr(middleware, "__dict__")  # __slots__: nothing per request fits
    with serve(middleware) as url:

        def fetch(size):
            conn = http.client.HTTPConnection(url[7:].split(":")[0], int(url.rsplit(":")[-1]))
            conn.request("GET", f"/n/{size}")
            assert len(conn.getresponse().read()) == size
            conn.close()

        threads = [threading.Thread(target=fetch, args=(s,)) for s in sizes]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    flush(collector)
    reqs = [record(s, HttpRequest) for s in http_samples(collector)]
    assert len(reqs) == len(sizes)
    for req in reqs:
        size = int(req.uri.rsplit("/", 1)[1])
        assert req.resp_bytes == size and req.mime_type == f"x/{size}"
        assert req.uS >= size * 1000
    assert counters(collector) == expect(method_get_count=40, status_2XX_count=40)


def test_sampling_rate_and_pool(live, collector):
    live(sampling=5)
    AGENT.configure(ds_index=8000)
    mw = SFlowMiddleware(hello)
    for _ in range(400):
        call(mw)
    flush(collector)
    samples = http_samples(collector)
    assert 40 <= len(samples) <= 130  # 1-in-5 of 400, generously bounded
    assert all(s.sampling_rate == 5 for s in samples)
    pools = [s.sample_pool for s in samples]
    assert pools == sorted(pools) and pools[-1] <= 400
    assert [s.sequence_number for s in samples] == list(range(1, len(samples) + 1))
    assert counters(collector) == expect(method_get_count=400, status_2XX_count=400)


def test_middleware_never_raises_into_the_app(live, collector, monkeypatch):
    live(sampling=1)
    AGENT.configure(ds_index=8000)
    mw = SFlowMiddleware(hello)

    def broken(*args, **kwargs):
        raise RuntimeError("encoder bug")

    # The records are built by the exporter: a bug there costs the sample, counted.
    monkeypatch.setattr(wsgi, "encode_http", broken)
    monkeypatch.setattr(wsgi, "encode_http_rest", broken)
    monkeypatch.setattr(wsgi, "http_records", broken)
    monkeypatch.setattr(wsgi, "_content_type", broken)  # on every encoding path
    drops_before = mw._source.drops
    assert call(mw) == (
        "200 OK",
        b"hello",
        [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", "5")],
    )
    flush(collector)
    assert mw._source.drops == drops_before + 1
    # A bug on the request thread's side too.
    monkeypatch.setattr(wsgi, "wsgi_addresses", broken)
    assert call(mw)[1] == b"hello"
    assert mw._source.drops == drops_before + 2


def test_http_client_keepalive_many(live, collector):
    live(sampling=2)
    with serve(SFlowMiddleware(router)) as url:
        host, port = url[7:].split(":")
        conn = http.client.HTTPConnection(host, int(port))
        for i in range(50):
            conn.request("GET", f"/size/{i}")
            assert len(conn.getresponse().read()) == i
        conn.close()
    flush(collector)
    assert counters(collector) == expect(method_get_count=50, status_2XX_count=50)
    for s in http_samples(collector):
        req = record(s, HttpRequest)
        assert req.resp_bytes == int(req.uri.rsplit("/", 1)[1])


def test_ipv6_loopback_server(live, collector):
    try:
        socket.create_server(("::1", 0), family=socket.AF_INET6).close()
    except OSError:
        pytest.skip("no IPv6 loopback")
    live(sampling=1)
    # serve() waits for the server's close() of the response: the sample is taken there,
    # which may come after httpx has the last byte.
    with serve(SFlowMiddleware(hello), host="::1") as url:
        port = int(url.rsplit(":", 1)[1])
        assert httpx.get(f"{url}/v6").text == "hello"
    flush(collector)
    (fs,) = http_samples(collector)
    assert fs.ds_index == port
    sock = record(fs, ExtendedSocketIPv6)
    assert (sock.local_ip, sock.local_port, sock.remote_ip) == ("::1", port, "::1")


def test_wsgiref_server_identity(live, collector):
    """wsgiref takes SERVER_PORT from its own socket: trusted for the identity."""
    live(sampling=1)
    server = wsgiref_make_server("127.0.0.1", 0, SFlowMiddleware(hello), handler_class=QuietHandler)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
    )
    thread.start()
    try:
        port = server.server_port
        assert (
            httpx.get(f"http://127.0.0.1:{port}/ref", headers={"Host": "other:1"}).text == "hello"
        )
    finally:
        server.shutdown()
        server.server_close()
    flush(collector)
    (fs,) = http_samples(collector)
    assert fs.ds_index == port and collector.datagrams[-1].sub_agent_id == port
    sock = record(fs, ExtendedSocketIPv4)
    assert (sock.local_port, sock.remote_ip) == (port, "127.0.0.1")


def test_unknown_server_gets_a_derived_index_and_a_warning(live, collector, caplog):
    live(sampling=1)
    mw = SFlowMiddleware(hello)
    with caplog.at_level("WARNING", logger="sflow_app"):
        call(mw)
        call(mw)
    flush(collector)
    (warning,) = [r for r in caplog.records if "SFLOW_APP_DS_INDEX" in r.getMessage()]
    index = collector.counter_samples()[-1].ds_index
    assert 65536 <= index <= 99999
    assert str(index) in warning.getMessage()


# -- what the app sees is what it would see bare (an adversarial review's findings) ----


def _server_call(app, environ: dict) -> tuple[list, bytes]:
    seen: list = []

    def start_response(status, headers, exc_info=None):  # named as servers name them
        seen[:] = [status, headers]
        return lambda data: None

    result = app(environ, start_response)
    try:
        return seen, b"".join(result)
    finally:
        getattr(result, "close", lambda: None)()


@pytest.mark.parametrize("length", ["\xb9", "\xb2", "5 5", 5])
def test_an_odd_content_length_never_fails_a_sampled_request(live, collector, length) -> None:
    """A client's "Content-Length: \\xb9" reaches the environ as "¹", which str.isdigit()
    takes for a digit and int() refuses: the app answered, we raised (a 500)."""
    live(sampling=1)
    environ = EnvironBuilder(path="/len").get_environ()
    environ["CONTENT_LENGTH"] = length
    seen, body = _server_call(SFlowMiddleware(hello), environ)
    assert (seen[0], body) == ("200 OK", b"hello")
    flush(collector)
    [req] = [record(s, HttpRequest) for s in http_samples(collector)]
    assert (req.uri, req.status, req.req_bytes) == ("/len", 200, 0)


@pytest.mark.parametrize("sampling", [1, 1000])
def test_start_response_by_keyword(live, collector, sampling: int) -> None:
    """wsgiref, Werkzeug and gunicorn name them status, headers, exc_info."""
    live(sampling=sampling)

    def app(environ, start_response):
        start_response(status="201 Created", headers=[("Content-Type", "text/plain")])
        return [b"made"]

    seen, body = _server_call(SFlowMiddleware(app), EnvironBuilder().get_environ())
    assert (seen[0], body) == ("201 Created", b"made")


def test_a_late_status_keeps_the_results_length(live) -> None:
    """Unsampled, start_response called only when iterated: a result with a length keeps
    it (wsgiref sets Content-Length from len() of a one-item result)."""
    live(sampling=1000)

    class Lazy:
        def __init__(self, start_response) -> None:
            self.start_response = start_response

        def __len__(self) -> int:
            return 1

        def __iter__(self):
            self.start_response("200 OK", [("Content-Type", "text/plain")])
            yield b"hello"

    wrapped = SFlowMiddleware(lambda environ, start_response: Lazy(start_response))
    result = wrapped(EnvironBuilder().get_environ(), lambda *a: lambda data: None)
    assert len(result) == 1  # type: ignore[arg-type]
    assert b"".join(result) == b"hello"
    result.close()  # type: ignore[attr-defined]
    plain = SFlowMiddleware(lambda e, sr: iter([b"x"]))  # no length: none made up
    unsized = plain(EnvironBuilder().get_environ(), lambda *a: lambda data: None)
    assert not hasattr(unsized, "__len__")


def test_a_chunked_upload_stream_keeps_its_protocol(live, collector) -> None:
    """Sampled, a body without Content-Length is counted through a wrapper: the app can
    still use the stream as a context manager and an iterator, as it could bare."""
    live(sampling=1)

    def app(environ, start_response):
        with environ["wsgi.input"] as stream:
            first = next(stream)
            rest = b"".join(stream)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [first + rest]

    environ = EnvironBuilder(method="POST", path="/up").get_environ()
    environ.pop("CONTENT_LENGTH", None)
    environ["HTTP_TRANSFER_ENCODING"] = "chunked"
    environ["wsgi.input"] = io.BytesIO(b"line one\nline two\n")
    seen, body = _server_call(SFlowMiddleware(app), environ)
    assert (seen[0], body) == ("200 OK", b"line one\nline two\n")
    flush(collector)
    [req] = [record(s, HttpRequest) for s in http_samples(collector)]
    assert req.req_bytes == len(body)
