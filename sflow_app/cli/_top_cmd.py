"""``sflow-app top``: a live view of what collectors receive from sflow_app agents.

With ``--once`` it collects for ``--seconds`` (or until Ctrl-C) and prints one snapshot.
On a terminal the view is refreshed in place (with rich, the optional ``sflow-app[cli]``
extra, as tables); otherwise each snapshot is plain text, one row per line. At the end
(``--seconds`` or Ctrl-C) a last snapshot shows everything that arrived, the datagrams
still waiting in the socket's buffer included.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

from ..decode import DecodeError, decode
from ._listen_cmd import port_number, positive_float, positive_int
from ._receive import (
    DEFAULT_BIND,
    DEFAULT_PORT,
    BindError,
    Undecodable,
    dropped,
    nothing_decoded,
    open_socket,
    receive,
    terminated_unwinds,
)
from ._top import Top


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "top",
        help="live view: top URIs, routes, memcache keys and operations",
        description=(
            "Receive sFlow and show the busiest URIs and routes (estimated requests: each "
            "sample counts its sampling rate), status mix, p50/p95/p99 durations and "
            "bytes per service; memcache hot and missed keys and commands; decorated "
            "operations. Refreshed in place on a terminal; plain text otherwise. Exit "
            "status, as listen's: 0 (Ctrl-C included); 1 when --once or --seconds was "
            "given and no datagram could be decoded (none arrived, or none was sFlow); 2 "
            "on usage errors or when the port cannot be bound; SIGTERM or SIGHUP restore "
            "the terminal, then end it by that signal."
        ),
    )
    p.add_argument("--port", type=port_number, default=DEFAULT_PORT, help="UDP port (6343)")
    p.add_argument(
        "--bind", default=DEFAULT_BIND, help="address to listen on (127.0.0.1; IPv6: ::1 or [::1])"
    )
    p.add_argument(
        "--once", action="store_true", help="print one snapshot (at --seconds or Ctrl-C) and exit"
    )
    p.add_argument(
        "--seconds",
        type=positive_float,
        help="how long to collect: the snapshot's window with --once (default 10), else "
        "stop after this long (default: until Ctrl-C)",
    )
    p.add_argument(
        "--interval", type=positive_float, default=2.0, help="seconds between refreshes (2)"
    )
    p.add_argument("--rows", type=positive_int, default=10, help="rows per table (10)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from . import _top

    _top.ROWS = args.rows
    try:
        sock = open_socket(args.bind, args.port)
    except BindError as exc:
        print(f"sflow-app top: {exc}", file=sys.stderr)
        return 2
    top = Top()
    undecodable = Undecodable("top")

    def handle(data: bytes, source_ip: str, when: float) -> bool:
        try:
            top.add(decode(data))
        except DecodeError as exc:
            undecodable.add(source_ip, len(data), exc)
            return False
        return True

    seconds = args.seconds if args.seconds is not None or not args.once else 10.0
    window = f" for {seconds:g} s" if args.once else ""
    print(
        f"sflow-app top: listening on udp {args.bind} port {args.port}{window}",
        file=sys.stderr,
        flush=True,
    )
    interrupted = False  # Ctrl-C: the normal stop, 0 whatever arrived (as for listen)
    with sock:
        if args.once:
            started = time.monotonic()
            try:
                receive(sock, handle, seconds=seconds, tick=lambda _: undecodable.report())
                elapsed = seconds
            except KeyboardInterrupt:  # cut short: what arrived so far, not nothing
                elapsed = time.monotonic() - started
                interrupted = True
            with contextlib.suppress(KeyboardInterrupt):
                _drain(sock, handle)  # what arrived in the window, still in the buffer
            undecodable.report()
            top.dropped = dropped(sock) or 0
            print(top.plain(elapsed))
            return _status(args, top.datagrams, undecodable.total, interrupted)
        # A live view hides the cursor: SIGTERM or SIGHUP (the terminal closed) must
        # unwind through close() too, or the shell is left without one.
        with terminated_unwinds():
            view = _view(top)
            started = time.monotonic()

            def show(elapsed: float) -> None:
                undecodable.report()
                top.dropped = dropped(sock) or 0
                view(elapsed)

            try:
                try:
                    receive(sock, handle, seconds=seconds, tick=show, tick_every=args.interval)
                except KeyboardInterrupt:
                    interrupted = True
                try:
                    # The last snapshot holds everything that arrived, since the last
                    # refresh too.
                    _drain(sock, handle)
                    show(time.monotonic() - started)
                except KeyboardInterrupt:
                    interrupted = True
            finally:
                close = getattr(view, "close", None)
                if close is not None:
                    close()
    return _status(args, top.datagrams, undecodable.total, interrupted)


def _status(args: argparse.Namespace, decoded: int, undecodable: int, interrupted: bool) -> int:
    """1 when a bounded run (--once, --seconds) decoded nothing, said why, as listen does:
    `sflow-app top --once > snapshot || alert` must not take silence for a quiet service."""
    if decoded or interrupted or (not args.once and args.seconds is None):
        return 0
    print(f"sflow-app top: {nothing_decoded(args.bind, args.port, undecodable)}", file=sys.stderr)
    return 1


def _drain(sock: socket.socket, handle: Callable[[bytes, str, float], bool]) -> None:
    """Handle the datagrams already waiting in the socket's buffer (a bounded number)."""
    sock.setblocking(False)
    for _ in range(100_000):
        try:
            data, peer = sock.recvfrom(65535)
        except OSError:  # BlockingIOError: none left
            return
        handle(data, str(peer[0]).split("%", 1)[0], time.time())


def _view(top: Top) -> Any:
    """A callable(elapsed) that shows the current snapshot."""
    if not sys.stdout.isatty():

        def plain(elapsed: float) -> None:
            print(top.plain(elapsed) + "\n", flush=True)

        return plain
    if importlib.util.find_spec("rich") is not None:
        from ._top_rich import RichView

        return RichView(top)

    def redraw(elapsed: float) -> None:
        sys.stdout.write("\x1b[H\x1b[2J" + top.plain(elapsed) + "\n")
        sys.stdout.flush()

    return redraw
