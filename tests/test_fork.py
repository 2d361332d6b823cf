"""A forked child reuses nothing inherited: thread, sockets, RNG state, queued samples."""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from test_exporter import request

from sflow_app._agent import AGENT


def run_in_child(fork, body) -> dict:
    """Fork with ``fork``, run ``body()`` in the child, return what it reports."""
    read_fd, write_fd = os.pipe()
    pid = fork()
    if pid == 0:  # child
        os.close(read_fd)
        try:
            report = body()
        except BaseException as exc:  # report, never return into pytest
            report = {"error": repr(exc)}
        os.write(write_fd, json.dumps(report).encode())
        os._exit(0)
    os.close(write_fd)
    chunks = []
    while chunk := os.read(read_fd, 65536):
        chunks.append(chunk)
    os.close(read_fd)
    os.waitpid(pid, 0)
    return json.loads(b"".join(chunks))


def inherited_state() -> dict:
    exporter = AGENT.exporter
    return {
        "pid": AGENT.pid,
        "real_pid": os.getpid(),
        "started": AGENT.runner.started,
        "thread_alive": bool(AGENT.runner.thread and AGENT.runner.thread.is_alive()),
        "queue": len(AGENT.runner.queue),
        "sockets": len(exporter._socks),
        "state": exporter.state is not None,
        "skips": [AGENT.http_source().sampler._rng.random() for _ in range(4)],
        "next_at": AGENT.http_source().sampler.next_at,
    }


def child_body() -> dict:
    before = inherited_state()
    source = AGENT.http_source()
    request(source)  # the first request takes the slow path: start in this process
    after = {
        "started": AGENT.runner.started,
        "thread_alive": bool(AGENT.runner.thread and AGENT.runner.thread.is_alive()),
        "thread_tid": AGENT.runner.thread.native_id if AGENT.runner.thread else None,
        "queue": len(AGENT.runner.queue),
        "pool": source.sampler.sample_pool,
        "counters": source.counters.snapshot()[1],
        "skips": [source.sampler._rng.random() for _ in range(4)],
    }
    AGENT.shutdown()
    return {"before": before, "after": after}


def prepare_parent(agent) -> None:
    a = agent(sampling=1, polling=1)
    source = a.http_source()
    a.set_http_port(8080, "test")
    request(source)  # starts the exporter thread, which opens state and sockets
    deadline = time.monotonic() + 5
    # Its first pass may run before that request's sample is queued: wait for the pass
    # that takes it too (the thread sleeps until it is woken for it).
    while not (a.exporter.state and a.exporter._socks and not a.runner.queue):
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    a.exporter.drain = lambda: []  # the thread keeps running but leaves the queue alone
    for _ in range(5):
        request(source)
    assert a.runner.thread is not None and a.runner.thread.is_alive()
    assert len(a.runner.queue) == 5 and a.exporter.state is not None


def stop_thread(a) -> None:
    """What a fork from C needs: no thread running. One that waits for the GIL at the
    fork leaves the child's GIL condition variable broken (glibc counts the vanished
    waiter) and the child hangs at its first GIL hand-over -- the reason nothing runs in
    a uWSGI master. (A thread with samples queued wakes every TICK, so waiting for it to
    sleep is not enough on a loaded machine.) The agent keeps its queue, state and
    sockets: the child must still notice the new pid and reuse none of them."""
    thread = a.runner.thread
    a.runner.stop(10)
    assert not thread.is_alive()


@pytest.mark.parametrize("fork", ["os.fork", "libc.fork"])
def test_child_reuses_nothing_inherited(agent, fork: str) -> None:
    prepare_parent(agent)
    parent_skips = [AGENT.http_source().sampler._rng.random() for _ in range(4)]
    if fork == "os.fork":
        forker = os.fork
    else:
        # fork(2) straight from C, as uWSGI does without py-call-osafterfork: Python's
        # at-fork hooks do not run, so the agent must notice the new pid by itself.
        libc = ctypes.PyDLL(None)  # keeps the GIL across the call, like C code
        forker = libc.fork
        stop_thread(AGENT)
    report = run_in_child(forker, child_body)
    assert "error" not in report, report
    before, after = report["before"], report["after"]
    if fork == "os.fork":
        assert before["pid"] == before["real_pid"]  # reset by the at-fork hook
        assert not before["started"] and before["queue"] == 0
        assert not before["thread_alive"]
        assert before["sockets"] == 0 and not before["state"]
        assert before["next_at"] == 0  # the first request takes the slow path
        assert before["skips"] != parent_skips  # RNG reseeded (would repeat the parent's)
    else:
        assert before["pid"] != before["real_pid"]  # no hook ran: stale until noticed
    assert after["skips"] != parent_skips
    assert after["started"] and after["thread_alive"]
    assert AGENT.runner.thread is not None
    assert after["thread_tid"] != AGENT.runner.thread.native_id
    # The child counts only its own request; the parent's queue was not inherited.
    assert (after["pool"], after["counters"]) == (1, 1)
    assert after["queue"] <= 1
    assert len(AGENT.runner.queue) == 5  # the parent's own state is untouched
    assert threading.current_thread() is threading.main_thread()


