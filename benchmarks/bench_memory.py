"""Memory over 10^6 requests: ``SFlowMiddleware`` (WSGI, in-process as in bench_wsgi) at
1-in-100 serving a million requests, its samples going to a counting collector; the
Python heap blocks in use (``sys.getallocatedblocks()``), the garbage collector's object
count and the resident memory after the first 10 % and at the end (each once the
exporter is idle). Nothing an unsampled request allocates may survive it, and samples
leave with the exporter: blocks and objects should stay flat (the issue sets no figure;
here: growth <= 1000 each). RSS is printed for information only: glibc's per-thread
arenas move it by a few MiB up and down with no growth of what is allocated.

    .venv/bin/python benchmarks/bench_memory.py [--smoke] [--json PATH]
"""

from __future__ import annotations

import gc
import os
import sys
import time
from pathlib import Path

from _harness import Collector, Report, bench_args, scratch, wait_drained
from bench_wsgi import app, serve

REQUESTS = 1_000_000


def rss_kib() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def settled() -> tuple[int, int, int]:
    wait_drained()
    time.sleep(0.3)  # the exporter's last datagram goes out on its next tick
    gc.collect()
    return rss_kib(), len(gc.get_objects()), sys.getallocatedblocks()


def main() -> None:
    opts = bench_args(__doc__).parse_args()
    requests = 20_000 if opts.smoke else REQUESTS
    report = Report("memory")
    # A collector that reads (in its own process): one nobody reads fills its socket
    # buffer, and the exporter then holds datagrams back, up to its bound.
    collector = Collector()
    auto = collector.auto(Path(scratch()) / "hsflowd.auto", sampling=100)
    os.environ["SFLOW_APP_CONFIG"] = str(auto)
    os.environ["SFLOW_APP_DS_INDEX"] = "8000"
    from sflow_app._agent import AGENT
    from sflow_app.wsgi import SFlowMiddleware

    AGENT.reload()
    ours = SFlowMiddleware(app)
    first = requests // 10
    serve(ours, first)
    rss0, objects0, blocks0 = settled()
    step = requests // 10
    for _ in range(9):
        serve(ours, step)
    rss1, objects1, blocks1 = settled()
    print(
        f"{requests:,} requests at 1-in-100: RSS {rss0:,} KiB after {first:,}, {rss1:,} KiB "
        f"at the end; gc objects {objects0:,} -> {objects1:,}; heap blocks {blocks0:,} -> "
        f"{blocks1:,}"
    )
    span = f"{first:,} to {requests:,} requests"
    report.add(f"heap blocks growth, {span}", blocks1 - blocks0, "blocks", "<= 1000")
    report.add(f"gc objects growth, {span}", objects1 - objects0, "objects", "<= 1000")
    report.add(f"RSS growth, {span}", rss1 - rss0, "KiB", note="(allocator; information)")
    AGENT.shutdown()
    collector.close()
    report.write(opts.json)


if __name__ == "__main__":
    main()
