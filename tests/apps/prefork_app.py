"""The WSGI app the pre-fork end-to-end tests (tests/test_prefork.py) run in gunicorn and
uWSGI: the one-line middleware and nothing else -- no server hook.

``GET /r/<i>`` answers ``<pid> <sampled>``: the worker that served request ``i`` and
whether the middleware sampled it (a sampled request runs with ``current_request`` set),
so the test knows exactly which ordinals must arrive at the collector.

With ``PREFORK_MEMCACHED=host:port`` each request also does ``set k<i>`` then ``get k<i>``
through an instrumented pymemcache client (one per process, made after the fork), and
with ``PREFORK_DECORATED=1`` it calls a ``@transaction`` function once.
"""

from __future__ import annotations

import os
from typing import Any

from sflow_app import transaction
from sflow_app._http import ParentContexts, current_request
from sflow_app.wsgi import SFlowMiddleware

# The answer says whether the middleware sampled the request by the context it sets,
# which it sets once a function is decorated (@transaction): as if one were.
ParentContexts.wanted = True

MEMCACHED = os.environ.get("PREFORK_MEMCACHED", "")
DECORATED = os.environ.get("PREFORK_DECORATED", "") == "1"

if MEMCACHED:
    from pymemcache.client.base import Client

    import sflow_app.memcache

    sflow_app.memcache.instrument()

_client: Any = None
_client_pid = 0


def _memcache() -> Any:
    """This process's client: never one inherited from the master."""
    global _client, _client_pid
    if _client is None or _client_pid != os.getpid():
        host, _, port = MEMCACHED.rpartition(":")
        # no_delay: pymemcache's default (Nagle on) costs ~40 ms per set+get on loopback
        _client = Client((host, int(port)), connect_timeout=5, timeout=5, no_delay=True)
        _client_pid = os.getpid()
    return _client


@transaction("handle")
def handle(ordinal: int) -> int:
    return ordinal * 2


def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    path = environ.get("PATH_INFO", "")
    sampled = current_request.get() is not None
    if path.startswith("/r/"):
        ordinal = int(path[3:])
        if MEMCACHED:
            client = _memcache()
            client.set(f"k{ordinal}", b"v" * 16)
            if client.get(f"k{ordinal}") != b"v" * 16:
                raise RuntimeError("memcached lost a value")
        if DECORATED:
            handle(ordinal)
    body = f"{os.getpid()} {int(sampled)}\n".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


application = SFlowMiddleware(app)
