"""A counting sFlow collector for the benchmarks, run in its own process by
``_harness.Collector``: binds a loopback UDP port (printed first), counts the flow samples
in every datagram, and answers each ``count`` line on stdin with
``<flow samples> <counter samples> <datagrams>``. Ends when stdin closes."""

from __future__ import annotations

import socket
import struct
import sys
import threading

FLOW_FORMATS = {1, 3}  # flow_sample, flow_sample_expanded (enterprise 0)
COUNTER_FORMATS = {2, 4}

counts = [0, 0, 0]


def count(data: bytes) -> None:
    """Tally one sFlow v5 datagram's samples (an unreadable one counts as a datagram only)."""
    counts[2] += 1
    try:
        address_type = struct.unpack_from(">I", data, 4)[0]
        offset = 8 + (4 if address_type == 1 else 16) + 12
        (n,) = struct.unpack_from(">I", data, offset)
        offset += 4
        for _ in range(n):
            tag, length = struct.unpack_from(">II", data, offset)
            offset += 8 + length
            if tag in FLOW_FORMATS:
                counts[0] += 1
            elif tag in COUNTER_FORMATS:
                counts[1] += 1
    except struct.error:
        pass


def receive(sock: socket.socket) -> None:
    while True:
        count(sock.recv(65535))


def main() -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:  # a burst must not overflow the kernel's buffer: that loss would not be ours
        sock.setsockopt(socket.SOL_SOCKET, 33, 32 << 20)  # SO_RCVBUFFORCE (needs root)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 << 20)
    sock.bind(("127.0.0.1", 0))
    print(sock.getsockname()[1], flush=True)
    threading.Thread(target=receive, args=(sock,), daemon=True).start()
    for line in sys.stdin:
        if line.strip() == "count":
            print(*counts, flush=True)


if __name__ == "__main__":
    main()
