"""Data sources: one per (kind, name) in a process, each with its counters and sampler.

A surface holds its source and, per call, does only ``n = sampler.pool()``, a compare with
``sampler.next_at``, and counter increments. Everything else (sequence numbers, identity,
encoding) belongs to the exporter.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any

from ._counters import CounterBlock, _value
from ._sampler import Sampler
from .records import INTERNAL, AppOperations, HostParent, HttpCounters, MemcacheCounters

if TYPE_CHECKING:
    from ._agent import Agent

HTTP_COUNTERS = (
    "method_option_count", "method_get_count", "method_head_count", "method_post_count",
    "method_put_count", "method_delete_count", "method_trace_count", "methd_connect_count",
    "method_other_count", "status_1XX_count", "status_2XX_count", "status_3XX_count",
    "status_4XX_count", "status_5XX_count", "status_other_count",
)
MEMCACHE_COUNTERS = (
    "cmd_set", "cmd_touch", "cmd_flush", "get_hits", "get_misses", "delete_hits",
    "delete_misses", "incr_hits", "incr_misses", "decr_hits", "decr_misses", "cas_hits",
    "cas_misses", "cas_badval", "auth_cmds", "auth_errors", "threads", "conn_yields",
    "listen_disabled_num", "curr_connections", "rejected_connections", "total_connections",
    "connection_structures", "evictions", "reclaimed", "curr_items", "total_items",
    "bytes_read", "bytes_written", "bytes", "limit_maxbytes",
)
APP_COUNTERS = (
    "success", "other", "timeout", "internal_error", "bad_request", "forbidden", "too_large",
    "not_implemented", "not_found", "unavailable", "unauthorized",
)

SERVER = (0, INTERNAL)  # (input, output): the transaction terminates here
CLIENT = (INTERNAL, 0)  # we called out


class Source:
    """One sFlow data source (ds_class 3) of this service."""

    kind = "source"
    counter_names: tuple[str, ...] = ()
    direction = SERVER

    def __init__(self, agent: Agent, app_key: str, name: str = "") -> None:
        self.agent = agent
        self.app_key = app_key  # key for sampling.<app> / polling.<app>
        self.name = name
        self.ds_index: int | None = None
        self.sampler = Sampler(0)
        self.counters = CounterBlock(self.counter_names)
        self._drops = itertools.count()
        self.drop = self._drops.__next__
        # Exporter-owned state.
        self.flow_seq = 0
        self.counter_seq = 0
        self.next_poll: float | None = None

    @property
    def drops(self) -> int:
        return _value(self._drops) - self._drops_base

    _drops_base = 0

    def sample(self, n: int) -> bool:
        """Slow path for candidate ``n`` (see _sampler): True when it is sampled."""
        self.agent.housekeeping()
        return self.sampler.decide(n)

    def submit(self, n: int, records: tuple[Any, ...]) -> None:
        """Hand a sampled transaction's records to the exporter (never blocks)."""
        self.agent.enqueue(self, n, self.sampler.rate, records)

    def counter_records(self, values: tuple[int, ...]) -> list[Any]:
        raise NotImplementedError

    def parent_record(self) -> list[Any]:
        parent = self.agent.settings.parent_ds_index
        return [] if parent is None else [HostParent(container_type=2, container_index=parent)]

    def reset_after_fork(self) -> None:
        self.sampler.reseed()
        self.sampler.force()
        self.counters.rebase()
        self._drops_base = _value(self._drops)
        self.flow_seq = 0
        self.counter_seq = 0
        self.next_poll = None


class HttpSource(Source):
    kind = "http"
    counter_names = HTTP_COUNTERS

    def counter_records(self, values: tuple[int, ...]) -> list[Any]:
        return [HttpCounters(*values), *self.parent_record()]


class MemcacheSource(Source):
    kind = "memcache"
    counter_names = MEMCACHE_COUNTERS
    direction = CLIENT

    def counter_records(self, values: tuple[int, ...]) -> list[Any]:
        return [MemcacheCounters(*values), *self.parent_record()]


class AppSource(Source):
    """A decorated application (``sampling.app.<name>``)."""

    kind = "app"
    counter_names = APP_COUNTERS

    def counter_records(self, values: tuple[int, ...]) -> list[Any]:
        return [AppOperations(self.name, *values), *self.parent_record()]
