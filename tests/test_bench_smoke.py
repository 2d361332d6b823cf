"""Every benchmark's smoke mode (tiny counts) through the suite's runner, as
``./scripts/bench --smoke`` runs it: a benchmark whose harness no longer runs fails here.
The figures of a smoke run mean nothing and are not checked, only that each benchmark
reported its figures. The servers benchmark uses wrk where it is installed, else its Python
load generator, which is also tested on its own."""

from __future__ import annotations

import http.server
import importlib.util
import json
import math
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import memcached
import pytest
from helpers import missing

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "benchmarks"
BENCHES = [
    "sampler", "encoder", "wsgi", "asgi", "memcache", "exporter", "servers", "idle",
    "import", "memory",
]  # fmt: skip
NEEDS = {
    "servers": ("gunicorn", "uvicorn"),
    "memcache": ("pymemcache",),
}


def test_every_benchmark_is_in_the_suite() -> None:
    files = sorted(p.stem.removeprefix("bench_") for p in BENCHMARKS.glob("bench_*.py"))
    assert files == sorted(BENCHES)
    spec = importlib.util.spec_from_file_location("bench_run", BENCHMARKS / "run.py")
    assert spec is not None and spec.loader is not None
    run = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run)
    assert run.BENCHES == BENCHES


@pytest.mark.parametrize("bench", BENCHES)
def test_smoke(bench: str, tmp_path: Path) -> None:
    for module in NEEDS.get(bench, ()):
        if importlib.util.find_spec(module) is None:
            missing(module, "pip install -e '.[test]'")
    if bench == "memcache":
        memcached.binary()  # fails, as the memcache tests do, where it is not installed
    out = tmp_path / "smoke.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(BENCHMARKS / "run.py"),
            "--smoke",
            "--only",
            bench,
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "| " not in proc.stdout and bench in proc.stdout  # the text table
    results = json.loads(out.read_text())["results"]
    assert [r["bench"] for r in results] == [bench]
    figures = results[0]["figures"]
    assert figures, results
    for figure in figures:
        assert isinstance(figure["value"], int | float)
        assert figure["unit"] and figure["name"]
        if figure["target"] is not None:
            assert figure["ok"] in (True, False)
            assert math.isnan(figure["value"]) or figure["ok"] == _meets(figure)


def _meets(figure: dict[str, object]) -> bool:
    op, bound = str(figure["target"]).split()
    value = float(figure["value"])  # type: ignore[arg-type]
    return value <= float(bound) if op == "<=" else value >= float(bound)


