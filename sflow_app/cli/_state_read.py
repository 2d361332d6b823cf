"""Reading one instance's state file without touching it (``sflow-app status``).

Strictly read-only: the file is opened ``O_RDONLY`` and mapped ``PROT_READ``; whether a
worker slot or the sender's generation is held is asked with ``F_GETLK``, which takes no
lock (a worker never waits for us, and we never hold a lock that closing a descriptor
would have to release). Words are read while the service writes them: each is read
whole (aligned 8-byte words), so a total can be a tick behind, never torn.

Another user's file (root reads every user's) is read in a forked child: its owner can
truncate it while it is mapped, and touching a page past the end of a file is SIGBUS,
which would kill the command. The child dies instead; the file is skipped, with a note.
"""

from __future__ import annotations

import fcntl
import json
import mmap
import os
import select
import signal
import stat
import struct
import time
from collections.abc import Callable
from typing import Any

from .. import _layout as L
from .. import _sidecar, _statedir
from .._source import SOURCE_KINDS, gauge_positions

# struct flock: l_type, l_whence, l_start, l_len, l_pid (padded: the kernel's is larger
# than the packed fields on 64-bit systems; extra bytes are ignored).
FLOCK = struct.Struct("@hhqqi")
FLOCK_SIZE = 64
ORDER = (  # a service's keys in `status --json`, in the order
    "name",
    "uid",
    "instance",
    "running",
    "workers_alive",
    "workers_seen",
    "sender_pid",
    "datagrams",
    "samples",
    "drops",
    "send_errors",
    "data_sources",
)


def holder(fd: int, at: int) -> int | None:
    """The pid of a process holding an exclusive record lock on byte ``at``, or None.

    ``F_GETLK`` with a read lock: it conflicts with (and so reports) a write lock, and
    only asks -- nothing is locked.
    """
    query = FLOCK.pack(fcntl.F_RDLCK, os.SEEK_SET, at, 1, 0).ljust(FLOCK_SIZE, b"\0")
    try:
        answer = fcntl.fcntl(fd, fcntl.F_GETLK, query)
    except OSError:
        return None
    kind, _, _, _, pid = FLOCK.unpack(answer[: FLOCK.size])
    return None if kind == fcntl.F_UNLCK else int(pid)


def instance_of(name: str) -> tuple[str, int, int] | None:
    """(key, root pid, root start) from ``v<layout>-<key>-<pid>-<start>.state``."""
    if not name.startswith(f"v{L.LAYOUT}-") or not name.endswith(".state"):
        return None
    parts = name[: -len(".state")].split("-")
    if len(parts) != 4 or not parts[2].isdigit() or not parts[3].isdigit():
        return None
    return parts[1], int(parts[2]), int(parts[3])


def read_instance(
    dir_fd: int, name: str, uid: int, notes: list[str] | None = None
) -> dict[str, Any] | None:
    """What ``status`` shows of one state file, or None if it is not one we can read."""
    found = instance_of(name)
    if found is None:
        return None
    key, root, started = found
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
    try:
        fd = os.open(name, flags, dir_fd=dir_fd)
    except FileNotFoundError:  # the service cleaned it up meanwhile
        return None
    except OSError as exc:
        # Else the service would vanish from the list with no word ("no service found").
        if notes is not None:
            why = "permission denied" if isinstance(exc, PermissionError) else exc.strerror
            notes.append(f"skipped {name}: {why}")
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != uid or st.st_size < L.file_size(0):
            return None
        if uid == os.geteuid():
            report = _mapped(fd, st.st_size)
        else:  # its owner may truncate it under the mapping (SIGBUS): not in this process
            report, why = apart(lambda: _mapped(fd, st.st_size))
            if why and notes is not None:
                notes.append(f"skipped {name}: {why}")
    finally:
        os.close(fd)
    if report is None:
        return None
    base = name[: -len(".state")]
    running = _statedir.alive(root, started)
    report.update(
        uid=uid,
        instance={"root_pid": root, "root_start": started, "key": key, "file": name},
        running=running,
    )
    _add_sidecars(report, dir_fd, base, running)
    return {key: report[key] for key in ORDER}


def _mapped(fd: int, size: int) -> dict[str, Any] | None:
    with mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ) as m:
        words = memoryview(m).cast("Q")
        try:
            if words[L.H_MAGIC] != L.MAGIC or words[L.H_LAYOUT] != L.LAYOUT:
                return None
            return _report(fd, words, size)
        finally:
            words.release()


CHILD_TIMEOUT = 5.0  # seconds: reading one file takes milliseconds


