"""The sender role of a shared state file, and the socket the workers forward to.

The sender is whoever holds the current *generation* (a header word). Taking it:

- the current generation's lock byte is free: its sender died or left (the kernel
  releases a dead process's record locks), so the role is free now;
- the lock is held but the sender made no progress for ``STALL`` seconds past the later
  of its heartbeat (written every pass) and the next pass it said was due (an idle sender
  sleeps up to 5 s): it is stopped or wedged -- a stopped process keeps its locks -- so
  it is replaced anyway.

Either way the taker bumps the generation and locks the new generation's byte, under a
short election lock. A replaced sender that runs again finds the generation moved on; it
checks that before every datagram (``still_sender``), so nothing is numbered or sent by
two processes. Each generation has its own socket name in the private directory, so an
old sender going away never unlinks its successor's socket.

Forwarded messages are framed samples: (source-table index, length) then an encoded flow
sample. Only the user's own processes can reach the socket (the directory is 0700), but
every message is still checked -- index, length, sample format -- and a bad one is
dropped and counted, never trusted.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import socket
import struct
import time

from ._layout import (
    E_KEY,
    ENTRY_WORDS,
    GENS,
    H_DUE,
    H_GEN,
    H_HEARTBEAT,
    H_SENDER_PID,
    LOCK_ELECT,
    LOCK_GEN0,
    MAX_SOURCES,
    TABLE_AT,
    lock,
    unlock,
)
from ._statedir import PrivateDir

log = logging.getLogger("sflow_app")

STALL = 3.0  # s without progress after which a sender is replaced
DUE_MAX = 10.0  # s: the longest sleep a sender announces (its idle one is 5 s)
# A forwarded message carries many samples, each as (source-table index, length) then the
# encoded flow sample: a unix datagram socket queues only net.unix.max_dgram_qlen messages
# (10 by default) whatever its buffer size, so one message per sample would cap what the
# workers can hand over at about 10 samples per sender tick.
MSG = struct.Struct(">II")
# A pool-only message (no sample): an exiting worker's pool increment since its last
# sample, which the sender adds to the service's sample_pool.
POOL_ONLY = struct.Struct(">I")
FORWARD_MAX = 60000  # bytes per forwarded message (a unix datagram takes up to ~200 KB)
SUN_PATH_MAX = 107
_replaced_logged = False
FLOW_FORMATS = (1, 3)  # flow_sample, flow_sample_expanded
FLOW_MIN = 32  # bytes: up to the fields the sender patches (drops of an expanded sample)


class Election:
    """Mixed into SharedState: needs ``words``, ``_fd``, ``private`` and ``name``."""

    words: memoryview
    _fd: int
    name: str
    private: PrivateDir

    def __init__(self) -> None:
        self.sender = False
        self._gen = 0
        self._sock: socket.socket | None = None
        self.bad_forwards = 0  # messages (or their tails) dropped as malformed
        self.handed_back: list[tuple[int, bytes]] = []  # taken in, not sent: to forward

    @property
    def generation(self) -> int:
        """The generation this process holds (meaningful while ``sender``)."""
        return self._gen

    # -- names --------------------------------------------------------------------------
    def _sock_name(self, gen: int) -> str:
        return f"{self.name[: -len('.state')]}-{gen}.sock"

    def sock_address(self, gen: int) -> str:
        """The socket's address: its path, or through /proc/self/fd for a long one (no
        abstract-namespace socket: that one would have no permissions)."""
        name = self._sock_name(gen)
        path = os.path.join(self.private.path, name)
        if len(os.fsencode(path)) <= SUN_PATH_MAX:
            return path
        return f"/proc/self/fd/{self.private.fd}/{name}"

    def _unlink(self, name: str) -> None:
        with contextlib.suppress(OSError):
            os.unlink(name, dir_fd=self.private.fd)

    def _unlink_sockets(self, base: str, names: list[str]) -> None:
        for name in names:
            if name.startswith(base + "-") and name.endswith(".sock"):
                self._unlink(name)

    # -- the role -----------------------------------------------------------------------
    def _held(self, gen: int) -> bool:
        """Whether a live process holds generation ``gen``."""
        at = LOCK_GEN0 + gen % GENS
        try:
            fcntl.lockf(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, at)
        except OSError:
            return True
        unlock(self._fd, at)
        return False

    def _sender_ok(self, gen: int, now: int) -> bool:
        """The current sender (of ``gen``) is alive and made progress lately: its last
        pass, or the next one it announced (an idle sender sleeps longer than STALL)."""
        words = self.words
        late = now - max(words[H_HEARTBEAT], words[H_DUE])
        return bool(gen) and self._held(gen) and late < STALL * 1e9

    def pass_due(self, seconds: float) -> None:
        """The sender, going to sleep: its next pass is due in ``seconds``."""
        if self.sender and self.words[H_GEN] == self._gen:
            self.words[H_DUE] = time.monotonic_ns() + int(min(seconds, DUE_MAX) * 1e9)

    def still_sender(self) -> bool:
        """Whether this process still holds the role; if it was replaced (it was
        stopped), it lets go now."""
        global _replaced_logged
        if self.sender and self.words[H_GEN] != self._gen:
            self.handed_back.extend(self.receive())  # queued while it was stopped
            self.leave(unlink=True)
            if not _replaced_logged:  # once per process: an idle inline sender bounces
                _replaced_logged = True
                log.warning(
                    "sflow_app: this process was replaced as the sender (no progress for "
                    "%ss); what it held goes to the new one",
                    STALL,
                )
        return self.sender

    def try_become_sender(self) -> bool:
        now = time.monotonic_ns()
        if self.sender:
            if not self.still_sender():
                return False
            self.words[H_HEARTBEAT] = now
            return True
        gen = self.words[H_GEN]
        if self._sender_ok(gen, now):
            return False
        try:
            lock(self._fd, LOCK_ELECT, wait=0)
        except OSError:
            return False  # another process is electing itself
        try:
            gen = self.words[H_GEN]
            if self._sender_ok(gen, now):
                return False
            new = self._take_generation(gen)
            if new is None:
                return False
        finally:
            unlock(self._fd, LOCK_ELECT)
        self._gen = new
        self.sender = True
        self._listen(gen)
        return True

    def _take_generation(self, gen: int) -> int | None:
        for new in range(gen + 1, gen + GENS):
            try:
                fcntl.lockf(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, LOCK_GEN0 + new % GENS)
            except OSError:
                continue  # a stopped sender of an older generation still holds this byte
            self.words[H_SENDER_PID] = os.getpid()
            self.words[H_HEARTBEAT] = time.monotonic_ns()
            self.words[H_DUE] = 0  # the replaced sender's announcement is not ours
            self.words[H_GEN] = new  # last: from now on the role is ours
            return new
        return None

    def _listen(self, old: int) -> None:
        name = self._sock_name(self._gen)
        self._unlink(name)  # left by a sender of this generation number that crashed
        if old:
            self._unlink(self._sock_name(old))  # the replaced sender's
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            sock.bind(self.sock_address(self._gen))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            log.warning("sflow_app: the sender cannot listen for workers (%s)", exc)
            return  # it still sends its own samples and every worker's counters
        self._sock = sock

    def listening(self) -> socket.socket | None:
        """The socket the workers forward to (the sender's exporter waits on it)."""
        return self._sock

    def leave(self, *, unlink: bool) -> None:
        """Give up the role (at close, or when replaced): the socket, then the lock."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
            if unlink and self.sender:
                self._unlink(self._sock_name(self._gen))
        if self.sender and unlink:
            with contextlib.suppress(OSError):
                unlock(self._fd, LOCK_GEN0 + self._gen % GENS)
        self.sender = False

    # -- forwarding ---------------------------------------------------------------------
    def registered(self, index: int) -> bool:
        """Whether ``index`` names a data source of the table (a forwarded index is
        checked before it is used to address anything)."""
        return 0 <= index < MAX_SOURCES and self.words[TABLE_AT + index * ENTRY_WORDS + E_KEY] != 0

    def receive(self, limit: int = 20000) -> list[tuple[int, bytes]]:
        """Samples forwarded by the other workers (sender only), each checked."""
        out: list[tuple[int, bytes]] = []
        sock = self._sock
        if sock is None:
            return out
        for _ in range(limit):
            try:
                data = sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                break
            self._unpack(data, out)
        return out

    def _unpack(self, data: bytes, out: list[tuple[int, bytes]]) -> None:
        at = 0
        while at < len(data):
            if at + MSG.size > len(data):
                self.bad_forwards += 1
                return
            index, length = MSG.unpack_from(data, at)
            at += MSG.size
            sample = data[at : at + length]
            if self.registered(index) and length == POOL_ONLY.size == len(sample):
                out.append((index, sample))
                at += length
                continue
            if (
                not self.registered(index)
                or length < FLOW_MIN
                or len(sample) != length
                or int.from_bytes(sample[:4], "big") not in FLOW_FORMATS
            ):
                self.bad_forwards += 1
                return  # the rest of this message cannot be trusted either
            out.append((index, sample))
            at += length

    def stop_listening(self) -> None:
        """The sender at exit: forwards fail from now on (the workers keep them for the
        next sender), so one more ``receive()`` gets everything sent to this one."""
        if self.sender:
            self._unlink(self._sock_name(self._gen))

    def sender_leaving(self) -> bool:
        """No sender is taking forwards: its socket is gone (it stopped listening at exit,
        or there has been none since)."""
        gen = self.words[H_GEN]
        if not gen:
            return True
        try:
            os.stat(self._sock_name(gen), dir_fd=self.private.fd)
        except OSError:
            return True
        return False

    def forward(self, sock: socket.socket, message: bytes) -> bool:
        """Hand encoded samples (``MSG`` framed) to the sender; False when it cannot now."""
        gen = self.words[H_GEN]
        if not gen:
            return False
        try:
            sock.sendto(message, self.sock_address(gen))
        except OSError:
            return False
        return True
