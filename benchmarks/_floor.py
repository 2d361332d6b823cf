"""The floor: the least any per-request HTTP counter can do -- count the method and the
status class, nothing else -- as WSGI and ASGI middleware. ``bench_wsgi`` and
``bench_asgi`` measure against it in-process, ``bench_servers`` under real servers."""

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
        self.methods = {m: cells[i].__next__ for i, m in enumerate(METHODS)}
        self.other = cells[8].__next__
        self.statuses = {str(d): cells[8 + d].__next__ for d in range(1, 6)}
        self.other_status = cells[14].__next__

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        self.methods.get(environ.get("REQUEST_METHOD", ""), self.other)()
        statuses, other = self.statuses, self.other_status

        def counting_start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
            statuses.get(status[:1], other)()
            return start_response(status, headers, exc_info)

        return self.app(environ, counting_start_response)


class ASGIFloor:
    """Method + status-class counting and nothing else."""

    def __init__(self, app: Callable[[dict[str, Any], Any, Any], Awaitable[None]]) -> None:
        self.app = app
        cells = [itertools.count() for _ in range(15)]
        self.methods = {m: cells[i].__next__ for i, m in enumerate(METHODS)}
        self.other = cells[8].__next__
        self.statuses = [cells[9 + i].__next__ for i in range(6)]

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
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
