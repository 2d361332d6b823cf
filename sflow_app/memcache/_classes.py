"""pymemcache's own client classes, whatever a tracer has put in their place.

ddtrace's pymemcache patch replaces ``pymemcache.client.base.Client`` and
``pymemcache.client.hash.HashClient`` with proxy classes whose instances wrap
pymemcache's own (and sets ``HashClient.client_class`` to its proxy class). A proxy class
has none of the methods instrumented; pymemcache's classes do, and instrumenting them
covers what the proxies wrap. The package namespaces (``pymemcache``,
``pymemcache.client``) keep pymemcache's classes.

Part of ``sflow_app.memcache`` (see docs/memcache.md).
"""

from __future__ import annotations

import importlib
from typing import Any


def own_class(name: str, home: str) -> Any:
    """pymemcache's class ``name``, defined in module ``home`` (``Any``: pymemcache ships
    no type information)."""
    for where in (home, "pymemcache.client", "pymemcache"):
        found = getattr(importlib.import_module(where), name, None)
        if isinstance(found, type) and found.__module__ == home:
            return found
    raise ImportError(f"pymemcache's {name} is not in {home}")


Client = own_class("Client", "pymemcache.client.base")
PooledClient = own_class("PooledClient", "pymemcache.client.base")
HashClient = own_class("HashClient", "pymemcache.client.hash")
RetryingClient = own_class("RetryingClient", "pymemcache.client.retrying")
