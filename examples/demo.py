"""The demo: an instrumented Flask app in gunicorn on loopback, a mixed workload, and what a
local sFlow collector receives, decoded. Stops by itself (about 15 s).

    ./scripts/demo            # or: .venv/bin/python examples/demo.py [--seconds N]

Everything stays on 127.0.0.1: the collector is a UDP socket this script binds on an
ephemeral loopback port, named in a private hsflowd.auto (sampling 1-in-10, polling
every 5 s) that the server finds through ``SFLOW_APP_CONFIG``. The lines it prints come
from the same renderer as ``sflow-app listen``, which does this for any agent.
"""

from __future__ import annotations

import argparse
import collections
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sflow_app.cli.render import describe  # noqa: E402
from sflow_app.decode import DecodeError, decode  # noqa: E402
from sflow_app.records import (  # noqa: E402
    AppOperation,
    CountersSample,
    Datagram,
    HttpCounters,
    HttpRequest,
)

SAMPLING, POLLING = 10, 5


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- what the collector prints (the renderer sflow-app listen uses) ----------------------


class Collector(threading.Thread):
    def __init__(self) -> None:
        super().__init__(name="demo-collector", daemon=True)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = int(self.sock.getsockname()[1])
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.datagrams: list[Datagram] = []
        self.shown = 0

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                data = self.sock.recv(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                dg = decode(data)
            except DecodeError as exc:
                print(f"!! undecodable datagram ({len(data)} bytes): {exc}", flush=True)
                continue
            with self.lock:
                self.datagrams.append(dg)
                self.shown += 1
                if self.shown <= 12 or any(isinstance(s, CountersSample) for s in dg.samples):
                    print(describe(dg), flush=True)
                elif self.shown == 13:
                    print(
                        "  ... (flow datagrams from here on are counted, not printed;"
                        " counter samples still are)",
                        flush=True,
                    )

    def latest(self, cls: type) -> Any:
        with self.lock:
            found = [
                r
                for dg in self.datagrams
                for s in dg.samples
                for r in getattr(s, "records", ())
                if isinstance(r, cls)
            ]
        return found[-1] if found else None

    def count(self, cls: type) -> int:
        with self.lock:
            return sum(
                isinstance(r, cls)
                for dg in self.datagrams
                for s in dg.samples
                for r in getattr(s, "records", ())
            )


# -- the server and the workload -------------------------------------------------------


def start_server(port: int, config: Path, state: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SFLOW_APP_")}
    env.update(
        SFLOW_APP_CONFIG=str(config),
        SFLOW_APP_NAME="shop-demo",
        SFLOW_APP_STATE_DIR=str(state),
        PYTHONPATH=str(ROOT),
    )
    cmd = [
        sys.executable,
        "-m",
        "gunicorn",
        "-w",
        "1",
        "-k",
        "gthread",
        "--threads",
        "4",
        "-b",
        f"127.0.0.1:{port}",
        "--no-control-socket",
        "--log-level",
        "warning",
        "examples.flask_app:app",
    ]
    # The app's own logs (Flask logs the /fail tracebacks) go to a file, not the screen.
    with open(state / "server.log", "wb") as log:
        return subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=log, stderr=log, start_new_session=True
        )


def request(port: int, method: str, path: str, body: dict[str, Any] | None = None) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        payload = json.dumps(body).encode() if body is not None else None
        headers = {"User-Agent": "sflow-app-demo/1.0"}
        if payload is not None:
            headers["Content-Type"] = "application/json"
        conn.request(method, path, body=payload, headers=headers)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def wait_ready(port: int, server: subprocess.Popen[bytes], log: Path, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(
                "demo: gunicorn exited; is the venv complete? (./scripts/setup)"
                f"\n{log.read_text(errors='replace')}"
            )
        try:
            if request(port, "GET", "/healthz") == 200:
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit("demo: the server did not start")


def workload(port: int, seconds: float) -> collections.Counter[tuple[str, int]]:
    sent: collections.Counter[tuple[str, int]] = collections.Counter()
    plan = [
        ("GET", "/", None),
        ("GET", "/users/1", None),
        ("GET", "/users/2", None),
        ("POST", "/orders", {"items": ["tea", "cake"]}),
        ("GET", "/users/99", None),
        ("GET", "/users/3?token=s3cr3t&lang=en", None),
        ("GET", "/fail", None),
        ("GET", "/export?rows=2000", None),
        ("GET", "/missing", None),
        ("POST", "/orders", {"items": ["coffee"]}),
    ]
    end = time.monotonic() + seconds
    i = 0
    while time.monotonic() < end:
        method, path, body = plan[i % len(plan)]
        sent[method, request(port, method, path, body)] += 1
        i += 1
        time.sleep(0.01)
    return sent


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0].replace("\n", " "),
        epilog="It leaves nothing behind: its config, state and server log live in a "
        "temporary folder that is removed at the end.",
    )
    parser.add_argument("--seconds", type=float, default=5.0, help="workload duration")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="sflow-demo-"))
    try:
        run(args.seconds, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run(seconds: float, tmp: Path) -> None:
    collector = Collector()
    collector.start()
    config = tmp / "hsflowd.auto"
    config.write_text(
        "# WARNING: Do not edit this file. It is generated automatically by hsflowd.\n"
        f"rev_start=1\nhostname=demo\nsampling={SAMPLING}\nheader=128\ndatagram=1400\n"
        f"polling={POLLING}\ncollector=127.0.0.1 {collector.port}\nagentIP=127.0.0.1\n"
        "ds_index=1\nrev_end=1\n"
    )
    port = free_port()
    print(f"demo: collector on udp 127.0.0.1:{collector.port}; config {config}:")
    print("  " + config.read_text().strip().replace("\n", "\n  "))
    print(
        f"demo: gunicorn (gthread, 1 worker) serving examples/flask_app.py on "
        f"http://127.0.0.1:{port}\n",
        flush=True,
    )
    server = start_server(port, config, tmp)
    try:
        wait_ready(port, server, tmp / "server.log")
        sent = workload(port, seconds)
        total = sum(sent.values())
        print(
            f"\ndemo: workload done, {total} requests sent; waiting for the next "
            f"counter sample (every {POLLING} s)...",
            flush=True,
        )
        want = (
            sum(n for (m, _), n in sent.items() if m == "GET"),
            sum(n for (m, _), n in sent.items() if m == "POST"),
        )
        deadline = time.monotonic() + POLLING + 3
        while time.monotonic() < deadline:
            last = collector.latest(HttpCounters)
            if last and (last.method_get_count, last.method_post_count) == want:
                break
            time.sleep(0.2)
    finally:
        try:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(server.pid, signal.SIGKILL)
        time.sleep(0.3)
        collector.stop.set()
        collector.join(2)
        collector.sock.close()

    last = collector.latest(HttpCounters)
    print("\n=== summary ===")
    by_status: collections.Counter[str] = collections.Counter()
    for (_, status), n in sent.items():
        by_status[f"{status // 100}XX"] += n
    print(
        f"requests sent   : {total}  GET {want[0]}  POST {want[1]}  |  "
        + "  ".join(f"{k} {v}" for k, v in sorted(by_status.items()))
    )
    if last is None:
        print("http_counters   : none received")
    else:
        got = {
            "2XX": last.status_2XX_count,
            "3XX": last.status_3XX_count,
            "4XX": last.status_4XX_count,
            "5XX": last.status_5XX_count,
        }
        print(
            f"http_counters   : {last.method_get_count + last.method_post_count}  "
            f"GET {last.method_get_count}  POST {last.method_post_count}  |  "
            + "  ".join(f"{k} {v}" for k, v in got.items() if v)
        )
        match = (last.method_get_count, last.method_post_count) == want and all(
            got.get(k, 0) == v for k, v in by_status.items()
        )
        print(
            f"counters match  : {'yes' if match else 'NO'} (every request is counted, "
            f"sampled or not; /healthz is excluded)"
        )
    flows = collector.count(HttpRequest)
    print(
        f"http samples    : {flows} of {total} requests (1-in-{SAMPLING}: expect about "
        f"{total // SAMPLING}); app_operation records: {collector.count(AppOperation)}"
    )
    agents = sorted({dg.agent_address for dg in collector.datagrams})
    print(f"datagrams       : {len(collector.datagrams)} from agent(s) {', '.join(agents)}")


if __name__ == "__main__":
    main()
