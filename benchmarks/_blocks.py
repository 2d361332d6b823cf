"""Server CPU per request of the paths of one worker, loaded in alternating blocks.

The load generator sends blocks of ``BLOCK`` requests to one path, then the next
(``block_path``: the order rotates cycle by cycle). The worker reads its own CPU clock
(every thread's: the exporter's work is in it) only where the path changes, so every
request pays the same one compare, and hands back the blocks -- (path, CPU ns, requests)
-- when asked for ``/blocks``. A block's CPU runs from its first request's arrival in the
app to the next block's: whole request cycles, the server's parsing and writing
included. Blocks a few tenths of a second long, taken in turn, put each comparison within
a second of its pair: the drift and neighbours that make one-second rounds of separate
loads differ by +-7 % here hit both sides of a pair alike.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Sequence

BLOCK = 2000  # requests: ~0.2-0.4 s of a worker here
PATHS = ("/b", "/f", "/s")


def block_path(i: int, paths: Sequence[str] = PATHS, block: int = BLOCK) -> str:
    """The path of request ``i`` (0-based); ``wrk_script`` says the same in Lua."""
    b = i // block
    return paths[(b + b // len(paths)) % len(paths)]


def wrk_script(paths: Sequence[str] = PATHS, block: int = BLOCK) -> str:
    quoted = ", ".join(f'"{p}"' for p in paths)
    return f"""-- bench_servers: blocks of {block} requests per path, the order rotating
local n = 0
local paths = {{{quoted}}}
request = function()
  local b = math.floor(n / {block})
  n = n + 1
  return wrk.format("GET", paths[(b + math.floor(b / #paths)) % #paths + 1])
end
"""


class Blocks:
    """The worker's side: ``see(path)`` for every request, before the app runs; it records
    only between ``take(start=True)`` and ``take()`` (the load in blocks, not the loads
    that mix paths at every request)."""

    def __init__(self) -> None:
        self.on = False
        self.reset()

    def reset(self) -> None:
        self.path = ""
        self.started = 0
        self.count = 0
        self.done: list[tuple[str, int, int]] = []

    def see(self, path: str) -> None:
        if path != self.path and self.on:
            now = time.process_time_ns()
            if self.path:
                self.done.append((self.path, now - self.started, self.count))
            self.path, self.started, self.count = path, now, 0
        self.count += 1

    def take(self, start: bool = False) -> bytes:
        """The finished blocks as JSON (the open block is dropped); recording from now on
        with ``start``, else not."""
        body = json.dumps(self.done).encode()
        self.reset()
        self.on = start
        return body


def paired_ratios(
    blocks: Sequence[tuple[str, int, int]], top: str, bottom: str, least: int = BLOCK // 2
) -> list[float]:
    """``top``'s CPU per request / ``bottom``'s, for each cycle of blocks (one block of
    every path in turn) that has both; blocks of fewer than ``least`` requests (the load's
    first and last, stray requests of a path at a block's edge) are left out."""
    whole = [(p, cpu / n) for p, cpu, n in blocks if n >= least]  # the load's blocks
    cycles = [dict(whole[i : i + len(PATHS)]) for i in range(0, len(whole), len(PATHS))]
    return [c[top] / c[bottom] for c in cycles if top in c and bottom in c]


def summary(ratios: Sequence[float]) -> tuple[float, float, float]:
    """The median and the middle half's ends."""
    own = sorted(ratios)
    if not own:
        return float("nan"), float("nan"), float("nan")
    return statistics.median(own), own[len(own) // 4], own[-1 - len(own) // 4]
