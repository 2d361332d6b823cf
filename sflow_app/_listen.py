"""The server's listening port, found without a request (for a worker that has served none).

A pre-fork worker inherits its server's listening sockets. uWSGI names them
(``uwsgi.sockets``, and ``uwsgi.opt`` for its HTTP router); any other server's are found
among this process's descriptors -- only when exactly one TCP port listens, since an
application may listen elsewhere too (a metrics endpoint). The first request still
decides when this finds nothing: both name the same port.
"""

from __future__ import annotations

import importlib
import os
import socket
import stat
import sys
from typing import Any

PROC_FDS = "/proc/self/fd"


def fd_name(fd: int, which: str) -> Any:
    sock = socket.socket(fileno=fd)
    try:
        return getattr(sock, which)()
    finally:
        sock.detach()  # the server owns the descriptor: never close it


def uwsgi_router(opt: Any) -> tuple[str, int] | None:
    """(address, port) the HTTP router (``--http``/``--https``) listens on, lowest port."""
    found = []
    for key in ("http", "https"):
        value = opt.get(key)
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, bytes):
                item = item.decode("latin-1")
            if not isinstance(item, str):
                continue
            host, colon, port = item.split(",", 1)[0].rpartition(":")  # https: addr,cert
            if colon and port.isdigit():
                found.append((host.strip("[]") or "0.0.0.0", int(port)))
    return min(found, key=lambda a: a[1]) if found else None


def uwsgi_listener() -> tuple[int | None, str]:
    uwsgi: Any = importlib.import_module("uwsgi")  # only exists inside uWSGI
    router = uwsgi_router(uwsgi.opt)
    if router is not None:  # the HTTP router's port is the service's
        return router[1], f"uwsgi router {router[0]}:{router[1]}"
    ports = []
    for fd in uwsgi.sockets:
        name = fd_name(fd, "getsockname")
        if isinstance(name, tuple):
            ports.append(int(name[1]))
    if ports:
        return min(ports), f"uwsgi :{min(ports)}"
    return None, "uwsgi"


def inherited_listener() -> tuple[int | None, str]:
    """The one TCP port this process listens on, or None (none, several, no /proc)."""
    found: set[tuple[str, int]] = set()
    try:
        fds = [int(name) for name in os.listdir(PROC_FDS)]
    except (OSError, ValueError):
        return None, "no /proc"
    for fd in fds:
        try:
            if not stat.S_ISSOCK(os.fstat(fd).st_mode):
                continue
            sock = socket.socket(fileno=fd)
        except OSError:
            continue
        try:
            if (
                sock.family in (socket.AF_INET, socket.AF_INET6)
                and sock.type == socket.SOCK_STREAM
                and sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
            ):
                host, port = sock.getsockname()[:2]
                found.add((host, int(port)))
        except OSError:
            pass
        finally:
            sock.detach()
    ports = {port for _, port in found}
    if len(ports) != 1:
        return None, f"{len(ports)} listening ports"
    host, port = min(found)
    return port, f"{host}:{port}"


SERVERS = ("gunicorn", "uvicorn", "hypercorn")


def server_listener() -> tuple[int | None, str]:
    """(port or None, description) of the server this process works for: uWSGI, or a
    server started by its own command (``gunicorn ...``, ``python -m uvicorn ...``;
    uvicorn's spawned workers keep its argv). Elsewhere (a test runner, a script that
    also listens) a lone listener is no proof: wait for the first request."""
    if "uwsgi" in sys.modules:
        return uwsgi_listener()
    parts = os.path.normpath(sys.argv[0] if sys.argv else "").split(os.sep)
    command = parts[-2] if parts[-1] == "__main__.py" and len(parts) > 1 else parts[-1]
    if command in SERVERS:
        return inherited_listener()
    return None, "not a known server"
