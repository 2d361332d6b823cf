"""Data sources: one per (kind, name) in a process, each with its counters and sampler.

A surface holds its source and, per call, does only ``n = sampler.pool()``, a compare with
``sampler.next_at``, and counter increments. Everything else (sequence numbers, identity,
encoding) belongs to the exporter.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ._counters import CounterBlock, _value
from ._sampler import Sampler
from .records import INTERNAL, AppOperations, HostParent, HttpCounters, MemcacheCounters

if TYPE_CHECKING:
    from ._agent import Agent

HTTP_COUNTERS = (
    "method_option_count",
    "method_get_count",
    "method_head_count",
    "method_post_count",
    "method_put_count",
    "method_delete_count",
    "method_trace_count",
    "methd_connect_count",
    "method_other_count",
    "status_1XX_count",
    "status_2XX_count",
    "status_3XX_count",
    "status_4XX_count",
    "status_5XX_count",
    "status_other_count",
)
MEMCACHE_COUNTERS = (
    "cmd_set",
    "cmd_touch",
    "cmd_flush",
    "get_hits",
    "get_misses",
    "delete_hits",
    "delete_misses",
    "incr_hits",
    "incr_misses",
    "decr_hits",
    "decr_misses",
    "cas_hits",
    "cas_misses",
    "cas_badval",
    "auth_cmds",
    "auth_errors",
    "threads",
    "conn_yields",
    "listen_disabled_num",
    "curr_connections",
    "rejected_connections",
    "total_connections",
    "connection_structures",
    "evictions",
    "reclaimed",
    "curr_items",
    "total_items",
    "bytes_read",
    "bytes_written",
    "bytes",
    "limit_maxbytes",
)
APP_COUNTERS = (
    "success",
    "other",
    "timeout",
    "internal_error",
    "bad_request",
    "forbidden",
    "too_large",
    "not_implemented",
    "not_found",
    "unavailable",
    "unauthorized",
)

SERVER = (0, INTERNAL)  # (input, output): the transaction terminates here
CLIENT = (INTERNAL, 0)  # we called out


class Source:
    """One sFlow data source (ds_class 3) of this service, as seen by this process."""

    kind = "source"
    counter_names: tuple[str, ...] = ()
    gauge_names: tuple[str, ...] = ()  # current values, not cumulative counts
    direction = SERVER

    def __init__(self, agent: Agent, name: str = "") -> None:
        self.agent = agent
        self.name = name
        self.app_key = self.key_for(name)  # key for sampling.<app> / polling.<app>
        self.ds_index: int | None = None
        self.counters = CounterBlock(self.counter_names)
        self._drops = itertools.count()
        self._drops_base = 0
        self.drop = self._drops.__next__
        self.sampler = Sampler(0, clock=agent.clock)
        self.sampler.on_refuse = self.drop  # the overload guard had no token for it
        # Position -> function giving the gauge's current value in this process.
        self.gauges: dict[int, Callable[[], int]] = {}

    @staticmethod
    def key_for(name: str) -> str:
        raise NotImplementedError

    @property
    def drops(self) -> int:
        return _value(self._drops) - self._drops_base

    def sample(self, n: int) -> bool:
        """Slow path for candidate ``n`` (see _sampler): True when it is sampled."""
        self.agent.housekeeping(self)
        return self.sampler.decide(n)

    def submit(self, n: int, records: tuple[Any, ...]) -> None:
        """Hand a sampled transaction's records to the exporter (never blocks)."""
        # The N in force when it was sampled: the overload guard may have moved it since.
        self.agent.enqueue(self, n, self.sampler.rate_of(n), records)

    def reset_after_fork(self, in_flight: int = 0) -> None:
        self.sampler.reset_after_fork(in_flight)
        self.counters.rebase()
        self._drops_base = _value(self._drops)


class HttpSource(Source):
    kind = "http"
    counter_names = HTTP_COUNTERS

    @staticmethod
    def key_for(name: str) -> str:
        return "http"


class MemcacheSource(Source):
    kind = "memcache"
    counter_names = MEMCACHE_COUNTERS
    gauge_names = ("curr_connections",)
    direction = CLIENT

    @staticmethod
    def key_for(name: str) -> str:
        return "memcache"


class AppSource(Source):
    """A decorated application (``sampling.app.<name>``)."""

    kind = "app"
    counter_names = APP_COUNTERS

    @staticmethod
    def key_for(name: str) -> str:
        return f"app.{name}"


SOURCE_KINDS: dict[str, type[Source]] = {
    "http": HttpSource,
    "memcache": MemcacheSource,
    "app": AppSource,
}


def gauge_positions(kind: str) -> tuple[int, ...]:
    cls = SOURCE_KINDS[kind]
    return tuple(cls.counter_names.index(name) for name in cls.gauge_names)


def counter_records(kind: str, name: str, values: Sequence[int], parent: int | None) -> list[Any]:
    """The counter records of one data source, built by the sender from summed slots."""
    # Counters wrap like every sFlow counter (u32; the memcache byte counters are u64).
    wrapped = [v & 0xFFFFFFFF for v in values]
    if kind == "http":
        records: list[Any] = [HttpCounters(*wrapped)]
    elif kind == "memcache":
        wrapped[-4:] = [v & 0xFFFFFFFFFFFFFFFF for v in values[-4:]]
        records = [MemcacheCounters(*wrapped)]
    else:
        records = [AppOperations(name, *wrapped)]
    if parent is not None:
        records.append(HostParent(container_type=2, container_index=parent))
    return records
