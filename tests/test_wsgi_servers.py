"""End to end: tests/apps/wsgi_app.py in real servers on loopback (gunicorn sync and
gthread with one worker, Werkzeug's server, uWSGI when installed), driven over HTTP,
checked field by field from the datagrams a UDP collector decodes."""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest
from apps.harness import ZERO_COUNTERS
from helpers import Collector, free_port, missing, write_auto

from sflow_app.records import (
    AppOperation,
    AppParentContext,
    ExtendedSocketIPv4,
    HostParent,
    HttpCounters,
    HttpRequest,
)

pytestmark = pytest.mark.slow

APPS = Path(__file__).parent / "apps"
SERVICE = "wsgi-e2e"
FILE_SIZE = 300_000
STREAM_MB = 5
UWSGI = shutil.which("uwsgi", path=os.path.dirname(sys.executable)) or shutil.which("uwsgi")
SERVERS = ["gunicorn-sync", "gunicorn-gthread", "werkzeug", "uwsgi", "uwsgi-router"]
RAW = "/naïve/€?k=ü"  # sent as raw UTF-8 bytes in the request line


def command(server: str, port: int) -> list[str]:
    bind = f"127.0.0.1:{port}"
    if server.startswith("gunicorn"):
        worker = (
            ["-k", "sync"] if server == "gunicorn-sync" else ["-k", "gthread", "--threads", "4"]
        )
        return [
            sys.executable,
            "-m",
            "gunicorn",
            "-w",
            "1",
            *worker,
            "-b",
            bind,
            "--timeout",
            "60",
            "--no-control-socket",
            "wsgi_app:application",
        ]
    if server == "werkzeug":
        return [
            sys.executable,
            "-c",
            "from werkzeug.serving import run_simple; import wsgi_app; "
            f"run_simple('127.0.0.1', {port}, wsgi_app.application, threaded=True)",
        ]
    assert UWSGI is not None
    # --http-socket: the worker speaks HTTP itself; --http: uWSGI's HTTP router process
    # in front of the worker. --enable-threads: the exporter is a Python thread.
    listen = ["--http", bind] if server == "uwsgi-router" else ["--http-socket", bind]
    return [
        UWSGI,
        *listen,
        "--wsgi-file",
        "wsgi_app.py",
        "--callable",
        "application",
        "--master",
        "--processes",
        "1",
        "--enable-threads",
        "--die-on-term",
        "--need-app",
        "--disable-logging",
        "--virtualenv",
        sys.prefix,
    ]


@dataclasses.dataclass
class Sent:
    method: str
    target: str  # the request-target on the wire
    status: int
    elapsed_us: int
    body_len: int


@dataclasses.dataclass
class Run:
    server: str
    port: int
    collector: Collector
    sent: list[Sent]
    warmup: int
    sendfile_calls: int
    log: str

    def requests(self) -> dict[str, HttpRequest]:
        """The sampled http_request records by URI (each URI is sent once)."""
        found: dict[str, HttpRequest] = {}
        for sample in self.collector.flow_samples():
            for rec in sample.records:
                if isinstance(rec, HttpRequest):
                    found[str(rec.uri)] = rec
        return found

    def sample_of(self, uri: str):
        for sample in self.collector.flow_samples():
            if any(isinstance(r, HttpRequest) and r.uri == uri for r in sample.records):
                return sample
        raise AssertionError(f"no sample for {uri!r}; server log:\n{self.log}")


def expected_counters(sent: list[Sent], warmup: int) -> dict[str, int]:
    counts = dict(ZERO_COUNTERS)
    counts["method_get_count"] += warmup
    counts["status_2XX_count"] += warmup
    slot = {
        "GET": "method_get_count",
        "HEAD": "method_head_count",
        "POST": "method_post_count",
        "PUT": "method_put_count",
        "DELETE": "method_delete_count",
        "OPTIONS": "method_option_count",
    }
    for s in sent:
        counts[slot.get(s.method, "method_other_count")] += 1
        counts[f"status_{s.status // 100}XX_count"] += 1
    return counts


def latest(collector: Collector) -> dict[str, int] | None:
    found = collector.latest_counters(HttpCounters)
    return None if found is None else {k: getattr(found, k) for k in ZERO_COUNTERS}


def raw_request(port: int, request: bytes) -> tuple[int, int]:
    """(status, elapsed µs) of one request written byte for byte."""
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
        conn.sendall(request)
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
    return int(data.split(b" ", 2)[1]), int((time.monotonic() - start) * 1e6)


