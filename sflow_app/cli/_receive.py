"""The UDP socket ``listen`` and ``top`` read from, and its error messages."""

from __future__ import annotations

import contextlib
import errno
import signal
import socket
import struct
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator

from .render import plural

DEFAULT_PORT = 6343
DEFAULT_BIND = "127.0.0.1"


class BindError(Exception):
    """A message a person can act on; the command exits 2."""


class Terminated(BaseException):
    """SIGTERM or SIGHUP arrived: unwind (a live view gives the terminal its cursor
    back), then ``main`` ends the process by the same signal, as the sender expects."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


@contextlib.contextmanager
def terminated_unwinds() -> Iterator[None]:
    """SIGTERM and SIGHUP raise Terminated inside; one ignored (nohup) stays ignored."""

    def stop(signum: int, frame: object) -> None:
        raise Terminated(signum)

    before = {}
    for signum in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(signum) is signal.SIG_DFL:
            before[signum] = signal.signal(signum, stop)
    try:
        yield
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)


def open_socket(bind: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in bind else socket.AF_INET
    # "[::1]", as collectors are written (SFLOW_APP_COLLECTORS, hsflowd.auto), is ::1.
    host = bind[1:-1] if bind.startswith("[") and bind.endswith("]") else bind
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            hint = (
                "something already listens there (hsflowd's collector, sflowtool, another "
                "sflow-app?); stop it or choose another --port"
            )
        elif exc.errno == errno.EACCES:
            hint = "ports below 1024 need privileges; choose another --port"
        elif exc.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
            hint = "that address is not on this host; --bind 127.0.0.1 or ::1 is loopback"
        else:
            hint = exc.strerror or str(exc)
        raise BindError(f"cannot listen on udp {bind} port {port}: {hint}") from None
    except (socket.gaierror, OverflowError, TypeError) as exc:
        sock.close()
        raise BindError(f"cannot listen on udp {bind} port {port}: {exc}") from None
    # Bursts from many workers: a bigger buffer loses less while the terminal scrolls.
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    except OSError:
        pass
    return sock


SO_MEMINFO = 55  # Linux 4.6+ (<asm-generic/socket.h>); Python's socket module does not name it
SK_MEMINFO_DROPS = 8  # its 9th word: datagrams dropped on this socket, its buffer full


def dropped(sock: socket.socket) -> int | None:
    """How many datagrams the kernel dropped for this socket (its receive buffer was full:
    the reader fell behind), or None where the system does not say."""
    if not sys.platform.startswith("linux"):  # 55 means something else elsewhere
        return None
    try:
        info = sock.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, 4 * (SK_MEMINFO_DROPS + 1))
    except OSError:
        return None
    if len(info) < 4 * (SK_MEMINFO_DROPS + 1):
        return None
    return int(struct.unpack_from("=I", info, 4 * SK_MEMINFO_DROPS)[0])


def receive(
    sock: socket.socket,
    handle: Callable[[bytes, str, float], bool],
    *,
    count: int | None = None,
    seconds: float | None = None,
    tick: Callable[[float], None] | None = None,
    tick_every: float = 1.0,
) -> int:
    """Call ``handle(data, source_ip, unix_time)`` per datagram until ``count`` of them
    were handled (``handle`` returns True for one that counts) or ``seconds`` passed.
    ``tick(now)`` runs about every ``tick_every`` seconds. Returns how many counted.

    Ctrl-C raises KeyboardInterrupt between two datagrams, never inside ``handle``: one
    read from the socket and cut short there would be lost, neither counted nor dropped."""
    start = time.monotonic()
    end = None if seconds is None else start + seconds
    next_tick = start + tick_every
    handled = 0
    with ctrl_c_between() as interrupted:
        while count is None or handled < count:
            if interrupted():
                raise KeyboardInterrupt
            now = time.monotonic()
            if end is not None and now >= end:
                break
            wait = min(x for x in (0.2, next_tick - now, None if end is None else end - now) if x)
            # A Ctrl-C in the wait does not end it (PEP 475): noticed within 0.2 s.
            sock.settimeout(max(wait, 0.001))
            try:
                data, peer = sock.recvfrom(65535)
            except TimeoutError:
                pass
            else:  # an empty datagram too: it arrived, and handle() says it is no sFlow
                if handle(data, str(peer[0]).split("%", 1)[0], time.time()):
                    handled += 1
            if tick is not None and time.monotonic() >= next_tick:
                next_tick = time.monotonic() + tick_every
                tick(time.monotonic() - start)
    return handled


@contextlib.contextmanager
def ctrl_c_between() -> Iterator[Callable[[], bool]]:
    """Inside, SIGINT only sets a flag the caller checks where stopping loses nothing.
    Python's own handler only: a SIGINT ignored (nohup) or handled elsewhere stays so."""
    seen = False

    def note(signum: int, frame: object) -> None:
        nonlocal seen
        seen = True

    before = signal.getsignal(signal.SIGINT)
    mine = before is signal.default_int_handler and threading.current_thread() is (
        threading.main_thread()
    )
    if mine:
        signal.signal(signal.SIGINT, note)
    try:
        yield lambda: seen
    finally:
        if mine:
            signal.signal(signal.SIGINT, before)


