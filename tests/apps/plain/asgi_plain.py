"""A bare ASGI application that knows nothing of sflow_app; it answers with its worker's
pid, so a test can tell which worker served a request."""

import os


async def app(scope, receive, send):
    if scope["type"] != "http":
        return  # lifespan: nothing to set up (hypercorn carries on without it)
    body = f"{os.getpid()} {scope['path']}".encode()
    await send(
        {
            "type": "http.response.start",
            "status": 404 if scope["path"].startswith("/missing") else 200,
            "headers": [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(body))],
        }
    )
    await send({"type": "http.response.body", "body": body})
