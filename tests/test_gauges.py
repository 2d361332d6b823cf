"""Gauges in the shared state: summed over live workers only."""

from __future__ import annotations

import os
import signal
import time

from sflow_app._shared import SharedState


def test_a_dead_workers_gauge_stops_counting(state_dir: str) -> None:
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # a worker holding 5 connections, then killed
        try:
            state = SharedState.open(state_dir, "gauges")
            state.claim_slot()
            index = state.source_index("memcache", "", 70000)
            assert index is not None
            state.publish(index, [1, 5], pool=3, drops=0, gauges=[1])
            os.write(ready_w, b"x")
            time.sleep(60)
        finally:
            os._exit(0)
    os.read(ready_r, 1)
    state = SharedState.open(state_dir, "gauges")
    try:
        assert state.claim_slot()
        index = state.source_index("memcache", "", 70000)
        assert index is not None
        state.publish(index, [2, 2], pool=4, drops=0, gauges=[1])
        total = state.totals(index, gauges=[1])
        assert (total[0], total[1]) == (3, 7)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        total = state.totals(index, gauges=[1])
        # The cumulative counter keeps the dead worker's count; the gauge drops it.
        assert (total[0], total[1]) == (3, 2)
        # A new worker taking the dead slot inherits its counts, not its gauge.
        heir = SharedState.open(state_dir, "gauges")
        heir_pid = os.fork()
        if heir_pid == 0:
            try:
                heir.slot = None
                heir.claim_slot()
                heir.publish(index, [0, 1], pool=0, drops=0, gauges=[1])
                os.write(ready_w, b"y")
                time.sleep(60)
            finally:
                os._exit(0)
        os.read(ready_r, 1)
        total = state.totals(index, gauges=[1])
        assert (total[0], total[1]) == (3, 3)
        os.kill(heir_pid, signal.SIGKILL)
        os.waitpid(heir_pid, 0)
    finally:
        state.close()
