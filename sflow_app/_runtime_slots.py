"""The runtime words of the worker slots: each process publishes its own figures, the
sender sums them into one service (app_resources, app_workers).

Counters (CPU time, requests delayed or dropped) are kept in a dead worker's slot and
continued by the next owner, as the data-source counters are, so the sums never go
backwards when workers are recycled. Gauges (memory, descriptors, connections, busy
workers) count live workers only. What the server's configuration says (workers, the
most connections served at once) is the same in every worker: the largest live value.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ._layout import R_CONFIG, R_COUNTERS, R_GAUGES, RUNTIME_WORDS, SLOT_WORDS, SLOTS_AT


class RuntimeSlots:
    """Mixed into SharedState: needs ``words``, ``slot``, ``_slots``, ``_remap`` and
    ``_alive``."""

    words: memoryview
    slot: int | None
    _slots: int
    _remap: Any
    _alive: Any

    def __init__(self) -> None:
        self._runtime_base: list[int] | None = None

    def _runtime_at(self, slot: int) -> int:
        return SLOTS_AT + slot * SLOT_WORDS + 2

    def publish_runtime(self, values: Sequence[int]) -> None:
        """This process's figures: counters on top of what a dead owner left."""
        if self.slot is None:
            return
        at = self._runtime_at(self.slot)
        words = self.words
        base = self._runtime_base
        if base is None:
            base = self._runtime_base = [0] * RUNTIME_WORDS
            for i in R_COUNTERS:
                base[i] = words[at + i]
        for i, v in enumerate(values):
            words[at + i] = base[i] + v if i in R_COUNTERS else v

    def runtime_totals(self) -> list[int]:
        """Counters summed over every slot ever used, gauges over live workers, the
        configured values the largest a live worker gives; and the live workers as the
        last item."""
        self._remap()
        out = [0] * RUNTIME_WORDS
        live = 0
        words = self.words
        for slot in range(self._slots):
            if words[SLOTS_AT + slot * SLOT_WORDS] == 0:
                continue
            at = self._runtime_at(slot)
            for i in R_COUNTERS:
                out[i] += words[at + i]
            if not self._alive(slot):
                continue
            live += 1
            for i in R_GAUGES:
                out[i] += words[at + i]
            for i in R_CONFIG:
                out[i] = max(out[i], words[at + i])
        return [*out, live]
