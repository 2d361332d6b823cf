"""Cost of an unsampled sampling decision, as a ratio to baselines measured in the same run.

    .venv/bin/python benchmarks/bench_sampler.py

- floor: the loop and a local decrement-and-compare (what the C agents do per request);
- ours: ``n = sampler.pool(); if n >= sampler.next_at`` (one C call, which is also the
  exact, thread-safe ``sample_pool`` count, and one compare), sampling 1-in-1,000,000.
"""

from __future__ import annotations

import time

from sflow_app._sampler import Sampler

N = 2_000_000
ROUNDS = 5


def floor() -> float:
    skip = 1 << 60
    start = time.perf_counter()
    for _ in range(N):
        skip -= 1
        if skip <= 0:
            skip = 10
    return time.perf_counter() - start


def ours() -> float:
    sampler = Sampler(1_000_000)
    pool = sampler.pool
    start = time.perf_counter()
    for _ in range(N):
        n = pool()
        if n >= sampler.next_at:
            sampler.decide(n)
    return time.perf_counter() - start


def main() -> None:
    best = {"floor": float("inf"), "ours": float("inf")}
    for _ in range(ROUNDS):  # interleaved so both see the same machine load
        best["floor"] = min(best["floor"], floor())
        best["ours"] = min(best["ours"], ours())
    per = {k: v / N * 1e9 for k, v in best.items()}
    print(f"decrement-and-compare floor: {per['floor']:6.1f} ns/decision")
    print(
        f"sflow_app unsampled decision: {per['ours']:6.1f} ns/decision "
        f"({best['ours'] / best['floor']:.2f}x the floor, "
        f"+{per['ours'] - per['floor']:.1f} ns)"
    )


if __name__ == "__main__":
    main()
