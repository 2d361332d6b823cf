"""The server's listening port, found without a request (for a worker that has served none).

A pre-fork worker inherits its server's listening sockets. uWSGI names them
(``uwsgi.sockets``, and ``uwsgi.opt`` for its HTTP router); any other server's are found
among this process's descriptors -- only when exactly one TCP port listens, since an
application may listen elsewhere too (a metrics endpoint). The first request still
decides when this finds nothing: both name the same port.

A WSGI request's own connection (``wsgi_listener``, ``wsgi_addresses``) is read from the
socket the server exposes in the environ (gunicorn, Werkzeug), uWSGI's connection fd, or
wsgiref's ``SERVER_PORT``.
"""

from __future__ import annotations

import importlib
import logging
import os
import socket
import stat
import sys
from collections.abc import Mapping
from typing import Any

from ._identity import command_name

log = logging.getLogger("sflow_app")
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
    if command_name(sys.argv[0] if sys.argv else "") in SERVERS:
        return inherited_listener()
    return None, "not a known server"


# -- a WSGI request's connection and listener (sflow_app.wsgi) ---------------------------


def _sockname(env: Mapping[str, Any]) -> Any:
    """The connection's local address, from the server's socket where it exposes it."""
    sock = env.get("gunicorn.socket") or env.get("werkzeug.socket")
    if sock is not None:
        return sock.getsockname()
    return None


def wsgi_addresses(env: Mapping[str, Any]) -> tuple[tuple[str, int] | None, tuple[str, int] | None]:
    """(local, remote) of the connection for extended_socket; None when not TCP/IP."""
    # Every sampled request comes here: _sockname inlined, and an environ that names no
    # socket (no server this knows) is done after three lookups.
    get = env.get
    try:
        sock = get("gunicorn.socket") or get("werkzeug.socket")
        if sock is not None:
            name = sock.getsockname()
            local = (name[0], name[1]) if isinstance(name, tuple) else None
            remote_port = get("REMOTE_PORT")
        elif "uwsgi.version" in env:
            local, peer_port = _uwsgi_connection(env)
            remote_port = get("REMOTE_PORT") or peer_port
        elif get("SERVER_SOFTWARE", "").startswith("WSGIServer/"):
            local = ("0.0.0.0", int(env["SERVER_PORT"]))
            remote_port = get("REMOTE_PORT")
        else:
            return _NO_ADDRESSES
    except Exception:
        log.debug("sflow_app: no local address", exc_info=True)
        return _NO_ADDRESSES
    remote_ip = get("REMOTE_ADDR", "")
    if local is None or not remote_ip:
        return _NO_ADDRESSES
    try:
        return local, (remote_ip, int(remote_port or 0))
    except ValueError:
        return local, (remote_ip, 0)


_NO_ADDRESSES: tuple[None, None] = (None, None)


def wsgi_listener(environ: Mapping[str, Any]) -> tuple[int | None, str]:
    """(listening port or None, description) of the server serving ``environ``."""
    try:
        name = _sockname(environ)
        if isinstance(name, tuple):
            return int(name[1]), f"{name[0]}:{name[1]}"
        if name is not None:  # AF_UNIX: a path (str or bytes)
            return None, os.fsdecode(name) or "unix"
        if "uwsgi.version" in environ:
            return uwsgi_listener()
        software = environ.get("SERVER_SOFTWARE", "")
        if software.startswith("WSGIServer/"):  # wsgiref: from its own socket
            return int(environ["SERVER_PORT"]), software
        return None, software or "wsgi"
    except Exception:
        log.debug("sflow_app: could not find the listening socket", exc_info=True)
        return None, "wsgi"


def _uwsgi_connection(env: Mapping[str, Any]) -> tuple[tuple[str, int] | None, int]:
    """(local address, peer port) of a uWSGI request's connection."""
    uwsgi: Any = importlib.import_module("uwsgi")
    if env.get("UWSGI_ROUTER"):  # the connection is the router's, not the client's
        return uwsgi_router(uwsgi.opt), 0
    fd = uwsgi.connection_fd()
    name = fd_name(fd, "getsockname")
    peer = fd_name(fd, "getpeername")
    local = (name[0], int(name[1])) if isinstance(name, tuple) else None
    return local, int(peer[1]) if isinstance(peer, tuple) else 0
