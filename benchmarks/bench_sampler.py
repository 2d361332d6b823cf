"""Cost of an unsampled sampling decision, as a ratio to baselines measured in the same run.

    .venv/bin/python benchmarks/bench_sampler.py [--smoke] [--json PATH]

- floor: the loop and a local decrement-and-compare (what the C agents do per request);
- ours: ``n = sampler.pool(); if n >= sampler.next_at`` (one C call, which is also the
  exact, thread-safe ``sample_pool`` count, and one compare), sampling 1-in-1,000,000.
"""

from __future__ import annotations

import time

from _harness import Report, bench_args

from sflow_app._sampler import Sampler

N = 2_000_000
ROUNDS = 5


def floor(n: int = N) -> float:
    skip = 1 << 60
    start = time.perf_counter()
    for _ in range(n):
        skip -= 1
        if skip <= 0:
            skip = 10
    return time.perf_counter() - start


def ours(n: int = N) -> float:
    sampler = Sampler(1_000_000)
    pool = sampler.pool
    start = time.perf_counter()
    for _ in range(n):
        n = pool()
        if n >= sampler.next_at:
            sampler.decide(n)
    return time.perf_counter() - start


def main() -> None:
    opts = bench_args(__doc__).parse_args()
    n, rounds = (20_000, 1) if opts.smoke else (N, ROUNDS)
    best = {"floor": float("inf"), "ours": float("inf")}
    for _ in range(rounds):  # interleaved so both see the same machine load
        best["floor"] = min(best["floor"], floor(n))
        best["ours"] = min(best["ours"], ours(n))
    per = {k: v / n * 1e9 for k, v in best.items()}
    print(f"decrement-and-compare floor: {per['floor']:6.1f} ns/decision")
    print(
        f"sflow_app unsampled decision: {per['ours']:6.1f} ns/decision "
        f"({best['ours'] / best['floor']:.2f}x the floor, "
        f"+{per['ours'] - per['floor']:.1f} ns)"
    )
    report = Report("sampler")
    report.add("unsampled decision", per["ours"], "ns")
    report.add("unsampled decision x decrement floor", best["ours"] / best["floor"], "x")
    report.write(opts.json)


if __name__ == "__main__":
    main()
