"""The ASGI app the pre-fork end-to-end tests run in ``uvicorn --workers N`` (spawned
workers: nothing inherited, no at-fork hook): the one-line middleware and nothing else.

``GET /r/<i>`` answers ``<pid> <sampled>`` like tests/apps/prefork_app.py.
"""

from __future__ import annotations

import os
from typing import Any

from sflow_app._http import ParentContexts, current_request
from sflow_app.asgi import SFlowMiddleware

# The answer says whether the middleware sampled the request by the context it sets,
# which it sets once a function is decorated (@transaction): as if one were.
ParentContexts.wanted = True


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            phase = message["type"].rsplit(".", 1)[-1]
            await send({"type": f"lifespan.{phase}.complete"})
            if phase == "shutdown":
                return
    sampled = current_request.get() is not None
    body = f"{os.getpid()} {int(sampled)}\n".encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"text/plain"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


app = SFlowMiddleware(_app)  # type: ignore[arg-type]
