"""Real memcached servers for the tests, on ephemeral loopback ports or unix sockets.

``scripts/test`` installs memcached where it is missing (``scripts/setup --with-servers``);
a missing binary skips the tests that need one, with the reason (under CI it fails them).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

from helpers import free_port, missing

BINARY = os.environ.get("MEMCACHED", "memcached")
START_TIMEOUT = 5.0


def binary() -> str:
    path = shutil.which(BINARY) or (BINARY if os.path.isfile(BINARY) else None)
    if path is None and os.path.isfile("/usr/bin/memcached"):
        path = "/usr/bin/memcached"
    if path is None:
        missing("memcached", "./scripts/setup --with-servers installs it")
    return path


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


class Memcached:
    """One memcached process. ``server`` is what pymemcache takes: (host, port) or a path."""

    def __init__(
        self, host: str = "127.0.0.1", *, unix: bool = False, extra: tuple[str, ...] = ()
    ) -> None:
        self.host = host
        self.unix = unix
        self.extra = extra
        self.port = 0
        self.path = ""
        self._dir = ""
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def server(self) -> tuple[str, int] | str:
        return self.path if self.unix else (self.host, self.port)

    def start(self) -> Memcached:
        args = [binary(), "-U", "0", "-t", "1", "-m", "16", *self.extra]
        if os.geteuid() == 0:
            args += ["-u", "root"]  # memcached refuses to run as root otherwise
        for _attempt in range(5):
            if self.unix:
                self._dir = tempfile.mkdtemp(prefix="mc-")
                self.path = os.path.join(self._dir, "memcached.sock")
                cmd = [*args, "-s", self.path]
            else:
                self.port = free_port(self.host)
                cmd = [*args, "-l", self.host, "-p", str(self.port)]
            self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            if self._wait_ready():
                return self
            self.stop()  # most likely the port was taken meanwhile: another one
        raise RuntimeError(f"memcached did not start: {' '.join(cmd)}")

    def _wait_ready(self) -> bool:
        end = time.monotonic() + START_TIMEOUT
        while time.monotonic() < end:
            if self.proc is None or self.proc.poll() is not None:
                return False
            try:
                if self.unix:
                    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                        s.connect(self.path)
                else:
                    socket.create_connection((self.host, self.port), timeout=0.5).close()
                return True
            except OSError:
                time.sleep(0.01)
        return False

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.kill()
            proc.wait(5)
            if proc.stderr is not None:
                proc.stderr.close()
        if self._dir:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def bare_get(self, key: bytes) -> bytes | None:
        """Read a key with a raw socket, bypassing pymemcache and any instrumentation."""
        if self.unix:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(self.path)
        else:
            sock = socket.create_connection((self.host, self.port), timeout=2)
        with sock:
            sock.sendall(b"get " + key + b"\r\n")
            data = b""
            while not data.endswith(b"END\r\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        if not data.startswith(b"VALUE"):
            return None
        header, _, rest = data.partition(b"\r\n")
        size = int(header.split()[3])
        return rest[:size]


@contextmanager
def running(host: str = "127.0.0.1", **kwargs: object) -> Iterator[Memcached]:
    server = Memcached(host, **kwargs).start()  # type: ignore[arg-type]
    try:
        yield server
    finally:
        server.stop()
