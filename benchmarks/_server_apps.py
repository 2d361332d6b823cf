"""The trivial apps ``bench_servers`` and ``bench_idle`` run under real servers: bare, and
behind sflow_app's middleware (configured by the environment the benchmark gives the
server: ``SFLOW_APP_CONFIG``, ``SFLOW_APP_STATE_DIR``)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sflow_app.asgi import SFlowMiddleware as ASGIMiddleware
from sflow_app.wsgi import SFlowMiddleware as WSGIMiddleware

BODY = b'{"ok": true}'
HEADERS = [("Content-Type", "application/json"), ("Content-Length", str(len(BODY)))]
START = {
    "type": "http.response.start",
    "status": 200,
    "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(BODY))],
}
END = {"type": "http.response.body", "body": BODY}


def bare_wsgi(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    start_response("200 OK", HEADERS)
    return [BODY]


async def bare_asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
    await send(START)
    await send(END)


sflow_wsgi = WSGIMiddleware(bare_wsgi)
sflow_asgi = ASGIMiddleware(bare_asgi)
