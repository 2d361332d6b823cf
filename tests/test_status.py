"""``sflow-app status`` end to end: real services in subprocesses (a wsgiref script that
serves a few requests and exits, gunicorn with 3 workers), and the command run as a
subprocess that reads their state -- and must change nothing, take no lock, and work while
every lock is held."""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import http.client
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import Collector, free_port, private_dir, state_files, write_auto

from sflow_app import _layout

ROOT = Path(__file__).resolve().parents[1]
APPS = ROOT / "tests" / "apps"
NOBODY = 65534  # another user


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SFLOW_APP_", "PREFORK_"))}
    env.pop("XDG_RUNTIME_DIR", None)  # a fallback place the command would search too
    if "SFLOW_APP_STATE_DIR" in extra:
        # And the temp dir's fallback folder, where any service of this user on the machine
        # may report (not this test's): the test's own folder instead.
        env["TMPDIR"] = extra["SFLOW_APP_STATE_DIR"]
    return {**env, "PYTHONUNBUFFERED": "1", **extra}


def status(*args: str, state_dir: str, **run: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sflow_app", "status", *args],
        env=clean_env(SFLOW_APP_STATE_DIR=state_dir),
        capture_output=True,
        text=True,
        timeout=60,
        **run,
    )


def services(state_dir: str, *args: str) -> list[dict[str, Any]]:
    done = status("--json", *args, state_dir=state_dir)
    assert done.returncode in (0, 1), done.stderr
    found: list[dict[str, Any]] = json.loads(done.stdout)["services"]
    return found


def source(service: dict[str, Any], kind: str) -> dict[str, Any]:
    [found] = [d for d in service["data_sources"] if d["kind"] == kind]
    return found


def script_env(state_dir: str, name: str, collector: int) -> dict[str, str]:
    return clean_env(
        SFLOW_APP_STATE_DIR=state_dir,
        SFLOW_APP_NAME=name,
        SFLOW_APP_COLLECTORS=f"127.0.0.1:{collector}",
        SFLOW_APP_AGENT_IP="127.0.0.1",
        SFLOW_APP_SAMPLING="1",
        SFLOW_APP_CONFIG="/nonexistent/hsflowd.auto",
    )


def run_script(state_dir: str, name: str, paths: list[str], collector: int) -> None:
    """tests/apps/sender_app.py: serves ``paths`` to itself at 1-in-1, sends, exits."""
    env = script_env(state_dir, name, collector)
    # Its own session, as a service is started: else it would be this test's instance.
    subprocess.run(
        [sys.executable, str(APPS / "sender_app.py"), *paths],
        env=env,
        check=True,
        start_new_session=True,
        stderr=subprocess.DEVNULL,
    )


def run_once(state_dir: str, name: str, paths: list[str]) -> None:
    """``run_script`` sending to a collector of its own that nobody reads (what the
    service leaves in its state folder is what the test looks at)."""
    collector = Collector()
    try:
        run_script(state_dir, name, paths, collector.port)
    finally:
        collector.close()


