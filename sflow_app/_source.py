"""Data sources: one per (kind, name) in a process, each with its counters and sampler.

A surface holds its source and, per call, does only ``n = next(sampler.pool_cell)``, a
compare with ``sampler.next_at``, and counter increments. Everything else (sequence
numbers, identity, encoding) belongs to the exporter.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from ._counters import CounterBlock, read_count
from ._encode import encode_records
from ._layout import (
    R_BUSY,
    R_CONF_CONNS,
    R_CONF_WORKERS,
    R_CONN_OPEN,
    R_DELAYED,
    R_DROPPED,
    R_FD_MAX,
    R_FD_OPEN,
    R_RSS,
    R_SYSTEM_MS,
    R_UNITS,
    R_USER_MS,
)
from ._sampler import Sampler
from .records import (
    INTERNAL,
    AppOperations,
    AppResources,
    AppWorkers,
    HostParent,
    HttpCounters,
    MemcacheCounters,
)


class Host(Protocol):
    """What a data source needs of its agent (the agent is one; so is a test's)."""

    clock: Callable[[], float]

    def housekeeping(self, caller: Source | None = None) -> None: ...

    def enqueue(
        self, source: Source, pool: int, rate: int, records: tuple[Any, ...] | Deferred
    ) -> None: ...


log = logging.getLogger("sflow_app")

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
    # Statuses the app_operations counters tell apart within their class (see below).
    "status_401",
    "status_403",
    "status_404",
    "status_408",
    "status_413",
    "status_501",
    "status_503",
    "status_504",
)
HTTP_METHODS = 9  # method counters come first, then the status classes
HTTP_STATUSES = 15  # end of the status classes (http_counters ends here)
# The statuses counted one by one, each as a function that adds one to its class's
# counter too (the surfaces count with these; every other status only by class).
DETAIL_STATUSES = (401, 403, 404, 408, 413, 501, 503, 504)
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


class Deferred:
    """A sampled transaction's records, to be built by the exporter: the request thread
    keeps what it saw (cheap references and numbers) and hands this over instead of
    records, so the conversions (bytes, redaction, addresses) are not on its path."""

    __slots__ = ()

    def build(self) -> tuple[Any, ...]:
        raise NotImplementedError

    def encode(self) -> tuple[bytes, int]:
        """The records encoded, and how many: what the exporter sends. A surface may
        encode them without building record objects (the same bytes)."""
        records = self.build()
        return encode_records(records), len(records)


def built_records(records: tuple[Any, ...] | Deferred) -> tuple[Any, ...] | None:
    """The records of a submitted transaction; None when building them failed (a drop)."""
    if type(records) is tuple:
        return records
    if not isinstance(records, Deferred):
        return tuple(records)
    try:
        return records.build()
    except Exception:
        log.debug("sflow_app: could not build a sample's records", exc_info=True)
        return None


class Source:
    """One sFlow data source (ds_class 3) of this service, as seen by this process."""

    kind = "source"
    counter_names: tuple[str, ...] = ()
    gauge_names: tuple[str, ...] = ()  # current values, not cumulative counts
    direction = SERVER

    def __init__(self, agent: Host, name: str = "") -> None:
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
        self.retired = False  # see retire()

    @staticmethod
    def key_for(name: str) -> str:
        raise NotImplementedError

    @property
    def drops(self) -> int:
        return read_count(self._drops) - self._drops_base

    def sample(self, n: int) -> int:
        """Slow path for candidate ``n`` (see _sampler): the N it is sampled at, or 0
        when it is not sampled."""
        self.agent.housekeeping(self)
        return self.sampler.decide(n)

    def submit(self, n: int, records: tuple[Any, ...] | Deferred, rate: int) -> None:
        """Hand a sampled transaction's records (or a ``Deferred`` that builds them) to
        the exporter (never blocks). ``rate``: what ``sample(n)`` returned (the overload
        guard may have moved N since)."""
        self.agent.enqueue(self, n, rate, records)

    def retire(self) -> None:
        """The agent was reset (``sflow_app.testing.reset``): surfaces built before find
        it on their next slow path, which the next candidate takes, and count into the
        fresh agent's source from then on."""
        self.retired = True
        self.sampler.force()

    def reset_after_fork(self, in_flight: int = 0) -> None:
        self.sampler.reset_after_fork(in_flight)
        self.counters.rebase()
        self._drops_base = read_count(self._drops)


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


