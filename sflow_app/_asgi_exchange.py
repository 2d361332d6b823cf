"""What one sampled ASGI request or websocket saw (status, headers, bytes, timing), and
Starlette's error page, which its ServerErrorMiddleware sends outside our middleware.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from time import perf_counter_ns
from typing import Any

from ._http import CLIENT_CLOSED

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class Exchange:
    """What one sampled request or websocket saw; owned by a single call."""

    __slots__ = (
        "_receive",
        "_send",
        "answered",
        "end_ns",
        "head",
        "headers",
        "received",
        "sent",
        "start_ns",
        "status",
    )

    def __init__(self, receive: Receive, send: Send, head: bool) -> None:
        self._receive = receive
        self._send = send
        self.head = head
        self.status = 0
        self.answered = 0  # the status the app answered with, even to a client gone
        self.headers: Iterable[tuple[bytes, bytes]] = ()
        self.received = 0
        self.sent = 0
        self.start_ns = perf_counter_ns()
        self.end_ns = 0  # set by the last body message, close, or disconnect

    async def receive(self) -> Message:
        message = await self._receive()
        kind = message["type"]
        if kind == "http.request":
            self.received += body_size(message)
        elif kind == "websocket.receive":
            self.received += payload_size(message)
        elif kind in ("http.disconnect", "websocket.disconnect") and not self.end_ns:
            self.end_ns = perf_counter_ns()
        return message

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind in ("http.response.start", "websocket.http.response.start"):
            self.answered = message["status"]
        if self.end_ns:  # finished or disconnected: nothing more reaches the client
            return await self._send(message)
        try:
            await self._send(message)
        except OSError:  # ASGI 2.4 servers raise on send after a disconnect
            self.end_ns = perf_counter_ns()
            raise
        if kind in ("http.response.body", "websocket.http.response.body"):
            if not self.head:
                self.sent += body_size(message)
            if not message.get("more_body", False):
                self.end_ns = perf_counter_ns()
        elif kind == "websocket.send":
            self.sent += payload_size(message)
        elif kind in ("http.response.start", "websocket.http.response.start"):
            self.status = message["status"]
            self.headers = message.get("headers") or ()
        elif kind == "websocket.close":
            self.status = self.status or 403  # closed before accept: servers answer 403
            self.end_ns = perf_counter_ns()
        elif kind == "websocket.accept":
            self.status = 101
        elif kind == "http.response.pathsend":
            self.end_ns = perf_counter_ns()
            if not self.head:
                self.sent += self._file_size(message)

    def _file_size(self, message: Message) -> int:
        """What a pathsend sends: the response's Content-Length, else the file's size."""
        for name, value in self.headers:
            if name.lower() == b"content-length" and value.strip().isdigit():
                return int(value)
        try:
            return os.stat(message["path"]).st_size
        except (OSError, KeyError, TypeError, ValueError):
            return 0

    def retarget(self, send: Send) -> None:
        """Follow a response sent through ``send`` (the error page) from its start."""
        self._send = send
        self.status = 0
        self.headers = ()
        self.sent = 0
        self.end_ns = 0


async def unanswered_status(receive: Receive) -> int:
    """The status of an app that returned without starting a response: the server's
    own 500 (uvicorn's "ASGI callable returned without starting response", hypercorn's
    empty 500) unless the client left first (499, nginx's "client closed request"),
    which the server tells without waiting: its next message is ``http.disconnect``.
    Body the app left unread is skipped; a message not ready yet means the client is
    still there (the receive is cancelled at once, as Starlette's ``is_disconnected()``
    does)."""
    try:
        async with asyncio.timeout(0):  # no wait: only what the server already knows
            for _ in range(64):  # bounded: a server that keeps answering at once
                message = await receive()
                if message.get("type") != "http.request":
                    return CLIENT_CLOSED if message.get("type") == "http.disconnect" else 500
    except Exception:  # not ready (TimeoutError), no asyncio loop (trio), a server's own
        pass
    return 500


def mime_type(headers: Iterable[tuple[bytes, bytes]]) -> bytes:
    """The Content-Type of a response's headers (b"" without one)."""
    for name, value in headers:
        if name == b"content-type" or name.lower() == b"content-type":  # most: lowercase
            return bytes(value)
    return b""


def websocket_status(message: Message) -> int:
    kind = message["type"]
    if kind == "websocket.accept":
        return 101
    if kind == "websocket.close":
        return 403
    if kind == "websocket.http.response.start":
        status = message.get("status")
        return status if type(status) is int else -1  # -1: counted as "other", not raised
    return 0


def body_size(message: Message) -> int:
    """An http message's body bytes; 0 for what is no body (None: the server's to refuse,
    never our counting's)."""
    body = message.get("body")
    try:
        return len(body) if body else 0
    except TypeError:
        return 0


def payload_size(message: Message) -> int:
    data = message.get("bytes")
    try:
        if data is not None:
            return len(data)
        text = message.get("text")
        # A lone surrogate is the server's to refuse, not ours to raise on.
        return len(text.encode("utf-8", "surrogatepass")) if text else 0
    except (TypeError, AttributeError):
        return 0


def follow_error_page(send: Send, exchange: Exchange, done: Callable[[], None]) -> bool:
    """The app raised before answering and Starlette's (FastAPI's) ServerErrorMiddleware,
    just outside us (``app.add_middleware``), will answer with its 500 page -- through
    the ``send`` it was given, not through ours. Follow that page: point the variable it
    sends through (the closure cell of its ``_send``, which our ``send`` is) at
    ``exchange``, and call ``done()`` once the page is sent, so the sample records what
    the client received. Only on this path (sampled, raised, unanswered): nothing is
    added to any other request. False when ``send`` is not that middleware's (then the
    sample is recorded at once, as a 500 with no body)."""
    code = getattr(send, "__code__", None)
    closure = getattr(send, "__closure__", None)
    if code is None or not closure:
        return False
    if not getattr(send, "__qualname__", "").startswith("ServerErrorMiddleware."):
        return False
    try:
        cell = closure[code.co_freevars.index("send")]
        original = cell.cell_contents
    except (ValueError, IndexError):  # another Starlette: record at once
        return False
    exchange.retarget(original)
    pending = [True]

    async def watching(message: Message) -> None:
        try:
            await exchange.send(message)
        finally:
            if exchange.end_ns and pending:
                pending.clear()
                done()

    cell.cell_contents = watching
    return True