@contextlib.contextmanager
def running_script(
    state_dir: str, name: str, paths: list[str], collector: int
) -> Iterator[subprocess.Popen[str]]:
    """The same, kept running (its own session) until the block ends."""
    env = {**script_env(state_dir, name, collector), "SENDER_APP_WAIT": "1"}
    proc = subprocess.Popen(
        [sys.executable, str(APPS / "sender_app.py"), *paths],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        yield proc
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def snapshot(folder: str) -> dict[str, tuple[int, int, bytes]]:
    out = {}
    for name in sorted(os.listdir(folder)):
        st = os.stat(os.path.join(folder, name), follow_symlinks=False)
        with open(os.path.join(folder, name), "rb") as f:
            out[name] = (st.st_mtime_ns, st.st_mode, f.read())
    return out


# -- a stopped service, names, nothing found ------------------------------------------------
def test_no_services_exits_1(state_dir: str) -> None:
    done = status(state_dir=state_dir)
    assert done.returncode == 1
    assert done.stdout == ""
    assert "no sflow_app service found" in done.stderr and state_dir in done.stderr
    assert status("--json", state_dir=state_dir).returncode == 1
    assert not os.listdir(state_dir), "status created something"


def test_stale_instance_is_listed_as_not_running(state_dir: str) -> None:
    collector = Collector()
    try:
        run_script(state_dir, "old-shop", ["/a", "/b", "/missing"], collector.port)
        collector.wait_for(lambda c: len(c.flow_samples()) >= 5)
    finally:
        collector.close()
    [svc] = services(state_dir)
    assert svc["name"] == "old-shop" and svc["uid"] == os.getuid()
    assert svc["running"] is False
    assert (svc["workers_alive"], svc["workers_seen"], svc["sender_pid"]) == (0, 1, None)
    http = source(svc, "http")
    assert http["sampling_rate"] == 1
    assert http["sample_pool"] == http["flow_samples"] == 3
    assert http["counters"]["method_get_count"] == 3
    assert http["counters"]["status_2XX_count"] == 2
    assert http["counters"]["status_4XX_count"] == 1
    app = source(svc, "app")
    assert (app["name"], app["flow_samples"], app["sampling_rate"]) == ("shop", 2, 1)
    # What it sent: every flow sample plus the last counter samples, in its datagrams.
    assert svc["samples"] == sum(d["flow_samples"] + d["counter_samples"] for d in [http, app])
    assert svc["samples"] == len(collector.samples())
    assert svc["datagrams"] == len(collector.datagrams)
    assert set(svc["drops"].values()) == {0}
    assert svc["send_errors"] == {f"127.0.0.1:{collector.port}": 0}
    table = status(state_dir=state_dir)
    assert table.returncode == 0, table.stderr
    head, row = table.stdout.splitlines()[:2]
    assert head.split()[:4] == ["SERVICE", "UID", "INSTANCE", "STATE"]
    assert row.split()[:5] == [
        "old-shop",
        str(os.getuid()),
        str(svc["instance"]["root_pid"]),
        "not",
        "running",
    ]
    assert head.index("WORKERS") == row.index("0/1")  # aligned


def test_name_filter(state_dir: str) -> None:
    """Two services running at once (single-process ones: each is its own sender)."""
    collector = Collector()
    try:
        with (
            running_script(state_dir, "shop-a", ["/a"], collector.port) as a,
            running_script(state_dir, "shop-b", ["/a", "/b"], collector.port) as b,
        ):
            both = wait_for(state_dir, lambda found: len(found) == 2)
            assert sorted(s["name"] for s in both) == ["shop-a", "shop-b"]
            [only] = wait_for(state_dir, lambda f: f[0]["sender_pid"] is not None, "shop-b")
            assert only["name"] == "shop-b" and only["running"] is True
            assert only["instance"]["root_pid"] == only["sender_pid"] == b.pid
            assert (only["workers_alive"], only["workers_seen"]) == (1, 1)
            assert source(only, "http")["sample_pool"] == 2
            done = status("nope", state_dir=state_dir)
            assert done.returncode == 1 and "named 'nope'" in done.stderr
            assert a.poll() is None and b.poll() is None
    finally:
        collector.close()


def test_reads_without_changing_or_locking(state_dir: str) -> None:
    """Status changes no byte, time or name, and answers while every lock is held."""
    run_once(state_dir, "quiet", ["/a", "/b"])
    folder = private_dir(state_dir)
    before = snapshot(folder)
    [path] = state_files(state_dir, ".state")
    fd = os.open(path, os.O_RDWR)
    try:
        words = os.fstat(fd).st_size // 8
        slots = (words - _layout.SLOTS_AT) // _layout.SLOT_WORDS
        held = [_layout.LOCK_USERS, _layout.LOCK_TABLE, _layout.LOCK_ELECT]
        held += [_layout.LOCK_SLOT0 + s for s in range(slots)]
        held += [_layout.LOCK_GEN0 + g for g in range(_layout.GENS)]
        for at in held:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, at)
        started = time.monotonic()
        done = status("--json", state_dir=state_dir)
        assert time.monotonic() - started < 30  # no lock waited for
        assert done.returncode == 0, done.stderr
        for _ in range(3):
            assert status(state_dir=state_dir).returncode == 0
        assert status("quiet", state_dir=state_dir).returncode == 0
    finally:
        os.close(fd)
    assert snapshot(folder) == before
    assert '"name": "quiet"' in done.stdout and '"flow_samples": 2' in done.stdout


