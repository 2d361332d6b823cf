"""Fixed-layout integer counter slots, exact under concurrent threads.

Each slot is an ``itertools.count``: ``next()`` on it is one C call, so under the GIL an
increment cannot be lost between bytecodes the way ``x += 1`` on shared state can. The
hot paths hold the cells and call ``next(cell)`` (the builtin is ~15 ns cheaper than the
bound ``__next__``, a method-wrapper); ``incr`` holds the bound methods for the rest.
Only the exporter reads values (``snapshot``), which keeps the layout free to move into
shared memory for pre-fork servers.
"""

from __future__ import annotations

import itertools
import threading
from collections import deque
from collections.abc import Callable, Sequence

FOLD_AT = 1024  # add() folds the pending amounts in once this many are waiting


def read_count(cell: itertools.count[int]) -> int:
    # repr is "count(N)"; it is the one stable way to read a count across Python versions.
    return int(repr(cell)[6:-1])


class CounterBlock:
    """A named, fixed-layout row of cumulative counters."""

    __slots__ = (
        "_add_lock",
        "_base",
        "_extra",
        "_pending",
        "_reads",
        "cells",
        "incr",
        "names",
        "put",
    )

    def __init__(self, names: Sequence[str]) -> None:
        self.names = tuple(names)
        # next(cells[i]) or incr[i]() adds one to slot i: exact, lock-free, no allocation.
        self.cells = tuple(itertools.count() for _ in self.names)
        self.incr: tuple[Callable[[], int], ...] = tuple(c.__next__ for c in self.cells)
        self._extra = [0] * len(self.names)
        self._reads = 0  # snapshots taken: each read every cell once (see snapshot)
        self._base = (0,) * len(self.names)
        self._add_lock = threading.Lock()
        # put((slot, amount)) adds a positive amount, exact and lock-free: deque.append is
        # one C call (atomic under the GIL); fold() and snapshot() move the pending amounts
        # into the totals. A hot path that calls put directly calls fold() now and then
        # (its slow path) so the deque stays short when nothing takes snapshots.
        self._pending: deque[tuple[int, int]] = deque()
        self.put: Callable[[tuple[int, int]], None] = self._pending.append

    def index(self, name: str) -> int:
        return self.names.index(name)

    def add(self, slot: int, amount: int) -> None:
        """Add more than one (byte counts)."""
        if amount > 0:
            self.put((slot, amount))
            if len(self._pending) > FOLD_AT:
                self.fold()

    def fold(self) -> None:
        with self._add_lock:
            self._fold()

    def _fold(self) -> None:
        pending, extra = self._pending, self._extra
        for _ in range(len(pending)):  # only what is there now; appends may go on
            slot, amount = pending.popleft()
            extra[slot] += amount

    def snapshot(self) -> tuple[int, ...]:
        with self._add_lock:
            self._fold()
            # A cell is read with next(): one C call, where repr() builds a string to
            # parse (~15 us a pass for HTTP's counters). The one it adds is taken back
            # with the reads counted, under the lock: snapshot is the only reader, and
            # reads every cell each time.
            reads = self._reads
            self._reads = reads + 1
            values = map(next, self.cells)
            return tuple(
                [v + e - b - reads for v, e, b in zip(values, self._extra, self._base, strict=True)]
            )

    def discount(self, amounts: Sequence[int]) -> None:
        """Take ``amounts`` out of the totals (what a test capture counted)."""
        self._base = tuple(b + a for b, a in zip(self._base, amounts, strict=True))

    def rebase(self) -> None:
        """Start counting from zero again without replacing the cells the surfaces hold."""
        self._add_lock = threading.Lock()
        self._base = (0,) * len(self.names)
        self._base = self.snapshot()