def nothing_decoded(bind: str, port: int, undecodable: int) -> str:
    """Why a bounded ``listen`` or ``top`` exits 1."""
    where = f"udp {bind} port {port}"
    if undecodable:  # something is sending here: say so, not "nothing arrived"
        return (
            f"{plural(undecodable, 'datagram')} arrived on {where} but none could be decoded "
            "(see above); is an sFlow v5 agent sending here?"
        )
    return (
        f"nothing arrived on {where}; is the agent sending here (sflow-app config shows its "
        "collectors)?"
    )


class Undecodable:
    """Datagrams that are not sFlow, said on stderr without flooding it: the first from a
    sender explained (its size, what was wrong), the rest counted, and each report() says
    in one line how many more came since the last (listen: once a second; top: at each
    refresh; both at the end). A flood is one line a second, and no datagram uncounted."""

    EXPLAINED = 5  # senders whose first one is explained; any others are only counted
    NAMED = 1000  # senders counted by address between two reports (a spoofed flood)

    def __init__(self, command: str) -> None:
        self.command = command
        self.total = 0
        self.explained: set[str] = set()
        self.pending = 0  # since the last report, not explained
        self.senders: Counter[str] = Counter()  # of those, per sender (NAMED at most)

    def add(self, source_ip: str, size: int, error: Exception) -> None:
        self.total += 1
        if source_ip not in self.explained and len(self.explained) < self.EXPLAINED:
            self.explained.add(source_ip)
            self._say(
                f"undecodable datagram from {source_ip} ({size:,} bytes): {error} (any "
                "more are counted, not shown one by one)"
            )
            return
        self.pending += 1
        if source_ip in self.senders or len(self.senders) < self.NAMED:
            self.senders[source_ip] += 1

    def report(self) -> None:
        # Taken before it is said: a Ctrl-C in the middle (top's last snapshot reports
        # again) must not say the same datagrams twice.
        pending, senders = self.pending, self.senders
        if not pending:
            return
        self.pending, self.senders = 0, Counter()
        busiest, most = senders.most_common(1)[0]
        if most == pending:
            where = f"from {busiest}"
        else:
            many = len(senders) if len(senders) < self.NAMED else f"{self.NAMED}+"
            where = f"from {many} senders ({most:,} from {busiest})"
        noun = "datagram" if pending == 1 else "datagrams"
        self._say(f"{pending:,} more undecodable {noun} {where}")

    def _say(self, line: str) -> None:
        print(f"sflow-app {self.command}: {line}", file=sys.stderr, flush=True)