def test_markdown_table(tmp_path: Path) -> None:
    out = tmp_path / "smoke.json"
    proc = subprocess.run(
        [
            *(sys.executable, str(BENCHMARKS / "run.py"), "--smoke", "--only", "sampler"),
            *("--markdown", "--json", str(out)),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "| benchmark | figure | value | target | result |" in proc.stdout
    assert "| sampler | unsampled decision |" in proc.stdout
    data = json.loads(out.read_text())
    assert data["smoke"] is True and data["machine"]["cores"] and data["versions"]


def test_a_broken_benchmark_fails_the_suite(tmp_path: Path) -> None:
    """The runner's exit status is 1 when a benchmark does not run (the figures never
    decide it): the real runner, beside a benchmark that breaks."""
    (tmp_path / "run.py").write_text((BENCHMARKS / "run.py").read_text())
    (tmp_path / "bench_sampler.py").write_text("raise RuntimeError('harness broken')\n")
    proc = subprocess.run(
        [sys.executable, str(tmp_path / "run.py"), "--smoke", "--only", "sampler"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    assert (
        "BROKEN" in proc.stdout
        and "harness broken" in (tmp_path / "results" / "smoke.json").read_text()
    )


def test_python_load_generator() -> None:
    """The load generator the servers benchmark falls back on without wrk: it completes
    requests on keep-alive and on closing connections and gives a p99."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        from _loadgen import python_load
    finally:
        sys.path.remove(str(BENCHMARKS))

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        done, p99 = python_load(server.server_address[1], 0.3, 2)
    finally:
        server.shutdown()
        server.server_close()
    assert done > 0 and 0 < p99 < 10_000


def test_servers_blocks_pair_each_cycle() -> None:
    """bench_servers' throughput figures: the load's block sequence (rotating order) and
    the pairing of the worker's blocks, stray requests at a block's edge left out."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        from _blocks import Blocks, block_path, paired_ratios, wrk_script
    finally:
        sys.path.remove(str(BENCHMARKS))
    firsts = [block_path(i, block=10) for i in range(0, 90, 10)]
    assert firsts == ["/b", "/f", "/s", "/f", "/s", "/b", "/s", "/b", "/f"]
    assert "math.floor(n / 10)" in wrk_script(block=10)
    blocks = [
        ("/b", 1000, 10), ("/f", 1100, 10), ("/s", 1200, 10),
        ("/f", 2200, 10), ("/s", 1, 1), ("/f", 1, 1), ("/s", 2500, 10), ("/b", 2000, 10),
        ("/s", 3000, 10), ("/b", 2000, 8),  # the last cycle lacks /f; /b and /s pair
    ]  # fmt: skip
    assert paired_ratios(blocks, "/b", "/s", least=5) == [1000 / 1200, 2000 / 2500, 250 / 300]
    assert paired_ratios(blocks, "/b", "/f", least=5) == [1000 / 1100, 2000 / 2200]
    # The worker's side records only between take(start=True) and take().
    worker = Blocks()
    for path in ("/b", "/s", "/b"):
        worker.see(path)
    assert worker.take(start=True) == b"[]"
    for path in ("/b", "/b", "/s", "/f"):
        worker.see(path)
    done = json.loads(worker.take())
    assert [(p, n) for p, _, n in done] == [("/b", 2), ("/s", 1)] and done[0][1] >= 0
    worker.see("/s")
    assert worker.take() == b"[]"


def _compare_module() -> Any:
    spec = importlib.util.spec_from_file_location("bench_compare", BENCHMARKS / "compare.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(BENCHMARKS))  # its sibling _harness, as when run as a script
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCHMARKS))
    return module


def test_compare_runs_both_packages(tmp_path: Path) -> None:
    """``./scripts/bench --against REV``: each side's benchmark measured its own package
    (REV's unpacked from git, integrations inside it, and this checkout's), in rounds."""
    if not (ROOT / ".git").exists():
        missing("a git checkout", "git clone the repository")
    out = tmp_path / "compare.json"
    proc = subprocess.run(
        [
            *(sys.executable, str(BENCHMARKS / "compare.py"), "--against", "HEAD"),
            *("--rounds", "2", "--only", "sampler", "--smoke", "--json", str(out)),
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "| sampler | unsampled decision |" in proc.stdout
    data = json.loads(out.read_text())
    after = [Path(r["package"]) for r in data["runs"]["after"]]
    before = [Path(r["package"]) for r in data["runs"]["before"]]
    assert len(after) == len(before) == 2
    assert all(p == ROOT / "sflow_app" / "__init__.py" for p in after), after
    assert all(not p.is_relative_to(ROOT) for p in before), before
    names = {r["figure"] for r in data["rows"]}
    assert "unsampled decision" in names
    assert all(r["rounds"] == [2, 2] and r["verdict"] for r in data["rows"])


def test_compare_verdicts() -> None:
    """Which way is worse comes from the target, else the unit; a change within 5 % is
    the same; a figure of what we compare against is never judged."""
    compare = _compare_module()

    def runs(name: str, unit: str, target: str | None, before: float, after: float) -> Any:
        def result(value: float) -> dict[str, Any]:
            figure = {"name": name, "value": value, "unit": unit, "target": target}
            return {"bench": "b", "figures": [figure]}

        return compare.compare(
            {"before": [result(before), result(before)], "after": [result(after)] * 2}
        )[0]["verdict"]

    assert runs("cost", "us", None, 1.0, 1.06) == "worse"
    assert runs("cost", "us", None, 1.0, 1.04) == "same"
    assert runs("cost", "us", None, 1.0, 0.9) == "better"
    assert runs("ratio", "x", "<= 1.3", 1.0, 1.1) == "worse"
    assert runs("delivered", "%", ">= 98", 100.0, 90.0) == "worse"
    assert runs("rate", "samples/s", None, 100.0, 110.0) == "better"
    assert runs("OpenTelemetry 1 % / ours 1-in-100", "x", None, 60.0, 50.0) == "worse"
    assert runs("floor overhead", "us/request", None, 1.0, 2.0) == ""
