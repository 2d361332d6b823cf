"""Memory over 10^6 requests: ``SFlowMiddleware`` (WSGI, in-process as in bench_wsgi) at
1-in-100 serving a million requests; the process's resident memory and the garbage
collector's object count after the first 10 % and at the end. Nothing an unsampled
request allocates may survive it, and samples leave with the exporter: both figures
should stay flat (target: RSS growth <= 1 MiB, objects growth <= 1000).

    .venv/bin/python benchmarks/bench_memory.py [--smoke] [--json PATH]
"""

from __future__ import annotations

import gc
import os

from _harness import Report, Sink, bench_args, wait_drained
from bench_wsgi import app, serve

REQUESTS = 1_000_000


def rss_kib() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def settled() -> tuple[int, int]:
    wait_drained()
    gc.collect()
    return rss_kib(), len(gc.get_objects())


def main() -> None:
    opts = bench_args(__doc__).parse_args()
    requests = 20_000 if opts.smoke else REQUESTS
    report = Report("memory")
    sink = Sink()
    os.environ["SFLOW_APP_DS_INDEX"] = "8000"
    from sflow_app._agent import AGENT
    from sflow_app.wsgi import SFlowMiddleware

    sink.rate(100)()
    AGENT.reload()
    ours = SFlowMiddleware(app)
    first = requests // 10
    serve(ours, first)
    rss0, objects0 = settled()
    step = requests // 10
    for _ in range(9):
        serve(ours, step)
    rss1, objects1 = settled()
    print(
        f"{requests:,} requests at 1-in-100: RSS {rss0:,} KiB after {first:,}, {rss1:,} KiB "
        f"at the end; gc objects {objects0:,} -> {objects1:,}"
    )
    report.add(f"RSS growth, {first:,} to {requests:,} requests", rss1 - rss0, "KiB", "<= 1024")
    report.add("gc objects growth", objects1 - objects0, "objects", "<= 1000")
    AGENT.shutdown()
    sink.close()
    report.write(opts.json)


if __name__ == "__main__":
    main()
