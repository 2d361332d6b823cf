"""One process on its own: the shared state's interface with nothing shared.

Used when ``SFLOW_APP_SHARED=0`` says this process is the whole service, and as the
automatic fallback when the shared state cannot be had (see ``Exporter._fall_back``).
"""

from __future__ import annotations

import time
from collections.abc import Collection, Sequence

from ._layout import (
    COUNTER_WORDS,
    DROPS,
    E_LAST_COUNTS,
    E_LAST_POOL,
    ENTRY_WORDS,
    POOL,
    RUNTIME_WORDS,
)


class LocalState:
    """The same interface for one process on its own (no shared file).

    ``sub_agent_id``: None when this process is the whole service (``SFLOW_APP_SHARED=0``);
    for the automatic fallback, a sub-agent of its own, so its stream (counters from zero,
    its own uptime and sequence numbers) is never mixed with the service's.
    """

    sender = True
    slot: int | None = 0
    path = None

    def __init__(self, sub_agent_id: int | None = None) -> None:
        self.sub_agent_id = sub_agent_id
        self._epoch = time.monotonic_ns()
        self._seq = 0
        self._sources: list[tuple[str, str, int]] = []
        self._table: list[list[int]] = []
        self._values: dict[int, list[int]] = {}
        self._runtime = [0] * RUNTIME_WORDS

    def claim_slot(self) -> bool:
        return True

    def publish(
        self, index: int, values: Sequence[int], pool: int, drops: int, gauges: Collection[int] = ()
    ) -> None:
        row = [*values, *([0] * (COUNTER_WORDS - len(values)))]
        row[POOL], row[DROPS] = pool, drops
        self._values[index] = row

    def totals(self, index: int, gauges: Collection[int] = ()) -> list[int]:
        return list(self._values.get(index, [0] * COUNTER_WORDS))

    def source_index(self, kind: str, name: str, ds_index: int) -> int | None:
        for i, entry in enumerate(self._sources):
            if entry[:2] == (kind, name):
                return i
        self._sources.append((kind, name, ds_index))
        self._table.append([0] * ENTRY_WORDS)
        return len(self._sources) - 1

    def entries(self) -> list[tuple[int, str, str, int]]:
        return [(i, k, n, d) for i, (k, n, d) in enumerate(self._sources)]

    def next_datagram_seq(self) -> int:
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        return self._seq

    def next_seq(self, index: int, word: int) -> int:
        row = self._table[index]
        row[word] = (row[word] + 1) & 0xFFFFFFFF
        return row[word]

    def add_pool(self, index: int, step: int) -> int:
        row = self._table[index]
        row[E_LAST_POOL] += step
        return row[E_LAST_POOL]

    def counts_changed(self, index: int, digest: int) -> bool:
        row = self._table[index]
        changed = row[E_LAST_COUNTS] != digest
        row[E_LAST_COUNTS] = digest
        return changed

    def publish_runtime(self, values: Sequence[int]) -> None:
        self._runtime = list(values)

    def runtime_totals(self) -> list[int]:
        return [*self._runtime, 1]

    def uptime_ms(self) -> int:
        return ((time.monotonic_ns() - self._epoch) // 1_000_000) & 0xFFFFFFFF

    def try_become_sender(self) -> bool:
        return True

    def still_sender(self) -> bool:
        return True

    def stop_listening(self) -> None:
        pass  # nothing forwards to a process that shares nothing

    def receive(self, limit: int = 0) -> list[tuple[int, bytes]]:
        return []

    def slots_used(self) -> int:
        return 1

    def close(self) -> None:
        pass
