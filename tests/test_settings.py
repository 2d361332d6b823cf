"""One route for every setting: the registry, sources, and the mistakes that must warn."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import Collector, write_auto

from sflow_app._agent import Agent
from sflow_app._config import KWARGS, MAX_WARNINGS, VARS, parse_auto, resolve
from sflow_app._encode import encode_datagram
from sflow_app._once import first_in_service
from sflow_app._shared import SharedState
from sflow_app._watch import MAX_BYTES
from sflow_app.decode import decode
from sflow_app.records import AppOperations, CountersSample, Datagram

PATH = "/etc/hsflowd.auto"
FILE = (
    "rev_start=3\nsampling=400\nsampling.http=50\npolling=30\ndatagram=1400\n"
    "collector=10.0.0.50\nagentIP=10.0.0.7\nds_index=1\nrev_end=3\n"
)


def test_every_variable_is_a_configure_keyword_and_back() -> None:
    assert {v.field for v in VARS} == KWARGS
    assert {"state_dir", "shared", "config_path"} <= KWARGS
    assert len({v.env for v in VARS}) == len(VARS) == len({v.key for v in VARS})


def test_sources_for_a_file_and_environment_mix() -> None:
    env = {
        "SFLOW_APP_DATAGRAM": "1200",
        "SFLOW_APP_SAMPLING_MEMCACHE": "7",
        "SFLOW_APP_SHARED": "0",
    }
    s = resolve({"queue_capacity": 128}, env, parse_auto(FILE), PATH)
    assert s.sources["datagram"] == "environment" and s.datagram == 1200
    assert s.sources["collectors"] == "file" and s.sources["agent_ip"] == "file"
    assert s.sources["queue_capacity"] == "configure"
    assert s.sources["shared"] == "environment" and s.shared is False
    assert s.sources["config_path"] == "default" and "state_dir" not in s.sources
    assert s.sampling_setting("http") == (50, "file")
    assert s.sampling_setting("memcache") == (7, "environment")
    assert s.sampling_setting("app.x") == (400, "file")
    assert s.polling_setting("http") == (30, "file")
    assert resolve({}, {}, None, PATH).sampling_setting("http") == (400, "default")


def test_state_dir_and_shared_go_through_resolution() -> None:
    s = resolve({}, {"SFLOW_APP_STATE_DIR": " /run/sfa ", "SFLOW_APP_SHARED": "no"}, None, PATH)
    assert (s.state_dir, s.shared) == ("/run/sfa", False)
    s = resolve({"state_dir": "/k", "shared": True}, {"SFLOW_APP_SHARED": "0"}, None, PATH)
    assert (s.state_dir, s.shared, s.sources["state_dir"]) == ("/k", True, "configure")
    s = resolve({}, {"SFLOW_APP_SHARED": "maybe"}, None, PATH)
    assert s.shared is True
    assert "SFLOW_APP_SHARED='maybe' ignored: 'maybe' is not 1/true/yes or 0/false/no" in (
        s.warnings
    )
    with pytest.raises(ValueError, match=r"configure\(state_dir=...\)"):
        resolve({"state_dir": ""}, {}, None, PATH)


def test_the_agent_and_the_helper_agree_on_the_config_path(state_dir: str) -> None:
    # Worked out once: the agent used to keep the spaces the helper stripped.
    env = {"SFLOW_APP_CONFIG": " /run/h.auto ", "SFLOW_APP_STATE_DIR": state_dir}
    agent = Agent(autostart=False, env=env)
    assert agent.config_path == "/run/h.auto"
    agent.configure(config_path=Path("/k/h.auto"))
    assert agent.config_path == "/k/h.auto"


def test_a_path_with_a_nul_is_refused_by_configure(tmp_path: Path, state_dir: str) -> None:
    # It was stored, then every stat() raised: status() and each reload failed for good.
    auto = write_auto(tmp_path / "hsflowd.auto", 6343)
    agent = Agent(autostart=False, env={"SFLOW_APP_CONFIG": str(auto), "SFLOW_APP_NAME": "nul"})
    for name in ("config_path", "state_dir"):
        with pytest.raises(ValueError, match=rf"configure\({name}=...\): expected a path"):
            agent.configure(**{name: f"{tmp_path}/a\0b"})
    assert agent.status()["enabled"] and agent.config_path == str(auto)


def test_a_source_made_while_settings_change_gets_the_new_ones(
    tmp_path: Path, state_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A data source made on a request thread (a decorated function's first call) while
    the exporter applies new settings: the reload went over the sources before the new
    one was among them, which kept the old rate until the settings changed again."""
    auto = write_auto(tmp_path / "hsflowd.auto", 6343, sampling=10)
    env = {"SFLOW_APP_CONFIG": str(auto), "SFLOW_APP_STATE_DIR": state_dir}
    agent = Agent(autostart=False, env=env)
    agent.reload()
    apply_source = agent._apply_source

    def interleaved(source):  # the exporter's reload, right after this source's settings
        apply_source(source)
        if source.kind == "app" and agent.settings.sampling_for("app.checkout") == 10:
            agent.configure(sampling=7)  # as a reload of a changed file does

    monkeypatch.setattr(agent, "_apply_source", interleaved)
    try:
        source = agent.app_source("checkout")
        assert agent.settings.sampling_for("app.checkout") == 7
        assert source.sampler.rate == 7
    finally:
        agent.shutdown()
        agent.exporter.close()
        agent.runner.close()


