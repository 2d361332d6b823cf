"""Do no harm: shared state on a full or hostile state directory (issue 11).

The service's workers are forked processes (tests/test_shared.py's ``Service``), run as
the user ``daemon`` where root would bypass the permission checks the attack relies on;
the attacker is a forked process running as ``nobody``. Small tmpfs mounts play the full
/dev/shm. Each test checks what a collector sees: per (agent, sub_agent_id) datagram and
sample sequence numbers that step by one, counters that never go back.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import missing, private_dir, state_files, write_auto
from prefork_check import check_datagrams, sources
from test_shared import PORT, Service

from sflow_app import _layout, _shared, _statedir
from sflow_app.records import HttpCounters

NOBODY = 65534
DAEMON = 1


def need_root() -> None:
    if os.geteuid() != 0:
        missing("root", "these tests switch users (setuid) and mount a tmpfs; run as root")
    try:
        pwd.getpwuid(NOBODY), pwd.getpwuid(DAEMON)
    except KeyError:
        missing("users nobody and daemon", "the tests act as these users")


def become(uid: int) -> Callable[[], None]:
    def switch() -> None:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)

    return switch


@contextlib.contextmanager
def tmpfs(size: str) -> Iterator[str]:
    need_root()
    where = tempfile.mkdtemp(prefix="sfa-fs-")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=1777", "tmpfs", where],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        os.rmdir(where)
        missing("mount -t tmpfs", done.stderr.strip() or "mount failed")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", where], check=False)
        os.rmdir(where)


@pytest.fixture
def shared_dir() -> Iterator[str]:
    """A sticky, world-writable folder, as /dev/shm is; the config beside it readable."""
    need_root()
    where = tempfile.mkdtemp(prefix="sfa-")
    os.chmod(where, 0o1777)
    yield where
    subprocess.run(["rm", "-rf", where], check=False)


def as_user(uid: int, body: Callable[[], Any], then: Callable[[Any], None] | None = None) -> int:
    """Run ``body`` in a forked child as ``uid``, then ``then(body's result)`` (or sleep);
    returns the child's pid once ``body`` is done."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(r)
            become(uid)()
            os.umask(0)
            result = body()
            os.write(w, b"k")
            code = 0
            if then is not None:
                then(result)
            time.sleep(60)
        finally:
            os._exit(code)
    os.close(w)
    assert os.read(r, 1) == b"k", "the attacker's set-up failed"
    os.close(r)
    return pid


def reap(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


# service_as()'s config folders (outside pytest's tmp_path, which other users cannot read).
_CONF_DIRS: list[Path] = []


@pytest.fixture(autouse=True)
def _remove_conf_dirs() -> Iterator[None]:
    yield
    while _CONF_DIRS:
        shutil.rmtree(_CONF_DIRS.pop(), ignore_errors=True)


def service_as(tmp: Path, state_dir: str, uid: int | None) -> Service:
    """A Service whose workers run as ``uid`` (its config readable by them)."""
    conf = Path(tempfile.mkdtemp(prefix="sfa-conf-"))
    _CONF_DIRS.append(conf)
    conf.chmod(0o755)
    svc = Service(conf, state_dir, before=None if uid is None else become(uid))
    svc.env["SFLOW_APP_STATE_DIR"] = state_dir
    return svc


def streams(svc: Service) -> dict[tuple[str, int], list[Any]]:
    by_agent: dict[tuple[str, int], list[Any]] = defaultdict(list)
    for arrival, dg in svc.collector.received():
        by_agent[(dg.agent_address, dg.sub_agent_id)].append((arrival, dg))
    return by_agent


def check_streams(svc: Service) -> dict[tuple[str, int], int]:
    """Every (agent, sub_agent_id) stream valid on its own; its final HTTP total each."""
    totals = {}
    for agent, received in streams(svc).items():
        check_datagrams(received)
        [view] = sources(received)["http"]
        for what, samples in (("flow", view.flows), ("counter", view.counters)):
            seqs = [s.sequence_number for _, s in samples]
            assert seqs == list(range(1, len(seqs) + 1)), f"{agent} {what} sequence: {seqs}"
        gets = [
            r.method_get_count
            for _, s in view.counters
            for r in s.records
            if isinstance(r, HttpCounters)
        ]
        assert gets == sorted(gets), f"{agent}: counters went back: {gets}"
        totals[agent] = gets[-1] if gets else 0
    return totals


def run_two_workers(svc: Service, rounds: int = 5) -> list[dict[str, Any]]:
    """Two workers, interleaved requests and ticks, then a clean exit of both."""
    workers = [svc.worker(), svc.worker()]
    n = 0
    for _ in range(rounds):
        for w in workers:
            w.requests(range(n + 1, n + 11))
            n += 10
            w.tick()
        time.sleep(0.1)
    for w in workers:
        w.tick(final=True)
    return [w.exit() for w in workers]


# -- 1: a full tmpfs ----------------------------------------------------------------------
def test_full_tmpfs_never_kills_a_worker(tmp_path: Path) -> None:
    """A tmpfs too small for the file: each worker warns once and reports alone under its
    own sub-agent, every stream valid; no worker dies of SIGBUS."""
    with tmpfs("8k") as full:
        svc = service_as(tmp_path, full, None)
        try:
            exits = run_two_workers(svc)
            codes = [w.proc.exitcode for w in svc.workers]
            assert codes == [0, 0], f"worker exit codes {codes} (-7: SIGBUS)"
            svc.wait(lambda: sum(check_streams(svc).values()) == 100, 15)
            totals = check_streams(svc)
            assert len(totals) == 2 and sum(totals.values()) == 100, totals
            assert all(sub >= 1 << 24 for _, sub in totals), totals
            assert all(e["stats"]["send_errors"] == 0 for e in exits)
        finally:
            svc.close()


def test_state_that_cannot_grow_falls_back(tmp_path: Path) -> None:
    """Room for the first slots only: the worker that needs the file to grow reports alone
    (its own sub-agent); the others keep sharing. No SIGBUS, every stream valid."""
    room = _layout.file_size(_layout.INITIAL_SLOTS) + 8192
    with tmpfs(str(room)) as small:
        svc = service_as(tmp_path, small, None)
        try:
            workers = [svc.worker() for _ in range(_layout.INITIAL_SLOTS + 1)]
            for k, w in enumerate(workers):
                w.requests(range(10 * k + 1, 10 * k + 11))
                w.tick()
            for w in workers:
                w.tick(final=True)
            for w in workers:
                w.exit()
            assert [w.proc.exitcode for w in workers] == [0] * len(workers)
            svc.wait(lambda: sum(check_streams(svc).values()) == 10 * len(workers), 15)
            totals = check_streams(svc)
            assert totals.get(("127.0.0.1", PORT)) == 10 * _layout.INITIAL_SLOTS, totals
            assert len(totals) == 2, totals
        finally:
            svc.close()


# -- 2, 3: squatted names -----------------------------------------------------------------
def _old_names(state_dir: str, uid: int) -> list[str]:
    key = _shared.service_key(uid, "shared-unit", PORT, None, None)
    return [os.path.join(state_dir, f"sflow-app-{uid}-{key}.{ext}") for ext in ("state", "sock")]


def _squat_everything(state_dir: str, uid: int) -> socket.socket:
    """As nobody: a regular file at the state name earlier versions used and a unix socket
    listening at their socket name; at every name the private folder may take in
    ``state_dir`` but the last: a file, a folder of nobody's, a symlink."""
    state, sock = _old_names(state_dir, uid)
    open(state, "w").close()
    base = os.path.join(state_dir, f"sflow-app-{uid}")
    open(base, "w").close()
    os.mkdir(base + ".1", 0o777)
    os.symlink("/tmp", base + ".2")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(sock)
    return listener


def test_squatter_changes_nothing_a_collector_sees(tmp_path: Path, shared_dir: str) -> None:
    """nobody squats every predictable name; the service (daemon) uses the next private
    folder name, reports exactly as usual, and nothing reaches the squatter's socket."""
    r, w = os.pipe()

    def listen(listener: socket.socket) -> None:
        while True:
            if listener.recv(65536):
                os.write(w, b"!")

    attacker = as_user(NOBODY, lambda: _squat_everything(shared_dir, DAEMON), listen)
    svc = service_as(tmp_path, shared_dir, DAEMON)
    try:
        exits = run_two_workers(svc)
        svc.wait(lambda: svc.total() == 100 and len(svc.uris()) == 100, 15)
        assert svc.total() == 100 and len(svc.uris()) == 100
        svc.check()
        assert streams(svc).keys() == {("127.0.0.1", PORT)}
        assert all(e["stats"]["send_errors"] == 0 for e in exits)
        os.set_blocking(r, False)
        with contextlib.suppress(BlockingIOError):
            assert not os.read(r, 4096), "the squatter's socket received forwarded samples"
        used = os.path.join(shared_dir, f"sflow-app-{DAEMON}.3")
        st = os.lstat(used)
        assert stat.S_ISDIR(st.st_mode) and st.st_uid == DAEMON
        assert stat.S_IMODE(st.st_mode) == 0o700
        for name in (f"sflow-app-{DAEMON}", f"sflow-app-{DAEMON}.1"):
            assert os.lstat(os.path.join(shared_dir, name)).st_uid == NOBODY  # left alone
    finally:
        svc.close()
        reap(attacker)
        os.close(r)
        os.close(w)


def test_read_only_state_dir_uses_a_private_temp_dir(tmp_path: Path) -> None:
    """The configured folder is not writable for the service: it shares state through a
    private folder in the temp dir, one stream as usual (no per-worker reporting)."""
    need_root()
    locked = tempfile.mkdtemp(prefix="sfa-ro-")  # root's, 0700: daemon cannot even look
    temp = tempfile.mkdtemp(prefix="sfa-tmp-")
    os.chmod(temp, 0o1777)
    switch = become(DAEMON)

    def before() -> None:
        tempfile.tempdir = temp
        switch()

    svc = service_as(tmp_path, locked, None)
    svc.before = before
    try:
        run_two_workers(svc)
        svc.wait(lambda: svc.total() == 100, 15)
        svc.check()
        assert streams(svc).keys() == {("127.0.0.1", PORT)}
        assert os.path.isdir(os.path.join(temp, f"sflow-app-{DAEMON}"))
    finally:
        svc.close()
        subprocess.run(["rm", "-rf", locked, temp], check=False)


def test_a_folder_it_cannot_write_is_one_reason_not_one_per_name(tmp_path: Path) -> None:
    """daemon cannot create folders in root's 0755 folder: the warning names the folder
    once (it said "Permission denied" for each of the four names it tried there)."""
    need_root()
    parent = tempfile.mkdtemp(prefix="sfa-ro-")
    os.chmod(parent, 0o755)
    temp = tempfile.mkdtemp(prefix="sfa-tmp-")
    os.chmod(temp, 0o1777)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # as daemon, in a forked child (it may not exec this interpreter)
        try:
            os.close(r)
            become(DAEMON)()
            tempfile.tempdir = temp
            private, skipped = _statedir.open_private(parent, None)
            os.write(w, json.dumps([private.path, skipped]).encode())
        finally:
            os._exit(0)
    os.close(w)
    try:
        with os.fdopen(r, "rb") as out:
            written = out.read()
        os.waitpid(pid, 0)
        assert written, "the child found no private folder"
        path, skipped = json.loads(written)
        assert path == os.path.join(temp, f"sflow-app-{DAEMON}")
        assert skipped == [f"{parent}: cannot create a folder: Permission denied"]
    finally:
        subprocess.run(["rm", "-rf", parent, temp], check=False)


# -- 4: long paths, bad forwarded messages -----------------------------------------------
def test_long_state_dir_no_abstract_socket_and_bad_messages_dropped(tmp_path: Path) -> None:
    base = tempfile.mkdtemp(prefix="sfa-")
    deep = os.path.join(base, "d" * 60, "e" * 40)
    os.makedirs(deep)
    svc = service_as(tmp_path, deep, None)
    try:
        sender, worker = svc.worker(), svc.worker()
        sender.tick()
        worker.requests(range(1, 11))
        worker.tick()
        with open("/proc/net/unix") as f:
            abstract = [line for line in f if "@" in line and "sflow-app" in line]
        assert not abstract, f"abstract-namespace sockets: {abstract}"
        [sock_path] = state_files(deep, ".sock")
        address = f"/proc/self/fd/{os.open(private_dir(deep), os.O_RDONLY)}/" + os.path.basename(
            sock_path
        )
        flow = bytes.fromhex("00000001") + bytes(40)
        bad = [
            _layout_msg(1 << 31, flow),  # index far out of the table
            _layout_msg(7, flow),  # an index no source registered
            _layout_msg(0, flow)[:-5],  # truncated
            _layout_msg(0, bytes.fromhex("00000009") + bytes(40)),  # not a flow sample
        ]
        out = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        for message in bad:
            out.sendto(message, address)
        out.close()
        status = sender.tick(final=True)
        assert status["stats"]["bad_forwards"] == 4
        assert status["sender"]
        worker.requests(range(11, 21))
        worker.tick(final=True)
        sender.tick(final=True)
        svc.wait(lambda: len(svc.uris()) == 20 and svc.total() == 20, 15)
        svc.check()
    finally:
        svc.close()
        subprocess.run(["rm", "-rf", base], check=False)


def _layout_msg(index: int, sample: bytes) -> bytes:
    from sflow_app._sender import MSG

    return MSG.pack(index, len(sample)) + sample


# -- 6: a stopped sender ------------------------------------------------------------------
def test_stopped_sender_is_replaced_and_nothing_sent_twice(service: Service) -> None:
    sender, a, b = service.worker(), service.worker(), service.worker()
    assert sender.tick()["sender"]
    sender.requests(range(1, 6))
    sender.tick()  # staged in a partial datagram (sent within FLUSH_AFTER)
    assert sender.pid is not None
    os.kill(sender.pid, signal.SIGSTOP)
    try:
        n = 5
        # The stall bound is 3 s; generous for a loaded machine, stops once replaced.
        end = time.monotonic() + 20.0
        took_over = False
        while time.monotonic() < end and not took_over:
            for w in (a, b):
                w.requests(range(n + 1, n + 3))
                n += 2
                took_over |= w.tick()["sender"]
            time.sleep(0.1)
        assert took_over, "no worker replaced the stopped sender"
    finally:
        os.kill(sender.pid, signal.SIGCONT)
    status = sender.tick(final=True)
    assert not status["sender"]
    for w in (a, b, sender, a, b):
        w.tick(final=True)
    service.wait(lambda: len(service.uris()) == n and service.total() == n, 15)
    uris = service.uris()
    assert sorted(uris) == sorted(f"/r/{i}" for i in range(1, n + 1)), "lost or sent twice"
    view = service.check()
    # The stopped sender had added its staged samples' pool steps already: handed over,
    # they add nothing more (not the service's pool they were given, nor 1 each).
    pools = [s.sample_pool for _, s in view.flows]
    assert max(pools) <= n, f"sample_pool {max(pools)} above the {n} requests"


@pytest.fixture
def service(tmp_path: Path, state_dir: str) -> Iterator[Service]:
    svc = Service(tmp_path, state_dir)
    try:
        yield svc
    finally:
        svc.close()


# -- 7: instances -------------------------------------------------------------------------
SCRIPT = """
import sys, time
from sflow_app._agent import AGENT
from sflow_app._http import METHODS
source = AGENT.http_source()
AGENT.set_http_port(8080, "test")
for _ in range(20):
    source.counters.incr[METHODS["GET"][1]]()
time.sleep(float(sys.argv[1]))
"""


def test_each_run_is_a_new_instance(tmp_path: Path, collector, state_dir: str) -> None:
    """A script run twice from a shell script: the second run starts from zero (counts,
    uptime, sequences), as any agent does on restart."""
    auto = write_auto(tmp_path / "hsflowd.auto", collector.port, sampling=0, polling=1)
    script = tmp_path / "twice.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "SFLOW_APP_CONFIG": str(auto), "SFLOW_APP_NAME": "twice"}
    py = f"{sys.executable} {script} 0.3"
    subprocess.run(["sh", "-c", f"{py} && {py}"], env=env, check=True, timeout=60)
    collector.poll(1.0)
    by_run = [dg for dg in collector.datagrams]
    gets = [
        r.method_get_count
        for dg in by_run
        for s in dg.samples
        for r in getattr(s, "records", ())
        if isinstance(r, HttpCounters)
    ]
    assert gets and max(gets) == 20, gets
    assert [dg.sequence_number for dg in by_run].count(1) == 2, "the second run went on"


def test_two_programs_under_one_identity_warn(tmp_path: Path, collector, state_dir: str) -> None:
    """Two unrelated processes with one name: separate counts, one warning that points at
    SFLOW_APP_NAME."""
    auto = write_auto(tmp_path / "hsflowd.auto", collector.port, sampling=0, polling=1)
    script = tmp_path / "same.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "SFLOW_APP_CONFIG": str(auto), "SFLOW_APP_NAME": "same"}
    cmd = [sys.executable, str(script), "3"]
    first = subprocess.Popen(cmd, env=env, start_new_session=True, stderr=subprocess.PIPE)
    end = time.monotonic() + 20
    while not state_files(state_dir, ".state") and time.monotonic() < end:
        time.sleep(0.05)  # the first one has its state
    assert state_files(state_dir, ".state"), "the first program never opened its state"
    second = subprocess.run(
        [*cmd[:-1], "0.5"], env=env, start_new_session=True, capture_output=True, text=True
    )
    _, first_err = first.communicate(timeout=30)
    assert "SFLOW_APP_NAME" in second.stderr and "another instance" in second.stderr
    assert b"another instance" not in first_err
    collector.poll(1.0)
    gets = [
        r.method_get_count
        for dg in collector.datagrams
        for s in dg.samples
        for r in getattr(s, "records", ())
        if isinstance(r, HttpCounters)
    ]
    assert gets and max(gets) == 20, gets


# -- stale and old-version files ----------------------------------------------------------
def test_stale_and_old_version_files_are_removed(state_dir: str) -> None:
    uid = os.getuid()
    old = [
        os.path.join(state_dir, f"sflow-app-{uid}-0123456789abcdef.{e}") for e in ("state", "sock")
    ]
    for path in old:
        open(path, "w").close()
    first = _shared.SharedState.open(state_dir, "k1")
    folder = private_dir(state_dir)
    first.close()
    v = _layout.LAYOUT
    dead = os.path.join(folder, f"v{v}-k1-999999999-1.state")  # its root is long gone
    idle = os.path.join(folder, "v9-other.state")  # another layout, unused for two days
    me = f"{os.getpid()}-{_statedir.start_time(os.getpid())}"
    live = os.path.join(folder, f"v{v}-k1-{me}.state")
    # The previous layout's file of a live instance, open by nobody: removed at once.
    earlier = os.path.join(folder, f"v{v - 1}-k1-{me}.state")
    dead_base, live_base = dead[: -len(".state")], live[: -len(".state")]
    # Status sidecars (see _sidecar) go with their state file.
    sidecars = [dead_base + ".json", dead_base + "-slot0.json", dead_base + ".json.7.tmp"]
    for path in (dead, dead_base + "-3.sock", idle, live, earlier, *sidecars, live_base + ".json"):
        open(path, "w").close()
    os.utime(idle, (time.time() - 2 * 86400,) * 2)
    state = _shared.SharedState.open(state_dir, "k2")
    try:
        left = sorted(os.listdir(folder))
        assert not any(os.path.exists(p) for p in old), "old-version files kept"
        assert os.path.basename(dead) not in left and "v9-other.state" not in left, left
        assert os.path.basename(live) in left  # its root (this process) still runs
        assert not [p for p in sidecars if os.path.basename(p) in left], left
        assert os.path.basename(live_base + ".json") in left
        assert os.path.basename(earlier) not in left, left
    finally:
        state.close()


# -- sizing -------------------------------------------------------------------------------
def slot_holders(
    count: int, open_state: Callable[[], Any], then: Callable[[Any, int], None]
) -> tuple[list[int], int]:
    """``count`` forked processes, each opening the state, claiming a slot, doing ``then``
    (with its number) and holding on (reaped by the caller): their pids, once all hold,
    and the read end of the pipe they said so on (closed by the caller)."""
    r, w = os.pipe()
    kids = []
    for k in range(count):
        pid = os.fork()
        if pid == 0:
            try:
                mine = open_state()
                assert mine.claim_slot()
                then(mine, k)
                os.write(w, b"x")
                time.sleep(60)
            finally:
                os._exit(0)
        kids.append(pid)
        assert os.read(r, 1) == b"x"
    os.close(w)
    return kids, r


def test_file_sized_to_the_workers_and_grows_for_more(state_dir: str) -> None:
    """The file starts with room for INITIAL_SLOTS workers; more workers alive at once
    grow it (allocated first), and a process that mapped it small sees every slot."""
    state = _shared.SharedState.open(state_dir, "grow")
    [path] = state_files(state_dir, ".state")
    assert os.path.getsize(path) == _layout.file_size(_layout.INITIAL_SLOTS)
    index = state.source_index("http", "", 8080)
    assert index is not None
    kids, r = slot_holders(
        _layout.INITIAL_SLOTS + 2,
        lambda: _shared.SharedState.open(state_dir, "grow"),
        lambda mine, k: mine.publish(index, [k + 1], pool=0, drops=0),
    )
    try:
        want = sum(range(1, _layout.INITIAL_SLOTS + 3))
        assert state.totals(index)[0] == want  # remapped to see the slots added
        assert state.slots_used() == _layout.INITIAL_SLOTS + 2
        assert os.path.getsize(path) == _layout.file_size(2 * _layout.INITIAL_SLOTS)
        st = os.stat(path)
        assert st.st_blocks * 512 >= st.st_size, "not allocated (sparse)"
    finally:
        for pid in kids:
            reap(pid)
        state.close()
        os.close(r)


def test_opened_while_another_grows_it(state_dir: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The file grown by another worker between an opener's mapping and its reading of
    the header: the opener counts the slots it mapped, maps the rest when it claims one.
    It counted the header's, took a slot past its mapping and failed at every pass from
    then on (IndexError: its counts never published -- a recycled gunicorn worker's 50
    requests missing from the service's counters)."""
    first = _shared.SharedState.open(state_dir, "race")
    index = first.source_index("http", "", 8080)
    assert index is not None
    kids, r = slot_holders(  # every slot of the file as made taken
        _layout.INITIAL_SLOTS,
        lambda: _shared.SharedState.open(state_dir, "race", instance=first.instance),
        lambda mine, k: None,
    )
    map_file = _shared.SharedState._map_file

    def map_then_grow(fd: int) -> Any:
        mapping = map_file(fd)
        assert first._grow()  # another worker needs a slot: right then
        return mapping

    try:
        with monkeypatch.context() as m:
            m.setattr(_shared.SharedState, "_map_file", staticmethod(map_then_grow))
            late = _shared.SharedState.open(state_dir, "race", instance=first.instance)
        try:
            assert late.claim_slot()
            late.publish(index, [5], pool=5, drops=0)
            assert first.totals(index)[0] == 5
            assert late.slot == _layout.INITIAL_SLOTS and late.slots_used() == late.slot + 1
        finally:
            late.close()
    finally:
        for pid in kids:
            reap(pid)
        first.close()
        os.close(r)


def test_growing_what_another_grew_meanwhile_maps_it(state_dir: str) -> None:
    """A process that found every slot it mapped taken grows the file -- unless another
    grew it since: then it maps what is there (it doubled the file again)."""
    stale = _shared.SharedState.open(state_dir, "twice")
    other = _shared.SharedState.open(state_dir, "twice", instance=stale.instance)
    try:
        assert other._grow()
        assert stale._grow()
        [path] = state_files(state_dir, ".state")
        assert os.path.getsize(path) == _layout.file_size(2 * _layout.INITIAL_SLOTS)
        assert stale._slots == 2 * _layout.INITIAL_SLOTS
    finally:
        other.close()
        stale.close()


def test_growing_keeps_the_locks_of_processes_that_mapped_it_small(state_dir: str) -> None:
    """A process that maps the grown file again keeps its slot and the sender role: the
    outgrown mapping is not closed (an mmap holds a dup of the descriptor, and closing
    one drops every record lock the process holds on the file)."""
    state = _shared.SharedState.open(state_dir, "keep")
    assert state.claim_slot() and state.try_become_sender()
    kids, r = slot_holders(  # with ours, one more than the file has room for
        _layout.INITIAL_SLOTS,
        lambda: _shared.SharedState.open(state_dir, "keep", instance=state.instance),
        lambda mine, k: None,
    )
    try:
        index = state.source_index("http", "", 8080)
        assert index is not None
        state.totals(index)  # the sender's poll: maps the grown file
        assert state.slot is not None
        assert state._slots == 2 * _layout.INITIAL_SLOTS
        pid = os.fork()
        if pid == 0:  # another process asks whether they are still held
            other = _shared.SharedState.open(state_dir, "keep", instance=state.instance)
            held = other._alive(state.slot) and other._held(state.generation)
            os._exit(0 if held and not other.try_become_sender() else 1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, "the slot or the sender role was lost"
        assert state.still_sender()
    finally:
        for pid in kids:
            reap(pid)
        state.close()
        os.close(r)
