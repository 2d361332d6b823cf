"""Finding the server's port with no request: the listener a worker inherited."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import json, socket, sys
    sys.argv[0] = {argv0!r}
    from sflow_app._listen import inherited_listener, server_listener
    socks = []
    for _ in range({listeners}):
        s = socket.socket(socket.AF_INET6 if {v6} else socket.AF_INET)
        s.bind(("::1" if {v6} else "127.0.0.1", 0))
        s.listen()
        socks.append(s)
    client = socket.create_connection(socks[0].getsockname()[:2]) if socks else None
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))  # not a listener
    print(json.dumps({{"ports": [s.getsockname()[1] for s in socks],
                      "inherited": inherited_listener()[0],
                      "server": server_listener()[0]}}))
""")


def run(listeners: int, argv0: str = "/srv/venv/bin/gunicorn", v6: bool = False) -> dict:
    code = SCRIPT.format(argv0=argv0, listeners=listeners, v6=v6)
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True
    )
    return json.loads(out.stdout)


def test_the_one_listening_port_is_found() -> None:
    report = run(1)
    assert report["inherited"] == report["server"] == report["ports"][0]


def test_ipv6_listener() -> None:
    report = run(1, v6=True)
    assert report["server"] == report["ports"][0]


def test_python_m_server_is_recognised() -> None:
    report = run(1, argv0="/srv/venv/lib/python3.11/site-packages/uvicorn/__main__.py")
    assert report["server"] == report["ports"][0]


def test_several_or_no_listeners_name_nothing() -> None:
    assert run(2)["server"] is None  # which one serves HTTP is not knowable
    assert run(0)["server"] is None


def test_not_a_known_server_waits_for_a_request() -> None:
    """A test runner or a script that happens to listen: a lone listener is no proof."""
    report = run(1, argv0="/usr/bin/pytest")
    assert report["inherited"] == report["ports"][0] and report["server"] is None