def test_a_warning_before_the_first_load_is_recorded_in_the_configured_folder(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """sflow-app run's hooks may warn (once per service) before the agent read its
    configuration: the record goes to SFLOW_APP_STATE_DIR's folder, not the default one."""
    where = tmp_path / "state"
    where.mkdir()
    agent = Agent(autostart=False, env={"SFLOW_APP_STATE_DIR": str(where), "SFLOW_APP_NAME": "w"})
    with caplog.at_level(logging.WARNING, logger="sflow_app"):
        agent.warn_service("a mistake")
    assert "a mistake" in caplog.text
    assert [p.name for p in where.glob("*/*.warned")] != []


def test_configure_sets_state_dir_and_shared(tmp_path: Path, collector: Collector) -> None:
    auto = write_auto(tmp_path / "hsflowd.auto", collector.port)
    where = tmp_path / "state"
    where.mkdir()
    agent = Agent(autostart=False, env={"SFLOW_APP_CONFIG": str(auto), "SFLOW_APP_NAME": "u"})
    agent.configure(state_dir=str(where))
    agent.http_source()
    agent.set_http_port(8080, "test")
    try:
        agent.tick(0.0)
        assert isinstance(agent.exporter.state, SharedState)
        [private] = where.iterdir()  # the user's private folder under the configured one
        assert private.name == f"sflow-app-{os.getuid()}"
        assert ".state" in {p.suffix for p in private.iterdir()}
        agent.exporter.close()
        agent.configure(shared=False)
        agent.tick(10.0)
        assert not isinstance(agent.exporter.state, SharedState)
    finally:
        agent.exporter.close()


@pytest.mark.parametrize(
    "name, closest",
    [
        ("SFLOW_APP_SAMPLNG", "SFLOW_APP_SAMPLING"),
        ("SFLOW_APP_COLLECTOR", "SFLOW_APP_COLLECTORS"),
        ("SFLOW_APP_STATEDIR", "SFLOW_APP_STATE_DIR"),
        ("SFLOW_APP_SAMPLNG_HTTP", "SFLOW_APP_SAMPLING"),
    ],
)
def test_an_unknown_variable_names_the_closest_known_one(name: str, closest: str) -> None:
    s = resolve({}, {name: "5"}, None, PATH)
    assert s.warnings == (f"unknown variable {name} ignored; did you mean {closest}?",)


def test_known_and_per_application_variables_are_not_unknown() -> None:
    env = {v.env: "1" for v in VARS} | {"SFLOW_APP_SAMPLING_APP_SHOP": "3"}
    assert not [w for w in resolve({}, env, None, PATH).warnings if "unknown variable" in w]
    s = resolve({}, {"SFLOW_APP_XYZZY": "1"}, None, PATH)
    assert s.warnings == (
        "unknown variable SFLOW_APP_XYZZY ignored; see docs/config.md for the known names",
    )


@pytest.mark.parametrize(
    "name, closest",
    [
        ("SFLOW_APP_SAMPLING_HTP", "SFLOW_APP_SAMPLING_HTTP"),
        ("SFLOW_APP_POLLING_MEMCACHED", "SFLOW_APP_POLLING_MEMCACHE"),
        ("SFLOW_APP_SAMPLING_SHOP", "SFLOW_APP_SAMPLING_APP_SHOP"),
        ("SFLOW_APP_SAMPLING_HTTP_X", "SFLOW_APP_SAMPLING_HTTP"),
        # app..shop: it was taken, shown by sflow-app config, and never looked up
        ("SFLOW_APP_SAMPLING_APP__SHOP", "SFLOW_APP_SAMPLING_APP_SHOP"),
    ],
)
def test_an_unknown_application_names_the_closest_one(name: str, closest: str) -> None:
    s = resolve({}, {name: "5"}, parse_auto(FILE), PATH)
    [warning] = s.warnings
    assert warning.startswith(f"unknown variable {name} ignored: no application ")
    assert warning.endswith(f"; did you mean {closest}?")
    assert s.sampling_setting("http") == (50, "file")  # the variable is no setting
    assert s.polling_setting("memcache") == (30, "file")


def test_known_applications_and_the_files_own_keys_do_not_warn() -> None:
    env = {"SFLOW_APP_SAMPLING_APP": "3", "SFLOW_APP_POLLING_APP_SHOP_CART": "4"}
    # hsflowd.auto carries every sampling.<app> of hsflowd.conf, other agents' too.
    text = FILE.replace("rev_end", "sampling.apache=7\npolling.1G=5\nrev_end")
    s = resolve({}, env, parse_auto(text), PATH)
    assert s.warnings == ()
    assert s.sampling_setting("app.x") == (3, "environment")


def _sent_name(name: str) -> str:
    """The application collectors decode from the service's app_operations record."""
    sample = CountersSample(1, 3, 80, (AppOperations(name),))
    [got] = decode(encode_datagram(Datagram("127.0.0.1", 80, 1, 1, (sample,)))).samples
    assert isinstance(got, CountersSample)
    [record] = got.records
    assert isinstance(record, AppOperations) and isinstance(record.application, str)
    return record.application


@pytest.mark.parametrize("name", ["s" * 300, "é" * 20, "a" * 31 + "€"])
def test_a_service_name_longer_than_the_wire_field_warns_with_what_is_sent(name: str) -> None:
    sent = _sent_name(name)
    s = resolve({}, {"SFLOW_APP_NAME": name}, None, PATH)
    assert s.service_name == name  # the whole name still names the service here
    assert s.warnings == (
        f"SFLOW_APP_NAME is cut to {len(sent)} characters on the wire (sFlow's application "
        f"field holds 32 bytes): collectors receive {sent!r}",
    )
    s = resolve({"service_name": name}, {}, None, PATH)
    assert s.warnings[0].startswith(f"configure(service_name=...) is cut to {len(sent)} ")


def test_a_service_name_that_fits_does_not_warn() -> None:
    for name in ("s" * 32, "é" * 16, "x"):
        assert resolve({}, {"SFLOW_APP_NAME": name}, None, PATH).warnings == ()
    # A name os.environ decoded with surrogateescape (bytes that are no UTF-8): no crash.
    s = resolve({}, {"SFLOW_APP_NAME": "n" * 40 + "\udcff"}, None, PATH)
    assert s.warnings[0].endswith(f"collectors receive {'n' * 32!r}")


def test_a_bad_collector_entry_drops_only_itself() -> None:
    s = resolve({}, {"SFLOW_APP_COLLECTORS": "127.0.0.1:7000, web1:6343, [::1]:9"}, None, PATH)
    assert s.collectors == (("127.0.0.1", 7000), ("::1", 9))
    assert s.warnings == (
        "SFLOW_APP_COLLECTORS entry 'web1:6343' ignored: 'web1' is not an IPv4 or IPv6 address",
    )


def test_an_ipv6_collector_that_may_end_in_a_port_is_refused_not_guessed() -> None:
    # "::1:6343" is an IPv6 address, and also ::1 port 6343: which one was meant is not
    # knowable, and either guess sends the datagrams astray without a word.
    env = {"SFLOW_APP_COLLECTORS": "::1:6343, [::1]:9, [::1:6343], 2001:db8::5, ::1 7000"}
    s = resolve({}, env, None, PATH)
    assert s.collectors == (("::1", 9), ("::1:6343", 6343), ("2001:db8::5", 6343), ("::1", 7000))
    assert s.warnings == (
        "SFLOW_APP_COLLECTORS entry '::1:6343' ignored: ambiguous: write [::1]:6343 for "
        "port 6343 of ::1, or [::1:6343] for that address (port 6343)",
    )
    with pytest.raises(ValueError, match=r"collectors=...\): ambiguous: write \[::1\]:6343"):
        resolve({"collectors": "::1:6343"}, {}, None, PATH)


def test_rejected_collectors_are_blamed_in_the_state_not_the_file(state_dir: str) -> None:
    s = resolve({}, {"SFLOW_APP_COLLECTORS": "web1"}, None, PATH)
    assert not s.enabled
    assert s.reason.startswith("off: SFLOW_APP_COLLECTORS entry 'web1' ignored")
    env = {
        "SFLOW_APP_COLLECTORS": "web1",
        "SFLOW_APP_CONFIG": "/x",
        "SFLOW_APP_STATE_DIR": state_dir,
    }
    agent = Agent(autostart=False, env=env)
    assert agent.status()["state"].startswith("off: SFLOW_APP_COLLECTORS")


def test_first_in_service_is_once_per_uid_service_and_process_group(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = str(tmp_path)
    assert first_in_service(d, None, "shop", "m1")
    assert not first_in_service(d, None, "shop", "m1")
    assert first_in_service(d, None, "shop", "m2") and first_in_service(d, None, "cart", "m1")
    # In the user's private directory, never a name in the parent.
    private = tmp_path / f"sflow-app-{os.getuid()}"
    assert [p.name for p in tmp_path.iterdir()] == [private.name]
    # A restarted service (another process group) warns again: the file names the group.
    [shop] = [p for p in private.iterdir() if len(p.read_text().split()) == 3]
    assert shop.read_text().split()[0] == str(os.getpgrp())
    shop.write_text("1\n" + "\n".join(shop.read_text().split()[1:]) + "\n")
    assert first_in_service(d, None, "shop", "m1")
    # Without a usable directory: warn anyway.
    from sflow_app import _once

    def unusable(*args: object) -> None:
        raise PermissionError("no usable private state directory")

    monkeypatch.setattr(_once, "open_private", unusable)
    assert first_in_service(d, None, "shop", "m1")


SQUATTED = """
import hashlib, os, sys
from sflow_app._agent import Agent
parent, service = sys.argv[1], "squatted"
name = hashlib.blake2b(f"{os.getuid()}\\0{service}".encode(), digest_size=8).hexdigest()
fifo = os.path.join(parent, f"sflow-app-{name}.warned")
os.mkfifo(fifo)  # what another local user can put in a world-writable directory
env = {"SFLOW_APP_STATE_DIR": parent, "SFLOW_APP_NAME": service, "SFLOW_APP_CONFIG": "/nope"}
Agent(autostart=False, env=env).reload()  # a configuration mistake: warned once per service
print("warned", os.path.exists(fifo))
"""


def test_a_fifo_in_the_state_directory_does_not_hang_a_warning(tmp_path: Path) -> None:
    """The per-service warning file is kept in the private directory: a FIFO squatting
    its name in the world-writable parent is never opened (reading one blocks)."""
    parent = tmp_path / "shm"
    parent.mkdir()
    parent.chmod(0o1777)
    script = tmp_path / "squatted.py"
    script.write_text(SQUATTED)
    done = subprocess.run(
        [sys.executable, str(script), str(parent)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["warned", "True"]
    assert "SFLOW_APP_CONFIG=/nope" in done.stderr


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_config_mistakes_warn_at_the_default_level(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, state_dir: str
) -> None:
    caplog.set_level(logging.WARNING, "sflow_app")
    base = {"SFLOW_APP_STATE_DIR": state_dir, "SFLOW_APP_NAME": "warns"}
    missing = str(tmp_path / "nope.auto")
    Agent(autostart=False, env={**base, "SFLOW_APP_CONFIG": missing}).reload()
    assert _warnings(caplog) == [
        f"sflow_app: SFLOW_APP_CONFIG={missing}: no such file; off: {missing}: not found"
    ]
    # Recorded in the state directory these settings name, not the default one.
    private = os.path.join(state_dir, f"sflow-app-{os.getuid()}")
    assert [p for p in os.listdir(private) if p.endswith(".warned")]
    caplog.clear()
    no_ip = tmp_path / "noip.auto"
    no_ip.write_text("rev_start=1\ncollector=127.0.0.1\nrev_end=1\n")
    no_ip.chmod(0o644)
    Agent(autostart=False, env={**base, "SFLOW_APP_CONFIG": str(no_ip)}).reload()
    [line] = _warnings(caplog)
    assert f"{no_ip} has no valid agentIP line (hsflowd writes one); off:" in line
    # A bad value: the line's own warning, and the same (it said "hsflowd has no agent
    # address yet", which hsflowd says with a rev-only file, never so).
    caplog.clear()
    bad_ip = write_auto(tmp_path / "badip.auto", 6343, agent_ip="eth0")
    Agent(autostart=False, env={**base, "SFLOW_APP_CONFIG": str(bad_ip)}).reload()
    assert _warnings(caplog) == [
        f"sflow_app: {bad_ip}: line 9: agentip ignored: 'eth0' is not an IPv4 or IPv6 address",
        f"sflow_app: {bad_ip} has no valid agentIP line (hsflowd writes one); "
        f"off: {bad_ip}: no agentIP",
    ]
    caplog.clear()
    open_file = write_auto(tmp_path / "open.auto", 6343)
    open_file.chmod(0o666)
    Agent(autostart=False, env={**base, "SFLOW_APP_CONFIG": str(open_file)}).reload()
    [line] = _warnings(caplog)
    assert "refused: writable by group or others" in line
    caplog.clear()
    # The default path missing stays quiet (no hsflowd on this host is normal).
    Agent(autostart=False, env={"SFLOW_APP_STATE_DIR": state_dir}).reload()
    assert _warnings(caplog) == [] or os.path.exists("/etc/hsflowd.auto")


def test_a_second_worker_of_the_service_does_not_warn_again(
    caplog: pytest.LogCaptureFixture, state_dir: str
) -> None:
    caplog.set_level(logging.WARNING, "sflow_app")
    env = {"SFLOW_APP_STATE_DIR": state_dir, "SFLOW_APP_NAME": "svc", "SFLOW_APP_SAMPLNG": "5"}
    Agent(autostart=False, env=env).reload()
    Agent(autostart=False, env=env).reload()  # as another worker would
    assert _warnings(caplog) == [
        "sflow_app: unknown variable SFLOW_APP_SAMPLNG ignored; did you mean SFLOW_APP_SAMPLING?"
    ]


def test_a_mistake_fixed_then_back_warns_again_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, state_dir: str
) -> None:
    """Once per service per occurrence: a load without the mistake forgets it, so its
    return (a later deploy, a rewritten file) warns again, once for all the workers."""
    caplog.set_level(logging.WARNING, "sflow_app")
    clean = {
        "SFLOW_APP_STATE_DIR": state_dir,
        "SFLOW_APP_NAME": "svc",
        "SFLOW_APP_CONFIG": "/dev/null",
    }
    broken = {**clean, "SFLOW_APP_SAMPLNG": "5"}
    typo = "sflow_app: unknown variable SFLOW_APP_SAMPLNG ignored; did you mean SFLOW_APP_SAMPLING?"
    for env in (broken, broken, clean, clean, broken, broken):  # workers of three deploys
        Agent(autostart=False, env=env).reload()
    assert _warnings(caplog) == [typo, typo]
    # Within one process too: its config file broken, fixed, broken again.
    caplog.clear()
    path = tmp_path / "hsflowd.auto"
    agent = Agent(autostart=False, env={**clean, "SFLOW_APP_CONFIG": str(path)})
    for agent_ip in ("eth0", "127.0.0.1", "eth0", "eth0"):
        write_auto(path, 6343, agent_ip=agent_ip)
        agent.reload()
    bad_line = f"sflow_app: {path}: line 9: agentip ignored: 'eth0' is not an IPv4 or IPv6 address"
    assert [w for w in _warnings(caplog) if "line 9" in w] == [bad_line, bad_line]
    # A warning that is no configuration mistake stays once per run of the service.
    caplog.clear()
    agent.warn_service("not a mistake of the configuration")
    Agent(autostart=False, env=clean).reload()
    Agent(autostart=False, env=clean).warn_service("not a mistake of the configuration")
    assert len(_warnings(caplog)) == 1
    # Looking for mistakes to forget makes nothing where nothing was ever warned.
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    Agent(autostart=False, env={**clean, "SFLOW_APP_STATE_DIR": str(fresh)}).reload()
    assert list(fresh.iterdir()) == []


def up(port: int) -> bool:
    import httpx

    try:
        return httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def test_an_unknown_application_warns_once_per_service(
    caplog: pytest.LogCaptureFixture, state_dir: str
) -> None:
    caplog.set_level(logging.WARNING, "sflow_app")
    env = {"SFLOW_APP_STATE_DIR": state_dir, "SFLOW_APP_NAME": "svc"}
    env["SFLOW_APP_SAMPLING_HTP"] = "5"
    Agent(autostart=False, env=env).reload()
    Agent(autostart=False, env=env).reload()  # as another worker would
    [line] = _warnings(caplog)
    assert line.startswith("sflow_app: unknown variable SFLOW_APP_SAMPLING_HTP ignored")
    assert line.endswith("did you mean SFLOW_APP_SAMPLING_HTTP?")


def test_a_long_service_name_warns_once_per_service(
    caplog: pytest.LogCaptureFixture, state_dir: str
) -> None:
    caplog.set_level(logging.WARNING, "sflow_app")
    env = {"SFLOW_APP_STATE_DIR": state_dir, "SFLOW_APP_NAME": "s" * 300}
    Agent(autostart=False, env=env).reload()
    Agent(autostart=False, env=env).reload()  # as another worker would
    [line] = _warnings(caplog)
    assert line.startswith("sflow_app: SFLOW_APP_NAME is cut to 32 characters on the wire")


@pytest.mark.slow
def test_gunicorn_with_3_workers_warns_once_per_mistake(tmp_path: Path, state_dir: str) -> None:
    import signal
    import subprocess
    import sys
    import time

    import httpx
    from memcached import free_port

    apps = Path(__file__).resolve().parent / "apps"
    collector = Collector()
    port = free_port()
    missing = str(tmp_path / "nowhere.auto")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SFLOW_APP_")}
    env.update(
        SFLOW_APP_CONFIG=missing,
        SFLOW_APP_COLLECTORS=f"127.0.0.1:{collector.port}, collector.example.com",
        SFLOW_APP_SAMPLNG="5",
        SFLOW_APP_POLLING="1",
        SFLOW_APP_NAME="warns-once",
        SFLOW_APP_STATE_DIR=state_dir,
        PYTHONUNBUFFERED="1",
    )
    log_path = tmp_path / "server.log"
    cmd = [sys.executable, "-m", "gunicorn", "-w", "3", "-k", "sync", "-b", f"127.0.0.1:{port}"]
    cmd += ["--no-control-socket", "--log-level", "info", "wsgi_app:application"]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            cmd, cwd=apps, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 30
        while log_path.read_text().count("Booting worker") < 3 or not up(port):
            assert proc.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.2)
        for i in range(30):  # every worker builds its middleware and reads its settings
            httpx.get(f"http://127.0.0.1:{port}/hello/{i}", timeout=10)
        assert collector.wait_for(lambda c: bool(c.datagrams), timeout=20)
        time.sleep(2)  # a late worker would log by now
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(20)
        collector.close()
    text = log_path.read_text()
    assert text.count("Booting worker") >= 3
    for warning in (
        "unknown variable SFLOW_APP_SAMPLNG ignored; did you mean SFLOW_APP_SAMPLING?",
        "SFLOW_APP_COLLECTORS entry 'collector.example.com' ignored",
        f"SFLOW_APP_CONFIG={missing}: no such file",
    ):
        assert text.count(warning) == 1, text


def test_configure_is_not_undone_by_a_reload_running_beside_it(
    tmp_path: Path, collector: Collector, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The exporter's periodic reload resolves settings from ``configure()``'s arguments;
    one that read the old arguments and applied after ``configure()`` had applied its
    own undid it, for good (the settings' cache key was the same). A reload paused inside
    resolution while ``configure()`` runs on another thread: ``configure()`` must win."""
    import threading

    from sflow_app import _agent

    auto = write_auto(tmp_path / "hsflowd.auto", collector.port)
    agent = Agent(autostart=False, env={"SFLOW_APP_CONFIG": str(auto)})
    agent.reload()
    inside, go = threading.Event(), threading.Event()
    real_resolve = _agent._config.resolve
    exporter_like: list[threading.Thread] = []

    def resolve(*args: object, **kwargs: object) -> object:
        result = real_resolve(*args, **kwargs)  # type: ignore[arg-type]
        if threading.current_thread() in exporter_like and not inside.is_set():
            inside.set()
            go.wait(10)  # paused with the old arguments' settings in hand
        return result

    monkeypatch.setattr(_agent._config, "resolve", resolve)
    agent._resolved = None  # the reload below resolves again, as after a change
    reloader = threading.Thread(target=agent.reload)
    exporter_like.append(reloader)
    reloader.start()
    assert inside.wait(10)
    configurer = threading.Thread(target=agent.configure, kwargs={"sampling": 7})
    configurer.start()
    configurer.join(1.0)  # done at once without a lock; waits for the reload with one
    go.set()
    reloader.join(10)
    configurer.join(10)
    assert not reloader.is_alive() and not configurer.is_alive()
    assert agent.settings.sampling_for("http") == 7
    agent.reload()  # and a later periodic reload keeps it
    assert agent.settings.sampling_for("http") == 7


def test_file_mistakes_after_the_first_read_still_warn(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, state_dir: str
) -> None:
    # The watcher kept appending to a list the first reload had replaced: every warning
    # about a later version of the file (a bad line, a refused file) was lost.
    caplog.set_level(logging.WARNING, "sflow_app")
    auto = write_auto(tmp_path / "hsflowd.auto", 6343)
    env = {
        "SFLOW_APP_STATE_DIR": state_dir,
        "SFLOW_APP_NAME": "later",
        "SFLOW_APP_CONFIG": str(auto),
    }
    agent = Agent(autostart=False, env=env)
    agent.reload()
    assert _warnings(caplog) == []
    write_auto(auto, 6343, rev=2, extra="collector=collector.example.com\n")
    agent.reload()
    [line] = _warnings(caplog)
    assert "collector ignored: 'collector.example.com' is not an IPv4" in line
    caplog.clear()
    auto.chmod(0o666)
    agent.reload()
    [line] = _warnings(caplog)
    assert "refused: writable by group or others" in line
    assert not agent.settings.enabled


def test_a_growing_file_warns_once_not_at_every_change(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, state_dir: str
) -> None:
    # SFLOW_APP_CONFIG naming a log by mistake: the warnings counted its lines ("... and 7
    # more") or gave its size, so each change (each second) logged a new warning, and the
    # off state's reason (logged when it changes) a new line too.
    caplog.set_level(logging.INFO, "sflow_app")
    log = tmp_path / "app.log"
    log.write_text("".join(f"line {i}\n" for i in range(MAX_WARNINGS + 1)))
    log.chmod(0o644)
    env = {
        "SFLOW_APP_STATE_DIR": state_dir,
        "SFLOW_APP_NAME": "grows",
        "SFLOW_APP_CONFIG": str(log),
    }
    agent = Agent(autostart=False, env=env)

    def grow(text: str) -> int:
        with log.open("a") as f:
            f.write(text)
        agent.reload()
        return len(caplog.records)

    agent.reload()
    logged = len(caplog.records)
    assert [grow(f"more {i}\n") for i in range(5)] == [logged] * 5
    logged = grow("x" * MAX_BYTES + "\n")
    assert "refused: larger than" in caplog.records[-1].getMessage()
    assert [grow(f"more {i}\n") for i in range(5)] == [logged] * 5
    assert not agent.settings.enabled


def test_a_hand_written_file_without_rev_lines_warns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, state_dir: str
) -> None:
    # Its collectors and rates were ignored (sFlow off) with an INFO line only.
    caplog.set_level(logging.WARNING, "sflow_app")
    mine = tmp_path / "mine.auto"
    mine.write_text("collector=127.0.0.1\nagentIP=127.0.0.1\nsampling.http=10\n")
    mine.chmod(0o644)
    env = {
        "SFLOW_APP_STATE_DIR": state_dir,
        "SFLOW_APP_NAME": "byhand",
        "SFLOW_APP_CONFIG": str(mine),
    }
    agent = Agent(autostart=False, env=env)
    agent.reload()
    [line] = _warnings(caplog)
    assert f"{mine} has no rev_start line" in line and not agent.settings.enabled
    # Saved by a Windows editor: a byte-order mark and CRLF; read as any other file.
    mine.write_bytes(
        b"\xef\xbb\xbfrev_start=1\r\ncollector=127.0.0.1\r\nagentIP=127.0.0.1\r\nrev_end=1\r\n"
    )
    agent.reload()
    assert agent.settings.enabled and agent.settings.reason.endswith("rev 1")


def test_a_service_name_that_is_not_utf8_still_reports(
    tmp_path: Path, collector: Collector, caplog: pytest.LogCaptureFixture, state_dir: str
) -> None:
    # SFLOW_APP_NAME from a Latin-1 environment (or a script name from argv) holds a
    # surrogate: hashing it raised UnicodeEncodeError at every exporter pass (a traceback
    # each time, nothing sent) and in status() whenever a warning was due.
    caplog.set_level(logging.WARNING, "sflow_app")
    auto = write_auto(tmp_path / "hsflowd.auto", collector.port)
    env = {
        "SFLOW_APP_CONFIG": str(auto),
        "SFLOW_APP_NAME": "caf\udce9",
        "SFLOW_APP_STATE_DIR": state_dir,
        "SFLOW_APP_SAMPLING": "often",
    }
    agent = Agent(autostart=False, env=env)
    agent.http_source()
    agent.set_http_port(8080, "test")
    agent.app_source(agent.service_name)
    try:
        assert agent.status()["service_name"] == "caf\udce9"
        for now in (0.0, 2.0, 4.0):  # past the first poll's random offset, then flushed
            agent.tick(now)
        assert collector.wait_for(lambda c: len(c.counter_samples()) >= 2)
        [line] = _warnings(caplog)
        assert "SFLOW_APP_SAMPLING='often' ignored" in line
    finally:
        agent.exporter.close()


def test_a_shorter_polling_interval_applies_at_once(
    tmp_path: Path, collector: Collector, state_dir: str
) -> None:
    # hsflowd's polling going from 300 to 1 s kept the next counter sample where the
    # 300 s interval had put it (up to 5 minutes away); the C agents start the new
    # interval's countdown afresh, as this does now.
    auto = write_auto(tmp_path / "hsflowd.auto", collector.port, polling=300)
    env = {
        "SFLOW_APP_CONFIG": str(auto),
        "SFLOW_APP_NAME": "poll",
        "SFLOW_APP_STATE_DIR": state_dir,
    }
    agent = Agent(autostart=False, env=env)
    agent.http_source()
    agent.set_http_port(8080, "test")
    agent.exporter.rng.seed(0)  # the first poll's random offset: 253 s of the 300
    try:
        agent.tick(0.0)
        write_auto(auto, collector.port, rev=2, polling=1)
        for now in (2.0, 4.0, 6.0):
            agent.tick(now)
        assert collector.wait_for(lambda c: len(c.counter_samples()) >= 1)
    finally:
        agent.exporter.close()


def test_configure_after_the_first_pass_moves_the_shared_state(
    tmp_path: Path, collector: Collector
) -> None:
    # configure(shared=False) or state_dir=... once the exporter had made a pass (a
    # surface built first: its thread runs at once) was ignored: the state stayed open.
    auto = write_auto(tmp_path / "hsflowd.auto", collector.port)
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    env = {
        "SFLOW_APP_CONFIG": str(auto),
        "SFLOW_APP_NAME": "moves",
        "SFLOW_APP_STATE_DIR": str(first),
    }
    agent = Agent(autostart=False, env=env)
    agent.http_source()
    agent.set_http_port(8080, "test")
    try:
        agent.tick(0.0)
        assert isinstance(agent.exporter.state, SharedState)
        agent.configure(shared=False)
        agent.tick(2.0)
        assert not isinstance(agent.exporter.state, SharedState)
        agent.configure(shared=True, state_dir=str(second))
        agent.tick(4.0)
        state = agent.exporter.state
        assert isinstance(state, SharedState) and state.path.startswith(f"{second}/")
    finally:
        agent.exporter.close()
