"""What ``listen`` and ``top`` print from received datagrams: strings from the wire never
drive the terminal, and the words say what happened."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import select
import signal
import struct
import subprocess
import sys
import termios
import time

import pytest
from test_cli import cli_env, free_udp_port, run_cli, send, start_cli

from sflow_app._encode import encode_datagram
from sflow_app.records import (
    AppInitiator,
    AppOperation,
    AppOperations,
    AppParentContext,
    AppTarget,
    CountersSample,
    Datagram,
    ExtendedProxyRequest,
    ExtendedSocketIPv4,
    ExtendedSocketIPv6,
    FlowSample,
    HttpCounters,
    HttpRequest,
    MemcacheOperation,
)

# Clears the screen, sets the window title, fakes a line; C1 CSI, DEL, bidi controls.
# 31 bytes: whole in every string field (app_operation's hold 32).
EVIL = "ev\x1b[2J\x1b]0;pwn\x07\nfake\x9b2J\x7f\u202eR\u2066"
SHOWN = "ev\\x1b[2J\\x1b]0;pwn\\x07\\nfake\\u009b2J\\x7f\\u202eR\\u2066"


def hostile_datagram() -> bytes:
    http = HttpRequest(
        method=2,
        protocol=1001,
        uri="/" + EVIL,
        host=EVIL,
        useragent=EVIL,
        mime_type=EVIL,
        status=200,
    )
    app = AppOperation(application=EVIL, operation=EVIL, status_descr=EVIL)
    records = (
        http,
        ExtendedProxyRequest(uri=EVIL, host=EVIL),
        app,
        AppParentContext(application=EVIL, operation=EVIL),
        AppInitiator(actor=EVIL),
        AppTarget(actor=EVIL),
    )
    flows = FlowSample(1, 3, 80, 1, 1, 0, 0, 0, 0, 0x3FFFFFFF, records)
    # An app_operation of its own: top shows it as a decorated operation.
    op = FlowSample(4, 3, 81, 1, 1, 0, 0, 0, 0, 0x3FFFFFFF, (app,))
    # Not UTF-8: the escape sequence must not get through the bytes path either.
    key = b"\xff\x1b[2J" + EVIL.encode()
    memcache = FlowSample(
        2, 3, 70000, 1, 1, 0, 0x3FFFFFFF, 0, 0, 0, (MemcacheOperation(cmd=7, key=key),)
    )
    counters = CountersSample(3, 3, 80, (AppOperations(application=EVIL, success=1),))
    return encode_datagram(Datagram("127.0.0.1", 80, 1, 1, (flows, memcache, counters, op)))


def raw_controls(out: str) -> list[str]:
    """Characters in ``out`` that would reach the terminal unescaped (lines aside)."""
    return sorted({c for line in out.splitlines() for c in line if not c.isprintable()})


def test_listen_escapes_every_string_from_the_wire() -> None:
    port = free_udp_port()
    proc = start_cli("listen", "--port", str(port), "--count", "1")
    send(port, [hostile_datagram()])
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert raw_controls(out) == []
    assert len(out.splitlines()) == 4  # one per sample: no line was faked
    assert f"host {SHOWN}" in out
    assert f"http GET /{SHOWN} -> 200 {SHOWN}" in out
    assert f"memcache GET \\xff\\x1b[2J{SHOWN} ->" in out


def test_listen_escapes_a_backslash_so_escapes_are_unambiguous() -> None:
    rec = HttpRequest(method=2, protocol=1001, uri="/a\\x1b", status=200)
    sample = FlowSample(1, 3, 80, 1, 1, 0, 0, 0, 0, 0x3FFFFFFF, (rec,))
    port = free_udp_port()
    proc = start_cli("listen", "--port", str(port), "--count", "1")
    send(port, [encode_datagram(Datagram("127.0.0.1", 80, 1, 1, (sample,)))])
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "http GET /a\\\\x1b -> 200" in out


def test_top_plain_escapes_every_string_from_the_wire() -> None:
    port = free_udp_port()
    proc = start_cli("top", "--once", "--seconds", "2", "--port", str(port))
    send(port, [hostile_datagram()])
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert raw_controls(out) == []
    assert f"GET /{SHOWN}  [127.0.0.1/80]" in out
    assert f"GET {SHOWN}  [127.0.0.1/80]" in out  # the route an app_operation named
    assert out.rstrip().endswith(f"{SHOWN}: {SHOWN}")  # the decorated operation


def test_top_on_a_terminal_prints_names_not_rich_markup() -> None:
    """On a terminal top draws with rich: a URI must not be read as rich markup, whose
    [link=...] becomes an OSC 8 hyperlink escape, nor carry an escape of its own."""
    uri = "/[link=https://evil.example/]click[/link][bold red]x\x1b]0;pwned\x07"
    rec = HttpRequest(method=2, protocol=1001, uri=uri, status=200)
    sample = FlowSample(1, 3, 80, 1, 1, 0, 0, 0, 0, 0x3FFFFFFF, (rec,))
    port = free_udp_port()
    proc, master = top_on_a_terminal(port, "--seconds", "2")
    try:
        send(port, [encode_datagram(Datagram("127.0.0.1", 80, 1, 1, (sample,)))])
        screen = read_until_exit(master, proc)
    finally:
        os.close(master)
        proc.kill()
        proc.wait(timeout=30)
        if proc.stderr is not None:
            proc.stderr.close()
    assert proc.returncode == 0
    assert "\x1b]8;" not in screen and "\x1b]0;pwned" not in screen
    assert "[link=https://evil.example/]" in screen  # the name, as it arrived


def top_on_a_terminal(port: int, *args: str) -> tuple[subprocess.Popen[str], int]:
    """``sflow-app top`` drawing on a 200x50 pseudo-terminal (rich's view), once it
    listens: the process (stderr piped) and the terminal's master end."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 200, 0, 0))
    proc = subprocess.Popen(
        [sys.executable, "-m", "sflow_app", "top", "--port", str(port), *args],
        env=cli_env(TERM="xterm-256color", COLUMNS="200", LINES="50"),
        stdin=subprocess.DEVNULL,
        stdout=slave,
        stderr=subprocess.PIPE,
        text=True,
    )
    os.close(slave)
    assert proc.stderr is not None
    assert "listening on udp" in proc.stderr.readline()
    return proc, master


def read_until_exit(fd: int, proc: subprocess.Popen[str]) -> str:
    """Everything written to the terminal ``fd`` until ``proc`` exits (read as it comes:
    a full terminal buffer would block the writer)."""
    chunks = []
    end = time.monotonic() + 30
    while time.monotonic() < end:
        if select.select([fd], [], [], 0.1)[0]:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # EIO: the writer closed its end
                break
            chunks.append(chunk)
        elif proc.poll() is not None:
            break
    return b"".join(chunks).decode("utf-8", "replace")


def test_listen_names_client_and_server_by_sample_kind() -> None:
    """An http_request sample is the server side (remote = the client); a memcache
    sample is the client side (local = us, remote = the memcached server)."""
    http = FlowSample(
        1,
        3,
        80,
        1,
        1,
        0,
        0,
        0,
        0,
        0x3FFFFFFF,
        (
            HttpRequest(method=2, protocol=1001, uri="/a", status=200),
            ExtendedSocketIPv4(6, "10.0.0.1", "192.0.2.7", 8080, 51000),
        ),
    )
    memcache = [
        FlowSample(
            n,
            3,
            70000,
            1,
            1,
            0,
            0x3FFFFFFF,
            0,
            0,
            0,
            (MemcacheOperation(cmd=7, key="k", status=1), sock),
        )
        for n, sock in [
            (2, ExtendedSocketIPv4(6, "10.0.0.1", "10.0.0.9", 40000, 11211)),
            (3, ExtendedSocketIPv6(6, "fd00::1", "fd00::9", 40001, 11211)),
        ]
    ]
    port = free_udp_port()
    proc = start_cli("listen", "--port", str(port), "--count", "1")
    send(port, [encode_datagram(Datagram("127.0.0.1", 80, 1, 1, (http, *memcache)))])
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    web, cache4, cache6 = out.splitlines()
    assert "memcache GET k" in cache4
    assert "client 10.0.0.1:40000 -> server 10.0.0.9:11211" in cache4
    assert "client [fd00::1]:40001 -> server [fd00::9]:11211" in cache6
    assert "http GET /a" in web and "client 192.0.2.7:51000 -> server 10.0.0.1:8080" in web


@pytest.mark.parametrize("stop", [["--seconds", "1"], ["--count", "1", "--seconds", "1"]])
def test_listen_says_datagrams_arrived_when_none_could_be_decoded(stop: list[str]) -> None:
    port = free_udp_port()
    proc = start_cli("listen", "--port", str(port), *stop)
    send(port, [b"\x00\x00\x00\x05garbage", b"\x00\x00\x00\x04"])
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 1 and out == ""
    assert "nothing arrived" not in err
    assert f"2 datagrams arrived on udp 127.0.0.1 port {port} but none could be decoded" in err


def test_top_counts_one_datagram_in_the_singular() -> None:
    port = free_udp_port()
    proc = start_cli("top", "--once", "--seconds", "1", "--port", str(port))
    send(port, [encode_datagram(Datagram("127.0.0.1", 80, 1, 1, ()))])
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert out.splitlines()[0].startswith("sflow-app top: 1 s, 1 datagram (")


def test_listen_http_counters_of_nothing_read_none() -> None:
    quiet = CountersSample(1, 3, 80, (HttpCounters(),))
    statuses = CountersSample(2, 3, 80, (HttpCounters(status_2XX_count=3),))
    port = free_udp_port()
    proc = start_cli("listen", "--port", str(port), "--count", "1")
    send(port, [encode_datagram(Datagram("127.0.0.1", 80, 1, 1, (quiet, statuses)))])
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    first, second = out.splitlines()
    assert first.endswith("counters  http_counters none")
    assert second.endswith("counters  http_counters 2XX 3")


def test_every_command_help_gives_its_exit_status() -> None:
    for command in ("config", "status", "listen", "top", "run"):
        result = run_cli(command, "--help")
        assert result.returncode == 0
        assert "exit status" in " ".join(result.stdout.split()).lower(), command


@pytest.mark.parametrize("encoding", ["ascii", "latin-1"])
def test_listen_in_a_locale_that_is_not_utf8(encoding: str) -> None:
    """A latin-1 or C locale: the first non-ASCII URI ended the command with
    UnicodeEncodeError. Readable lines show what the locale cannot as escapes; --json
    stays valid JSON (ASCII, \\u escapes) that reads back to the same URI."""
    uri = "/\u4e2d\u6587"  # in neither: the output is ASCII, whatever the encoding
    http = HttpRequest(method=2, uri=uri, status=200)
    sample = FlowSample(1, 3, 80, 1, 1, 0, 0, 0, 0, 0, (http,))
    datagram = encode_datagram(Datagram("127.0.0.1", 80, 1, 1, (sample,)))
    env = cli_env(PYTHONIOENCODING=encoding)
    for json_flag in ([], ["--json"]):
        port = free_udp_port()
        proc = start_cli("listen", "--port", str(port), "--count", "1", *json_flag, env=env)
        send(port, [datagram])
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0 and "Traceback" not in err, err
        if json_flag:
            [element] = json.loads(out)["samples"][0]["elements"]
            assert element["http_uri"] == uri
        else:
            assert "\\u4e2d\\u6587 -> 200" in out


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_top_on_a_terminal_gives_the_cursor_back_when_killed(signum: int) -> None:
    """rich hides the cursor while top draws: `kill PID` or a closed terminal (SIGHUP) left
    the shell without one. The view is closed, then top dies of the same signal."""
    pytest.importorskip("rich")
    proc, master = top_on_a_terminal(free_udp_port(), "--interval", "0.2")
    try:
        assert proc.stderr is not None
        screen = b""
        deadline = time.monotonic() + 60
        while b"services" not in screen and time.monotonic() < deadline:  # drawn once
            if select.select([master], [], [], 0.1)[0]:
                screen += os.read(master, 65536)
        assert b"\x1b[?25l" in screen  # the cursor is hidden
        proc.send_signal(signum)
        rest = read_until_exit(master, proc)
        proc.wait(timeout=30)
        err = proc.stderr.read()
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        if proc.stderr is not None:
            proc.stderr.close()
    assert "\x1b[?25h" in rest  # shown again
    assert proc.returncode == -signum and "Traceback" not in err, err


def test_listen_counts_an_empty_datagram_as_undecodable() -> None:
    """A zero-length datagram was skipped as if nothing had arrived ("nothing arrived on
    ..."): something is sending there, and it is not sFlow."""
    port = free_udp_port()
    proc = start_cli("listen", "--port", str(port), "--seconds", "1")
    send(port, [b""])
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 1 and out == ""
    assert "undecodable datagram from 127.0.0.1 (0 bytes)" in err
    assert f"1 datagram arrived on udp 127.0.0.1 port {port} but none could be decoded" in err
