"""Exporter capacity: can the exporter keep up with one busy request thread?

One request thread serves WSGI requests through ``SFlowMiddleware`` at 1-in-1 on a fixed
schedule -- 20,000 requests/s for 5 s, a busy loop that never sleeps (a request is
issued as soon as its time has come; a late thread catches up) -- then the exporter gets
up to 4 s to drain. A counting collector in its own process (``_collector.py``, a large
receive buffer) counts the flow samples that arrive. Reported: the delivered fraction
(target >= 98 %), the agent's ``drops`` and whether every lost sample is counted in them
(``unaccounted`` = sampled - delivered - drops, which should be 0), and the ceiling: the
samples/s delivered when the same thread runs unpaced for 3 s. In that run the CPU of
each thread is read too (its /proc schedstat): the exporter's per delivered sample and the
request thread's per request. The GIL runs one of them at a time, so the two together
bound what one request thread and the exporter can do (1 s / their sum), and the
exporter alone could deliver 1 s / its own per sample.

The overload guard (``SFLOW_APP_MAX_SAMPLES``) is lifted: this measures the exporter.

    .venv/bin/python benchmarks/bench_exporter.py [--smoke] [--json PATH]
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from _harness import Collector, Report, bench_args, drops, scratch, thread_cpu
from bench_wsgi import ENVIRON, app, start_response

RATE = 20_000
SECONDS = 5.0
DRAIN = 4.0


def main() -> None:
    opts = bench_args(__doc__).parse_args()
    seconds = 0.3 if opts.smoke else SECONDS
    unpaced = 0.3 if opts.smoke else 3.0
    report = Report("exporter")
    collector = Collector()
    auto = collector.auto(Path(scratch()) / "hsflowd.auto", sampling=1)
    os.environ["SFLOW_APP_CONFIG"] = str(auto)
    os.environ["SFLOW_APP_DS_INDEX"] = "8000"
    os.environ["SFLOW_APP_MAX_SAMPLES"] = "0"
    from sflow_app._agent import AGENT
    from sflow_app.wsgi import SFlowMiddleware

    AGENT.reload()
    wrapped = SFlowMiddleware(app)
    copy = ENVIRON.copy

    def one() -> None:
        result = wrapped(copy(), start_response)
        for _chunk in result:
            pass
        result.close()  # type: ignore[attr-defined]  # the request ends here

    one()  # starts the exporter; its sample must be in before the first count
    deadline = time.monotonic() + 5
    while collector.flows() < 1 and time.monotonic() < deadline:
        time.sleep(0.05)

    def run(paced: bool, duration: float) -> tuple[int, float, int, int, float]:
        """(requests issued, seconds, delivered, dropped, drain seconds) of one run."""
        delivered0, drops0 = collector.flows(), drops()
        interval = 1.0 / RATE
        issued = 0
        clock = time.perf_counter
        started = clock()
        end = started + duration
        while True:
            now = clock()
            if now >= end:
                break
            if paced and now < started + issued * interval:
                continue  # busy wait: the schedule, not a sleep
            one()
            issued += 1
        took = clock() - started
        drained_at = clock()
        delivered = collector.flows() - delivered0
        while delivered + drops() - drops0 < issued and clock() - drained_at < DRAIN:
            time.sleep(0.05)
            delivered = collector.flows() - delivered0
        drain = clock() - drained_at
        time.sleep(0.2)  # anything still in flight
        return issued, took, collector.flows() - delivered0, drops() - drops0, drain

    issued, took, delivered, dropped, drain = run(True, seconds)
    print(
        f"paced at {RATE}/s for {seconds:g} s: {issued} sampled requests in {took:.2f} s "
        f"({issued / took:,.0f}/s), {delivered} delivered, {dropped} dropped, "
        f"drained in {drain:.2f} s"
    )
    report.add(
        f"delivered at {RATE // 1000}k sampled requests/s", 100 * delivered / issued, "%", ">= 98"
    )
    report.add("issued rate reached", issued / took, "requests/s")
    report.add("dropped (counted in drops)", dropped, "samples")
    report.add("lost and not counted in drops", issued - delivered - dropped, "samples", "<= 0")
    # By name: the same in every version of the agent (see compare.py).
    exporter = next(t for t in threading.enumerate() if t.name == "sflow-app-exporter")
    assert exporter.native_id is not None
    exporter_cpu, request_cpu = thread_cpu(exporter.native_id), time.thread_time()
    issued, took, delivered, dropped, drain = run(False, unpaced)
    exporter_cpu = thread_cpu(exporter.native_id) - exporter_cpu
    request_cpu = time.thread_time() - request_cpu
    print(
        f"unpaced for {unpaced:g} s: {issued} sampled requests ({issued / took:,.0f}/s), "
        f"{delivered} delivered, {dropped} dropped"
    )
    report.add("ceiling: delivered/s, unpaced thread", delivered / took, "samples/s")
    report.add("unpaced: delivered", 100 * delivered / issued, "%")
    per_sample = exporter_cpu / max(delivered, 1)
    report.add("exporter CPU per delivered sample", per_sample * 1e6, "us")
    report.add("request thread CPU per sampled request", request_cpu / issued * 1e6, "us")
    report.add("exporter alone: samples/s (1 s / its CPU per sample)", 1 / per_sample, "samples/s")
    AGENT.shutdown()
    collector.close()
    report.write(opts.json)


if __name__ == "__main__":
    main()
