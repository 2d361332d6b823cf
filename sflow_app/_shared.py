"""State shared by every worker process of one service instance on one host (pre-fork
servers).

One memory-mapped file per instance (in the user's private directory, see
``_statedir``) holds what sFlow needs to see a single agent however many processes serve:

- a header: the instance's epoch (uptime), the datagram sequence number, and the sender's
  generation and heartbeat;
- a source table: per data source its kind, name, ds_index and the flow- and
  counter-sample sequence numbers;
- worker slots: each live worker owns one (an ``fcntl`` record lock, released by the
  kernel when the process dies, even by ``kill -9``) and publishes its cumulative
  counters there. A slot is never cleared: a new worker that takes a dead worker's slot
  continues counting from its values, so the sums stay monotonic and the file stays
  bounded by the number of workers alive at once.

The file starts with room for ``INITIAL_SLOTS`` slots and grows (doubling) when more
workers are alive at once; it never shrinks, since every process maps it. Every byte is
allocated (``posix_fallocate``) before it is mapped: a full tmpfs is an ``OSError`` at
open or growth (the caller falls back), never a SIGBUS at the first write.

One process at a time is the sender (``_sender.Election``); the others forward their
encoded samples to it over a unix datagram socket in the private directory. Request
threads never touch any of this: only the exporter thread does.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import mmap
import os
import stat
import time
from collections.abc import Collection, Sequence

from . import _sidecar, _statedir
from ._layout import (
    COUNTER_WORDS,
    DROPS,
    E_DS_INDEX,
    E_KEY,
    E_KIND,
    E_LAST_COUNTS,
    E_LAST_POOL,
    E_NAME,
    ENTRY_WORDS,
    H_DATAGRAM_SEQ,
    H_EPOCH_NS,
    H_LAYOUT,
    H_MAGIC,
    H_SLOTS,
    INITIAL_SLOTS,
    KIND_NAMES,
    KINDS,
    LAYOUT,
    LOCK_SLOT0,
    LOCK_TABLE,
    LOCK_USERS,
    MAGIC,
    MAX_SLOTS,
    MAX_SOURCES,
    POOL,
    SLOT_HEAD,
    SLOT_WORDS,
    SLOTS_AT,
    STALE_AFTER,
    TABLE_AT,
    TOUCH_EVERY,
    file_size,
    in_use,
    lock,
    unlock,
)
from ._runtime_slots import RuntimeSlots
from ._sender import Election
from ._statedir import PrivateDir
from ._xdr import cut_utf8


def state_dir(configured: str | None = None) -> str:
    """The directory for state files: the setting (SFLOW_APP_STATE_DIR), else the default."""
    if configured:
        return configured
    return "/dev/shm" if os.path.isdir("/dev/shm") else "/tmp"


def service_key(*parts: object) -> str:
    text = "\0".join(str(p) for p in parts)
    # surrogatepass: a service name from a non-UTF-8 environment or argv holds surrogates.
    return hashlib.blake2b(text.encode(errors="surrogatepass"), digest_size=8).hexdigest()


def _key_word(kind: str, name: str) -> int:
    digest = hashlib.blake2b(f"{kind}\0{name}".encode(errors="surrogatepass"), digest_size=8)
    return int.from_bytes(digest.digest(), "little") or 1


def _open_file(private: PrivateDir, name: str) -> int:
    """Open (or create) ``name`` in the private directory and join its users: a shared
    lock, then a check that the name still names this inode (a later start may have
    removed the file as stale between our open and our lock)."""
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
    for _ in range(10):
        fd = os.open(name, flags, 0o600, dir_fd=private.fd)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid():
                raise PermissionError(f"{private.path}/{name} is not our regular file")
            lock(fd, LOCK_USERS, shared=True)
            now = os.stat(name, dir_fd=private.fd, follow_symlinks=False)
        except FileNotFoundError:
            os.close(fd)
            continue  # removed as stale meanwhile: open it again
        except BaseException:
            os.close(fd)
            raise
        if now.st_ino == st.st_ino:
            return fd
        os.close(fd)
    raise OSError(f"{private.path}/{name} keeps changing")


def _root(base: str) -> tuple[int, int] | None:
    """(root pid, start time) from a state file name of this layout."""
    if not base.startswith(f"v{LAYOUT}-"):
        return None
    try:
        root, started = base.rsplit("-", 2)[1:]
        return int(root), int(started)
    except ValueError:
        return None


def _other_layout(base: str) -> bool:
    head = base.split("-", 1)[0]
    return head[:1] == "v" and head[1:].isdigit() and head != f"v{LAYOUT}"


class SharedState(Election, RuntimeSlots):
    """The mapped file, this process's slot, and the sender role."""

    shared = True

    def __init__(self, private: PrivateDir, name: str, fd: int, mapping: mmap.mmap) -> None:
        self.private = private
        self.name = name
        self.path = os.path.join(private.path, name)
        self._fd = fd
        self._map = mapping
        self._old_maps: list[mmap.mmap] = []  # outgrown mappings (see _remap)
        self.words = memoryview(mapping).cast("Q")
        # The slots this mapping covers, not the header's count alone: another process
        # may have grown the file since it was mapped (_remap maps the rest). A slot past
        # the mapping failed every pass (IndexError): that worker's counts were lost.
        self._slots = min(self.words[H_SLOTS], (len(self.words) - SLOTS_AT) // SLOT_WORDS)
        self.slot: int | None = None
        self._bases: dict[int, list[int]] = {}
        self.skipped: list[str] = []  # private directory names found unsafe
        self.instance = (0, 0)  # (root pid, start time)
        self._touched = 0.0
        # The source table as decoded so far: an entry, once complete, never changes.
        self._entries: list[tuple[int, str, str, int]] = []  # decoded once
        Election.__init__(self)
        RuntimeSlots.__init__(self)

    # -- opening ----------------------------------------------------------------------
    @classmethod
    def open(
        cls,
        directory: str,
        key: str,
        instance: tuple[int, int] | None = None,
        runtime_dir: str | None = None,
    ) -> SharedState:
        """Open or create the instance's file. Raises OSError with a clear message."""
        private, skipped = _statedir.open_private(directory, runtime_dir)
        try:
            _statedir.remove_old_versions(directory, in_use)
            root, started = instance or _statedir.instance_root()
            name = f"v{LAYOUT}-{key}-{root}-{started}.state"
            fd = _open_file(private, name)
            try:
                mapping = cls._map_file(fd)
            except BaseException:
                os.close(fd)
                raise
        except BaseException:
            private.close()
            raise
        state = cls(private, name, fd, mapping)
        state.skipped = skipped
        state.instance = (root, started)
        state.remove_stale()
        return state

    @staticmethod
    def _map_file(fd: int) -> mmap.mmap:
        lock(fd, LOCK_TABLE)
        try:
            size = os.fstat(fd).st_size
            if size < file_size(INITIAL_SLOTS):  # a fresh file: allocate every byte first
                os.posix_fallocate(fd, 0, file_size(INITIAL_SLOTS))
                size = file_size(INITIAL_SLOTS)
            mapping = mmap.mmap(fd, size)
            words = memoryview(mapping).cast("Q")
            try:
                if words[H_MAGIC] != MAGIC:
                    mapping[:] = bytes(size)
                    words[H_EPOCH_NS] = time.time_ns()
                    words[H_LAYOUT] = LAYOUT
                    words[H_SLOTS] = (size // 8 - SLOTS_AT) // SLOT_WORDS
                    words[H_MAGIC] = MAGIC
                elif words[H_LAYOUT] != LAYOUT or file_size(words[H_SLOTS]) > size:
                    raise OSError(f"state file of another layout ({words[H_LAYOUT]})")
            finally:
                words.release()
        finally:
            unlock(fd, LOCK_TABLE)
        return mapping

    def _remap(self) -> None:
        """Another process grew the file: map all of it."""
        slots = self.words[H_SLOTS]
        if slots == self._slots:
            return
        mapping = mmap.mmap(self._fd, file_size(slots))
        self.words.release()
        # Not closed before _release: an mmap holds a dup of the descriptor, and closing
        # any descriptor of a file drops every record lock the process holds on it (its
        # slot, the sender role). At most log2(MAX_SLOTS / INITIAL_SLOTS) of them.
        self._old_maps.append(self._map)
        self._map = mapping
        self.words = memoryview(mapping).cast("Q")
        self._slots = slots

    def _grow(self) -> bool:
        """Room for more slots (doubling); False at MAX_SLOTS. OSError (ENOSPC) when the
        file system cannot back it: nothing was changed then."""
        lock(self._fd, LOCK_TABLE)
        try:
            slots = self.words[H_SLOTS]
            if slots <= self._slots:  # else another process grew it meanwhile: map that
                if slots >= MAX_SLOTS:
                    return False
                new = min(MAX_SLOTS, slots * 2)
                os.posix_fallocate(self._fd, 0, file_size(new))
                self.words[H_SLOTS] = new
        finally:
            unlock(self._fd, LOCK_TABLE)
        self._remap()
        return True

    def close(self) -> None:
        self.leave(unlink=True)
        with contextlib.suppress(OSError):
            os.utime(self._fd)  # last used now (see remove_stale)
        self._release()

    def abandon(self) -> None:
        """In a forked child: let go of the parent's mapping and descriptors only."""
        self.leave(unlink=False)
        self._release()

    def _release(self) -> None:
        self.words.release()
        for mapping in [*self._old_maps, self._map]:
            mapping.close()
        self._old_maps = []
        os.close(self._fd)  # releases this process's record locks
        self.private.close()

    def touch(self) -> None:
        """Mark the file as in use (its mtime), at most once a minute."""
        now = time.monotonic()
        if now - self._touched >= TOUCH_EVERY:
            self._touched = now
            with contextlib.suppress(OSError):
                os.utime(self._fd)

    # -- slots ------------------------------------------------------------------------
    def claim_slot(self) -> bool:
        """Take a free slot, growing the file if every one is taken. False when
        MAX_SLOTS workers are alive; OSError when the file cannot grow."""
        while True:
            self._remap()
            for i in range(self._slots):
                try:
                    fcntl.lockf(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, LOCK_SLOT0 + i)
                except OSError:
                    continue
                self.slot = i
                self.words[SLOTS_AT + i * SLOT_WORDS] = os.getpid()
                return True
            if not self._grow():
                return False

    def _counter_at(self, slot: int, index: int) -> int:
        return SLOTS_AT + slot * SLOT_WORDS + SLOT_HEAD + index * COUNTER_WORDS

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
        self._remap()
        out = [0] * COUNTER_WORDS
        words = self.words
        for slot in range(self._slots):
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
        unlock(self._fd, LOCK_SLOT0 + slot)
        return False

    def slots_used(self) -> int:
        self._remap()
        return sum(1 for s in range(self._slots) if self.words[SLOTS_AT + s * SLOT_WORDS])

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
        lock(self._fd, LOCK_TABLE)
        try:
            for i in range(MAX_SOURCES):
                at = self._entry(i)
                if words[at + E_KEY] == key:
                    return i
                if words[at + E_KEY] == 0:
                    raw = cut_utf8(name, 32).ljust(32, b"\0")  # whole characters
                    for j in range(4):
                        words[at + E_NAME + j] = int.from_bytes(raw[j * 8 : j * 8 + 8], "little")
                    words[at + E_KIND] = KINDS[kind]
                    words[at + E_DS_INDEX] = ds_index
                    words[at + E_KEY] = key  # last: readers see a complete entry
                    return i
        finally:
            unlock(self._fd, LOCK_TABLE)
        return None

    def entries(self) -> list[tuple[int, str, str, int]]:
        """(index, kind, name, ds_index) of every registered source."""
        known = self._entries
        words = self.words
        # Sources take the first free entry and keep it: the registered ones are the
        # table's first entries, and only those after the ones known can be new.
        for i in range(len(known), MAX_SOURCES):
            at = self._entry(i)
            if words[at + E_KEY] == 0:
                break
            raw = b"".join(words[at + E_NAME + j].to_bytes(8, "little") for j in range(4))
            kind = KIND_NAMES.get(words[at + E_KIND], "app")
            name = raw.rstrip(b"\0").decode(errors="replace")
            known.append((i, kind, name, words[at + E_DS_INDEX]))
        return known

    # -- sequence numbers (sender only) ------------------------------------------------
    def next_datagram_seq(self) -> int:
        self.words[H_DATAGRAM_SEQ] = seq = (self.words[H_DATAGRAM_SEQ] + 1) & 0xFFFFFFFF
        return seq

    def next_seq(self, index: int, word: int, count: int = 1) -> int:
        """The first of ``count`` sequence numbers taken (they wrap at 2**32)."""
        at = TABLE_AT + index * ENTRY_WORDS + word  # _entry, inlined: once per datagram
        words = self.words
        last = words[at]
        words[at] = (last + count) & 0xFFFFFFFF
        return (last + 1) & 0xFFFFFFFF

    def add_pool(self, index: int, step: int) -> int:
        """Add a sample's pool increment to the service's sample_pool (sender only)."""
        at = TABLE_AT + index * ENTRY_WORDS + E_LAST_POOL  # _entry, inlined
        words = self.words
        words[at] = value = (words[at] + step) & 0xFFFFFFFFFFFFFFFF
        return value

    def counts_changed(self, index: int, digest: int) -> bool:
        """Whether a counter sample with counts ``digest`` differs from the last one sent
        for the source (by any sender); remembers it."""
        at = self._entry(index) + E_LAST_COUNTS
        changed = self.words[at] != digest
        self.words[at] = digest
        return changed

    def uptime_ms(self) -> int:
        return ((time.time_ns() - self.words[H_EPOCH_NS]) // 1_000_000) & 0xFFFFFFFF

    # -- other instances --------------------------------------------------------------
    def remove_stale(self) -> None:
        """Remove state files (and their sockets) nobody has open whose instance is over
        (its root process is gone), of another layout, or that nobody used for
        ``STALE_AFTER``."""
        try:
            names = os.listdir(self.private.fd)
        except OSError:
            return
        now = time.time()
        for name in names:
            if not name.endswith(".state") or name == self.name:
                continue
            base = name[: -len(".state")]
            root = _root(base)
            if root == self.instance:
                continue  # another service of our own instance, maybe of this process
            with contextlib.suppress(OSError):
                st = os.stat(name, dir_fd=self.private.fd, follow_symlinks=False)
                over = root is not None and not _statedir.alive(*root)
                # Another layout's file is of no use to this version: gone once unused.
                over = over or (root is None and _other_layout(base))
                if over or now - st.st_mtime > STALE_AFTER:
                    self._remove(name, base, names)

    def _remove(self, name: str, base: str, names: list[str]) -> None:
        """Unlink ``name`` if no process has it open, checked under its lock and for the
        very inode we locked (it may have been replaced meanwhile)."""
        fd = os.open(name, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self.private.fd)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid():
                return
            lock(fd, LOCK_USERS, wait=0)  # OSError: someone has it open
            now = os.stat(name, dir_fd=self.private.fd, follow_symlinks=False)
            if now.st_ino == st.st_ino:
                os.unlink(name, dir_fd=self.private.fd)
                self._unlink_sockets(base, names)
                for sidecar in _sidecar.files_of(base, names):
                    self._unlink(sidecar)
        finally:
            os.close(fd)

    def others(self) -> list[int]:
        """Root pids of other live instances of this service (same key) on this host."""
        out = []
        head = self.name.rsplit("-", 2)[0] + "-"
        with contextlib.suppress(OSError):
            for name in os.listdir(self.private.fd):
                if name.startswith(head) and name.endswith(".state") and name != self.name:
                    root = _root(name[: -len(".state")])
                    if root is not None and _statedir.alive(*root):
                        out.append(root[0])
        return out
