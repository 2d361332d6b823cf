"""State shared by every worker process of one service on one host (pre-fork servers).

One memory-mapped file per service (in ``SFLOW_APP_STATE_DIR``, default ``/dev/shm``)
holds what sFlow needs to see a single agent however many processes serve:

- a header: the service's epoch (uptime) and the datagram sequence number;
- a source table: per data source its kind, name, ds_index and the flow- and
  counter-sample sequence numbers;
- worker slots: each live worker owns one (an ``fcntl`` record lock, released by the
  kernel when the process dies, even by ``kill -9``) and publishes its cumulative
  counters there. A slot is never cleared: a new worker that takes a dead worker's slot
  continues counting from its values, so the sums stay monotonic and the file stays
  bounded by the number of workers alive at once.

One process at a time is the sender (another record lock). The others forward their
encoded samples to it over a unix datagram socket. Request threads never touch any of
this: only the exporter thread does.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import mmap
import os
import socket
import struct
import time
from collections.abc import Collection, Sequence

log = logging.getLogger("sflow_app")

MAGIC = 0x7346_6C6F_7741_7070  # "sFlowApp"
LAYOUT = 1
HEADER_WORDS = 16
MAX_SOURCES = 16
ENTRY_WORDS = 16
MAX_SLOTS = 256
COUNTER_WORDS = 40  # per source in a slot: counters, then pool and drops
POOL = COUNTER_WORDS - 2
DROPS = COUNTER_WORDS - 1
SLOT_WORDS = 2 + MAX_SOURCES * COUNTER_WORDS
TABLE_AT = HEADER_WORDS
SLOTS_AT = TABLE_AT + MAX_SOURCES * ENTRY_WORDS
TOTAL_WORDS = SLOTS_AT + MAX_SLOTS * SLOT_WORDS

# Header words.
H_MAGIC, H_LAYOUT, H_EPOCH_NS, H_DATAGRAM_SEQ, H_SENDER_PID = range(5)
# Source-table entry words (name: 4 words = 32 bytes).
E_KEY, E_KIND, E_DS_INDEX, E_FLOW_SEQ, E_COUNTER_SEQ, E_LAST_POOL, E_NAME = 0, 1, 2, 3, 4, 5, 6
KINDS = {"http": 1, "memcache": 2, "app": 3}
KIND_NAMES = {v: k for k, v in KINDS.items()}

# Record locks live beyond the data (locking past EOF is allowed).
LOCK_BASE = 1 << 40
LOCK_SENDER = LOCK_BASE
LOCK_TABLE = LOCK_BASE + 1
LOCK_SLOT0 = LOCK_BASE + 16

# A forwarded message carries many samples, each as (source-table index, length) then the
# encoded flow sample: a unix datagram socket queues only net.unix.max_dgram_qlen messages
# (10 by default) whatever its buffer size, so one message per sample would cap what the
# workers can hand over at about 10 samples per sender tick.
MSG = struct.Struct(">II")
FORWARD_MAX = 60000  # bytes per forwarded message (a unix datagram takes up to ~200 KB)
SUN_PATH_MAX = 100


def state_dir(configured: str | None = None) -> str:
    """The directory for state files: the setting (SFLOW_APP_STATE_DIR), else the default."""
    if configured:
        return configured
    return "/dev/shm" if os.path.isdir("/dev/shm") else "/tmp"


def service_key(*parts: object) -> str:
    text = "\0".join(str(p) for p in parts)
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def _key_word(kind: str, name: str) -> int:
    digest = hashlib.blake2b(f"{kind}\0{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") or 1


class SharedState:
    """The mapped file, this process's slot, and the sender role."""

    def __init__(self, path: str, fd: int, mapping: mmap.mmap) -> None:
        self.path = path
        self._fd = fd
        self._map = mapping
        self.words = memoryview(mapping).cast("Q")
        self.slot: int | None = None
        self._bases: dict[int, list[int]] = {}
        self.sender = False
        self._sock: socket.socket | None = None
        self.sock_addr = self._socket_address()

    # -- opening ----------------------------------------------------------------------
    @classmethod
    def open(cls, directory: str, key: str) -> SharedState:
        """Open or create the service's file. Raises OSError with a clear message."""
        path = os.path.join(directory, f"sflow-app-{os.getuid()}-{key}.state")
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        fd = os.open(path, flags, 0o600)
        try:
            st = os.fstat(fd)
            if st.st_uid != os.getuid():
                raise PermissionError(f"{path} belongs to uid {st.st_uid}, not to us")
            size = TOTAL_WORDS * 8
            fcntl.lockf(fd, fcntl.LOCK_EX, 1, LOCK_TABLE)
            try:
                if st.st_size < size:
                    os.ftruncate(fd, size)
                mapping = mmap.mmap(fd, size)
                words = memoryview(mapping).cast("Q")
                if words[H_MAGIC] != MAGIC or words[H_LAYOUT] != LAYOUT:
                    mapping[:] = bytes(size)  # the layout changed or a fresh file: start over
                    words[H_EPOCH_NS] = time.time_ns()
                    words[H_LAYOUT] = LAYOUT
                    words[H_MAGIC] = MAGIC
                words.release()
            finally:
                fcntl.lockf(fd, fcntl.LOCK_UN, 1, LOCK_TABLE)
        except BaseException:
            os.close(fd)
            raise
        return cls(path, fd, mapping)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
            if self.sender and isinstance(self.sock_addr, str):
                with contextlib.suppress(OSError):
                    os.unlink(self.sock_addr)
        self.sender = False
        self.words.release()
        self._map.close()
        os.close(self._fd)  # releases this process's record locks

    def abandon(self) -> None:
        """In a forked child: let go of the parent's mapping and descriptors only."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self.sender = False
        self.words.release()
        self._map.close()
        os.close(self._fd)

    # -- slots ------------------------------------------------------------------------
    def claim_slot(self) -> bool:
        for i in range(MAX_SLOTS):
            try:
                fcntl.lockf(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, LOCK_SLOT0 + i)
            except OSError:
                continue
            self.slot = i
            self.words[SLOTS_AT + i * SLOT_WORDS] = os.getpid()
            return True
        return False

    def _counter_at(self, slot: int, index: int) -> int:
        return SLOTS_AT + slot * SLOT_WORDS + 2 + index * COUNTER_WORDS

    def publish(
        self, index: int, values: Sequence[int], pool: int, drops: int, gauges: Collection[int] = ()
    ) -> None:
        """Write this worker's cumulative counts (on top of the slot's inherited ones).

        ``gauges``: positions holding a current value (open connections), written as is.
        """
        if self.slot is None:
            return
        at = self._counter_at(self.slot, index)
        words = self.words
        base = self._bases.get(index)
        if base is None:  # first publish for this source: keep what a dead owner left
            base = self._bases[index] = list(words[at : at + COUNTER_WORDS])
            for i in gauges:
                base[i] = 0
        for i, v in enumerate(values):
            words[at + i] = base[i] + v
        words[at + POOL] = base[POOL] + pool
        words[at + DROPS] = base[DROPS] + drops

    def totals(self, index: int, gauges: Collection[int] = ()) -> list[int]:
        """Counters, pool and drops summed over every slot, live or dead; ``gauges``
        positions summed over live workers only (a dead one holds no connection)."""
        out = [0] * COUNTER_WORDS
        words = self.words
        for slot in range(MAX_SLOTS):
            if words[SLOTS_AT + slot * SLOT_WORDS] == 0:
                continue  # never used
            at = self._counter_at(slot, index)
            row = words[at : at + COUNTER_WORDS].tolist()
            if gauges and not self._alive(slot):
                for i in gauges:
                    row[i] = 0
            for i, v in enumerate(row):
                out[i] += v
        return out

    def _alive(self, slot: int) -> bool:
        """Whether a live process owns ``slot`` (its record lock is held)."""
        if slot == self.slot:
            return True
        try:
            fcntl.lockf(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, LOCK_SLOT0 + slot)
        except OSError:
            return True
        fcntl.lockf(self._fd, fcntl.LOCK_UN, 1, LOCK_SLOT0 + slot)
        return False

    def slots_used(self) -> int:
        return sum(1 for s in range(MAX_SLOTS) if self.words[SLOTS_AT + s * SLOT_WORDS])

    # -- source table -----------------------------------------------------------------
    def _entry(self, index: int) -> int:
        return TABLE_AT + index * ENTRY_WORDS

    def source_index(self, kind: str, name: str, ds_index: int) -> int | None:
        """Find or register a data source; None when the table is full."""
        key = _key_word(kind, name)
        words = self.words
        for i in range(MAX_SOURCES):
            if words[self._entry(i) + E_KEY] == key:
                return i
        fcntl.lockf(self._fd, fcntl.LOCK_EX, 1, LOCK_TABLE)
        try:
            for i in range(MAX_SOURCES):
                at = self._entry(i)
                if words[at + E_KEY] == key:
                    return i
                if words[at + E_KEY] == 0:
                    raw = name.encode()[:32].ljust(32, b"\0")
                    for j in range(4):
                        words[at + E_NAME + j] = int.from_bytes(raw[j * 8 : j * 8 + 8], "little")
                    words[at + E_KIND] = KINDS[kind]
                    words[at + E_DS_INDEX] = ds_index
                    words[at + E_KEY] = key  # last: readers see a complete entry
                    return i
        finally:
            fcntl.lockf(self._fd, fcntl.LOCK_UN, 1, LOCK_TABLE)
        return None

    def entries(self) -> list[tuple[int, str, str, int]]:
        """(index, kind, name, ds_index) of every registered source."""
        out = []
        words = self.words
        for i in range(MAX_SOURCES):
            at = self._entry(i)
            if words[at + E_KEY] == 0:
                continue
            raw = b"".join(words[at + E_NAME + j].to_bytes(8, "little") for j in range(4))
            kind = KIND_NAMES.get(words[at + E_KIND], "app")
            name = raw.rstrip(b"\0").decode(errors="replace")
            out.append((i, kind, name, words[at + E_DS_INDEX]))
        return out

    # -- sequence numbers (sender only) ------------------------------------------------
    def next_datagram_seq(self) -> int:
        self.words[H_DATAGRAM_SEQ] = seq = (self.words[H_DATAGRAM_SEQ] + 1) & 0xFFFFFFFF
        return seq

    def next_seq(self, index: int, word: int) -> int:
        at = self._entry(index) + word
        self.words[at] = seq = (self.words[at] + 1) & 0xFFFFFFFF
        return seq

    def pool_for_sample(self, index: int, pool: int) -> int:
        """Service-wide sample_pool, never going backwards between samples."""
        at = self._entry(index) + E_LAST_POOL
        value = max(self.words[at], pool)
        self.words[at] = value
        return value

    def uptime_ms(self) -> int:
        return ((time.time_ns() - self.words[H_EPOCH_NS]) // 1_000_000) & 0xFFFFFFFF

    # -- the sender role and its socket ----------------------------------------------
    def _socket_address(self) -> str | bytes:
        path = self.path[: -len(".state")] + ".sock"
        if len(path.encode()) <= SUN_PATH_MAX:
            return path
        return b"\0" + path.encode()[-SUN_PATH_MAX:]  # Linux abstract namespace

    def try_become_sender(self) -> bool:
        if self.sender:
            return True
        try:
            fcntl.lockf(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, LOCK_SENDER)
        except OSError:
            return False
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            if isinstance(self.sock_addr, str):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.sock_addr)  # left by a sender that died
            sock.bind(self.sock_addr)
            if isinstance(self.sock_addr, str):
                os.chmod(self.sock_addr, 0o600)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            sock.setblocking(False)
        except OSError:
            sock.close()
            fcntl.lockf(self._fd, fcntl.LOCK_UN, 1, LOCK_SENDER)
            raise
        self._sock = sock
        self.sender = True
        self.words[H_SENDER_PID] = os.getpid()
        return True

    def receive(self, limit: int = 20000) -> list[tuple[int, bytes]]:
        """Samples forwarded by the other workers (sender only)."""
        out: list[tuple[int, bytes]] = []
        sock = self._sock
        if sock is None:
            return out
        for _ in range(limit):
            try:
                data = sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                break
            at = 0
            while at + MSG.size <= len(data):
                index, length = MSG.unpack_from(data, at)
                at += MSG.size
                if not length or at + length > len(data):
                    break
                out.append((index, data[at : at + length]))
                at += length
        return out

    def stop_listening(self) -> None:
        """The sender at exit: forwards fail from now on (the workers keep them for the
        next sender), so one more ``receive()`` gets everything sent to this one."""
        if self.sender and isinstance(self.sock_addr, str):
            with contextlib.suppress(OSError):
                os.unlink(self.sock_addr)

    def sender_leaving(self) -> bool:
        """No sender is taking forwards: its socket is gone (it stopped listening at exit,
        or there has been none since)."""
        return isinstance(self.sock_addr, str) and not os.path.exists(self.sock_addr)

    def forward(self, sock: socket.socket, message: bytes) -> bool:
        """Hand encoded samples (``MSG`` framed) to the sender; False when it cannot now."""
        try:
            sock.sendto(message, self.sock_addr)
        except OSError:
            return False
        return True


class LocalState:
    """The same interface for one process on its own (no shared file, or it is refused)."""

    sender = True
    slot: int | None = 0

    def __init__(self) -> None:
        self._epoch = time.monotonic_ns()
        self._seq = 0
        self._sources: list[tuple[str, str, int]] = []
        self._table: list[list[int]] = []
        self._values: dict[int, list[int]] = {}

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

    def pool_for_sample(self, index: int, pool: int) -> int:
        row = self._table[index]
        row[E_LAST_POOL] = max(row[E_LAST_POOL], pool)
        return row[E_LAST_POOL]

    def uptime_ms(self) -> int:
        return ((time.monotonic_ns() - self._epoch) // 1_000_000) & 0xFFFFFFFF

    def try_become_sender(self) -> bool:
        return True

    def receive(self, limit: int = 0) -> list[tuple[int, bytes]]:
        return []

    def slots_used(self) -> int:
        return 1

    def close(self) -> None:
        pass