def detail_slots() -> dict[int, int]:
    """Counter slot of each status counted on its own (for app_operations)."""
    return {code: HTTP_COUNTERS.index(f"status_{code}") for code in DETAIL_STATUSES}


def counts_digest(values: Sequence[int]) -> int:
    raw = b"".join(v.to_bytes(8, "little") for v in values)
    return int.from_bytes(hashlib.blake2b(raw, digest_size=8).digest(), "little") or 1


def http_app_operations(application: str, values: Sequence[int]) -> AppOperations:
    """The HTTP source's requests as app_operations, statuses mapped as the sampled
    app_operation records map them (``_http.app_status``): 1xx-3xx success, the statuses
    counted one by one as theirs, the rest of 4xx bad_request and of 5xx internal_error,
    anything else other."""
    c = dict(zip(HTTP_COUNTERS, values, strict=False))
    s401, s403, s404, s408, s413, s501, s503, s504 = (
        c[f"status_{code}"] for code in DETAIL_STATUSES
    )
    counts = (  # in AppOperations' order
        c["status_1XX_count"] + c["status_2XX_count"] + c["status_3XX_count"],  # success
        c["status_other_count"],  # other
        s408 + s504,  # timeout
        max(0, c["status_5XX_count"] - s501 - s503 - s504),  # internal_error
        max(0, c["status_4XX_count"] - s401 - s403 - s404 - s408 - s413),  # bad_request
        s403,  # forbidden
        s413,  # too_large
        s501,  # not_implemented
        s404,  # not_found
        s503,  # unavailable
        s401,  # unauthorized
    )
    return AppOperations(application, *(v & 0xFFFFFFFF for v in counts))


def runtime_records(runtime: Sequence[int]) -> list[Any]:
    """app_resources and app_workers from the slots' runtime words (``runtime_totals``
    then the live workers, then mem_max)."""
    u32 = 0xFFFFFFFF
    workers_max = runtime[R_CONF_WORKERS] or runtime[R_UNITS]
    active = min(runtime[R_BUSY], workers_max)
    return [
        AppResources(
            user_time=runtime[R_USER_MS] & u32,
            system_time=runtime[R_SYSTEM_MS] & u32,
            mem_used=runtime[R_RSS],
            mem_max=runtime[-1],
            fd_open=min(runtime[R_FD_OPEN], u32),
            fd_max=min(runtime[R_FD_MAX], u32),
            conn_open=min(runtime[R_CONN_OPEN], u32),
            conn_max=min(runtime[R_CONF_CONNS], u32),
        ),
        AppWorkers(
            workers_active=min(active, u32),
            workers_idle=min(workers_max - active, u32),
            workers_max=min(workers_max, u32),
            req_delayed=runtime[R_DELAYED] & u32,
            req_dropped=runtime[R_DROPPED] & u32,
        ),
    ]


def counter_records(
    kind: str,
    name: str,
    values: Sequence[int],
    parent: int | None,
    service: str = "",
    runtime: Sequence[int] | None = None,
) -> tuple[Any, ...]:
    """The counter records of one data source, built by the sender from summed slots."""
    # Counters wrap like every sFlow counter (u32; the memcache byte counters are u64).
    wrapped = [v & 0xFFFFFFFF for v in values]
    if kind == "http":
        records: list[Any] = [HttpCounters(*wrapped[:HTTP_STATUSES])]
        records.append(http_app_operations(service, values))
        if runtime is not None:
            records += runtime_records(runtime)
    elif kind == "memcache":
        wrapped[-4:] = [v & 0xFFFFFFFFFFFFFFFF for v in values[-4:]]
        records = [MemcacheCounters(*wrapped)]
    else:
        records = [AppOperations(name, *wrapped)]
    if parent is not None:
        records.append(HostParent(container_type=2, container_index=parent))
    return tuple(records)
