"""A plain ASGI app behind sflow_app.asgi.SFlowMiddleware, served by uvicorn in the tests.

Routes (query parameters in brackets):
- ``/echo`` [size, status, delay_ms, gap_ms, after_ms]: reads the body in whatever chunks
  arrive, answers ``size`` bytes (default: as many as it read) with ``status``; sleeps
  before the response, between its start and body, and after it.
- ``/stream`` [chunks, size, gap_ms]: a streamed body, ``chunks`` x ``size`` bytes.
- ``/fail``: raises before responding.
- ``/until-gone`` [size]: sends one chunk, waits for the client to disconnect, then sends
  more (which the server drops) after a pause.
- ``/no-answer``: waits for the client to disconnect without ever responding.
- ``/silent``: reads the body and returns without responding (the server answers 500).
- ``/ws``: websocket echo (text doubled, bytes doubled), ``websocket.close`` on "bye".

Lifespan: ``startup`` and ``shutdown`` are appended to the file named by
``ASGI_APP_LIFESPAN_LOG`` when set.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any
from urllib.parse import parse_qsl

from sflow_app.asgi import SFlowMiddleware

AFTER_GONE_MS = 800


def _params(scope: dict[str, Any]) -> dict[str, int]:
    return {k: int(v) for k, v in parse_qsl(scope["query_string"].decode()) if v.isdigit()}


async def _start(send: Any, status: int = 200, length: int | None = None) -> None:
    headers = [(b"content-type", b"application/octet-stream")]
    if length is not None:
        headers.append((b"content-length", str(length).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})


async def _read_body(receive: Any) -> int:
    total, more = 0, True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        total += len(message.get("body", b""))
        more = message.get("more_body", False)
    return total


async def _lifespan(receive: Any, send: Any) -> None:
    log = os.environ.get("ASGI_APP_LIFESPAN_LOG")
    while True:
        message = await receive()
        phase = message["type"].rsplit(".", 1)[-1]  # startup / shutdown
        if log:
            with open(log, "a") as f:
                f.write(phase + "\n")
        await send({"type": f"lifespan.{phase}.complete"})
        if phase == "shutdown":
            return


async def _websocket(receive: Any, send: Any) -> None:
    await receive()  # websocket.connect
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        if message.get("text") == "bye":
            await send({"type": "websocket.close", "code": 1000})
            return
        await asyncio.sleep(0.05)
        if message.get("text") is not None:
            await send({"type": "websocket.send", "text": message["text"] * 2})
        else:
            await send({"type": "websocket.send", "bytes": message["bytes"] * 2})


async def inner(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        return await _lifespan(receive, send)
    if scope["type"] == "websocket":
        return await _websocket(receive, send)
    path, params = scope["path"], _params(scope)
    if path == "/echo":
        got = await _read_body(receive)
        if params.get("delay_ms"):
            await asyncio.sleep(params["delay_ms"] / 1000)
        size = params.get("size", got)
        await _start(send, params.get("status", 200), size)
        if params.get("gap_ms"):
            await asyncio.sleep(params["gap_ms"] / 1000)
        await send({"type": "http.response.body", "body": b"e" * size})
        if params.get("after_ms"):  # work after the response (logging, cleanup...)
            await asyncio.sleep(params["after_ms"] / 1000)
    elif path == "/stream":
        await _read_body(receive)
        await _start(send)
        chunks, size = params.get("chunks", 3), params.get("size", 100)
        for i in range(chunks):
            await asyncio.sleep(params.get("gap_ms", 20) / 1000)
            await send(
                {"type": "http.response.body", "body": b"s" * size, "more_body": i < chunks - 1}
            )
    elif path == "/fail":
        raise RuntimeError("boom (expected by the tests)")
    elif path == "/until-gone":
        await _read_body(receive)
        await _start(send)
        await send(
            {
                "type": "http.response.body",
                "body": b"u" * params.get("size", 100),
                "more_body": True,
            }
        )
        while (await receive())["type"] != "http.disconnect":
            pass
        await asyncio.sleep(AFTER_GONE_MS / 1000)
        await send({"type": "http.response.body", "body": b"late" * 100})
    elif path == "/no-answer":
        await _read_body(receive)
        while (await receive())["type"] != "http.disconnect":
            pass
        await asyncio.sleep(AFTER_GONE_MS / 1000)
    elif path == "/silent":
        await _read_body(receive)
    else:
        await _start(send, 404, 9)
        await send({"type": "http.response.body", "body": b"not found"})


app = SFlowMiddleware(inner)  # type: ignore[arg-type]
