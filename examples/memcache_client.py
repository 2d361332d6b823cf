"""pymemcache instrumented in one call: every client class, one record per round trip.

SFLOW_APP_CONFIG=/etc/hsflowd.auto python examples/memcache_client.py 127.0.0.1:11211
"""

from __future__ import annotations

import sys

from pymemcache.client.base import Client

import sflow_app.memcache

sflow_app.memcache.instrument()  # or keys="hmac", secret=... to hide key names

host, _, port = (sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:11211").partition(":")
client = Client((host, int(port or 11211)))
for i in range(100):
    client.set(f"user{i}", b"x" * i)
    client.get(f"user{i}")
    client.get(f"missing{i}")
print(sflow_app.status()["data_sources"].get("memcache"))
