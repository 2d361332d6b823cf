"""How the exporter thread sleeps: until its next due work, or until it is woken.

A self-pipe rather than a ``threading.Event``: the sender also waits for the samples the
other workers forward on its unix socket, and one ``poll()`` waits for both. ``set()`` is
called by a request thread only when it queues a sample while the exporter sleeps with
an empty queue (and at stop), so at most once per sleep; the pipe is non-blocking, so a
full pipe (it is set already) never blocks anyone. The pipe is read only when ``poll()``
says it holds something: an idle wake-up (a timeout) makes no other system call here.
"""

from __future__ import annotations

import contextlib
import math
import os
import select
import socket
import time


class Waker:
    def __init__(self) -> None:
        self._r, self._w = os.pipe()  # close-on-exec by default
        os.set_blocking(self._r, False)
        os.set_blocking(self._w, False)

    def set(self) -> None:
        with contextlib.suppress(OSError):  # full: it is set already; closed: stopping
            os.write(self._w, b"!")

    def clear(self) -> None:
        with contextlib.suppress(OSError):
            os.read(self._r, 512)  # more (it never is): poll() finds the rest next time

    def wait(self, timeout: float, also: socket.socket | None = None) -> bool:
        """Until set, ``also`` is readable, or ``timeout`` seconds have passed: True when
        woken (the pipe is cleared), False at the timeout."""
        poller = select.poll()  # not select(): a busy server's fds go past FD_SETSIZE
        try:
            poller.register(self._r, select.POLLIN)
            if also is not None:
                poller.register(also, select.POLLIN)
            ready = poller.poll(math.ceil(max(timeout, 0.0) * 1000))
        except (OSError, ValueError):  # the socket was closed meanwhile
            time.sleep(min(max(timeout, 0.0), 0.1))
            return False
        for fd, _ in ready:
            if fd == self._r:
                self.clear()
        return bool(ready)

    def close(self) -> None:
        r, w, self._r, self._w = self._r, self._w, -1, -1
        for fd in (r, w):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