def test_no_lock_taken_and_nothing_opened_for_writing(state_dir: str, tmp_path: Path) -> None:
    """Under strace, against a running service: status asks about locks (F_GETLK) and
    never sets one, opens the state only for reading and maps it read-only."""
    strace = shutil.which("strace")
    if strace is None:
        pytest.skip("strace is not installed (the other tests check the same by effect)")
    trace = tmp_path / "strace.txt"
    # Not measured by coverage: its data file is SQLite, which sets locks of its own.
    # The temp dir apart from the state: finding it, tempfile writes a probe file there.
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = clean_env(SFLOW_APP_STATE_DIR=state_dir, TMPDIR=str(tmp), PYTHONDONTWRITEBYTECODE="1")
    env.pop("COVERAGE_PROCESS_CONFIG", None)
    collector = Collector()
    try:
        with running_script(state_dir, "traced", ["/a"], collector.port):
            wait_for(state_dir, lambda found: found[0]["sender_pid"] is not None)
            done = subprocess.run(
                [strace, "-f", "-qq", "-o", str(trace), "-e", f"trace={TRACED}", *STATUS],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )
    finally:
        collector.close()
    if done.returncode != 0 and "ptrace" in done.stderr:
        pytest.skip(f"strace cannot trace here: {done.stderr.strip()}")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["services"][0]["running"] is True
    lines = trace.read_text().splitlines()
    assert any("F_GETLK" in line for line in lines), "status did not ask about the locks"
    for line in lines:
        assert not re.search(r"F_SETLKW?|F_OFD_SETLKW?|flock\(", line), line
        mine = state_dir in line or re.search(r"openat\(\d+, ", line)
        if mine:  # a name in the state directory, or relative to one of its folders
            assert "O_RDONLY" in line and not re.search(r"O_CREAT|O_WRONLY|O_RDWR", line), line
            assert not re.match(r"\d+ +(rename|unlink|mkdir|ftruncate|utime)", line), line
        if "MAP_SHARED" in line:
            assert "PROT_WRITE" not in line, line


STATUS = [sys.executable, "-m", "sflow_app", "status", "--json"]
TRACED = "fcntl,flock,open,openat,mmap,rename,renameat,renameat2,unlink,unlinkat,mkdir,mkdirat"


# -- errors a person can act on -----------------------------------------------------------
PR_CAPBSET_DROP, CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 24, 1, 2


def _drop_dac() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
        libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)


def bound_by_permissions() -> dict[str, Any]:
    """Run the command subject to file permissions: root's reads ignore them unless it
    drops these capabilities (it stays uid 0: the interpreter under /root stays reachable).
    """
    return {"preexec_fn": _drop_dac} if os.getuid() == 0 else {}


def test_unreadable_state_dir_is_a_clear_error(state_dir: str, tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o700)
    locked.chmod(0)
    try:
        done = status("--state-dir", str(locked), state_dir=state_dir, **bound_by_permissions())
    finally:
        locked.chmod(0o700)
    assert done.returncode == 2, done
    assert f"cannot read {locked}: permission denied" in done.stderr
    assert "Traceback" not in done.stderr
    missing_dir = tmp_path / "nowhere"
    done = status("--state-dir", str(missing_dir), state_dir=state_dir)
    assert done.returncode == 2 and f"{missing_dir}: no such directory" in done.stderr


def test_other_users_services(state_dir: str) -> None:
    """Root reads every user's services; reading another user's folder without the right
    is a clear error. (The service's folder is handed to uid 65534 after it ran.)"""
    if os.getuid() != 0:
        pytest.skip("needs root: it gives a service's state to another user")
    theirs = _hand_to_nobody(state_dir)
    [svc] = services(state_dir)
    assert (svc["name"], svc["uid"]) == ("theirs", NOBODY)
    done = status("--state-dir", theirs, state_dir=state_dir, **bound_by_permissions())
    assert done.returncode == 2, done
    assert f"cannot read {theirs}: permission denied (it belongs to uid {NOBODY}" in done.stderr
    assert "Traceback" not in done.stderr


def _hand_to_nobody(state_dir: str) -> str:
    """Run a service, then give its folder and files to uid 65534: another user's."""
    collector = Collector()
    try:
        with running_script(state_dir, "theirs", ["/a"], collector.port):
            wait_for(state_dir, lambda found: found[0]["sender_pid"] is not None)
    finally:
        collector.close()
    mine = private_dir(state_dir)
    theirs = os.path.join(state_dir, f"sflow-app-{NOBODY}")
    os.rename(mine, theirs)
    for name in [".", *os.listdir(theirs)]:
        os.chown(os.path.join(theirs, name), NOBODY, NOBODY)
    return theirs


