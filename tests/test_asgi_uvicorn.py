"""sflow_app.asgi end to end: a real uvicorn server on loopback, real clients, decoded datagrams.

The server runs tests/apps/asgi_app.py in a subprocess that follows an hsflowd.auto written
for this module's collector (1-in-1 sampling, 1 s polling), so every request has a record
and the counters must equal the requests sent.
"""

from __future__ import annotations

import asyncio
import importlib.util
import socket
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import astuple
from pathlib import Path

import httpx
import pytest
from apps.asgi_harness import Uvicorn, raw_request, record
from helpers import Collector, Server, agent_env, free_port, missing, write_auto

from sflow_app.records import ExtendedSocketIPv4, HttpCounters, HttpRequest

pytestmark = pytest.mark.slow
APPS = Path(__file__).resolve().parent / "apps"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Uvicorn]:
    # Every request sampled, bursts of 1,000 included: no overload guard here (its own
    # tests are in test_guard.py).
    srv = Uvicorn(tmp_path_factory.mktemp("uvicorn"), env={"SFLOW_APP_MAX_SAMPLES": "0"})
    yield srv
    srv.stop()
    srv.collector.close()


# -- the tests ---------------------------------------------------------------------------


def test_http11_requests_fields_and_counters(server: Uvicorn):
    with httpx.Client(base_url=server.url) as client:
        r = client.get(
            "/echo",
            params={"size": 123, "t": "get", "password": "pw"},
            headers={"referer": "http://r.example/", "x-forwarded-for": "10.9.8.7"},
        )
        assert r.status_code == 200 and len(r.content) == 123
        server.sent("GET", 200)
        r = client.post("/echo?t=post&status=201", content=b"p" * 1000)
        assert r.status_code == 201 and len(r.content) == 1000
        server.sent("POST", 201)
        r = client.head("/echo?t=head&size=50")
        assert r.status_code == 200 and r.content == b""
        server.sent("HEAD", 200)
        for method in ("PUT", "DELETE", "OPTIONS", "PATCH"):
            r = client.request(method, f"/echo?t={method}&status=202&size=2")
            assert r.status_code == 202
            server.sent(method, 202)
        assert client.get("/nowhere").status_code == 404
        server.sent("GET", 404)

    get = server.sample_for("/echo?size=123&t=get&password=REDACTED")
    assert get.ds_index == server.port and get.sampling_rate == 1
    http = record(get, HttpRequest)
    assert (http.method, http.protocol, http.status) == (2, 1001, 200)
    assert http.host == f"127.0.0.1:{server.port}"
    assert http.referer == "http://r.example/" and http.xff == "10.9.8.7"
    assert http.useragent.startswith("python-httpx/")
    assert http.mime_type == "application/octet-stream"
    assert (http.req_bytes, http.resp_bytes) == (0, 123)
    assert 0 < http.uS < 2_000_000
    sock = record(get, ExtendedSocketIPv4)
    assert (sock.protocol, sock.local_ip, sock.local_port) == (6, "127.0.0.1", server.port)
    # uvicorn trusts X-Forwarded-For from 127.0.0.1 (--proxy-headers): scope["client"] is
    # the forwarded client, port unknown. The raw-socket tests check the real peer.
    assert (sock.remote_ip, sock.remote_port) == ("10.9.8.7", 0)

    post = record(server.sample_for("/echo?t=post&status=201"), HttpRequest)
    assert (post.method, post.status, post.req_bytes, post.resp_bytes) == (4, 201, 1000, 1000)
    head = record(server.sample_for("/echo?t=head&size=50"), HttpRequest)
    assert (head.method, head.status, head.resp_bytes) == (3, 200, 0)
    others = {
        m: record(server.sample_for(f"/echo?t={m}&status=202&size=2"), HttpRequest)
        for m in ("PUT", "DELETE", "OPTIONS", "PATCH")
    }
    assert {m: (r.method, r.status) for m, r in others.items()} == {
        "PUT": (5, 202),
        "DELETE": (6, 202),
        "OPTIONS": (1, 202),
        "PATCH": (0, 202),
    }
    assert record(server.sample_for("/nowhere"), HttpRequest).status == 404

    server.wait_counters()
    datagram = next(dg for dg in server.collector.datagrams if dg.samples)
    assert (datagram.agent_address, datagram.sub_agent_id) == ("127.0.0.1", server.port)


def test_http10_over_a_raw_socket(server: Uvicorn):
    sock, head = raw_request(server.port, b"GET /echo?size=7&v=10 HTTP/1.0\r\n\r\n")
    client_port = sock.getsockname()[1]
    with sock:
        body = head.partition(b"\r\n\r\n")[2]
        while chunk := sock.recv(65536):
            body += chunk
    assert head.startswith(b"HTTP/1.1 200") and body == b"e" * 7
    server.sent("GET", 200)
    sample = server.sample_for("/echo?size=7&v=10")
    http = record(sample, HttpRequest)
    assert (http.protocol, http.status, http.resp_bytes, http.host) == (1000, 200, 7, "")
    assert record(sample, ExtendedSocketIPv4).remote_port == client_port
    server.wait_counters()