def workload(server: str, base: str, port: int) -> list[Sent]:
    sent: list[Sent] = []

    def send(client: httpx.Client, method: str, target: str, **kwargs) -> None:
        start = time.monotonic()
        try:
            response = client.request(method, base + target, **kwargs)
        except httpx.RemoteProtocolError:
            # uWSGI drops the connection when the app raises (no --catch-exceptions):
            # the app's view, and the counters', is still a 500.
            assert "uwsgi" in server and target == "/boom"
            sent.append(Sent(method, target, 500, 0, 0))
            return
        elapsed = int((time.monotonic() - start) * 1e6)
        sent.append(Sent(method, target, response.status_code, elapsed, len(response.content)))

    def chunks():
        for _ in range(7):
            yield b"c" * 1000

    headers = {
        "User-Agent": "e2e/1.0",
        "Referer": "http://ref.example/",
        "X-Forwarded-For": "198.51.100.7",
    }
    # uWSGI closes each connection without saying so: no keep-alive for it.
    limits = httpx.Limits(max_keepalive_connections=0 if "uwsgi" in server else 20)
    with httpx.Client(timeout=30, headers=headers, limits=limits) as client:
        send(client, "GET", "/hello")
        send(client, "GET", "/hello/q?page=2&token=t0p-secret&password=pw")
        send(client, "HEAD", "/hello/head")
        send(client, "POST", "/upload", content=b"u" * 3000)
        if "uwsgi" not in server:  # uWSGI does not de-chunk request bodies
            send(client, "POST", "/upload?chunked", content=chunks())
        send(client, "PUT", "/hello/put")
        send(client, "DELETE", "/hello/delete")
        send(client, "OPTIONS", "/hello/options")
        send(client, "PATCH", "/hello/patch")
        send(client, "GET", "/missing")
        send(client, "GET", "/boom")
        send(client, "GET", f"/stream?mb={STREAM_MB}")
        send(client, "GET", "/file")
        send(client, "GET", "/items/42")
        send(client, "GET", "/caf%C3%A9?q=%E2%82%AC")
        send(client, "GET", "/long/" + "L" * 400)
        for _ in range(3):
            assert client.get(base + "/health").status_code == 200  # excluded
    if not server.startswith("gunicorn"):  # gunicorn answers 400 itself to these
        # Raw UTF-8 bytes in the request line.
        status, elapsed = raw_request(
            port, f"GET {RAW} HTTP/1.1\r\nHost: raw\r\nConnection: close\r\n\r\n".encode()
        )
        sent.append(Sent("GET", RAW, status, elapsed, 0))
    # An HTTP/1.0 request.
    status, elapsed = raw_request(port, b"GET /hello/http10 HTTP/1.0\r\nHost: a\r\n\r\n")
    sent.append(Sent("GET", "/hello/http10", status, elapsed, 0))
    return sent


