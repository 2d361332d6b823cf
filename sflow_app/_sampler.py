"""1-in-N sampling by skip counts.

The pool counter *is* ``sample_pool``: every candidate takes ``n = next(pool_cell)`` (or
``pool()``), and only when ``n >= next_at`` does it enter ``decide`` (the slow path, under
a lock). Skips are geometric with mean N (the gap between Bernoulli(1/N) successes), drawn
from a per-process ``random.Random`` (reseeded after fork): any N up to 2**32-1, unlike
the 15-bit LCG of the C agents. ``next_at`` is also lowered to make the slow path run for
rare per-process work (lazy start, fork checks, periodic hand-over).

The overload guard (``SFLOW_APP_MAX_SAMPLES``, a cap per second) lives here too, on the
slow path only: a token bucket (``cap`` tokens a second, at most ``cap / 2`` saved) makes
a sample take a token, so no one-second window holds more than 1.5x the cap whatever
the load; and so that the bucket is rarely empty, the effective N is raised to keep the
samples near ``TARGET`` of the cap (measured from the pool over half-second windows, or
at once when half the bucket is gone) and lowered again when the load falls. Each sample
carries the N in force when it was taken (what ``decide`` returned), so a collector's
estimate (the sum of sampling_rate) stays right; a due candidate refused for want of a
token is a drop.
"""

from __future__ import annotations

import itertools
import math
import random
import threading
import time
from collections.abc import Callable

from ._counters import read_count

NEVER = 1 << 62
# The slow path runs at least this often, sampled or not (fork checks, hand-over).
HOUSEKEEPING_EVERY = 4096
U32 = 0xFFFFFFFF
# The overload guard.
WINDOW = 0.5  # s: the load is measured over windows of this length
TARGET = 0.9  # of the cap: what the raised N aims at (the bucket refills at the cap)


def _no_drop() -> int:
    return 0


