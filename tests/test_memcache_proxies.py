"""Beside a tracer that replaces pymemcache's classes with proxy classes, as ddtrace's
pymemcache patch does: instrument() and wrap() instrument pymemcache's own classes (what
the proxies wrap) instead of failing on the proxies.

The patch runs before sflow_app.memcache is first imported, so in a process of its own.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

from helpers import Collector, agent_env
from memcached import running

from sflow_app.records import MemcacheCmd, MemcacheOperation, MemcacheStatus

ROOT = Path(__file__).resolve().parents[1]

# ddtrace's patch(pymemcache=True) (ddtrace 4.16, contrib/internal/pymemcache), in short.
SCRIPT = """
import sys

import pymemcache.client.base as base
import pymemcache.client.hash as hashing
import wrapt

_Client, _HashClient = base.Client, hashing.HashClient


class WrappedClient(wrapt.ObjectProxy):
    def __init__(self, *args, **kwargs):
        super().__init__(_Client(*args, **kwargs))


class WrappedHashClient(wrapt.ObjectProxy):
    def __init__(self, *args, **kwargs):
        super().__init__(_HashClient(*args, **kwargs))


base.Client = hashing.Client = WrappedClient
hashing.HashClient = WrappedHashClient
_HashClient.client_class = WrappedClient

import sflow_app.memcache as sfm
from sflow_app._agent import AGENT

server = (sys.argv[1], int(sys.argv[2]))
sfm.instrument()
one = base.Client(server, default_noreply=False)
one.set("one", b"1")
many = hashing.HashClient([server], default_noreply=False)
many.get("one")
sfm.uninstrument()
wrapped = sfm.wrap(base.Client(server, default_noreply=False))
wrapped.get("two")
hashed = sfm.wrap(hashing.HashClient([server], default_noreply=False))
hashed.get("one")
for client in (one, many, wrapped, hashed):
    client.close()
AGENT.shutdown()
"""


def test_classes_a_tracer_replaced_with_proxies(collector: Collector, tmp_path: Path) -> None:
    with running() as server:
        proc = subprocess.run(
            [sys.executable, "-c", SCRIPT, server.host, str(server.port)],
            env={**agent_env(collector, tmp_path), "PYTHONPATH": str(ROOT)},
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert proc.returncode == 0, proc.stderr
    collector.poll(0.2)
    got = [
        dataclasses.replace(record, uS=0)
        for sample in sorted(collector.flow_samples(), key=lambda s: s.sequence_number)
        for record in sample.records
        if isinstance(record, MemcacheOperation)
    ]

    def op(cmd: int, key: str, value_bytes: int, status: int) -> MemcacheOperation:
        return MemcacheOperation(1, cmd, key, 1, value_bytes, 0, status)

    assert got == [
        op(MemcacheCmd.SET, "one", 1, MemcacheStatus.STORED),
        op(MemcacheCmd.GET, "one", 1, MemcacheStatus.OK),
        op(MemcacheCmd.GET, "two", 0, MemcacheStatus.NOT_FOUND),
        op(MemcacheCmd.GET, "one", 1, MemcacheStatus.OK),
    ]