def test_streamed_response(server: Uvicorn):
    with (
        httpx.Client(base_url=server.url) as client,
        client.stream("GET", "/stream?chunks=5&size=1000&gap_ms=40") as r,
    ):
        sizes = [len(chunk) for chunk in r.iter_raw()]
    assert sum(sizes) == 5000
    server.sent("GET", 200)
    http = record(server.sample_for("/stream?chunks=5&size=1000&gap_ms=40"), HttpRequest)
    assert (http.status, http.resp_bytes, http.req_bytes) == (200, 5000, 0)
    assert http.uS >= 5 * 40_000  # until the last chunk, not until the first
    server.wait_counters()


def test_exception_counts_500(server: Uvicorn):
    with httpx.Client(base_url=server.url) as client:
        assert client.get("/fail?n=1").status_code == 500
    server.sent("GET", 500)
    http = record(server.sample_for("/fail?n=1"), HttpRequest)
    assert (http.status, http.resp_bytes) == (500, 0)  # uvicorn's own 500 is not the app's
    server.wait_counters()
    assert "boom (expected by the tests)" in server.log.read_text()  # re-raised to uvicorn


def test_disconnect_mid_stream(server: Uvicorn):
    sock, data = raw_request(server.port, b"GET /until-gone?size=100 HTTP/1.0\r\n\r\n")
    with sock:
        while len(data.partition(b"\r\n\r\n")[2]) < 100:
            data += sock.recv(65536)
        time.sleep(0.3)
    assert data.startswith(b"HTTP/1.1 200")
    server.sent("GET", 200)
    http = record(server.sample_for("/until-gone?size=100"), HttpRequest)
    assert (http.status, http.resp_bytes) == (200, 100)
    # Until the disconnect (0.3 s after the client sent the request; the server may have
    # started it a little later), not until the app returned 0.8 s after that (>= 1.1 s).
    assert 150_000 <= http.uS < 1_000_000, http.uS
    server.wait_counters()