# The command, with the file's owner truncating it while the command has it mapped (as
# soon as the reading starts): touching the mapping then is SIGBUS.
TRUNCATING = """
import os, runpy, sys
from sflow_app.cli import _state_read

read = _state_read._report

def truncated_first(fd, words, size):
    os.truncate(os.environ["VICTIM"], 0)
    return read(fd, words, size)

_state_read._report = truncated_first
sys.argv = ["sflow-app", "status", "--json"]
runpy.run_module("sflow_app", run_name="__main__")
"""


def test_another_users_file_truncated_under_the_reader(state_dir: str) -> None:
    """Root reads other users' files in a child: a file truncated while it is mapped
    kills the child (SIGBUS), not the command, which skips it with a note. Its own
    files it maps itself (nobody else can truncate them)."""
    if os.getuid() != 0:
        pytest.skip("needs root: it gives a service's state to another user")
    theirs = _hand_to_nobody(state_dir)
    [svc] = services(state_dir)  # read through the child, whole
    assert (svc["name"], svc["uid"], source(svc, "http")["flow_samples"]) == ("theirs", NOBODY, 1)
    [victim] = [n for n in os.listdir(theirs) if n.endswith(".state")]
    done = subprocess.run(
        [sys.executable, "-c", TRUNCATING],
        env=clean_env(SFLOW_APP_STATE_DIR=state_dir, VICTIM=os.path.join(theirs, victim)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1, done  # alive; no service found
    report = json.loads(done.stdout)
    assert report["services"] == []
    assert f"sflow-app status: skipped {victim}: the reader died of SIGBUS" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_reader_that_hangs_or_fails_is_given_up() -> None:
    """The child reading another user's file: killed after its time, a failure is a
    note, a result comes back whole (run in its own interpreter: a fork with no threads)."""
    code = """
import time
from sflow_app.cli import _state_read as R
R.CHILD_TIMEOUT = 0.5
print(R.apart(lambda: time.sleep(30)))
print(R.apart(lambda: 1 / 0))
print(R.apart(lambda: {"a": [1, None, "x"]}))
"""
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert time.monotonic() - started < 20
    assert done.stdout.splitlines() == [
        "(None, 'the reader took over 0.5 s')",
        "(None, 'could not be read')",
        "({'a': [1, None, 'x']}, '')",
    ]


# -- a running pre-fork service ------------------------------------------------------------
def get(port: int, path: str) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        return conn.getresponse().read().decode()
    finally:
        conn.close()


@pytest.mark.slow
@pytest.mark.parametrize("preload", [False, True], ids=["gunicorn", "gunicorn-preload"])
def test_gunicorn_three_workers_is_one_service(
    state_dir: str, tmp_path: Path, preload: bool
) -> None:
    """Under --preload the master (which holds no slot) usually sends."""
    from test_prefork import Server, gunicorn

    collector = Collector()
    auto = write_auto(tmp_path / "hsflowd.auto", collector.port, sampling=1, polling=1)
    port = free_port()
    env = clean_env(
        SFLOW_APP_CONFIG=str(auto),
        SFLOW_APP_STATE_DIR=state_dir,
        SFLOW_APP_NAME="status-e2e",
        PYTHONPATH=os.pathsep.join([str(APPS), str(ROOT)]),
    )
    args = ["--preload"] if preload else []
    cmd = [p.replace("{port}", str(port)) for p in gunicorn(*args, workers=3)]
    server = Server("gunicorn", cmd, env, APPS, port, tmp_path / "gunicorn.log", 3)
    try:
        sent, pids = 0, set[int]()
        while len(pids) < 3 and sent < 3000:  # until every worker served (holds a slot)
            pids.add(int(get(port, f"/r/{sent}").split()[0]))
            sent += 1
        assert len(pids) == 3, f"only {len(pids)} workers served {sent} requests"
        first = wait_for_count(state_dir, sent)
        more = 25
        senders = set()
        for i in range(more):  # status while the service serves and sends
            get(port, f"/r/{sent + i}")
            if i % 5 == 0:
                senders.add(wait_for_count(state_dir, 0)["sender_pid"])
        sent += more
        svc = wait_for_count(state_dir, sent)
        senders.add(svc["sender_pid"])
        workers = set(server.workers_now())
        assert first["name"] == svc["name"] == "status-e2e" and svc["running"]
        assert (svc["workers_alive"], svc["workers_seen"]) == (3, 3)
        assert senders == {svc["sender_pid"]}, "the sender changed while status read"
        assert svc["sender_pid"] in workers | {server.proc.pid}
        http = source(svc, "http")
        assert http["ds_index"] == port and http["sampling_rate"] == 1
        assert http["sample_pool"] == http["counters"]["method_get_count"] == sent
        assert http["counters"]["status_2XX_count"] == sent and http["drops"] == 0
        assert set(svc["drops"].values()) == {0}
        assert svc["send_errors"] == {f"127.0.0.1:{collector.port}": 0}
        # What status counted is what the collector got: every request, in datagrams
        # numbered one by one (nothing status did disturbed the sender).
        assert collector.wait_for(lambda c: len(c.flow_samples()) >= sent, timeout=20)
        assert len(collector.flow_samples()) == sent
        seqs = [dg.sequence_number for dg in collector.datagrams]
        assert seqs == list(range(1, len(seqs) + 1))
        assert svc["datagrams"] <= len(seqs)
        assert workers == set(server.workers_now()), "a worker died meanwhile"
    finally:
        server.kill()
        collector.close()


def wait_for(
    state_dir: str, ready: Callable[[list[dict[str, Any]]], bool], *args: str
) -> list[dict[str, Any]]:
    end = time.monotonic() + 30
    found = services(state_dir, *args)
    while not (found and ready(found)):
        assert time.monotonic() < end, f"status never showed what was expected: {found}"
        time.sleep(0.2)
        found = services(state_dir, *args)
    return found


def wait_for_count(state_dir: str, sent: int, timeout: float = 30) -> dict[str, Any]:
    """The one service, once its HTTP source counted ``sent`` requests and sent them."""
    end = time.monotonic() + timeout
    last: list[dict[str, Any]] = []
    while time.monotonic() < end:
        last = services(state_dir)
        if len(last) == 1 and last[0]["data_sources"]:
            http = source(last[0], "http")
            if http["flow_samples"] >= sent and http["counters"]["method_get_count"] >= sent:
                return last[0]
        time.sleep(0.2)
    raise AssertionError(f"status never showed {sent} requests: {last}")


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        ("evil\x1b[2J", "evil\\x1b[2J"),
        ("rtl\u202eevil", "rtl\\u202eevil"),
        # A backslash is escaped too: else this would read as the escape above.
        ("evil\\x1b[2J", "evil\\\\x1b[2J"),
    ],
)
def test_names_cannot_drive_the_terminal(state_dir: str, name: str, shown: str) -> None:
    """A name from another user's file (root reads them) is shown escaped in the table."""
    run_once(state_dir, "shop", ["/a"])
    [sidecar] = state_files(state_dir, ".json")
    with open(sidecar) as f:
        content = json.load(f)
    with open(sidecar, "w") as f:
        json.dump({**content, "name": name}, f)
    done = status(state_dir=state_dir)
    assert done.returncode == 0 and done.stdout.isascii() and "\x1b" not in done.stdout
    assert shown in done.stdout.split()
    assert services(state_dir)[0]["name"] == name


