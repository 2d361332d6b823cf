import math
import random
import sys
import threading
from typing import Any

import pytest

from sflow_app._sampler import HOUSEKEEPING_EVERY, NEVER, Sampler


def run(sampler: Sampler, decisions: int) -> int:
    """The surfaces' exact hot path: pool(), compare, slow path only when due."""
    pool, taken = sampler.pool, 0
    for _ in range(decisions):
        n = pool()
        if n >= sampler.next_at and sampler.decide(n):
            taken += 1
    return taken


@pytest.mark.parametrize("rate", [1, 2, 10, 400, 10000])
def test_effective_rate_within_4_5_sigma(rate: int) -> None:
    decisions = 1_000_000
    taken = run(Sampler(rate, random.Random(rate)), decisions)
    p = 1 / rate
    mean, sd = decisions * p, math.sqrt(decisions * p * (1 - p))
    if rate == 1:
        assert taken == decisions
    else:
        assert abs(taken - mean) <= 4.5 * sd, (taken, mean, sd)


def test_pool_counts_every_candidate_even_when_off() -> None:
    sampler = Sampler(0)
    assert run(sampler, 5000) == 0
    assert sampler.sample_pool == 5000
    assert sampler.due_at == NEVER


def test_slow_path_is_rare_when_unsampled() -> None:
    sampler = Sampler(0)
    pool, slow = sampler.pool, 0
    for _ in range(3 * HOUSEKEEPING_EVERY):
        n = pool()
        if n >= sampler.next_at:
            slow += 1
            sampler.decide(n)
    # The first candidate (lazy start) plus one housekeeping pass per HOUSEKEEPING_EVERY.
    assert 1 <= slow <= 4


def test_largest_rate_is_representable() -> None:
    sampler = Sampler(0xFFFFFFFF, random.Random(1))
    skips = [sampler.skip() for _ in range(2000)]
    assert max(skips) > 2**31  # a 15-bit LCG could never produce these
    assert sum(skips) / len(skips) == pytest.approx(2**32, rel=0.15)


def test_rate_change_takes_effect_from_current_pool() -> None:
    sampler = Sampler(0)
    run(sampler, 1000)
    sampler.set_rate(1)
    assert run(sampler, 10) == 10


def test_reseed_changes_the_sequence() -> None:
    a = Sampler(100, random.Random(7))
    b = Sampler(100, random.Random(7))
    assert [a.skip() for _ in range(5)] == [b.skip() for _ in range(5)]
    b.reset_after_fork()
    assert [a.skip() for _ in range(20)] != [b.skip() for _ in range(20)]


def test_children_draw_their_own_first_skip() -> None:
    """Siblings forked from one parent must not sample the same ordinals."""
    firsts = set()
    for _ in range(20):
        child = Sampler(1000, random.Random(3))  # the same inherited RNG state and skip
        child.reset_after_fork()
        firsts.add(child.due_at)
    assert len(firsts) > 15


def test_decide_makes_no_python_call_while_holding_its_lock() -> None:
    """CPython switches threads only at Python-level calls and loops: a thread switched
    out while it holds the sampler's lock makes every other request thread block on it in
    turn (a lock convoy, +30-70 % CPU per sampled request with 4-16 threads at 1-in-1).
    So the locked region of ``decide`` calls nothing in Python (the skip is drawn before)."""
    sampler = Sampler(10)
    held = False
    calls: list[str] = []

    class WatchedLock:
        def __init__(self) -> None:
            self.inner = threading.Lock()

        def __enter__(self) -> None:
            nonlocal held
            self.inner.acquire()
            held = True

        def __exit__(self, *exc: object) -> None:
            nonlocal held
            held = False
            self.inner.release()

    own = {WatchedLock.__enter__.__code__, WatchedLock.__exit__.__code__}

    def profile(frame: Any, event: str, arg: Any) -> None:
        if held and event == "call" and frame.f_code not in own:
            calls.append(frame.f_code.co_name)

    sampler._lock = WatchedLock()  # type: ignore[assignment]
    sampled = 0
    sys.setprofile(profile)
    try:
        for _ in range(2000):
            n = sampler.pool()
            if n >= sampler.next_at:
                sampled += sampler.decide(n) > 0
    finally:
        sys.setprofile(None)
    assert sampled > 50  # the sampled branch ran, many times
    assert calls == []
