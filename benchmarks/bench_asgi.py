"""ASGI middleware cost per request, as a ratio to a floor measured in the same run.

The floor is the least any per-request HTTP counter can do in pure ASGI: a wrapper that
wraps ``send`` to see the status of ``http.response.start`` and bumps a method counter and
a status-class counter. Ours is measured with sampling off (the unsampled path only) and
at 1-in-400 (hsflowd's default; the exporter thread runs and sends to a loopback socket
nobody reads), and OpenTelemetry's ASGI middleware (no SDK installed: its no-op tracer)
for information. A trivial app is called directly on one event loop with a pre-built
scope: no server, no sockets, so the middleware's own cost is what shows.

    .venv/bin/python benchmarks/bench_asgi.py
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

from _harness import Sink, best_costs, report_flushed

ROUNDS = int(os.environ.get("BENCH_ROUNDS", 20_000))
REPEATS = 5

Scope = dict[str, Any]
App = Callable[[Scope, Any, Any], Awaitable[None]]

SCOPE: Scope = {
    "type": "http",
    "asgi": {"version": "3.0", "spec_version": "2.3"},
    "http_version": "1.1",
    "method": "GET",
    "scheme": "http",
    "path": "/api/orders/1234",
    "raw_path": b"/api/orders/1234",
    "query_string": b"page=2&token=abc",
    "root_path": "",
    "headers": [(b"host", b"shop.example.com"), (b"user-agent", b"bench/1.0"), (b"accept", b"*/*")],
    "server": ("127.0.0.1", 8000),
    "client": ("127.0.0.1", 54321),
}
START = {
    "type": "http.response.start",
    "status": 200,
    "headers": [(b"content-type", b"application/json"), (b"content-length", b"2")],
}
BODY = {"type": "http.response.body", "body": b"{}", "more_body": False}
REQUEST = {"type": "http.request", "body": b"", "more_body": False}


async def app(scope: Scope, receive: Any, send: Any) -> None:
    await send(START)
    await send(BODY)


async def receive() -> dict[str, Any]:
    return REQUEST


async def send(message: dict[str, Any]) -> None:
    pass


class FloorMiddleware:
    """Method + status-class counting and nothing else: the floor."""

    def __init__(self, app: App) -> None:
        self.app = app
        cells = [itertools.count() for _ in range(15)]
        self.methods = {
            m: cells[i].__next__
            for i, m in enumerate(
                ("OPTIONS", "GET", "HEAD", "POST", "PUT", "DELETE", "TRACE", "CONNECT")
            )
        }
        self.other = cells[8].__next__
        self.statuses = [cells[9 + i].__next__ for i in range(6)]

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = 0

        async def send_status(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            self.methods.get(scope["method"], self.other)()
            self.statuses[min(status // 100, 5)]()


def seconds(loop: asyncio.AbstractEventLoop, wrapped: App) -> float:
    async def run() -> None:
        for _ in itertools.repeat(None, ROUNDS):
            await wrapped(SCOPE, receive, send)

    started = time.perf_counter()
    loop.run_until_complete(run())
    return time.perf_counter() - started


def main() -> None:
    sink = Sink()
    from sflow_app._agent import AGENT
    from sflow_app.asgi import SFlowMiddleware

    AGENT.reload()
    ours = SFlowMiddleware(app)

    apps: dict[str, App] = {
        "floor (method+status)": FloorMiddleware(app),
        "sflow, sampling off": ours,
        "sflow, 1-in-400": ours,
        "no middleware": app,
    }
    before = {"sflow, sampling off": sink.rate(0), "sflow, 1-in-400": sink.rate(400)}
    try:
        from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

        apps["OpenTelemetry ASGI (no-op tracer)"] = OpenTelemetryMiddleware(app)
    except ImportError:
        pass

    loop = asyncio.new_event_loop()
    costs = best_costs(apps, lambda wrapped: seconds(loop, wrapped), ROUNDS, REPEATS, before)
    loop.close()
    floor = costs["floor (method+status)"]
    print(f"{ROUNDS} requests x best of {REPEATS}, trivial app called directly")
    for name, cost in costs.items():
        print(f"  {name:36s} {cost:7.2f} us/request  {cost / floor:5.2f}x floor")
    report_flushed()
    sink.close()


if __name__ == "__main__":
    main()
