"""WSGI middleware cost per request, as a ratio to a floor measured in the same run.

The floor is the least any per-request HTTP counter can do in WSGI: a wrapper that wraps
``start_response`` to see the status and bumps a method counter and a status-class
counter. Ours is measured with sampling off (the unsampled path only: the target is
1.6x the floor) and at 1-in-400 (hsflowd's default; the exporter thread runs and sends to
a loopback socket nobody reads), and OpenTelemetry's ``OpenTelemetryMiddleware`` (no SDK
configured: its no-op tracer) for information. A trivial app is called directly, as a
server would (call, iterate, close), with a fresh copy of a realistic environ each time:
no server, no sockets, so the middleware's own cost is what shows.

    .venv/bin/python benchmarks/bench_wsgi.py
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable, Iterable
from typing import Any

from _harness import Sink, best_costs, report_flushed

ROUNDS = int(os.environ.get("BENCH_ROUNDS", 50_000))
REPEATS = 7

Environ = dict[str, Any]
App = Callable[[Environ, Any], Iterable[bytes]]

ENVIRON: Environ = {
    "REQUEST_METHOD": "GET",
    "SCRIPT_NAME": "",
    "PATH_INFO": "/api/orders/1234",
    "QUERY_STRING": "page=2&token=abc",
    "RAW_URI": "/api/orders/1234?page=2&token=abc",
    "SERVER_NAME": "127.0.0.1",
    "SERVER_PORT": "8000",
    "SERVER_PROTOCOL": "HTTP/1.1",
    "REMOTE_ADDR": "127.0.0.1",
    "REMOTE_PORT": "54321",
    "HTTP_HOST": "shop.example.com",
    "HTTP_USER_AGENT": "bench/1.0",
    "HTTP_ACCEPT": "*/*",
    "wsgi.version": (1, 0),
    "wsgi.url_scheme": "http",
    "wsgi.input": None,
    "wsgi.errors": None,
    "wsgi.multithread": True,
    "wsgi.multiprocess": False,
    "wsgi.run_once": False,
}
HEADERS = [("Content-Type", "application/json"), ("Content-Length", "2")]
BODY = [b"{}"]


def app(environ: Environ, start_response: Any) -> Iterable[bytes]:
    start_response("200 OK", HEADERS)
    return BODY


def write(data: bytes) -> None:
    pass


def start_response(status: str, headers: Any, exc_info: Any = None) -> Callable[..., None]:
    return write


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
        self.statuses = {str(d): cells[8 + d].__next__ for d in range(1, 6)}
        self.other_status = cells[14].__next__

    def __call__(self, environ: Environ, start_response: Any) -> Iterable[bytes]:
        self.methods.get(environ.get("REQUEST_METHOD"), self.other)()
        statuses, other = self.statuses, self.other_status

        def counting_start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
            statuses.get(status[:1], other)()
            return start_response(status, headers, exc_info)

        return self.app(environ, counting_start_response)


def seconds(wrapped: App) -> float:
    copy = ENVIRON.copy
    started = time.perf_counter()
    for _ in itertools.repeat(None, ROUNDS):
        result = wrapped(copy(), start_response)
        for _chunk in result:
            pass
        close = getattr(result, "close", None)
        if close is not None:
            close()
    return time.perf_counter() - started


def main() -> None:
    sink = Sink()
    os.environ["SFLOW_APP_DS_INDEX"] = "8000"  # no server socket in a direct call
    from sflow_app._agent import AGENT
    from sflow_app.wsgi import SFlowMiddleware

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
        from opentelemetry.instrumentation.wsgi import OpenTelemetryMiddleware

        apps["OpenTelemetry WSGI (no-op tracer)"] = OpenTelemetryMiddleware(app)
    except ImportError:
        pass

    costs = best_costs(apps, seconds, ROUNDS, REPEATS, before)
    floor = costs["floor (method+status)"]
    bare = costs["no middleware"]
    print(
        f"{ROUNDS} requests x best of {REPEATS}, trivial app called directly "
        "(environ copy, call, iterate, close)"
    )
    print(f"  {'':36s} {'us/request':>10s}  {'x floor':>7s}  {'overhead x floor':>16s}")
    for name, cost in costs.items():
        overhead = (cost - bare) / (floor - bare) if floor > bare else float("nan")
        print(f"  {name:36s} {cost:10.3f}  {cost / floor:7.2f}  {overhead:16.2f}")
    print(
        "  (x floor: total per request / floor's total; overhead x floor: the same"
        " without the bare app's cost)"
    )
    report_flushed()
    sink.close()


if __name__ == "__main__":
    main()