def test_os_fork_pauses_the_thread_and_restarts_it_in_the_parent(agent) -> None:
    """A process whose exporter runs (a gunicorn --preload master) stops it for the fork,
    so no child inherits a half-done pass, and runs a fresh one after."""
    prepare_parent(agent)
    old = AGENT.runner.thread
    assert old is not None and old.is_alive()
    report = run_in_child(
        os.fork, lambda: {"threads": threading.active_count(), "started": AGENT.runner.started}
    )
    assert report == {"threads": 1, "started": False}
    assert not old.is_alive(), "the thread ran across the fork"
    new = AGENT.runner.thread
    assert new is not None and new is not old and new.is_alive()
    assert AGENT.runner.started and not AGENT.runner.paused


UWSGI_MASTER = textwrap.dedent("""
    import json, os, sys, threading, types
    calls = []
    uwsgi = types.ModuleType("uwsgi")
    uwsgi.has_threads = 1
    uwsgi.worker_id = lambda: 0  # the master
    uwsgi.post_fork_hook = lambda: calls.append("previous")
    uwsgi.opt, uwsgi.sockets = {}, []
    sys.modules["uwsgi"] = uwsgi
    from sflow_app._agent import AGENT
    AGENT.http_source()
    AGENT.memcache_source()
    master = {"threads": threading.active_count(), "started": AGENT.runner.started}
    pid = os.fork()
    if pid == 0:
        uwsgi.worker_id = lambda: 1
        uwsgi.post_fork_hook()  # what uWSGI calls in each new worker
        worker = {"threads": threading.active_count(), "started": AGENT.runner.started,
                  "calls": calls}
        print(json.dumps({"master": master, "worker": worker}), flush=True)
        os._exit(0)
    os.waitpid(pid, 0)
""")


def test_uwsgi_master_starts_nothing_and_each_worker_starts_at_its_fork(tmp_path) -> None:
    """uWSGI forks from C: a thread in its master could hold the GIL at fork. The master
    only chains uwsgi.post_fork_hook; each worker starts there, idle or not."""
    auto = tmp_path / "hsflowd.auto"
    auto.write_text(
        "rev_start=1\nsampling=10\npolling=1\ncollector=127.0.0.1 9\nagentIP=127.0.0.1\nrev_end=1\n"
    )
    env = {**os.environ, "SFLOW_APP_CONFIG": str(auto), "SFLOW_APP_STATE_DIR": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, "-c", UWSGI_MASTER],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    report = json.loads(out.stdout)
    assert report["master"] == {"threads": 1, "started": False}
    assert report["worker"] == {"threads": 2, "started": True, "calls": ["previous"]}


FLAG_CHILDREN = """
import ctypes, json, os, sys
from sflow_app import _forked

def child(flag, kind, fork):
    read_fd, write_fd = os.pipe()
    pid = fork()
    if pid == 0:
        fresh = _forked.flag() if kind == "page" else _forked._SamePid()
        os.write(write_fd, json.dumps([flag[0], fresh[0]]).encode())
        os._exit(0)
    os.close(write_fd)
    seen = json.loads(os.read(read_fd, 100))
    os.waitpid(pid, 0)
    return seen

out = {}
for kind in ("page", "pid"):
    flag = _forked.flag() if kind == "page" else _forked._SamePid()
    out[kind + " is a page"] = not isinstance(flag, _forked._SamePid)
    for name, fork in (("os.fork", os.fork), ("libc.fork", ctypes.PyDLL(None).fork)):
        out[f"{kind} {name}"] = [flag[0], *child(flag, kind, fork), flag[0]]
print(json.dumps(out))
"""


def test_forked_flag_reads_zero_in_any_child() -> None:
    """The sampled path's fork check (no getpid system call): set here, zero in a child
    forked from Python or from C, set in a flag the child makes, still set in the parent;
    the fallback (pids) alike. In an interpreter of its own: forks with no thread."""
    done = subprocess.run(
        [sys.executable, "-c", FLAG_CHILDREN], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["page is a page"] is (sys.platform == "linux")  # MADV_WIPEONFORK took
    for kind in ("page", "pid"):
        for fork in ("os.fork", "libc.fork"):
            # parent's before, the inherited one in the child, the child's own, parent's after
            assert out[f"{kind} {fork}"] == [1, 0, 1, 1], (kind, fork, out)
