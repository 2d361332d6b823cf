"""A state directory setting that cannot be used (a file): gunicorn's workers fall back to
a private folder in the temp dir, say so once for the service, with one reason for the
setting (not one per folder name tried), and ``sflow-app status`` finds them there."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from helpers import Collector, free_port
from test_status import APPS, clean_env


def up(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


@pytest.mark.slow
def test_a_file_as_state_dir_warns_once_and_status_finds_the_fallback(
    tmp_path: Path, state_dir: str
) -> None:
    not_a_dir = os.path.join(state_dir, "a-file")
    Path(not_a_dir).write_text("not a directory\n")
    collector = Collector()
    port = free_port()
    env = clean_env(
        SFLOW_APP_STATE_DIR=not_a_dir,
        TMPDIR=state_dir,  # the fallback: <temp dir>/sflow-app-<uid>, this test's own
        SFLOW_APP_CONFIG=str(tmp_path / "none.auto"),
        SFLOW_APP_COLLECTORS=f"127.0.0.1:{collector.port}",
        SFLOW_APP_POLLING="1",
        SFLOW_APP_NAME="falls-back",
    )
    log_path = tmp_path / "server.log"
    cmd = [sys.executable, "-m", "gunicorn", "-w", "2", "-k", "sync", "-b", f"127.0.0.1:{port}"]
    cmd += ["--no-control-socket", "wsgi_app:application"]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            cmd, cwd=APPS, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 30
        while log_path.read_text().count("Booting worker") < 2 or not up(port):
            assert proc.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.2)
        for i in range(20):  # both workers serve (and open their state) in all likelihood
            httpx.get(f"http://127.0.0.1:{port}/hello/{i}", timeout=10)
        assert collector.wait_for(lambda c: bool(c.datagrams), timeout=20)
        done = subprocess.run(
            [sys.executable, "-m", "sflow_app", "status", "--json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        time.sleep(1)  # a late worker's warning would be logged by now
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(20)
        collector.close()
    # status searched the setting, noted why it skipped it, and found the service.
    assert done.returncode == 0, done.stderr
    assert f"skipped {not_a_dir}: not a directory" in done.stderr
    [svc] = json.loads(done.stdout)["services"]
    assert svc["name"] == "falls-back"
    # One warning for the service, one reason for the setting, and where it went instead.
    text = log_path.read_text()
    warnings = [line for line in text.splitlines() if "state directories skipped" in line]
    assert len(warnings) == 1, text
    assert warnings[0].count(not_a_dir) == 1, warnings[0]
    assert f"using {state_dir}/sflow-app-{os.getuid()}" in warnings[0]
