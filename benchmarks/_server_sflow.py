"""``_server_apps``' trivial apps behind sflow_app's middleware (configured by the
environment the benchmark gives the server: ``SFLOW_APP_CONFIG``, ``SFLOW_APP_STATE_DIR``),
and three in one app: ``/s`` through the middleware, ``/f`` through the floor (method and
status-class counting only, ``_floor.py``), any other path bare. ``bench_servers`` loads
the paths of one worker in turn, so the comparison is not between processes;
``/blocks/start`` and ``/blocks`` record the worker's CPU per block of requests to one
path and hand it back (``_blocks.py``)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from _blocks import Blocks
from _floor import ASGIFloor, WSGIFloor
from _server_apps import bare_asgi, bare_wsgi

from sflow_app.asgi import SFlowMiddleware as ASGIMiddleware
from sflow_app.wsgi import SFlowMiddleware as WSGIMiddleware

sflow_wsgi = WSGIMiddleware(bare_wsgi)
sflow_asgi = ASGIMiddleware(bare_asgi)
_floor_wsgi = WSGIFloor(bare_wsgi)
_floor_asgi = ASGIFloor(bare_asgi)
_blocks = Blocks()


def paths_wsgi(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    path = environ["PATH_INFO"]
    if path.startswith("/blocks"):
        body = _blocks.take(start=path == "/blocks/start")
        start_response("200 OK", [("Content-Length", str(len(body)))])
        return [body]
    _blocks.see(path)
    if path == "/s":
        return sflow_wsgi(environ, start_response)
    if path == "/f":
        return _floor_wsgi(environ, start_response)
    return bare_wsgi(environ, start_response)


async def paths_asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "http":
        path = scope["path"]
        if path.startswith("/blocks"):
            body = _blocks.take(start=path == "/blocks/start")
            await send({"type": "http.response.start", "status": 200, "headers": []})
            return await send({"type": "http.response.body", "body": body})
        _blocks.see(path)
        if path == "/s":
            return await sflow_asgi(scope, receive, send)
        if path == "/f":
            return await _floor_asgi(scope, receive, send)
    return await bare_asgi(scope, receive, send)