class Sampler:
    __slots__ = (
        "_base",
        "_burst_size",
        "_clock",
        "_filled_at",
        "_last_n",
        "_last_t",
        "_lock",
        "_n0",
        "_rng",
        "_samples",
        "_t0",
        "_tokens",
        "cap",
        "configured",
        "due_at",
        "next_at",
        "on_refuse",
        "pool",
        "pool_cell",
        "rate",
    )

    def __init__(
        self,
        rate: int = 0,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._rng = rng or random.Random()
        self._clock = clock
        self._lock = threading.Lock()
        # next(pool_cell) (or pool()) returns the candidate's ordinal, 1-based. The hot
        # paths call next() on the cell: ~15 ns less than the bound __next__ (a
        # method-wrapper, called through a tuple of arguments).
        self.pool_cell = itertools.count(1)
        self.pool = self.pool_cell.__next__
        self._base = 0
        self.rate = 0  # the N in force: the configured one, or the guard's raised one
        self.configured = 0
        self.due_at = NEVER
        self.next_at = 0  # first candidate takes the slow path
        self.on_refuse: Callable[[], object] = _no_drop  # a due candidate got no token
        self.cap = 0  # samples per second; 0 = no guard
        self._tokens = self._burst_size = 0.0
        self._filled_at = self._t0 = self._last_t = 0.0
        self._n0 = self._last_n = self._samples = 0
        self.set_rate(rate)

    @property
    def sample_pool(self) -> int:
        """Candidates seen so far."""
        return read_count(self.pool_cell) - 1 - self._base

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
        """The configured 1-in-N (the guard may raise the one in force above it)."""
        rate = max(0, min(int(rate), U32))
        with self._lock:
            if rate == self.configured:
                return
            raised = self.raised
            self.configured = rate
            # A raised N stays until the guard's next window says otherwise.
            self._use(max(rate, self.rate) if rate and raised else rate, self._here())

    def _here(self) -> int:
        """The last candidate's ordinal (what ``pool()`` returned last)."""
        return read_count(self.pool_cell) - 1

    def _use(self, rate: int, here: int) -> None:
        """Put 1-in-``rate`` in force from candidate ``here`` on (under the lock)."""
        if rate == self.rate:
            return
        self.rate = rate
        # Skips are memoryless: drawing afresh from here samples each candidate from now
        # on with probability 1/rate, whatever the skip drawn before.
        self.due_at = here + self.skip() if rate else NEVER
        self.next_at = min(self.next_at, self.due_at)

    def set_cap(self, cap: int) -> None:
        """The overload guard: at most about ``cap`` samples a second (0 = no cap)."""
        cap = max(0, int(cap))
        with self._lock:
            if cap == self.cap:
                return
            self.cap = cap
            self._restart_guard()
            if not cap:
                self._use(self.configured, self._here())

    def _restart_guard(self) -> None:
        self._burst_size = max(1.0, self.cap / 2)
        self._tokens = self._burst_size
        self._filled_at = self._t0 = self._last_t = self._clock()
        self._n0 = self._last_n = self._here()
        self._samples = 0

    @property
    def raised(self) -> bool:
        """Whether the guard holds the N in force above the configured one."""
        return self.rate > self.configured > 0

    def force(self) -> None:
        """Make the next candidate take the slow path."""
        self.next_at = 0

    def decide(self, n: int) -> int:
        """Slow path for candidate ``n``: the N it is sampled at (the sample's
        sampling_rate: the guard may change N before the sample is submitted), or 0
        when it is not sampled."""
        # The next skip is drawn before the lock is taken, so the locked region makes no
        # Python-level call: CPython hands the GIL to another thread only at such calls
        # (and loops), so a thread is never switched out while it holds the lock. One
        # that was would make every other request thread block on it in turn (a lock
        # convoy: at 1-in-1 with 4-16 threads, +30-70 % CPU per sampled request). The
        # guard's re-tuning (``_retune``) is the one exception, at most a few times a
        # second.
        skip = self.skip() if self.rate > 1 and n >= self.due_at else 1
        if self.cap and self.configured:
            return self._decide_guarded(n, skip)
        with self._lock:
            rate = self.rate
            sampled = rate > 0 and (rate == 1 or n >= self.due_at)
            if sampled:
                self.due_at = n + skip
            due = self.due_at
            self.next_at = due if due - n < HOUSEKEEPING_EVERY else n + HOUSEKEEPING_EVERY
        return rate if sampled else 0

    def _decide_guarded(self, n: int, skip: int) -> int:
        """``decide`` under the overload guard: a sample takes a token."""
        now = self._clock()
        refused = False
        sampled = 0
        with self._lock:
            rate, cap, burst = self.rate, self.cap, self._burst_size
            tokens = self._tokens + (now - self._filled_at) * cap
            if tokens > burst:
                tokens = burst
            self._filled_at = now
            if now - self._t0 >= WINDOW or (tokens < burst / 2 and self._samples * 16 >= cap):
                self._retune(n, now, tokens < burst / 2)
                if self.rate != rate:
                    rate = self.rate
                    skip = self.skip() if rate > 1 else 1
                    self.due_at = n - 1 + skip  # candidate n too, with 1/rate
                    skip = self.skip() if rate > 1 else 1
            self._last_n = n
            self._last_t = now
            if rate == 1 or n >= self.due_at:
                self.due_at = n + skip
                if tokens >= 1.0:
                    tokens -= 1.0
                    self._samples += 1
                    sampled = rate
                else:
                    refused = True
            self._tokens = tokens
            due = self.due_at
            self.next_at = due if due - n < HOUSEKEEPING_EVERY else n + HOUSEKEEPING_EVERY
        if refused:
            self.on_refuse()
        return sampled

    def _retune(self, n: int, now: float, escalate: bool) -> None:
        """The guard's N from the load of the window ending now (under the lock)."""
        if now - self._t0 > 2 * WINDOW:
            # No slow path for a while (the load fell): measure from the last one only,
            # so the tail of a burst long past does not hold N up.
            self._t0, self._n0 = self._last_t, self._last_n
        elapsed = now - self._t0
        load = (n - self._n0) / elapsed if elapsed > 0 else float(n - self._n0) * 1e6
        target = TARGET * self.cap
        want = max(self.configured, -int(-load // target))
        if escalate:  # half the bucket is gone within a window: at least double now
            want = max(want, 2 * self.rate)
        self._t0, self._n0, self._samples = now, n, 0
        self._use(min(want, U32), n)

    def reset_after_fork(self, in_flight: int = 0) -> None:
        """New RNG state, a fresh lock, a pool counted from zero, and a slow path next.

        ``in_flight``: candidates this process already pooled before noticing the fork.
        """
        self._rng.seed()
        self._lock = threading.Lock()
        self._restart_guard()  # the parent's bucket and load are not this process's
        self._base = 0
        self._base = max(self.sample_pool - in_flight, 0)
        # The skip in force was drawn by the parent: every sibling would sample the same
        # ordinal of its life first. Draw this process's own.
        if self.rate:
            self.due_at = self._base + in_flight + self.skip()
        self.next_at = 0