@pytest.fixture(scope="module", params=SERVERS)
def run(request):
    server = request.param
    if "uwsgi" in server and UWSGI is None:
        missing("uWSGI", "./scripts/setup --with-servers installs it")
    tmp = Path(tempfile.mkdtemp(prefix="sfw-"))
    collector = Collector()
    port = free_port()
    data = tmp / "blob.bin"
    data.write_bytes(os.urandom(FILE_SIZE))
    env = {
        **os.environ,
        "SFLOW_APP_CONFIG": str(
            write_auto(tmp / "hsflowd.auto", collector.port, sampling=1, polling=1)
        ),
        "SFLOW_APP_NAME": SERVICE,
        "SFLOW_APP_STATE_DIR": str(tmp),
        "WSGI_TEST_FILE": str(data),
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("SFLOW_APP_DS_INDEX", None)
    log_path = tmp / "server.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            command(server, port),
            cwd=APPS,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(base + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, log_path.read_text(errors="replace")
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.1)
        # Warm up until the server's agent samples (its configuration is read by the
        # exporter thread, which the first request starts).
        warmup = 0
        while not any(isinstance(r, HttpRequest) for r in collector.records(HttpRequest)):
            httpx.get(base + f"/hello/warmup{warmup}", timeout=10)
            warmup += 1
            collector.poll(0.2)
            assert warmup < 50, "no sample arrived"
        sent = workload(server, base, port)
        sendfile_calls = int(httpx.get(base + "/sendfile-calls").text)
        want = expected_counters(sent, warmup)
        collector.wait_for(lambda c: latest(c) == want, timeout=20)
        collector.poll(0.5)
        yield Run(
            server,
            port,
            collector,
            sent,
            warmup,
            sendfile_calls,
            log_path.read_text(errors="replace"),
        )
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        collector.close()
        shutil.rmtree(tmp, ignore_errors=True)


def test_counters_equal_requests_sent(run):
    assert latest(run.collector) == expected_counters(run.sent, run.warmup), run.log
    statuses = {s.target: s.status for s in run.sent}
    assert statuses["/boom"] == 500 and statuses["/missing"] == 404
    assert statuses["/hello/patch"] == 200


def test_identity_is_the_listening_port(run):
    for dg in run.collector.datagrams:
        assert (dg.agent_address, dg.sub_agent_id) == ("127.0.0.1", run.port)
    for sample in run.collector.samples():
        if any(isinstance(r, HttpRequest | HttpCounters) for r in sample.records):
            assert (sample.ds_class, sample.ds_index) == (3, run.port)
        else:  # the @transaction application: a locally assigned index
            assert sample.ds_class == 3 and 65536 <= sample.ds_index <= 99999
    counters = [
        s
        for s in run.collector.counter_samples()
        if any(isinstance(r, HttpCounters) for r in s.records)
    ]
    assert counters and all(HostParent(2, 1) in s.records for s in counters)
    seqs = [s.sequence_number for s in counters]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


def test_every_request_sampled_with_all_fields(run):
    requests = run.requests()
    sent = [s for s in run.sent if s.target.isascii()]
    for s in sent:
        if s.target.startswith("/long/"):
            continue
        want_uri = s.target.replace("t0p-secret", "REDACTED").replace("=pw", "=REDACTED")
        assert want_uri in requests, (want_uri, sorted(requests))
    req = requests["/hello"]
    assert (req.method, req.protocol, req.status) == (2, 1001, 200)
    assert req.host == f"127.0.0.1:{run.port}"
    assert (req.referer, req.useragent, req.xff) == (
        "http://ref.example/",
        "e2e/1.0",
        "198.51.100.7",
    )
    assert (req.authuser, req.mime_type) == ("", "text/plain")
    assert (req.req_bytes, req.resp_bytes) == (0, 5)
    assert 0 < req.uS < 5_000_000
    assert requests["/hello/http10"].protocol == 1000
    methods = {uri: r.method for uri, r in requests.items()}
    assert (
        methods["/hello/put"],
        methods["/hello/delete"],
        methods["/hello/options"],
        methods["/hello/patch"],
    ) == (5, 6, 1, 0)
    flow = run.sample_of("/hello")
    assert (flow.sampling_rate, flow.input_value, flow.output_value) == (1, 0, 0x3FFFFFFF)
    sock = next(r for r in flow.records if isinstance(r, ExtendedSocketIPv4))
    assert (sock.protocol, sock.local_ip, sock.local_port) == (6, "127.0.0.1", run.port)
    assert sock.remote_ip == "127.0.0.1" and sock.remote_port not in (0, run.port)


def test_redaction(run):
    assert "/hello/q?page=2&token=REDACTED&password=REDACTED" in run.requests()
    assert not any("t0p-secret" in uri for uri in run.requests())


def test_head_and_errors(run):
    requests = run.requests()
    head = requests["/hello/head"]
    assert (head.method, head.status, head.resp_bytes) == (3, 200, 0)
    boom = requests["/boom"]
    assert (boom.status, boom.resp_bytes) == (500, 0)
    missing = requests["/missing"]
    assert (missing.status, missing.resp_bytes) == (404, len(b"not found"))


def test_uploads(run):
    requests = run.requests()
    plain = requests["/upload"]
    assert (plain.method, plain.req_bytes, plain.status) == (4, 3000, 201)
    if "uwsgi" not in run.server:
        chunked = requests["/upload?chunked"]
        assert (chunked.req_bytes, chunked.status) == (7000, 201)


def test_streamed_body_size_and_duration(run):
    req = run.requests()[f"/stream?mb={STREAM_MB}"]
    sent = next(s for s in run.sent if s.target.startswith("/stream"))
    assert sent.body_len == STREAM_MB * 1024 * 1024
    assert req.resp_bytes == STREAM_MB * 1024 * 1024
    chunks = STREAM_MB * 1024 * 1024 // (64 * 1024)
    assert req.uS >= chunks * 2000  # the generator sleeps 2 ms a chunk: timed to its end
    # Our clock ends at the server's close(), which may come after the client's last
    # byte: bounded generously, not by the client's time.
    assert req.uS <= sent.elapsed_us + 1_000_000
    assert req.mime_type == "application/octet-stream"


def test_file_wrapper(run):
    req = run.requests()["/file"]
    assert (req.resp_bytes, req.mime_type, req.status) == (FILE_SIZE, "application/pdf", 200)
    assert next(s for s in run.sent if s.target == "/file").body_len == FILE_SIZE
    if run.server.startswith("gunicorn"):
        assert run.sendfile_calls >= 1, "gunicorn's sendfile fast path was lost"


def test_route_and_decorated_call(run):
    sample = run.sample_of("/items/42")
    op = next(r for r in sample.records if isinstance(r, AppOperation))
    assert (op.application, op.operation, op.status) == (SERVICE, "/items/<item>", 0)
    children = [
        s
        for s in run.collector.flow_samples()
        if any(isinstance(r, AppOperation) and r.operation == "lookup" for r in s.records)
    ]
    assert len(children) == 1
    parent = next(r for r in children[0].records if isinstance(r, AppParentContext))
    assert parent == AppParentContext(SERVICE, "/items/<item>", "method=GET")


def test_non_ascii_and_long_uris(run):
    requests = run.requests()
    assert "/caf%C3%A9?q=%E2%82%AC" in requests
    long = [uri for uri in requests if uri.startswith("/long/")]
    assert long == [("/long/" + "L" * 400)[:255]]
    if not run.server.startswith("gunicorn"):
        assert RAW in requests, sorted(requests)
        assert requests[RAW].status == 404


def test_exclusions(run):
    assert not any(uri.startswith(("/health", "/sendfile")) for uri in run.requests())
