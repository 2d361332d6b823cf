"""``sflow-app listen``: receive sFlow on a UDP port and print it.

Readable lines by default (one per sample, names not numbers); ``--json`` prints one
object per datagram per line in ``sflowtool -j``'s schema, with its names for the
datagram's source address and receive time, so pipelines built on sflowtool can switch.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from ..decode import DecodeError, decode, ip6_full, to_sflowtool
from ._escape import utf8_output
from ._receive import (
    DEFAULT_BIND,
    DEFAULT_PORT,
    BindError,
    Undecodable,
    dropped,
    nothing_decoded,
    open_socket,
    receive,
)
from .render import plural, sample_lines


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "listen",
        help="receive sFlow and print it (readable, or as sflowtool -j)",
        description=(
            "Receive sFlow datagrams on a UDP port and print them: one readable line per "
            "sample, or with --json one sflowtool -j object per datagram. Exit status: 0; "
            "1 when --count or --seconds was given and no datagram could be decoded (none "
            "arrived, or none was sFlow); 2 on usage errors or when the port cannot be "
            "bound."
        ),
    )
    p.add_argument("--port", type=port_number, default=DEFAULT_PORT, help="UDP port (6343)")
    p.add_argument(
        "--bind", default=DEFAULT_BIND, help="address to listen on (127.0.0.1; IPv6: ::1 or [::1])"
    )
    p.add_argument("--json", action="store_true", help="one sflowtool -j object per datagram")
    p.add_argument("--count", type=positive_int, help="stop after N decoded datagrams")
    p.add_argument("--seconds", type=positive_float, help="stop after S seconds")
    p.set_defaults(run=run)


def port_number(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{text} is not a port (1..65535)")
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} must be at least 1")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text} must be a positive number of seconds")
    return value


def sflowtool_json(data: bytes, source_ip: str, when: float) -> dict[str, Any]:
    """sflowtool -j's object for one datagram, its run-dependent keys in its order."""
    body = to_sflowtool(decode(data), len(data))
    seconds = int(when)
    if ":" in source_ip:
        source_ip = ip6_full(source_ip)
    return {
        "datagramSourceIP": source_ip,
        "datagramSize": body.pop("datagramSize"),
        "unixSecondsUTC": str(seconds),
        "unixSecondsUTC_uS": str(int((when - seconds) * 1_000_000)),
        "localtime": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(seconds)),
        **body,
    }


def run(args: argparse.Namespace) -> int:
    try:
        sock = open_socket(args.bind, args.port)
    except BindError as exc:
        print(f"sflow-app listen: {exc}", file=sys.stderr)
        return 2
    out = sys.stdout
    ascii_only = not utf8_output()
    undecodable = Undecodable("listen")

    def handle(data: bytes, source_ip: str, when: float) -> bool:
        try:
            if args.json:
                line = json.dumps(
                    sflowtool_json(data, source_ip, when),
                    ensure_ascii=ascii_only,
                    separators=(",", ":"),
                )
            else:
                line = "\n".join(sample_lines(decode(data), source_ip))
        except DecodeError as exc:
            undecodable.add(source_ip, len(data), exc)
            return False
        if line:
            out.write(line + "\n")
            out.flush()
        return True

    # On stderr, so stdout stays sflowtool's; also tells a script the port is bound.
    print(
        f"sflow-app listen: listening on udp {args.bind} port {args.port}",
        file=sys.stderr,
        flush=True,
    )
    reported = 0

    def report(_: float = 0.0) -> None:
        # Once a second: a flood of either must not flood stderr too.
        nonlocal reported
        undecodable.report()
        total = dropped(sock) or 0
        if total > reported:
            reported = total
            print(
                f"sflow-app listen: {plural(total, 'datagram')} dropped unread so far: they "
                "arrived faster than they were printed (the receive buffer was full)",
                file=sys.stderr,
                flush=True,
            )

    with sock:
        try:
            got = receive(sock, handle, count=args.count, seconds=args.seconds, tick=report)
        except KeyboardInterrupt:
            report()
            return 0
        report()
    if got or (args.count is None and args.seconds is None):
        return 0
    print(
        f"sflow-app listen: {nothing_decoded(args.bind, args.port, undecodable.total)}",
        file=sys.stderr,
    )
    return 1
