"""Helpers shared by the ASGI-surface tests (test_asgi, test_starlette, test_asgi_uvicorn).

In-process: a fake server connection (``Peer``) to drive a middleware directly, and a
flush of the agent's exporter. End to end: ``Uvicorn``, a real server in a subprocess
following an hsflowd.auto written for its own collector, with a tally of the requests
sent so that counters can be compared with them.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import astuple, fields
from pathlib import Path
from typing import Any

from helpers import Collector, free_port, write_auto

from sflow_app._http import METHODS, OTHER_METHOD, status_slot
from sflow_app.records import FlowSample, HttpCounters, HttpRequest

# -- in-process --------------------------------------------------------------------------

SERVER = ("127.0.0.1", 8123)
CLIENT = ("127.0.0.1", 50123)


def http_scope(
    method: str = "GET",
    path: str = "/",
    query: bytes = b"",
    headers: list[tuple[bytes, bytes]] | None = None,
    **extra: Any,
) -> dict:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query,
        "root_path": "",
        "headers": headers or [],
        "server": SERVER,
        "client": CLIENT,
    }
    scope.update(extra)
    return scope


class Peer:
    """A fake server connection: feeds the request body, records what the app sends."""

    def __init__(self, body: list[bytes] | None = None) -> None:
        self.body = list(body or [b""])
        self.sent: list[dict] = []
        self.gone = asyncio.Event()
        self.receive_calls = 0

    async def receive(self) -> dict:
        self.receive_calls += 1
        if self.body:
            chunk = self.body.pop(0)
            return {"type": "http.request", "body": chunk, "more_body": bool(self.body)}
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict) -> None:
        self.sent.append(message)


def respond(
    status: int = 200,
    body: bytes = b"hello",
    content_type: bytes = b"text/plain",
    chunks: int = 1,
    read_body: bool = True,
):
    async def app(scope, receive, send):
        if read_body:
            more = True
            while more:
                message = await receive()
                more = message.get("more_body", False)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", content_type), (b"content-length", b"999999")],
            }
        )
        for i in range(chunks):
            await send({"type": "http.response.body", "body": body, "more_body": i < chunks - 1})

    return app


def call(app, scope, peer: Peer | None = None) -> Peer:
    peer = peer or Peer()
    asyncio.run(app(scope, peer.receive, peer.send))
    return peer


def flush(agent, collector) -> None:
    if agent.runner.started:
        agent.shutdown()  # stops the exporter thread and sends what is left, counters too
    else:
        agent.tick(time.monotonic(), final=True)
    collector.poll(0.05)  # shutdown() sent synchronously: the datagrams are queued here


def http_records(collector) -> list[HttpRequest]:
    return collector.records(HttpRequest)


def counters(collector) -> HttpCounters:
    found = collector.latest_counters(HttpCounters)
    assert found is not None, "no http_counters received"
    return found


# -- end to end ---------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[2]
APP = "tests.apps.asgi_app:app"
COUNTER_NAMES = [f.name for f in fields(HttpCounters)]


class Uvicorn:
    """uvicorn in a subprocess, its collector, and a tally of the requests sent to it."""

    def __init__(
        self,
        tmp: Path,
        *,
        app: str = APP,
        name: str = "asgi-e2e",
        sampling: int = 1,
        env: dict[str, str] | None = None,
        args: tuple[str, ...] = (),
    ) -> None:
        """``args``: more of uvicorn's options (``("--root-path", "/api")``)."""
        self.collector = Collector()
        # Bursts of samples must not overflow the default socket buffer.
        self.collector.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        auto = write_auto(tmp / "hsflowd.auto", self.collector.port, sampling=sampling, polling=1)
        self.port = free_port()
        self.log = tmp / "uvicorn.log"
        self.tally: Counter[int] = Counter()
        self.state_dir = tempfile.mkdtemp(prefix="sfa-")  # short: it holds unix sockets
        full_env = {
            **os.environ,
            "SFLOW_APP_CONFIG": str(auto),
            "SFLOW_APP_NAME": name,
            "SFLOW_APP_STATE_DIR": self.state_dir,
            "PYTHONPATH": str(ROOT),
            **(env or {}),
        }
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "uvicorn",
                    app,
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--http",
                    "h11",
                    "--lifespan",
                    "on",
                    *args,
                ],
                cwd=ROOT,
                env=full_env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"uvicorn exited:\n{self.log.read_text()}")
            try:  # connect-only probe: no HTTP request, nothing counted
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        else:
            self.stop()
            raise RuntimeError(f"uvicorn did not start:\n{self.log.read_text()}")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def sent(self, method: str, status: int) -> None:
        """Note a request the server must count."""
        self.tally[METHODS.get(method, OTHER_METHOD)[1]] += 1
        self.tally[status_slot(status)] += 1

    def expected_counters(self) -> tuple[int, ...]:
        return tuple(self.tally[i] for i in range(len(COUNTER_NAMES)))

    def wait_counters(self, timeout: float = 10.0) -> None:
        want = self.expected_counters()

        def done(c: Collector) -> bool:
            latest = c.latest_counters(HttpCounters)
            return latest is not None and astuple(latest) == want

        if not self.collector.wait_for(done, timeout):
            latest = self.collector.latest_counters(HttpCounters)
            got = astuple(latest) if latest else None
            raise AssertionError(f"counters {got} != requests sent {want}")

    def sample_for(self, uri: str, timeout: float = 10.0) -> FlowSample:
        def find(c: Collector) -> list[FlowSample]:
            return [
                s
                for s in c.flow_samples()
                if any(isinstance(r, HttpRequest) and r.uri == uri for r in s.records)
            ]

        self.collector.wait_for(lambda c: bool(find(c)), timeout)
        found = find(self.collector)
        assert len(found) == 1, f"{len(found)} samples for {uri}"
        return found[0]

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.state_dir, ignore_errors=True)
        return self.proc.returncode


def record(sample: FlowSample, cls: type) -> Any:
    [found] = [r for r in sample.records if isinstance(r, cls)]
    return found


def raw_request(port: int, request: bytes) -> tuple[socket.socket, bytes]:
    """Send ``request`` on a fresh connection; return the socket and the response head."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(request)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return sock, data
