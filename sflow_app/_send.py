"""Sending datagrams: one connected UDP socket per collector, and its health.

A *connected* UDP socket lets Linux report what the network says about a collector: an
ICMP port-unreachable comes back as ECONNREFUSED at the next send, an unroutable or
forbidden address (a broadcast address: EACCES) fails at connect or send. Each collector
counts its sends and errors and keeps the last errno; ``status()`` shows them. A
collector that starts failing gets one warning; one that sends cleanly again for
``RECOVER_AFTER`` seconds after its last error gets one line saying so. (A closed port
fails every other send — the send after an ICMP error goes out, and draws the next
error — so "recovered" needs a quiet period, not one good send.)

Each datagram is sent with libc's ``send()`` called *without* releasing the GIL (through
``ctypes.PyDLL``), where ctypes is available: a send on a non-blocking UDP socket never
waits, so there is nothing to release the GIL for, and releasing it costs the exporter
dearly when a request thread is busy. A busy thread takes the GIL the moment it is
released and keeps it until the switch interval (5 ms) forces it off, so each release
cost the exporter up to 5 ms: one per datagram of about 7 samples capped it at a few
thousand samples/s (issue 15; benchmarks/README.md). ``socket.send`` remains the
fallback.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from ._config import MAX_COLLECTORS  # resolve() cuts the list to it; a safety net here

if TYPE_CHECKING:
    from ._status import CollectorHealth, Stats

log = logging.getLogger("sflow_app")

RECOVER_AFTER = 10.0  # s without an error before a failing collector counts as recovered


Send = Callable[[socket.socket, bytes], None]
_DONTWAIT = getattr(socket, "MSG_DONTWAIT", 0)


def _socket_send(sock: socket.socket, payload: bytes) -> None:
    sock.send(payload)


def gil_send() -> Send | None:
    """A ``send`` that keeps the GIL (libc's, through ``ctypes.PyDLL``), or None where
    it cannot be had. ctypes is imported here, by the exporter thread, not at import."""
    try:
        import ctypes

        libc_send = ctypes.PyDLL(None, use_errno=True).send
    except (ImportError, OSError, AttributeError):
        return None
    libc_send.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_int)
    libc_send.restype = ctypes.c_ssize_t
    get_errno = ctypes.get_errno

    def send(sock: socket.socket, payload: bytes) -> None:
        payload = bytes(payload)  # the same object when it is bytes already
        while libc_send(sock.fileno(), payload, len(payload), _DONTWAIT) < 0:
            code = get_errno()
            if code != errno.EINTR:  # EINTR: again, as socket.send does (PEP 475)
                raise OSError(code, os.strerror(code))

    return send


def _name(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Health:
    __slots__ = ("errors", "failing", "last_errno", "last_error", "last_error_at", "sent")

    def __init__(self) -> None:
        self.sent = 0
        self.errors = 0
        self.failing = False
        self.last_errno = ""
        self.last_error = ""
        self.last_error_at = float("-inf")

    def view(self) -> CollectorHealth:
        return {
            "sent": self.sent,
            "errors": self.errors,
            "failing": self.failing,
            "last_errno": self.last_errno,
            "last_error": self.last_error,
        }


class Senders:
    """The sockets towards the configured collectors (at most ``MAX_COLLECTORS``)."""

    def __init__(self, warn_once: Callable[[str], None], clock: Callable[[], float]) -> None:
        self._warn_once = warn_once
        self._clock = clock
        self.socks: dict[tuple[str, int], socket.socket] = {}
        self.health: dict[tuple[str, int], Health] = {}
        self._send: Send | None = None  # chosen at the first datagram (see the module doc)
        self._known: Sequence[tuple[str, int]] | None = None  # the collectors last sent to

    def send(self, collectors: Sequence[tuple[str, int]], payload: bytes, stats: Stats) -> None:
        if len(collectors) > MAX_COLLECTORS:
            self._warn_once(
                f"{len(collectors)} collectors configured: only the first {MAX_COLLECTORS} "
                "are sent to"
            )
            collectors = collectors[:MAX_COLLECTORS]
        if collectors is not self._known:  # the same settings' list: nothing to forget
            self._forget(collectors)
            self._known = collectors
        send = self._send or self.prepare()
        for target in collectors:
            health = self.health.get(target)
            if health is None:
                health = self.health[target] = Health()
            try:
                send(self.socks.get(target) or self._socket(target), payload)
            except OSError as exc:  # collector down, unreachable, bad address: never raised
                self._failed(target, health, exc, stats)
                continue
            stats["sent"] += 1
            health.sent += 1
            if health.failing and self._clock() - health.last_error_at >= RECOVER_AFTER:
                health.failing = False
                log.warning(
                    "sflow_app: collector %s: sending again (%d failed sends in all)",
                    _name(*target),
                    health.errors,
                )

    def prepare(self) -> Send:
        """How datagrams are sent, chosen once (the sender's exporter calls this when it
        takes the role, so ctypes' import is not in the middle of a later pass)."""
        send = self._send
        if send is None:
            send = self._send = gil_send() or _socket_send
        return send

    def _socket(self, target: tuple[str, int]) -> socket.socket:
        sock = self.socks.get(target)
        if sock is None:
            host, port = target
            sock = socket.socket(
                socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM
            )
            sock.setblocking(False)
            try:
                sock.connect((host, port))
            except OSError:
                sock.close()  # tried again at the next datagram
                raise
            self.socks[target] = sock
        return sock

    def _failed(self, target: tuple[str, int], health: Health, exc: OSError, stats: Stats) -> None:
        name = _name(*target)
        code = errno.errorcode.get(exc.errno or 0, str(exc.errno))
        stats["send_errors"] += 1
        stats["last_send_error"] = f"{name}: {exc}"
        health.errors += 1
        health.last_errno = code
        health.last_error = str(exc)
        health.last_error_at = self._clock()
        if not health.failing:
            health.failing = True
            log.warning(
                "sflow_app: collector %s: sending fails (%s); counted in status()", name, exc
            )
        if exc.errno in (errno.EBADF, errno.ENOTCONN):
            self._close(target)  # a dead socket: a new one next time

    def _forget(self, collectors: Sequence[tuple[str, int]]) -> None:
        """Close the sockets of collectors no longer configured."""
        for target in [t for t in self.socks if t not in collectors]:
            self._close(target)
        for target in [t for t in self.health if t not in collectors]:
            del self.health[target]

    def _close(self, target: tuple[str, int]) -> None:
        sock = self.socks.pop(target, None)
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass

    def failing(self) -> list[str]:
        return [f"{_name(*t)} ({h.last_errno})" for t, h in self.health.items() if h.failing]

    def errors(self) -> dict[str, int]:
        """Failed sends per collector (``host:port``)."""
        return {_name(*t): h.errors for t, h in self.health.items()}

    def view(self) -> dict[str, CollectorHealth]:
        return {_name(*t): h.view() for t, h in self.health.items()}

    def close(self) -> None:
        for target in list(self.socks):
            self._close(target)
