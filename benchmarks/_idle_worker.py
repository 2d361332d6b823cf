"""One idle "worker" for ``bench_idle``: serves one request through the app named on the
command line (``bare`` or ``sflow``; sflow's agent and exporter start with it), says
``ready``, then does nothing until its stdin closes."""

from __future__ import annotations

import sys
from typing import Any


def main() -> None:
    app: Any
    if sys.argv[1] == "sflow":
        from _server_sflow import sflow_wsgi as app
    else:
        from _server_apps import bare_wsgi as app
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "wsgi.url_scheme": "http",
    }
    result = app(environ, lambda status, headers, exc_info=None: None)
    for _chunk in result:
        pass
    getattr(result, "close", lambda: None)()
    print("ready", flush=True)
    sys.stdin.read()  # blocks without a wake-up of its own


if __name__ == "__main__":
    main()
