"""Small JSON files beside a state file, for ``sflow-app status`` (never read by the agent).

Some of what an operator asks about lives only in a process's memory, not in the mapped
file: the service's name, each source's sampling rate, send errors per collector, and
why samples were dropped. So, from the exporter thread (never the request path), at most
once a second and only when something changed:

- the sender writes ``<base>.json``: name, sampling rates (by source-table index), send
  errors per collector, malformed forwards;
- a worker that dropped samples writes ``<base>-slot<N>.json`` for its slot: drops by
  cause. Like the slot's counters, a new owner continues from what the previous one left,
  and a new sender continues the previous sender's counts: totals never go backwards.

Each is written atomically (a temporary file in the private directory, then a rename) and
is removed together with its state file. Any failure is ignored: this is for display.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Mapping
from typing import Any

log = logging.getLogger("sflow_app")

WRITE_EVERY = 1.0  # s
READ_MAX = 65536  # bytes: a sidecar is far smaller; anything bigger is not one
DROP_CAUSES = {"queue": "queue_drops", "backlog": "backlog_drops"}  # name -> stats key


def sender_name(base: str) -> str:
    return f"{base}.json"


def slot_name(base: str, slot: int) -> str:
    return f"{base}-slot{slot}.json"


def files_of(base: str, names: list[str]) -> list[str]:
    """The sidecars (and temporary files) of the state file ``<base>.state``."""
    return [
        n
        for n in names
        if (n.startswith(base + ".") and n.endswith((".json", ".tmp")))
        or (n.startswith(base + "-slot") and n.endswith((".json", ".tmp")))
    ]


def read(dir_fd: int, name: str) -> dict[str, Any] | None:
    """A sidecar's content, or None (missing, unreadable, not ours to trust as JSON)."""
    try:
        fd = os.open(
            name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=dir_fd
        )
    except OSError:
        return None
    try:
        data = os.read(fd, READ_MAX + 1)
    except OSError:
        return None
    finally:
        os.close(fd)
    if len(data) > READ_MAX:
        return None
    try:
        value = json.loads(data)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def write(dir_fd: int, name: str, text: str) -> None:
    """Replace ``name`` atomically (readers see the old or the new file, never half)."""
    tmp = f"{name}.{os.getpid()}.tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(tmp, flags, 0o600, dir_fd=dir_fd)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)
    try:
        os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise


def _ints(value: Any) -> dict[str, int]:
    if not isinstance(value, dict):
        return {}
    return {str(k): v for k, v in value.items() if isinstance(v, int) and v >= 0}


def _causes(stats: Mapping[str, Any]) -> dict[str, int]:
    return {cause: int(stats.get(key, 0)) for cause, key in DROP_CAUSES.items()}


def _carry(
    base: Mapping[str, int], now: Mapping[str, int], at: Mapping[str, int]
) -> dict[str, int]:
    """What the file held when we took over, plus what we counted since."""
    out = dict(base)
    for key, value in now.items():
        out[key] = out.get(key, 0) + max(0, value - at.get(key, 0))
    return out


class Sidecars:
    """One process's sidecars for one open state file (see the module doc)."""

    def __init__(
        self, base: str, dir_fd: int, stats: Mapping[str, Any], errors: Mapping[str, int]
    ) -> None:
        """``stats`` and ``errors``: this process's counts an earlier opening of the same
        file already published (empty the first time)."""
        self.base = base
        self.dir_fd = dir_fd
        self._next = 0.0
        self._written: dict[str, str] = {}
        self._gen: int | None = None  # the sender generation its base was read at
        self._sender_base: dict[str, int] = {}
        # This process's own counts already in a sender file (or counted before opening).
        self._sender_at: dict[str, int] = {f"collector {c}": n for c, n in errors.items()}
        self._slot: int | None = None
        self._slot_base: dict[str, int] = {}
        self._slot_at = _causes(stats)

    def due(self, force: bool = False) -> bool:
        """Whether ``update`` would look now (the exporter gathers its values only then)."""
        return force or time.monotonic() >= self._next

    def update(
        self,
        *,
        sender: int | None,
        slot: int | None,
        name: str,
        rates: Mapping[int, int],
        errors: Mapping[str, int],
        bad_forwards: int,
        stats: Mapping[str, Any],
        force: bool = False,
    ) -> None:
        """``sender``: this process's generation if it sends; ``errors``: its send errors
        per collector; ``stats``: its agent's counters (drop causes among them)."""
        if not self.due(force):
            return
        self._next = time.monotonic() + WRITE_EVERY
        try:
            if sender is not None:
                self._sender(sender, name, rates, errors, bad_forwards)
            if slot is not None:
                self._slot_file(slot, _causes(stats))
        except OSError:
            log.debug("sflow_app: could not write a status file", exc_info=True)

    def _sender(
        self,
        gen: int,
        name: str,
        rates: Mapping[int, int],
        errors: Mapping[str, int],
        bad_forwards: int,
    ) -> None:
        now = {**{f"collector {c}": n for c, n in errors.items()}, "bad_forwards": bad_forwards}
        file = sender_name(self.base)
        if gen != self._gen:  # a new sender: continue from the previous one's counts
            self._gen = gen
            self._written.pop(file, None)  # another sender may have written it since
            old = read(self.dir_fd, file) or {}
            self._sender_base = {
                **{f"collector {c}": n for c, n in _ints(old.get("send_errors")).items()},
                "bad_forwards": _ints(old).get("bad_forwards", 0),
            }
        counts = _carry(self._sender_base, now, self._sender_at)
        content = {
            "name": name,
            "pid": os.getpid(),
            "sampling": {str(i): r for i, r in sorted(rates.items())},
            "send_errors": {
                k[len("collector ") :]: v for k, v in counts.items() if k.startswith("collector ")
            },
            "bad_forwards": counts["bad_forwards"],
        }
        if self._put(file, content):
            # Its own counts are in the file now: a later sender continues from them.
            self._sender_base, self._sender_at = counts, now

    def _slot_file(self, slot: int, causes: dict[str, int]) -> None:
        file = slot_name(self.base, slot)
        if slot != self._slot:  # a slot taken: continue from its previous owner's counts
            self._slot = slot
            self._slot_base = _ints((read(self.dir_fd, file) or {}).get("drops"))
        counts = _carry(self._slot_base, causes, self._slot_at)
        if not any(counts.values()):
            return  # nothing dropped here: no file
        self._put(file, {"pid": os.getpid(), "drops": counts})

    def _put(self, file: str, content: dict[str, Any]) -> bool:
        text = json.dumps(content, sort_keys=True)
        if self._written.get(file) == text:
            return False
        write(self.dir_fd, file, text)
        self._written[file] = text
        return True
