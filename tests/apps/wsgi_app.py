"""A plain WSGI application for the real-server tests (tests/test_wsgi_servers.py).

Run by gunicorn (``wsgi_app:application``), uWSGI (``--wsgi-file wsgi_app.py``) and
Werkzeug's ``run_simple``; configured by the environment the test gives the server
(``SFLOW_APP_CONFIG``, ``SFLOW_APP_NAME``, ``WSGI_TEST_FILE``).
"""

from __future__ import annotations

import os
import time

from sflow_app._transaction import transaction
from sflow_app.wsgi import SFlowMiddleware, set_route

STREAM_CHUNK = 64 * 1024
SENDFILE_CALLS = 0

_sendfile = os.sendfile


def _counting_sendfile(*args, **kwargs):  # gunicorn's fast path goes through os.sendfile
    global SENDFILE_CALLS
    SENDFILE_CALLS += 1
    return _sendfile(*args, **kwargs)


os.sendfile = _counting_sendfile


@transaction("lookup")
def lookup(item: str) -> dict[str, str]:
    return {"item": item}


def _read_body(environ) -> int:
    stream = environ["wsgi.input"]
    length = environ.get("CONTENT_LENGTH")
    got = 0
    if length:
        while got < int(length):
            chunk = stream.read(min(65536, int(length) - got))
            if not chunk:
                break
            got += len(chunk)
    else:
        while chunk := stream.read(65536):
            got += len(chunk)
    return got


def _text(start_response, status: str, body: bytes, content_type: str = "text/plain"):
    start_response(status, [("Content-Type", content_type), ("Content-Length", str(len(body)))])
    return [body]


def app(environ, start_response):
    path = environ.get("PATH_INFO", "")
    method = environ["REQUEST_METHOD"]
    if path in ("/health", "/hello") or path.startswith("/hello/"):
        if method == "HEAD":
            start_response("200 OK", [("Content-Type", "text/plain")])
            return []
        return _text(start_response, "200 OK", b"hello")
    if path == "/upload":
        return _text(start_response, "201 Created", str(_read_body(environ)).encode())
    if path == "/boom":
        raise RuntimeError("boom")
    if path == "/stream":
        megabytes = int(environ.get("QUERY_STRING", "mb=1").partition("=")[2] or 1)
        start_response("200 OK", [("Content-Type", "application/octet-stream")])

        def body():
            for _ in range(megabytes * 1024 * 1024 // STREAM_CHUNK):
                time.sleep(0.002)
                yield b"s" * STREAM_CHUNK

        return body()
    if path == "/file":
        start_response("200 OK", [("Content-Type", "application/pdf")])
        f = open(os.environ["WSGI_TEST_FILE"], "rb")  # noqa: SIM115 - closed by the server
        wrapper = environ.get("wsgi.file_wrapper")
        if wrapper is None:
            return iter(lambda: f.read(8192), b"")
        return wrapper(f, 8192)
    if path == "/sendfile-calls":
        return _text(start_response, "200 OK", str(SENDFILE_CALLS).encode())
    if path.startswith("/items/"):
        set_route(environ, "/items/<item>")
        found = repr(lookup(path.rsplit("/", 1)[1])).encode()
        return _text(start_response, "200 OK", found, "application/json")
    return _text(start_response, "404 Not Found", b"not found")


application = SFlowMiddleware(app, exclude=["/health", "/sendfile-calls"])
