"""A state directory setting that cannot be used (a file): gunicorn's workers fall back to
a private folder in the temp dir, say so once for the service, with one reason for the
setting (not one per folder name tried), and ``sflow-app status`` finds them there."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from helpers import Collector, Server, free_port, wait_until
from test_status import APPS, clean_env


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
    argv = [sys.executable, "-m", "gunicorn", "-w", "2", "-k", "sync", "-b", f"127.0.0.1:{port}"]
    argv += ["--no-control-socket", "wsgi_app:application"]
    server = Server(argv, cwd=APPS, env=env, port=port, log=tmp_path / "log", health="/health")
    try:
        server.start()
        assert wait_until(lambda: server.log().count("Booting worker") >= 2), server.log()
        for i in range(20):  # both workers serve (and open their state) in all likelihood
            httpx.get(f"{server.base}/hello/{i}", timeout=10)
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
        server.stop()
        collector.close()
    # status searched the setting, noted why it skipped it, and found the service.
    assert done.returncode == 0, done.stderr
    assert f"skipped {not_a_dir}: not a directory" in done.stderr
    [svc] = json.loads(done.stdout)["services"]
    assert svc["name"] == "falls-back"
    # One warning for the service, one reason for the setting, and where it went instead.
    text = server.log()
    warnings = [line for line in text.splitlines() if "state directories skipped" in line]
    assert len(warnings) == 1, text
    assert warnings[0].count(not_a_dir) == 1, warnings[0]
    assert f"using {state_dir}/sflow-app-{os.getuid()}" in warnings[0]
