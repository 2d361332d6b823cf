"""An instrumented WSGI app that serves a few requests to itself, then exits.

For the ``sflow-app`` tests: configured by the environment (``SFLOW_APP_COLLECTORS``,
sampling...), served by wsgiref on loopback. argv: the paths to request, in order. With
``SENDER_APP_WAIT=1`` it then prints ``ready`` and keeps running until its stdin closes.
"""

from __future__ import annotations

import http.client
import os
import sys
import threading
from wsgiref.simple_server import WSGIRequestHandler, make_server

import sflow_app
from sflow_app.wsgi import SFlowMiddleware


@sflow_app.transaction("checkout", application="shop")
def checkout() -> None:
    pass


def app(environ, start_response):  # type: ignore[no-untyped-def]
    if environ["PATH_INFO"].startswith("/missing"):
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"no"]
    checkout()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello"]


class Quiet(WSGIRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


def main() -> None:
    server = make_server("127.0.0.1", 0, SFlowMiddleware(app), handler_class=Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    for path in sys.argv[1:]:
        conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=10)
        conn.request("GET", path)
        conn.getresponse().read()
        conn.close()
    if os.environ.get("SENDER_APP_WAIT") == "1":
        print("ready", flush=True)
        sys.stdin.read()
    server.shutdown()  # the agent's exit flush sends what is left


if __name__ == "__main__":
    main()
