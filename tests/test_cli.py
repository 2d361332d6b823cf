"""The ``sflow-app`` command, end to end: each sub-command runs as a subprocess."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import DATA, wait_until, write_auto

from sflow_app._encode import encode_datagram
from sflow_app.records import (
    CountersSample,
    Datagram,
    FlowSample,
    HttpRequest,
    MemcacheOperation,
)

APPS = Path(__file__).resolve().parent / "apps"
RECORDED = DATA / "sflowtool" / "app.jsonl"
RUN_KEYS = ("unixSecondsUTC", "unixSecondsUTC_uS", "localtime")


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SFLOW_APP_")}
    return {**env, "PYTHONUNBUFFERED": "1", **extra}


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sflow_app", *args],
        env=env or cli_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def interruptible_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """The command in a subprocess that Ctrl-C (SIGINT) reaches, its output piped."""
    # A SIGINT ignored by whatever started pytest (a background job of a non-interactive
    # shell, nohup) is inherited, and Python then installs no KeyboardInterrupt handler.
    # exec() resets a handled signal to default.
    inherited = signal.getsignal(signal.SIGINT)
    if inherited is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "sflow_app", *args],
            env=env or cli_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    finally:
        if inherited is signal.SIG_IGN:
            signal.signal(signal.SIGINT, signal.SIG_IGN)


def start_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """Start a receiving command and return once it says it listens (on stderr)."""
    proc = interruptible_cli(*args, env=env)
    assert proc.stderr is not None
    line = proc.stderr.readline()
    assert "listening on udp" in line, line + proc.stderr.read()
    return proc


@contextlib.contextmanager
def killed_at_end(proc: subprocess.Popen[str]) -> Iterator[subprocess.Popen[str]]:
    """``proc``, killed and reaped on the way out if a failed check left it running: a hung
    command must not outlive its test (a ResourceWarning in another)."""
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def send(port: int, payloads: list[bytes]) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for data in payloads:
            s.sendto(data, ("127.0.0.1", port))
            time.sleep(0.01)  # loopback keeps order; pacing keeps the receive buffer easy


def recorded() -> list[dict[str, Any]]:
    return [json.loads(line) for line in RECORDED.read_text().splitlines()]


# -- the command itself ----------------------------------------------------------------


def test_help_for_every_command_and_usage_errors_exit_2() -> None:
    top = run_cli("--help")
    assert top.returncode == 0 and all(c in top.stdout for c in ("config", "listen", "top"))
    for command in ("config", "listen", "top"):
        result = run_cli(command, "--help")
        assert result.returncode == 0 and "usage: sflow-app " + command in result.stdout
    assert run_cli().returncode == 2
    assert run_cli("nonsense").returncode == 2
    for port in ("70000", "0", "-1"):  # one message for every number out of range
        bad = run_cli("listen", "--port", port)
        assert bad.returncode == 2 and f"{port} is not a port (1..65535)" in bad.stderr


def test_the_console_script_is_installed() -> None:
    script = Path(sys.executable).with_name("sflow-app")
    if not script.exists():
        pytest.skip("sflow-app is not installed in this environment (pip install -e .)")
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "usage: sflow-app" in result.stdout


def test_import_sflow_app_does_not_import_the_cli() -> None:
    code = (
        "import sys, sflow_app; "
        "print(sorted(m for m in sys.modules if 'cli' in m or m == 'argparse'))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "[]"


# -- listen ---------------------------------------------------------------------------


def test_listen_json_prints_what_sflowtool_printed() -> None:
    vectors = recorded()
    port = free_udp_port()
    t0 = time.time()
    proc = start_cli("listen", "--json", "--port", str(port), "--count", str(len(vectors)))
    send(port, [bytes.fromhex(v["datagram_hex"]) for v in vectors])
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    lines = out.splitlines()
    assert len(lines) == len(vectors)
    for line, vector in zip(lines, vectors, strict=True):
        ours, theirs = json.loads(line), vector["sflowtool"]
        assert list(ours) == list(theirs)  # sflowtool's keys in sflowtool's order
        assert {k: v for k, v in ours.items() if k not in RUN_KEYS} == {
            k: v for k, v in theirs.items() if k not in RUN_KEYS
        }
        assert t0 - 1 <= int(ours["unixSecondsUTC"]) <= time.time() + 1
        assert 0 <= int(ours["unixSecondsUTC_uS"]) < 1_000_000
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4}", ours["localtime"])


def test_listen_json_escapes_what_sflowtool_would_not() -> None:
    rec = HttpRequest(method=2, protocol=1001, uri='/a"b\\c\n', status=200)
    sample = FlowSample(1, 3, 80, 1, 1, 0, 0, 0, 0, 0x3FFFFFFF, (rec,))
    port = free_udp_port()
    proc = start_cli("listen", "--json", "--port", str(port), "--count", "1")
    send(port, [encode_datagram(Datagram("127.0.0.1", 80, 1, 1, (sample,)))])
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    element = json.loads(out)["samples"][0]["elements"][0]
    assert element["http_uri"] == '/a"b\\c\n'


def test_listen_receives_an_instrumented_app(tmp_path: Path) -> None:
    port = free_udp_port()
    proc = start_cli("listen", "--json", "--port", str(port), "--seconds", "20")
    env = cli_env(
        SFLOW_APP_COLLECTORS=f"127.0.0.1:{port}",
        SFLOW_APP_AGENT_IP="127.0.0.1",
        SFLOW_APP_SAMPLING="1",
        SFLOW_APP_CONFIG=str(tmp_path / "none.auto"),
        SFLOW_APP_STATE_DIR=str(tmp_path),
        SFLOW_APP_NAME="sender",
        PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parents[1]), str(APPS)]),
    )
    paths = ["/a", "/b", "/missing"]
    subprocess.run(
        [sys.executable, str(APPS / "sender_app.py"), *paths], env=env, check=True, timeout=60
    )
    proc.terminate()  # the sender has exited; every line printed was flushed
    out, _ = proc.communicate(timeout=30)
    objects = [json.loads(line) for line in out.splitlines()]
    assert objects and all(o["datagramSourceIP"] == "127.0.0.1" for o in objects)
    uris = [
        (e["http_uri"], e["http_status"])
        for o in objects
        for s in o["samples"]
        for e in s["elements"]
        if e.get("flowBlock_tag") == "0:2206"
    ]
    assert uris == [("/a", "200"), ("/b", "200"), ("/missing", "404")]


def test_listen_prints_readable_lines_with_names() -> None:
    vectors = recorded()
    port = free_udp_port()
    proc = start_cli("listen", "--port", str(port), "--count", str(len(vectors)))
    send(port, [bytes.fromhex(v["datagram_hex"]) for v in vectors])
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "http GET /users/1 -> 200 text/plain" in out
    assert "http GET /missing -> 404" in out
    assert "memcache GET user43 -> NOT_FOUND" in out
    assert "memcache GET user42 -> OK" in out
    assert "app shop: checkout -> SUCCESS" in out
    assert "http_counters GET 3 | 2XX 2 4XX 1" in out
    samples = sum(len(v["sflowtool"]["samples"]) for v in vectors)
    assert len(out.splitlines()) == samples  # one line per sample


def test_listen_exit_1_when_nothing_arrived_and_2_when_the_port_is_taken() -> None:
    port = free_udp_port()
    quiet = run_cli("listen", "--port", str(port), "--seconds", "0.5")
    assert quiet.returncode == 1 and "nothing arrived" in quiet.stderr
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        busy = run_cli("listen", "--port", str(taken.getsockname()[1]), "--count", "1")
    assert busy.returncode == 2 and "already listens there" in busy.stderr
    assert busy.stdout == ""


def test_listen_skips_an_undecodable_datagram() -> None:
    port = free_udp_port()
    proc = start_cli("listen", "--json", "--port", str(port), "--count", "1")
    good = bytes.fromhex(recorded()[1]["datagram_hex"])
    send(port, [b"\x00\x00\x00\x05garbage", good])
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0 and "undecodable datagram from 127.0.0.1" in err
    assert len(out.splitlines()) == 1


@pytest.mark.parametrize("command", ["listen", "top"])
def test_a_flood_of_undecodable_datagrams_is_counted_not_printed(command: str) -> None:
    """Each undecodable datagram printed its own stderr line: a flood of them flooded the
    terminal. The first from a sender is explained; the rest are counted, one line a
    second (listen) or a refresh (top) and at the end, adding up to all of them."""
    port = free_udp_port()
    # listen ends at its one good datagram, sent last; top (which --seconds ends at
    # worst) at Ctrl-C once its refreshes have reported them all.
    args = ["--count", "1"] if command == "listen" else ["--interval", "0.5", "--seconds", "30"]
    proc = start_cli(command, "--port", str(port), *args)
    assert proc.stderr is not None
    flood = 200  # all fit in the receive buffer unread (a few hundred bytes each)
    counted = re.compile(rf"sflow-app {command}: ([\d,]+) more undecodable datagrams? from ")
    with killed_at_end(proc):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            if command == "top":
                s.sendto(_hot_datagrams()[0], ("127.0.0.1", port))
            for _ in range(flood):
                s.sendto(b"\x00\x00\x00\x05garbage", ("127.0.0.1", port))
            if command == "listen":
                s.sendto(_hot_datagrams()[0], ("127.0.0.1", port))
        lines = [proc.stderr.readline()]
        if command == "top":
            total = 1
            while total < flood and lines[-1]:
                lines.append(proc.stderr.readline())
                found = counted.match(lines[-1])
                total += int(found[1].replace(",", "")) if found else "undecodable" in lines[-1]
            proc.send_signal(signal.SIGINT)
        # Through the same buffered reader (communicate() would miss what readline()
        # read ahead); stdout holds a few snapshots at most, far less than a pipe.
        err = "".join(lines) + proc.stderr.read()
        assert proc.stdout is not None
        out = proc.stdout.read()
        proc.communicate(timeout=60)  # and closes them
    assert proc.returncode == 0 and "Traceback" not in err, err
    assert len(err.splitlines()) < flood // 4, err  # a line a second, not one a datagram
    assert lines[0] == (
        f"sflow-app {command}: undecodable datagram from 127.0.0.1 (11 bytes): agent address "
        "type 1734439522 (unknown) (any more are counted, not shown one by one)\n"
    )
    reports = [counted.match(line) for line in err.splitlines()]
    total = 1 + sum(int(found[1].replace(",", "")) for found in reports if found)
    assert total == flood, err
    assert all(line.endswith("from 127.0.0.1") for line in err.splitlines()[1:] if "more" in line)
    assert "/hot" in out


# -- top ------------------------------------------------------------------------------


def http_sample(seq: int, uri: str, status: int, us: int, rate: int) -> FlowSample:
    rec = HttpRequest(method=2, protocol=1001, uri=uri, status=status, resp_bytes=1000, uS=us)
    return FlowSample(seq, 3, 8080, rate, seq * rate, 0, 0, 0, 0, 0x3FFFFFFF, (rec,))


def memcache_sample(seq: int, key: str, status: int, rate: int) -> FlowSample:
    rec = MemcacheOperation(protocol=1, cmd=7, key=key, nkeys=1, uS=100, status=status)
    return FlowSample(seq, 3, 70000, rate, seq * rate, 0, 0x3FFFFFFF, 0, 0, 0, (rec,))


def test_top_once_ranks_scaled_estimates_with_percentiles_and_keys() -> None:
    samples: list[object] = []
    # /hot: 39 samples at 1-in-100 (3,900 requests), durations 1..39 ms; /cold: 2 samples.
    samples += [http_sample(i, f"/hot?id={i}", 200, (i + 1) * 1000, 100) for i in range(39)]
    samples += [http_sample(100 + i, "/cold", 500, 50_000, 100) for i in range(2)]
    samples += [memcache_sample(200 + i, "user42", 1, 10) for i in range(5)]
    samples += [memcache_sample(300 + i, "user43", 8, 10) for i in range(3)]
    datagrams = [
        encode_datagram(Datagram("127.0.0.1", 8080, n, 1000, tuple(samples[i : i + 8])))
        for n, i in enumerate(range(0, len(samples), 8))
    ]
    datagrams.append(
        encode_datagram(Datagram("127.0.0.1", 8080, 99, 1000, (CountersSample(1, 3, 8080, ()),)))
    )
    port = free_udp_port()
    proc = start_cli("top", "--once", "--seconds", "4", "--port", str(port))
    send(port, datagrams)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    lines = out.splitlines()
    hot = next(i for i, line in enumerate(lines) if line.endswith("GET /hot  [127.0.0.1/8080]"))
    cold = next(i for i, line in enumerate(lines) if line.endswith("GET /cold  [127.0.0.1/8080]"))
    assert hot < cold
    # est. requests, per s, 2xx, 3xx, 4xx, 5xx, p50, p95, p99, est. bytes
    fields = lines[hot].split()
    assert fields[0] == "3,900" and fields[2:6] == ["3,900", "0", "0", "0"]
    assert fields[6:9] == ["20.0", "38.0", "39.0"]  # weighted nearest rank over 1..39 ms
    assert fields[9] == "3,900,000"
    assert lines[cold].split()[0] == "200" and lines[cold].split()[5] == "200"
    assert re.search(r"^\s+50\s+\S+\s+0.1\s+0.1\s+0.1\s+user42$", out, re.M)
    missed = out[out.index("memcache missed keys") :]
    assert re.search(r"^\s+30\s+\S+.*user43$", missed, re.M)
    assert "user42" not in missed.split("memcache commands")[0]
    assert not re.search(r"\d[kKM]\b", out)  # whole numbers, never 3.9k


def _hot_datagrams() -> list[bytes]:
    samples = [http_sample(i, "/hot", 200, 1000, 10) for i in range(8)]
    return [encode_datagram(Datagram("127.0.0.1", 8080, 1, 1000, tuple(samples)))]


@pytest.mark.parametrize("stop", ["ctrl-c", "seconds"])
def test_top_live_ends_with_a_last_snapshot(stop: str) -> None:
    """Live mode (plain text: not a terminal) refreshing every 100 s: what arrived before
    Ctrl-C, or before --seconds ran out, is in the last snapshot it prints (datagrams
    still in the socket's buffer at Ctrl-C included)."""
    port = free_udp_port()
    until = ["--seconds", "2"] if stop == "seconds" else []
    proc = start_cli("top", "--interval", "100", "--port", str(port), *until)
    send(port, _hot_datagrams())  # in the socket's buffer once sendto returns
    with killed_at_end(proc):
        if stop == "ctrl-c":
            proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    [line] = [line for line in out.splitlines() if line.endswith("GET /hot  [127.0.0.1/8080]")]
    assert line.split()[0] == "80"  # 8 samples at 1-in-10


def test_top_that_decoded_nothing_exits_1_as_listen_does() -> None:
    """`top --once` exited 0 after a window in which nothing arrived, where `listen
    --seconds` exits 1: `sflow-app top --once > snapshot || alert` took silence for a
    quiet service. Bounded by --once or --seconds, it exits 1 and says why."""
    port = free_udp_port()
    quiet = run_cli("top", "--once", "--seconds", "0.5", "--port", str(port))
    assert quiet.returncode == 1, quiet.stderr
    assert f"sflow-app top: nothing arrived on udp 127.0.0.1 port {port}; " in quiet.stderr
    assert quiet.stdout.startswith("sflow-app top: ")  # the (empty) snapshot all the same
    # Live, to --seconds: what is in the socket's buffer at the end is read too.
    proc = start_cli("top", "--seconds", "3", "--interval", "100", "--port", str(port))
    with killed_at_end(proc):
        send(port, [b"not sflow"])
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, err
    assert "1 datagram arrived on udp 127.0.0.1 port" in err
    assert "but none could be decoded" in err
    assert "Traceback" not in err


def test_top_port_in_use_exits_2() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        result = run_cli("top", "--once", "--port", str(taken.getsockname()[1]))
    assert result.returncode == 2 and "choose another --port" in result.stderr


# -- config ---------------------------------------------------------------------------


def config_json(env: dict[str, str]) -> tuple[int, dict[str, Any], str]:
    result = run_cli("config", "--json", env=env)
    return result.returncode, json.loads(result.stdout), result.stderr


def test_config_shows_sources_for_a_file_and_environment_mix(tmp_path: Path) -> None:
    auto = write_auto(tmp_path / "h.auto", 6343, sampling=400, extra="sampling.http=50\n")
    env = cli_env(
        SFLOW_APP_CONFIG=str(auto),
        SFLOW_APP_DATAGRAM="1200",
        SFLOW_APP_SAMPLING_APP_SHOP="5",
        SFLOW_APP_SHARED="0",
        SFLOW_APP_STATE_DIR=str(tmp_path),
    )
    code, report, err = config_json(env)
    assert code == 0, err
    s = report["settings"]
    assert s["sampling"] == {"value": 400, "source": "file"}
    assert s["sampling.http"] == {"value": 50, "source": "file"}
    assert s["sampling.app.shop"] == {"value": 5, "source": "environment"}
    assert s["sampling.memcache"] == {"value": 400, "source": "file"}
    assert s["datagram"] == {"value": 1200, "source": "environment"}
    assert s["collector"] == {"value": ["127.0.0.1:6343"], "source": "file"}
    assert s["agentIP"] == {"value": "127.0.0.1", "source": "file"}
    assert s["parent_ds_index"] == {"value": 1, "source": "file"}
    assert s["queue_capacity"] == {"value": 4096, "source": "default"}
    assert s["polling"] == {"value": 1, "source": "file"}
    assert s["shared"] == {"value": False, "source": "environment"}
    assert s["state_dir"] == {"value": str(tmp_path), "source": "environment"}
    assert s["ds_index"] == {"value": None, "source": "derived"}
    assert s["sub_agent_id"] == {"value": None, "source": "derived"}
    assert s["service_name"] == {"value": None, "source": "derived"}
    assert report["file"] == {"path": str(auto), "state": "ok", "rev": 1, "reason": "rev 1"}
    assert report["identity"] == {
        "agent_ip": "127.0.0.1",
        "agent_ip_source": "file",
        "sub_agent_id": None,
        "ds_index": None,
        "service_name": None,
    }
    reason = f"sending to 1 collector from {auto} rev 1"
    assert report["would_send"] == {"value": True, "reason": reason}
    plain = run_cli("config", env=env)
    assert plain.returncode == 0
    assert re.search(rf"^would send\s+yes\s+{re.escape(reason)}$", plain.stdout, re.M)
    assert re.search(r"^sampling\.http\s+50\s+file$", plain.stdout, re.M)
    assert re.search(r"^datagram\s+1200\s+environment$", plain.stdout, re.M)


def test_config_index_rows_are_named_as_their_variables(tmp_path: Path) -> None:
    auto = write_auto(tmp_path / "h.auto", 6343)
    env = cli_env(SFLOW_APP_CONFIG=str(auto), SFLOW_APP_DS_INDEX="5", SFLOW_APP_PARENT_DS_INDEX="9")
    code, report, err = config_json(env)
    assert code == 0, err
    s = report["settings"]
    assert s["ds_index"] == {"value": 5, "source": "environment"}
    assert s["parent_ds_index"] == {"value": 9, "source": "environment"}
    # The agent's sub_agent_id: the HTTP data source's index, here the variable's.
    assert s["sub_agent_id"] == {"value": 5, "source": "derived"}
    assert (report["identity"]["sub_agent_id"], report["identity"]["ds_index"]) == (5, 5)
    code, report, err = config_json({**env, "SFLOW_APP_SUB_AGENT_ID": "7"})
    assert report["settings"]["sub_agent_id"] == {"value": 7, "source": "environment"}
    plain = run_cli("config", env=env).stdout
    assert re.search(r"^ds_index\s+5\s+environment$", plain, re.M)
    assert re.search(r"^parent_ds_index\s+9\s+environment$", plain, re.M)
    assert re.search(r"^sub_agent_id\s+5\s+derived$", plain, re.M)


def test_config_warns_of_a_service_name_cut_on_the_wire(tmp_path: Path) -> None:
    auto = write_auto(tmp_path / "h.auto", 6343)
    code, report, err = config_json(cli_env(SFLOW_APP_CONFIG=str(auto), SFLOW_APP_NAME="s" * 300))
    assert code == 0, err
    assert report["settings"]["service_name"] == {"value": "s" * 300, "source": "environment"}
    assert (
        "sflow-app config: warning: SFLOW_APP_NAME is cut to 32 characters on the wire "
        f"(sFlow's application field holds 32 bytes): collectors receive {'s' * 32!r}"
    ) in err


def test_config_exit_1_for_a_torn_file(tmp_path: Path) -> None:
    torn = tmp_path / "torn.auto"
    torn.write_text("rev_start=2\nsampling=10\ncollector=127.0.0.1\nagentIP=127.0.0.1\n")
    torn.chmod(0o644)
    code, report, err = config_json(cli_env(SFLOW_APP_CONFIG=str(torn)))
    assert code == 1 and report["file"]["state"] == "torn" and report["file"]["rev"] == 2
    assert "would send nothing" in err and "torn read" in err


def test_config_exit_1_for_a_missing_file_and_0_with_collectors_from_the_environment(
    tmp_path: Path,
) -> None:
    missing = str(tmp_path / "missing.auto")
    code, report, err = config_json(cli_env(SFLOW_APP_CONFIG=missing))
    assert code == 1 and report["file"]["state"] == "missing"
    assert f"would send nothing: off: {missing}: not found" in err
    assert report["would_send"] == {"value": False, "reason": f"off: {missing}: not found"}
    assert report["settings"]["config"] == {"value": missing, "source": "environment"}
    env = cli_env(SFLOW_APP_CONFIG=missing, SFLOW_APP_COLLECTORS="127.0.0.1:7000, web1")
    code, report, err = config_json(env)
    assert code == 0 and report["file"]["state"] == "missing"
    assert report["settings"]["collector"] == {"value": ["127.0.0.1:7000"], "source": "environment"}
    assert report["identity"]["agent_ip_source"] == "derived"
    assert "SFLOW_APP_COLLECTORS entry 'web1' ignored" in err
    assert f"SFLOW_APP_CONFIG={missing}: no such file; sending to 1 collector" in err


@pytest.mark.parametrize(
    "text, mode, state",
    [
        ("", 0o644, "suppressed"),
        ("rev_start=4\nrev_end=4\n", 0o644, "suppressed"),
        ("rev_start=4\ncollector=127.0.0.1\nrev_end=4\n", 0o644, "incomplete"),
        ("rev_start=4\nagentIP=127.0.0.1\nrev_end=4\n", 0o644, "incomplete"),
        ("rev_start=4\ncollector=127.0.0.1\nagentIP=127.0.0.1\nrev_end=4\n", 0o666, "refused"),
    ],
)
def test_config_file_states(tmp_path: Path, text: str, mode: int, state: str) -> None:
    path = tmp_path / "h.auto"
    path.write_text(text)
    path.chmod(mode)
    code, report, _ = config_json(cli_env(SFLOW_APP_CONFIG=str(path)))
    assert (code, report["file"]["state"]) == (1, state)


def test_config_off_and_typos(tmp_path: Path) -> None:
    auto = write_auto(tmp_path / "h.auto", 6343)
    env = cli_env(SFLOW_APP_CONFIG=str(auto), SFLOW_APP_DISABLE="1", SFLOW_APP_SAMPLNG="5")
    code, report, err = config_json(env)
    assert code == 1 and report["file"]["state"] == "off"
    assert report["settings"]["disable"] == {"value": True, "source": "environment"}
    assert "unknown variable SFLOW_APP_SAMPLNG ignored; did you mean SFLOW_APP_SAMPLING?" in err


def test_config_warns_of_an_unknown_application_and_does_not_list_it(tmp_path: Path) -> None:
    auto = write_auto(tmp_path / "h.auto", 6343, extra="sampling.apache=7\n")
    env = cli_env(SFLOW_APP_CONFIG=str(auto), SFLOW_APP_SAMPLING_HTP="5")
    code, report, err = config_json(env)
    assert code == 0, err
    warning = "unknown variable SFLOW_APP_SAMPLING_HTP ignored: no application 'htp' here"
    assert f"sflow-app config: warning: {warning}" in err
    assert "did you mean SFLOW_APP_SAMPLING_HTTP?" in err and err.count("warning:") == 1
    assert "sampling.htp" not in report["settings"]
    assert report["settings"]["sampling.apache"] == {"value": 7, "source": "file"}


def test_config_with_a_name_that_is_not_utf8(tmp_path: Path) -> None:
    # SFLOW_APP_NAME set from a Latin-1 shell: the table and --json raised
    # UnicodeEncodeError on a UTF-8 stdout (the name holds a surrogate for the byte).
    auto = write_auto(tmp_path / "hsflowd.auto", 6343)
    env = {k.encode(): v.encode() for k, v in cli_env(SFLOW_APP_CONFIG=str(auto)).items()}
    env |= {b"SFLOW_APP_NAME": b"caf\xe9", b"PYTHONIOENCODING": b"utf-8"}
    for args in ([], ["--json"]):
        done = subprocess.run(
            [sys.executable, "-m", "sflow_app", "config", *args],
            env=env,  # type: ignore[arg-type]
            capture_output=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr.decode(errors="replace")
        out = done.stdout.decode()
        if args:
            assert json.loads(out)["settings"]["service_name"]["value"] == "caf\udce9"
        else:
            assert re.search(r"^service_name +caf\\xe9 +environment$", out, re.M), out


@pytest.mark.parametrize("args", [["config"], ["status", "--json"], ["config", "--json"]])
def test_a_reader_that_left_is_no_traceback_and_keeps_the_status(
    tmp_path: Path, args: list[str]
) -> None:
    """`sflow-app config | head -1` with the output still buffered (the default on a pipe):
    the interpreter's own flush at exit said "Exception ignored ... BrokenPipeError" and
    exited 120."""
    env = {k: v for k, v in cli_env().items() if k != "PYTHONUNBUFFERED"}
    env["SFLOW_APP_STATE_DIR"] = str(tmp_path)
    env["SFLOW_APP_CONFIG"] = str(tmp_path / "missing.auto")
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader already left: every write fails with EPIPE
    try:
        result = subprocess.run(
            [sys.executable, "-m", "sflow_app", *args],
            env=env,
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
        )
        # `2>&1 | head`: stderr broken too
        both = subprocess.run(
            [sys.executable, "-m", "sflow_app", *args],
            env=env,
            stdout=write_end,
            stderr=write_end,
            timeout=60,
        )
    finally:
        os.close(write_end)
    assert "Traceback" not in result.stderr and "Exception ignored" not in result.stderr
    assert result.returncode == 1, result.stderr  # no collector / no service: its own status
    assert both.returncode in (0, 1)  # cut short, or finished: never 120


def test_listen_says_how_many_datagrams_it_dropped_when_it_fell_behind() -> None:
    """A listener whose reader stalls loses datagrams in the kernel (its receive buffer
    full): it said nothing, so a quiet output looked like a quiet agent."""
    samples = [http_sample(i, "/" + "x" * 200, 200, 1000, 1) for i in range(5)]
    data = encode_datagram(Datagram("127.0.0.1", 8080, 1, 1000, tuple(samples)))
    port = free_udp_port()
    proc = start_cli("listen", "--json", "--port", str(port), "--seconds", "3")
    sent = 30_000  # far more than any receive buffer holds (ours asks for 4 MB)
    with killed_at_end(proc):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            # Nobody reads its stdout yet: once the pipe is full it stops reading the
            # socket, and the kernel drops what does not fit.
            for _ in range(sent):
                s.sendto(data, ("127.0.0.1", port))
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0 and "Traceback" not in err, err
    found = re.search(r"([\d,]+) datagrams dropped unread", err)
    assert found, err
    lost = int(found[1].replace(",", ""))
    assert lost > 0 and lost + len(out.splitlines()) <= sent


def test_top_once_cut_short_by_ctrl_c_prints_what_arrived() -> None:
    """`top --once --seconds 60` stopped early printed nothing at all."""
    port = free_udp_port()
    proc = start_cli("top", "--once", "--seconds", "600", "--port", str(port))
    send(port, _hot_datagrams())
    with killed_at_end(proc):
        time.sleep(0.5)  # past the few lines between "listening" and the receive loop
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and "Traceback" not in err, err
    assert out.startswith("sflow-app top: ")


def process_state(pid: int) -> str:
    """R, S, T (stopped)... from /proc/PID/stat."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def test_top_once_reads_what_waits_in_the_buffer_at_its_end() -> None:
    """`top --once` stopped by Ctrl-C (or at the end of its window) left out of its
    snapshot the datagrams that had arrived but still waited in the socket's buffer (a
    burst, a busy machine); live top reads them first, as documented for both."""
    port = free_udp_port()
    proc = start_cli("top", "--once", "--seconds", "600", "--port", str(port))
    assert proc.stderr is not None
    with killed_at_end(proc):
        send(port, [b"not sflow"])
        assert "undecodable datagram" in proc.stderr.readline()  # in its receive loop
        # Stopped, it reads nothing: what is sent now still waits in the buffer at Ctrl-C.
        proc.send_signal(signal.SIGSTOP)
        assert wait_until(lambda: process_state(proc.pid) == "T")
        send(port, _hot_datagrams() * 5)
        proc.send_signal(signal.SIGINT)
        proc.send_signal(signal.SIGCONT)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and "Traceback" not in err, err
    [hot] = [line for line in out.splitlines() if line.endswith("GET /hot  [127.0.0.1/8080]")]
    assert hot.split()[0] == "400"  # 5 datagrams of 8 samples at 1-in-10


def test_top_ctrl_c_in_the_middle_of_a_datagram_loses_none() -> None:
    """Ctrl-C raised KeyboardInterrupt wherever top was: in the middle of decoding or
    counting a datagram it had read, that one was lost (counted neither as received nor
    as dropped). Ctrl-C takes effect between two datagrams now."""
    port = free_udp_port()
    proc = start_cli("top", "--interval", "100", "--port", str(port))
    assert proc.stderr is not None
    per = 50  # samples a datagram: most of top's time goes to decoding and counting them
    samples = [http_sample(i, "/hot", 200, 1000, 10) for i in range(per)]
    data = encode_datagram(Datagram("127.0.0.1", 8080, 1, 1000, tuple(samples)))
    sent = 300  # more than top handles as fast: busy when Ctrl-C comes, some dropped
    with killed_at_end(proc):
        send(port, [b"not sflow"])
        assert "undecodable datagram" in proc.stderr.readline()  # in its receive loop
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for _ in range(sent):
                s.sendto(data, ("127.0.0.1", port))
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and "Traceback" not in err, err
    heading = re.findall(r"^sflow-app top: .*", out, re.M)[-1]  # the last snapshot's
    found = re.match(
        r"sflow-app top: \S+ s, ([\d,]+) datagrams?(?:, ([\d,]+) more dropped)?", heading
    )
    assert found, out
    received, dropped = (int((n or "0").replace(",", "")) for n in found.groups())
    assert received + dropped == sent, heading  # each one counted, or counted as dropped
    last = out[out.rindex("sflow-app top: ") :]
    [hot] = [line for line in last.splitlines() if line.endswith("GET /hot  [127.0.0.1/8080]")]
    assert hot.split()[0] == f"{received * per * 10:,}", heading  # every sample of those


def test_config_interrupted_is_no_success(tmp_path: Path) -> None:
    """Ctrl-C during `sflow-app config` (it retries a torn file for a second) exited 0:
    `sflow-app config && exec gunicorn ...` went on to start the server."""
    torn = tmp_path / "torn.auto"
    torn.write_text("rev_start=2\nsampling=10\ncollector=127.0.0.1\nagentIP=127.0.0.1\n")
    torn.chmod(0o644)
    proc = interruptible_cli("config", env=cli_env(SFLOW_APP_CONFIG=str(torn)))
    time.sleep(0.5)  # most likely in the retries; earlier, it dies of SIGINT as well
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGINT, err


def test_stdout_closed_is_no_traceback(tmp_path: Path) -> None:
    """`sflow-app listen >&-`: Python has no sys.stdout; listen failed at its first
    datagram and config at its final flush (AttributeError on None)."""
    env = cli_env(SFLOW_APP_CONFIG=str(tmp_path / "missing.auto"))
    closed = ["sh", "-c", 'exec "$@" >&-', "sh", sys.executable, "-m", "sflow_app"]
    config = subprocess.run(
        [*closed, "config"], env=env, stderr=subprocess.PIPE, text=True, timeout=60
    )
    assert config.returncode == 1 and "Traceback" not in config.stderr, config.stderr
    port = free_udp_port()
    proc = subprocess.Popen(
        [*closed, "listen", "--port", str(port), "--count", "1"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None and "listening on udp" in proc.stderr.readline()
    send(port, _hot_datagrams())
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and "Traceback" not in err, err


def test_listen_bind_takes_an_ipv6_address_in_brackets() -> None:
    """`--bind [::1]`, as a collector is written, failed: "Name or service not known"."""
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind(("::1", 0))
        except OSError:
            pytest.skip("no IPv6 loopback here")
        port = int(probe.getsockname()[1])
    proc = start_cli("listen", "--bind", "[::1]", "--port", str(port), "--count", "1")
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
        s.sendto(_hot_datagrams()[0], ("::1", port))
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert out.startswith("::1 127.0.0.1/8080 ")
