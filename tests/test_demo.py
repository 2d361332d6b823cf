"""The demo (./scripts/demo): it runs, leaves nothing behind, and its --help reads whole."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "examples" / "demo.py"


def test_demo_help_is_whole_sentences() -> None:
    result = subprocess.run(
        [sys.executable, str(DEMO), "--help"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0
    description = result.stdout.split("\n\n")[1]
    assert description.rstrip().endswith(".")
    assert "what a local sFlow collector receives" in " ".join(description.split())


def shm() -> set[str]:
    return set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()


@pytest.mark.slow
def test_demo_runs_and_leaves_nothing_behind(tmp_path: Path) -> None:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SFLOW_APP_")}
    env["TMPDIR"] = str(tmp)  # where tempfile (the demo, gunicorn) puts its files
    before = shm()
    result = subprocess.run(
        [sys.executable, str(DEMO), "--seconds", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "counters match  : yes" in result.stdout
    assert list(tmp.iterdir()) == []
    assert {n for n in shm() - before if n.startswith("sflow")} == set()