def apart(read: Callable[[], dict[str, Any] | None]) -> tuple[dict[str, Any] | None, str]:
    """``read()`` run in a forked child, its result sent back as JSON: (result, "") or
    (None, why it is missing) when the child died (a signal: SIGBUS), failed or hung."""
    out, into = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: nothing but the read, then _exit (no atexit, no flush)
        code = 1
        try:
            os.close(out)
            data = json.dumps(read()).encode()
            while data:
                data = data[os.write(into, data) :]
            code = 0
        finally:
            os._exit(code)
    os.close(into)
    chunks = []
    deadline = time.monotonic() + CHILD_TIMEOUT
    hung = True
    try:
        while (left := deadline - time.monotonic()) > 0 and select.select([out], [], [], left)[0]:
            chunk = os.read(out, 65536)
            if not chunk:
                hung = False
                break
            chunks.append(chunk)
        if hung:
            os.kill(pid, signal.SIGKILL)
    finally:
        os.close(out)
    status = os.waitpid(pid, 0)[1]
    if hung:
        return None, f"the reader took over {CHILD_TIMEOUT:g} s"
    if os.WIFSIGNALED(status):
        sig = signal.Signals(os.WTERMSIG(status)).name
        return None, f"the reader died of {sig} (the file changed under it)"
    if os.waitstatus_to_exitcode(status) != 0:
        return None, "could not be read"
    try:
        result = json.loads(b"".join(chunks))
    except ValueError:
        return None, "could not be read"
    return (result if isinstance(result, dict) else None), ""


def _report(fd: int, words: memoryview, size: int) -> dict[str, Any]:
    slots = min(words[L.H_SLOTS], (size // 8 - L.SLOTS_AT) // L.SLOT_WORDS)
    used = [s for s in range(slots) if words[L.SLOTS_AT + s * L.SLOT_WORDS]]
    live = [s for s in used if holder(fd, L.LOCK_SLOT0 + s) is not None]
    gen = words[L.H_GEN]
    sender = holder(fd, L.LOCK_GEN0 + gen % L.GENS) if gen else None
    sources = []
    samples = 0
    for index in range(L.MAX_SOURCES):
        at = L.TABLE_AT + index * L.ENTRY_WORDS
        if not words[at + L.E_KEY]:
            continue
        kind = L.KIND_NAMES.get(words[at + L.E_KIND], "app")
        raw = b"".join(words[at + L.E_NAME + j].to_bytes(8, "little") for j in range(4))
        totals = _totals(words, used, live, index, gauge_positions(kind))
        names = SOURCE_KINDS[kind].counter_names
        samples += words[at + L.E_FLOW_SEQ] + words[at + L.E_COUNTER_SEQ]
        sources.append(
            {
                "index": index,
                "kind": kind,
                "name": raw.rstrip(b"\0").decode(errors="replace"),
                "ds_index": words[at + L.E_DS_INDEX],
                "sampling_rate": None,
                "sample_pool": totals[L.POOL],
                "drops": totals[L.DROPS],
                "flow_samples": words[at + L.E_FLOW_SEQ],
                "counter_samples": words[at + L.E_COUNTER_SEQ],
                "counters": dict(zip(names, totals, strict=False)),
            }
        )
    return {
        "workers_alive": len(live),
        "workers_seen": len(used),
        "sender_pid": sender,
        "datagrams": words[L.H_DATAGRAM_SEQ],
        "samples": samples,
        "data_sources": sources,
    }


def _totals(
    words: memoryview, used: list[int], live: list[int], index: int, gauges: tuple[int, ...]
) -> list[int]:
    """Counters, pool and drops summed over the slots; gauges over live workers only."""
    out = [0] * L.COUNTER_WORDS
    for slot in used:
        at = L.SLOTS_AT + slot * L.SLOT_WORDS + L.SLOT_HEAD + index * L.COUNTER_WORDS
        for i in range(L.COUNTER_WORDS):
            if i in gauges and slot not in live:
                continue
            out[i] += words[at + i]
    return out


def _add_sidecars(report: dict[str, Any], dir_fd: int, base: str, running: bool) -> None:
    """Name, sampling rates, send errors and drop causes from the sidecars, if any."""
    sender = _sidecar.read(dir_fd, _sidecar.sender_name(base)) or {}
    name = sender.get("name")
    report["name"] = name if isinstance(name, str) else None
    rates = sender.get("sampling")
    rates = rates if isinstance(rates, dict) else {}
    for source in report["data_sources"]:
        rate = rates.get(str(source.pop("index")))
        source["sampling_rate"] = rate if isinstance(rate, int) else None
    errors = sender.get("send_errors")
    report["send_errors"] = {
        str(k): v for k, v in (errors.items() if isinstance(errors, dict) else ()) if _count(v)
    }
    causes = {cause: 0 for cause in _sidecar.DROP_CAUSES}
    try:
        names = os.listdir(dir_fd)
    except OSError:
        names = []
    for file in names:
        if file.startswith(base + "-slot") and file.endswith(".json"):
            drops = (_sidecar.read(dir_fd, file) or {}).get("drops")
            for cause, n in drops.items() if isinstance(drops, dict) else ():
                if cause in causes and _count(n):
                    causes[cause] += n
    bad: Any = sender.get("bad_forwards")
    causes["bad_forward"] = bad if _count(bad) else 0
    # Everything else a source counted as dropped (too large, no room in the table, held
    # while the service had no identity): the per-source drops minus the causes above.
    total = sum(s["drops"] for s in report["data_sources"])
    causes["other"] = max(0, total - causes["queue"] - causes["backlog"])
    report["drops"] = causes
    if not running:
        report["sender_pid"] = None
        report["workers_alive"] = 0


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
