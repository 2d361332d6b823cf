"""Record what sflowtool -j prints for datagrams an instrumented app sends.

    .venv/bin/python tests/data/sflowtool/record.py SFLOWTOOL > tests/data/sflowtool/app.jsonl

An instrumented WSGI app (wsgiref on loopback; sampling 1-in-1, polling 1 s) serves a few
requests, calls a decorated function and a real memcached (pymemcache, instrumented).
The agent sends to a relay here that keeps each datagram and passes it on to sflowtool
(``sflowtool -j -p PORT``) on another loopback port. Each output line holds one
datagram's bytes and sflowtool's object for it. Keys, URIs and names avoid the printing
quirks of sflowtool (tests/data/vectors/README.md): no memcache key needs URL-encoding, no
string reaches its maximum length.
"""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from wsgiref.simple_server import WSGIRequestHandler, make_server

ROOT = Path(__file__).resolve().parents[3]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from memcached import Memcached  # noqa: E402

import sflow_app  # noqa: E402
from sflow_app.memcache import instrument  # noqa: E402
from sflow_app.wsgi import SFlowMiddleware  # noqa: E402


def free_udp() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    return s


@sflow_app.transaction("checkout", application="shop")
def checkout(items: int) -> int:
    return items * 2


def app(environ, start_response):  # type: ignore[no-untyped-def]
    path = environ["PATH_INFO"]
    if path == "/missing":
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"no"]
    checkout(3)
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello " + path.encode()]


class Quiet(WSGIRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


def main() -> None:
    sflowtool = sys.argv[1]
    relay = free_udp()
    out_port = free_udp()
    port = out_port.getsockname()[1]
    out_port.close()
    tool = subprocess.Popen(
        [sflowtool, "-j", "-p", str(port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    time.sleep(0.5)
    sent: list[bytes] = []
    stop = threading.Event()

    def pass_on() -> None:
        fwd = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        relay.settimeout(0.1)
        while not stop.is_set():
            try:
                data = relay.recv(65535)
            except TimeoutError:
                continue
            sent.append(data)
            fwd.sendto(data, ("127.0.0.1", port))

    threading.Thread(target=pass_on, daemon=True).start()
    sflow_app.configure(
        collectors=[("127.0.0.1", relay.getsockname()[1])],
        agent_ip="127.0.0.1",
        sampling=1,
        polling=1,
        service_name="recorded",
        parent_ds_index=1,
        config_path="/nonexistent/hsflowd.auto",
    )
    instrument()
    from pymemcache.client.base import Client

    server = make_server("127.0.0.1", 0, SFlowMiddleware(app), handler_class=Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    web_port = server.server_address[1]
    mc = Memcached().start()
    try:
        client = Client(mc.server)
        client.set("user42", b"alice")
        client.get("user42")
        client.get("user43")
        for path in ("/", "/users/1", "/missing"):
            conn = http.client.HTTPConnection("127.0.0.1", web_port, timeout=5)
            conn.request("GET", path, headers={"User-Agent": "recorder/1.0"})
            conn.getresponse().read()
            conn.close()
        client.close()
        time.sleep(3)  # counters: polling every second
    finally:
        mc.stop()
    server.shutdown()
    time.sleep(1)
    stop.set()
    tool.terminate()
    stdout, stderr = tool.communicate(timeout=5)
    lines = stdout.decode().splitlines()
    if stderr or len(lines) != len(sent):
        raise SystemExit(f"sflowtool: {len(lines)} lines for {len(sent)} datagrams: {stderr!r}")
    for data, line in zip(sent, lines, strict=True):
        print(json.dumps({"datagram_hex": data.hex(), "sflowtool": json.loads(line)}))


if __name__ == "__main__":
    main()