def test_an_unreadable_state_file_is_noted_not_ignored(state_dir: str) -> None:
    """A state file this user cannot open (its mode changed by hand) made the service
    vanish: "no sflow_app service found", exit 1, and no word of the file."""
    run_once(state_dir, "shut", ["/a"])
    [path] = state_files(state_dir, ".state")
    os.chmod(path, 0)
    done = status(state_dir=state_dir, **bound_by_permissions())
    assert "Traceback" not in done.stderr
    assert f"skipped {os.path.basename(path)}: permission denied" in done.stderr.lower()


def test_json_with_a_name_that_is_not_utf8(state_dir: str) -> None:
    """SFLOW_APP_NAME with a byte that is not UTF-8: `status --json` ended with
    UnicodeEncodeError on a UTF-8 stdout (strict, as under en_US.UTF-8)."""
    run_once(state_dir, "sh\udcffop", ["/a"])
    done = subprocess.run(
        [sys.executable, "-m", "sflow_app", "status", "--json"],
        env={**clean_env(SFLOW_APP_STATE_DIR=state_dir), "PYTHONIOENCODING": "utf-8"},
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    [svc] = json.loads(done.stdout.decode("utf-8"))["services"]  # valid UTF-8 JSON
    assert svc["name"] == "sh\udcffop"
