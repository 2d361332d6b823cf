"""1-in-N sampling by skip counts.

The pool counter *is* ``sample_pool``: every candidate takes ``n = pool()``, and only when
``n >= next_at`` does it enter ``decide`` (the slow path, under a lock). Skips are
geometric with mean N (the gap between Bernoulli(1/N) successes), drawn from a per-process
``random.Random`` (reseeded after fork): any N up to 2**32-1, unlike the 15-bit LCG of the
C agents. ``next_at`` is also lowered to make the slow path run for rare per-process work
(lazy start, fork checks, periodic hand-over).
"""

from __future__ import annotations

import itertools
import math
import random
import threading

from ._counters import _value

NEVER = 1 << 62
# The slow path runs at least this often, sampled or not (fork checks, hand-over).
HOUSEKEEPING_EVERY = 4096


class Sampler:
    __slots__ = ("_base", "_lock", "_pool_cell", "_rng", "due_at", "next_at", "pool", "rate")

    def __init__(self, rate: int = 0, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()
        self._lock = threading.Lock()
        self._pool_cell = itertools.count(1)
        self.pool = self._pool_cell.__next__  # returns the candidate's ordinal, 1-based
        self._base = 0
        self.rate = 0
        self.due_at = NEVER
        self.next_at = 0  # first candidate takes the slow path
        self.set_rate(rate)

    @property
    def sample_pool(self) -> int:
        """Candidates seen so far."""
        return _value(self._pool_cell) - 1 - self._base

    def discount(self, candidates: int) -> None:
        """Take ``candidates`` out of ``sample_pool`` (what a test capture saw)."""
        self._base += max(candidates, 0)

    def ordinal(self, n: int) -> int:
        """Candidate ``n``'s place among this process's candidates (its pool then)."""
        return n - self._base

    def skip(self) -> int:
        rate = self.rate
        if rate <= 1:
            return 1
        u = self._rng.random()
        return int(math.log1p(-u) / math.log1p(-1.0 / rate)) + 1

    def set_rate(self, rate: int) -> None:
        rate = max(0, min(int(rate), 0xFFFFFFFF))
        with self._lock:
            if rate == self.rate:
                return
            self.rate = rate
            here = self.sample_pool
            self.due_at = here + self.skip() if rate else NEVER
            self.next_at = min(self.next_at, self.due_at)

    def force(self) -> None:
        """Make the next candidate take the slow path."""
        self.next_at = 0

    def decide(self, n: int) -> bool:
        """Slow path for candidate ``n``: True when it is sampled."""
        # The next skip is drawn before the lock is taken, so the locked region makes no
        # Python-level call: CPython hands the GIL to another thread only at such calls
        # (and loops), so a thread is never switched out while it holds the lock. One
        # that was would make every other request thread block on it in turn (a lock
        # convoy: at 1-in-1 with 4-16 threads, +30-70 % CPU per sampled request).
        skip = self.skip() if self.rate > 1 and n >= self.due_at else 1
        with self._lock:
            sampled = False
            if self.rate == 1 or n >= self.due_at:
                sampled = self.rate > 0
                if sampled:
                    self.due_at = n + skip
            self.next_at = min(self.due_at, n + HOUSEKEEPING_EVERY)
            return sampled

    def reset_after_fork(self, in_flight: int = 0) -> None:
        """New RNG state, a fresh lock, a pool counted from zero, and a slow path next.

        ``in_flight``: candidates this process already pooled before noticing the fork.
        """
        self._rng.seed()
        self._lock = threading.Lock()
        self._base = 0
        self._base = max(self.sample_pool - in_flight, 0)
        # The skip in force was drawn by the parent: every sibling would sample the same
        # ordinal of its life first. Draw this process's own.
        if self.rate:
            self.due_at = self._base + in_flight + self.skip()
        self.next_at = 0
