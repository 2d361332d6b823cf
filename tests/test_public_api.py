"""The public face: exact names, nothing heavy or running at import, one top-level package."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = (
    "pymemcache",
    "werkzeug",
    "flask",
    "django",
    "starlette",
    "fastapi",
    "asgiref",
    "uvicorn",
    "gunicorn",
    "gevent",
)


def test_all_is_exactly_the_public_api() -> None:
    import sflow_app

    assert sorted(sflow_app.__all__) == ["Status", "configure", "status", "transaction"]
    for name in sflow_app.__all__:
        assert callable(getattr(sflow_app, name))


def test_status_has_exactly_the_typed_keys(tmp_path: Path) -> None:
    """``status()`` is typed (``sflow_app.Status``): every key the type names is there,
    and none it does not name, for the agent and each of its data sources."""
    from helpers import write_auto

    from sflow_app._agent import Agent
    from sflow_app._status import CollectorHealth, QueueStatus, SourceStatus, Status

    agent = Agent(
        autostart=False,
        env={"SFLOW_APP_CONFIG": str(write_auto(tmp_path / "hsflowd.auto", 9))},
    )
    agent.http_source()
    agent.app_source("shop")
    agent.exporter.senders.send([("127.0.0.1", 9)], b"x", agent.stats)
    status = agent.status()
    assert set(status) == set(Status.__required_keys__)
    assert set(status["queue"]) == set(QueueStatus.__required_keys__)
    assert sorted(status["data_sources"]) == ["app:shop", "http"]
    for source in status["data_sources"].values():
        assert set(source) == set(SourceStatus.__required_keys__)
    [health] = status["collector_health"].values()
    assert set(health) == set(CollectorHealth.__required_keys__)
    agent.exporter.close()


def test_import_pulls_in_nothing_heavy_and_starts_nothing() -> None:
    code = (
        "import sys, threading, sflow_app, sflow_app.wsgi, sflow_app.decode;"
        "print(__import__('json').dumps({'mods': sorted(sys.modules), "
        "'threads': threading.active_count()}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    report = json.loads(out.stdout)
    loaded = {m.split(".")[0] for m in report["mods"]}
    assert not loaded & set(HEAVY), loaded & set(HEAVY)
    assert report["threads"] == 1


def test_configure_rejects_bad_values_clearly() -> None:
    import sflow_app

    with pytest.raises(ValueError, match="sampling"):
        sflow_app.configure(sampling=-1)
    with pytest.raises(TypeError, match="samplign"):
        sflow_app.configure(samplign=10)  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="query"):
        sflow_app.configure(query="some")  # type: ignore[arg-type]


def test_configure_takes_exactly_the_registered_settings() -> None:
    """configure()'s typed keywords and the registry of SFLOW_APP_* variables agree."""
    import inspect

    import sflow_app
    from sflow_app._config import KWARGS

    params = inspect.signature(sflow_app.configure).parameters
    assert set(params) == KWARGS
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params.values())


@pytest.mark.slow
def test_wheel_has_only_sflow_app_at_top_level(tmp_path: Path) -> None:
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    # Every install builds it: no setuptools warning for users to read (a folder of
    # modules shipped as data warned at every build).
    assert "Warning" not in build.stderr.decode(errors="replace")
    [wheel] = tmp_path.glob("sflow_app-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"sflow_app"}
    assert "sflow_app/py.typed" in names
    # `sflow-app run` puts _bootstrap/ on PYTHONPATH (a namespace package: no __init__)
    assert "sflow_app/_bootstrap/sitecustomize.py" in names
    assert "sflow_app/integrations/flask.py" in names
    assert {"sflow_app/memcache/__init__.py", "sflow_app/memcache/_state.py"} <= set(names)
    assert not any(n.startswith(("tests/", "integrations/", "examples/")) for n in names)


def test_the_configure_table_of_docs_lists_every_keyword() -> None:
    import inspect
    import re

    import sflow_app

    text = (ROOT / "docs" / "config.md").read_text()
    section = text.split("## `sflow_app.configure()` keyword arguments", 1)[1].split("\n## ")[0]
    rows = [line.split("|")[1] for line in section.splitlines() if line.startswith("| `")]
    documented = {name for cell in rows for name in re.findall(r"`(\w+)`", cell)}
    assert documented == set(inspect.signature(sflow_app.configure).parameters)
    assert "An unknown keyword raises `TypeError`" in section
    with pytest.raises(TypeError, match="bogus"):
        sflow_app.configure(bogus=1)  # type: ignore[call-arg]
