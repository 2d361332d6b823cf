"""The floor: the least any per-request HTTP counter can do -- count the method and the
status class, nothing else -- as WSGI and ASGI middleware. ``bench_wsgi`` and
``bench_asgi`` measure against it in-process, ``bench_servers`` under real servers.

It uses the cheapest primitives we know, the ones the middleware uses: ``next(cell)`` on
an ``itertools.count`` (not its bound ``__next__``, a method-wrapper ~15 ns dearer) and,
in ASGI, a ``send`` wrapper that hands back the server's awaitable instead of being a
coroutine of its own. (Until 2026-12-05 the floor used the dearer two: its overhead was
~10 % higher in WSGI and ~25 % in ASGI, and earlier tables compare with that.)"""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

METHODS = ("OPTIONS", "GET", "HEAD", "POST", "PUT", "DELETE", "TRACE", "CONNECT")


class WSGIFloor:
    """Method + status-class counting and nothing else."""

    def __init__(self, app: Callable[[dict[str, Any], Any], Iterable[bytes]]) -> None:
        self.app = app
        cells = [itertools.count() for _ in range(15)]
        self.methods = {m: cells[i] for i, m in enumerate(METHODS)}
        self.other = cells[8]
        self.statuses = {str(d): cells[8 + d] for d in range(1, 6)}
        self.other_status = cells[14]

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        next(self.methods.get(environ.get("REQUEST_METHOD", ""), self.other))
        statuses, other = self.statuses, self.other_status

        def counting_start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
            next(statuses.get(status[:1], other))
            return start_response(status, headers, exc_info)

        return self.app(environ, counting_start_response)


class ASGIFloor:
    """Method + status-class counting and nothing else."""

    def __init__(self, app: Callable[[dict[str, Any], Any, Any], Awaitable[None]]) -> None:
        self.app = app
        cells = [itertools.count() for _ in range(15)]
        self.methods = {m: cells[i] for i, m in enumerate(METHODS)}
        self.other = cells[8]
        self.statuses = [cells[9 + i] for i in range(6)]

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = 0

        def send_status(message: dict[str, Any]) -> Awaitable[None]:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            return send(message)  # type: ignore[no-any-return]

        try:
            await self.app(scope, receive, send_status)
        finally:
            next(self.methods.get(scope["method"], self.other))
            next(self.statuses[min(status // 100, 5)])