def test_disconnect_before_any_response_is_499(server: Uvicorn):
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    with sock:
        sock.sendall(b"GET /no-answer?q=1 HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.3)
    server.sent("GET", 499)
    http = record(server.sample_for("/no-answer?q=1"), HttpRequest)
    assert (http.status, http.resp_bytes, http.host) == (499, 0, "x")
    assert 150_000 <= http.uS < 1_000_000, http.uS  # as above: not until the app returned
    server.wait_counters()


def test_returned_without_responding_is_the_servers_500(server: Uvicorn):
    """uvicorn answers an app that returned without responding with its own 500 ("ASGI
    callable returned without starting response") while the client is there: counted and
    recorded as that 500, not as a client that left (499)."""
    with httpx.Client(base_url=server.url) as client:
        r = client.get("/silent?q=1")
    assert r.status_code == 500 and r.text == "Internal Server Error"
    server.sent("GET", 500)
    http = record(server.sample_for("/silent?q=1"), HttpRequest)
    assert (http.status, http.resp_bytes) == (500, 0)  # the server's body is not the app's
    server.wait_counters()


def test_hypercorn_returned_without_responding_is_its_500(tmp_path: Path):
    """hypercorn answers such an app 500 too (an empty body), unless the client left."""
    if importlib.util.find_spec("hypercorn") is None:
        missing("hypercorn", "pip install -e '.[test]' installs it")
    collector = Collector()
    port = free_port()
    argv = [sys.executable, "-m", "hypercorn", "--bind", f"127.0.0.1:{port}", "asgi_app:app"]
    env = agent_env(collector, tmp_path)
    server = Server(argv, cwd=APPS, env=env, port=port, log=tmp_path / "log", health="/echo")
    try:
        server.start()
        r = httpx.get(f"{server.base}/silent?h=1", timeout=10)
        assert (r.status_code, r.content) == (500, b"")

        def arrived(c: Collector) -> bool:
            found = c.latest_counters(HttpCounters)
            return found is not None and found.status_5XX_count == 1

        assert collector.wait_for(arrived, 10), collector.latest_counters(HttpCounters)
        [http] = [r for r in collector.records(HttpRequest) if r.uri == "/silent?h=1"]
        assert (http.status, http.resp_bytes) == (500, 0)
    finally:
        server.stop()
        collector.close()


def test_websocket_connection(server: Uvicorn):
    from websockets.sync.client import connect

    with connect(f"ws://127.0.0.1:{server.port}/ws?room=1") as ws:
        ws.send("hi")
        assert ws.recv() == "hihi"
        ws.send(b"\x01\x02\x03")
        assert ws.recv() == b"\x01\x02\x03" * 2
        time.sleep(0.1)
    server.sent("GET", 101)
    sample = server.sample_for("/ws?room=1")
    http = record(sample, HttpRequest)
    assert (http.method, http.status, http.protocol) == (2, 101, 1001)
    assert (http.req_bytes, http.resp_bytes) == (2 + 3, 4 + 6)
    assert http.uS >= 200_000  # the connection's lifetime: two 50 ms echoes and 100 ms
    assert record(sample, ExtendedSocketIPv4).local_port == server.port
    server.wait_counters()


STATUSES = (200, 201, 202, 203, 206, 400, 404, 409, 410, 503)


def test_thousand_concurrent_requests_keep_their_own_sizes(server: Uvicorn):
    n = 1000

    async def one(client: httpx.AsyncClient, i: int) -> None:
        status = STATUSES[i % len(STATUSES)]
        # Sleeps before, inside and after each response so that requests interleave at
        # every step a middleware could mix them up.
        r = await client.post(
            f"/echo?id={i}&status={status}&size={2 * i + 3}"
            f"&delay_ms={i * 37 % 50}&gap_ms={i * 11 % 20}"
            f"&after_ms={i * 7 % 30}",
            content=b"b" * (i + 1),
        )
        assert (r.status_code, len(r.content)) == (status, 2 * i + 3)

    async def load() -> None:
        limits = httpx.Limits(max_connections=n, max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=server.url, limits=limits, timeout=30) as client:
            await asyncio.gather(*(one(client, i) for i in range(n)))

    # Drain the collector while the load runs so no datagram waits in the socket buffer.
    stop = threading.Event()

    def drain() -> None:
        while not stop.is_set():
            server.collector.poll(0.05)

    drainer = threading.Thread(target=drain)
    drainer.start()
    try:
        asyncio.run(load())
    finally:
        stop.set()
        drainer.join()
    for i in range(n):
        server.sent("POST", STATUSES[i % len(STATUSES)])

    def ours(c: Collector) -> dict[int, HttpRequest]:
        found = {}
        for r in c.records(HttpRequest):
            if r.uri.startswith("/echo?id="):
                found[int(r.uri.split("=")[1].split("&")[0])] = r
        return found

    server.collector.wait_for(lambda c: len(ours(c)) >= n, timeout=20)
    records = ours(server.collector)
    assert len(records) == n
    wrong = [
        i
        for i, r in records.items()
        if (r.req_bytes, r.resp_bytes, r.status) != (i + 1, 2 * i + 3, STATUSES[i % len(STATUSES)])
    ]
    assert wrong == []
    assert len(server.collector.records(HttpRequest)) == len(
        {id(r) for r in server.collector.records(HttpRequest)}
    )
    server.wait_counters()


def test_lifespan_reaches_the_app_and_exit_flushes(tmp_path: Path):
    log = tmp_path / "lifespan.log"
    srv = Uvicorn(tmp_path, sampling=1, env={"ASGI_APP_LIFESPAN_LOG": str(log)})
    try:
        assert log.read_text() == "startup\n"
        assert httpx.get(f"{srv.url}/echo?size=3&life=1").status_code == 200
        srv.sent("GET", 200)
    finally:
        assert srv.stop() == 0
        srv.collector.poll(0.2)
        srv.collector.close()
    assert log.read_text() == "startup\nshutdown\n"
    # The first request was sampled (the rate was read when the middleware was built), and
    # the agent's exit flush sent its sample and the final counters.
    assert [r.uri for r in srv.collector.records(HttpRequest)] == ["/echo?size=3&life=1"]
    latest = srv.collector.latest_counters(HttpCounters)
    assert latest is not None and astuple(latest) == srv.expected_counters()


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_sends_the_last_samples_and_counters(tmp_path: Path, workers: int) -> None:
    """uvicorn re-raises SIGTERM after its graceful shutdown, so atexit never runs: the
    agent flushes from the signal instead. Counters are polled every 30 s, so only the
    exit flush can send the final ones; samples are sent at most 1 s after they were
    taken, so the last ones too."""
    collector = Collector()
    env = agent_env(collector, tmp_path)
    env["SFLOW_APP_CONFIG"] = str(write_auto(tmp_path / "auto", collector.port, polling=30))
    port = free_port()
    argv = [str(Path(sys.executable).parent / "uvicorn"), "asgi_app:app", "--port", str(port)]
    if workers > 1:
        argv += ["--workers", str(workers)]
    server = Server(argv, cwd=APPS, env=env, port=port, log=tmp_path / "log", health="/echo")
    try:
        server.start()
        for i in range(20):
            assert httpx.get(f"{server.base}/echo?i={i}", timeout=10).status_code == 200
        server.stop()  # SIGTERM to the process group
        want = {"/echo"} | {f"/echo?i={i}" for i in range(20)}

        def arrived(c: Collector) -> bool:
            found = c.latest_counters(HttpCounters)
            total = 0 if found is None else found.method_get_count
            return {r.uri for r in c.records(HttpRequest)} >= want and total == 21

        assert collector.wait_for(arrived, 10), (
            sorted(str(r.uri) for r in collector.records(HttpRequest)),
            collector.latest_counters(HttpCounters),
        )
    finally:
        server.stop()
        collector.close()
