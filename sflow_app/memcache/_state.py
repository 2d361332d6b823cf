"""The one owner of the memcache surface's mutable state: the data source its operations
count into, the key policy of ``instrument()``'s clients, the connections open now.

The other modules import ``STATE`` by name: the object is never replaced, so the import
holds the live state, and only ``STATE.bind()`` changes what it points to (at
``instrument()`` / ``wrap()`` time, and on the slow path when the agent replaced its
source). The hot path reads ``STATE.pool``, ``STATE.sampler``, ``STATE.cells`` and
``STATE.put`` (slot attributes; the callables it calls are taken into locals first, which
measures the same as the module globals they replace: docs/memcache.md, "The package").
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterator
from typing import Any

from .._agent import AGENT
from .._counters import read_count
from .._source import MEMCACHE_COUNTERS, MemcacheSource
from ._data import KeyPolicy

log = logging.getLogger("sflow_app")

CURR_CONNECTIONS = MEMCACHE_COUNTERS.index("curr_connections")


def _unbound_put(item: tuple[int, int]) -> None:
    return None


def _unbound_fold() -> None:
    return None


class MemcacheState:
    """What the memcache surface counts into. ``source`` and the callables below are its
    bound data source's; ``class_policy`` is how ``instrument()``'s clients report keys (a
    ``wrap()``ped client's class carries its own)."""

    __slots__ = (
        "cells",
        "class_policy",
        "closed",
        "fold",
        "opened",
        "pool",
        "put",
        "sampler",
        "source",
    )

    def __init__(self) -> None:
        self.source: Any = None  # a MemcacheSource once bound
        self.sampler: Any = None
        self.pool: Iterator[int] = itertools.count()  # next(pool): the candidate's ordinal
        # next(cells[slot]) adds one; put((slot, n)) adds n > 0, lock-free (a deque append
        # the counter block folds in later); fold() folds the pending amounts in now.
        self.cells: tuple[Iterator[int], ...] = ()
        self.put: Callable[[tuple[int, int]], None] = _unbound_put
        self.fold: Callable[[], None] = _unbound_fold
        self.class_policy = KeyPolicy()
        # Connections open now, per process: itertools counts, not a lock (the close side
        # runs from a weakref finalizer, which can fire during any allocation in any thread).
        self.opened = itertools.count()
        self.closed = itertools.count()

    def bind(self, source: MemcacheSource, class_policy: KeyPolicy | None = None) -> None:
        """Count into ``source`` from now on (and report ``instrument()``'s keys by
        ``class_policy``, when given)."""
        counters = source.counters
        self.sampler = source.sampler
        self.pool = source.sampler.pool_cell
        self.cells = counters.cells
        self.put = counters.put
        self.fold = counters.fold
        if class_policy is not None:
            self.class_policy = class_policy
        self.source = source
        source.gauges[CURR_CONNECTIONS] = self.open_connections

    def due(self, n: int) -> int:
        """The slow path for candidate ``n`` (see _sampler): the N it is sampled at, or
        0 when it is not sampled."""
        try:
            source = AGENT.memcache_source()
            if source is not self.source:
                # The agent was reset (testing.reset()): count from the new source on,
                # this operation too (the caller's cells are read after this call).
                self.bind(source)
                n = next(self.pool)
            self.fold()  # keeps the pending byte counts short even when no one takes snapshots
            return int(source.sample(n))
        except Exception:
            log.debug("sflow_app: memcache sampling decision failed", exc_info=True)
            return 0

    def open_connections(self) -> int:
        """Sockets instrumented clients opened in this process and still hold (the
        curr_connections gauge)."""
        return max(0, read_count(self.opened) - read_count(self.closed))


STATE = MemcacheState()
