"""When the exporter next has work, read from its state (nothing here changes it).

The exporter thread sleeps until the earliest of: the config re-check (the agent's), a
counter poll due (the sender's), a partial datagram's flush deadline, a forward to retry
(a worker whose sender was not taking samples), and wakes early when a sample is queued
or, in the sender, when another worker forwards samples to its socket. So an idle
process wakes every few seconds (the config re-check, a ``stat``: ``IDLE_CHECK_EVERY``),
not ten times a second.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING

from ._exporter import FLUSH_AFTER, TICK

if TYPE_CHECKING:
    from ._exporter import Exporter


def next_due(exporter: Exporter, passed_at: float) -> float:
    """The clock time of the exporter's next due work after its pass at ``passed_at``."""
    due = float("inf")
    if exporter._pending:
        due = min(due, exporter._since + FLUSH_AFTER)
    if exporter._backlog:
        due = min(due, passed_at + TICK)  # samples for a sender: try again soon
    state = exporter.state
    if state is not None and state.sender:
        # Polls the pass just made are due after it; an earlier one is a data source no
        # longer polled (its interval set to 0), left in the table.
        due = min([due, *(d for d in exporter._next_poll.values() if d >= passed_at)])
    return due


def listening(exporter: Exporter) -> socket.socket | None:
    """The socket other workers forward samples to, when this process is their sender."""
    state = exporter.state
    if state is None or not state.sender:
        return None
    sock = getattr(state, "listening", lambda: None)()
    return sock if isinstance(sock, socket.socket) else None
