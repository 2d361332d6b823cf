"""What the middleware benchmarks share: a collector nobody reads, an hsflowd.auto whose
sampling rate each measured variant sets, and interleaved best-of timing."""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


class Sink:
    """A loopback collector (bound, never read) and the config file pointing at it."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.config = Path(tempfile.mkdtemp()) / "hsflowd.auto"
        self.write(0)
        os.environ["SFLOW_APP_CONFIG"] = str(self.config)

    def write(self, sampling: int) -> None:
        self.config.write_text(
            f"rev_start=1\nsampling={sampling}\npolling=30\n"
            f"collector=127.0.0.1 {self.sock.getsockname()[1]}\n"
            f"agentIP=127.0.0.1\nds_index=1\nrev_end=1\n"
        )

    def rate(self, sampling: int) -> Callable[[], None]:
        """A setter run before each measurement of a variant: file, then agent reload."""
        from sflow_app._agent import AGENT

        def apply() -> None:
            self.write(sampling)
            AGENT.reload()

        return apply

    def close(self) -> None:
        self.sock.close()


def best_costs(
    apps: dict[str, T],
    seconds: Callable[[T], float],
    rounds: int,
    repeats: int,
    before: dict[str, Callable[[], None]],
) -> dict[str, float]:
    """Microseconds per request, best of ``repeats`` interleaved runs (fair under load)."""
    best = dict.fromkeys(apps, float("inf"))
    for _ in range(repeats):
        for name, wrapped in apps.items():
            before.get(name, lambda: None)()
            best[name] = min(best[name], seconds(wrapped))
    return {name: b / rounds * 1e6 for name, b in best.items()}


def report_flushed() -> None:
    """Flush the agent and say how much went through it."""
    from sflow_app._agent import AGENT

    source = AGENT.http_source()
    AGENT.shutdown()  # flush, so the count below is complete
    print(
        f"  ({source.sampler.sample_pool} requests through sflow, "
        f"{AGENT.stats['samples']} samples sent)"
    )
