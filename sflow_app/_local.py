"""One process on its own: the shared state's interface with nothing shared.

Used when ``SFLOW_APP_SHARED=0`` says this process is the whole service, and as the
automatic fallback when the shared state cannot be had (see ``Exporter._fall_back``).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Collection, Sequence
from typing import Protocol

from ._layout import (
    COUNTER_WORDS,
    DROPS,
    E_LAST_COUNTS,
    E_LAST_POOL,
    ENTRY_WORDS,
    POOL,
    RUNTIME_WORDS,
)


class State(Protocol):
    """What the exporter uses of a service's state: the shared file of its workers
    (``_shared.SharedState``) or this process on its own (``LocalState``)."""

    handed_back: list[tuple[int, bytes]]  # taken in as the sender, never sent: to forward

    @property
    def shared(self) -> bool:
        """A file other workers share: status files, counts kept across openings."""

    @property
    def sender(self) -> bool:
        """This process numbers and sends the service's datagrams."""

    @property
    def slot(self) -> int | None:
        """This process's worker slot."""

    @property
    def path(self) -> str | None: ...

    @property
    def bad_forwards(self) -> int:
        """Malformed messages from other workers, dropped."""

    @property
    def generation(self) -> int: ...

    def claim_slot(self) -> bool: ...

    def publish(
        self, index: int, values: Sequence[int], pool: int, drops: int, gauges: Collection[int] = ()
    ) -> None: ...

    def totals(self, index: int, gauges: Collection[int] = ()) -> list[int]: ...

    def source_index(self, kind: str, name: str, ds_index: int) -> int | None: ...

    def entries(self) -> list[tuple[int, str, str, int]]: ...

    def next_datagram_seq(self) -> int: ...

    def next_seq(self, index: int, word: int, count: int = 1) -> int: ...

    def add_pool(self, index: int, step: int) -> int: ...

    def counts_changed(self, index: int, digest: int) -> bool: ...

    def publish_runtime(self, values: Sequence[int]) -> None: ...

    def runtime_totals(self) -> list[int]: ...

    def uptime_ms(self) -> int: ...

    def try_become_sender(self) -> bool: ...

    def still_sender(self) -> bool: ...

    def stop_listening(self) -> None: ...

    def receive(self, limit: int = ...) -> list[tuple[int, bytes]]: ...

    def forward(self, sock: socket.socket, message: bytes) -> bool: ...

    def sender_leaving(self) -> bool: ...

    def touch(self) -> None: ...

    def slots_used(self) -> int: ...

    def close(self) -> None: ...

    def abandon(self) -> None: ...


class LocalState:
    """The same interface for one process on its own (no shared file).

    ``sub_agent_id``: None when this process is the whole service (``SFLOW_APP_SHARED=0``);
    for the automatic fallback, a sub-agent of its own, so its stream (counters from zero,
    its own uptime and sequence numbers) is never mixed with the service's.
    """

    shared = False
    sender = True
    slot: int | None = 0
    path: str | None = None
    generation = 0

    def __init__(self, sub_agent_id: int | None = None) -> None:
        self.sub_agent_id = sub_agent_id
        self._epoch = time.monotonic_ns()
        self._seq = 0
        self._sources: list[tuple[str, str, int]] = []
        self._table: list[list[int]] = []
        self._values: dict[int, list[int]] = {}
        self._runtime = [0] * RUNTIME_WORDS
        self.bad_forwards = 0
        self.handed_back: list[tuple[int, bytes]] = []

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

    def next_seq(self, index: int, word: int, count: int = 1) -> int:
        row = self._table[index]
        last = row[word]
        row[word] = (last + count) & 0xFFFFFFFF
        return (last + 1) & 0xFFFFFFFF

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

    def forward(self, sock: socket.socket, message: bytes) -> bool:
        return False  # it is its own sender: nothing to forward to

    def sender_leaving(self) -> bool:
        return False

    def touch(self) -> None:
        pass

    def slots_used(self) -> int:
        return 1

    def close(self) -> None:
        pass

    def abandon(self) -> None:
        pass
