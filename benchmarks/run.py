"""The whole benchmark suite, one command (``./scripts/bench`` runs this in the venv).

Runs every ``bench_*.py`` in a fresh interpreter of its own (``--json`` for its figures,
``--smoke`` passed on), keeps each one's full output in ``benchmarks/results/<name>.log``,
then prints one table -- each figure with its target and PASS/FAIL where the issue sets
one -- and writes everything, with the machine and the versions compared against, to
``benchmarks/results/latest.json`` (``smoke.json`` under ``--smoke``).

Exit status: 0 when every benchmark ran, whatever the figures; 1 when one of them broke
(a harness that does not run is the failure this catches).

    ./scripts/bench [--smoke] [--markdown] [--only NAME ...] [--json PATH] [--python-load]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
BENCHES = [
    "sampler", "encoder", "wsgi", "asgi", "memcache", "exporter", "servers", "idle",
    "import", "memory",
]  # fmt: skip
PACKAGES = [
    "sflow-app", "opentelemetry-api", "opentelemetry-sdk",
    "opentelemetry-instrumentation-wsgi", "opentelemetry-instrumentation-asgi",
    "opentelemetry-instrumentation-pymemcache", "prometheus-client", "gunicorn", "uvicorn",
    "wrapt", "pymemcache",
]  # fmt: skip


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        mem = Path("/proc/meminfo").read_text().split("\n")[0].split()[1]
        load = Path("/proc/loadavg").read_text().split()[:3]
    except OSError:
        mem, load = "?", ["?"]
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "memory_gib": round(int(mem) / 2**20, 1) if mem.isdigit() else None,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "load_average_at_start": " ".join(load),
    }


def versions() -> dict[str, str]:
    found: dict[str, str] = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    wrk = shutil.which("wrk")
    if wrk:
        out = subprocess.run([wrk, "-v"], capture_output=True, text=True).stdout
        found["wrk"] = out.split()[1] if out.split() else "?"
    else:
        found["wrk"] = "not installed (Python load generator)"
    return found


def run_one(name: str, opts: argparse.Namespace) -> dict[str, Any]:
    """One benchmark in its own interpreter: its figures, or why it broke."""
    out = Path(tempfile.mkstemp(suffix=".json")[1])
    args = [sys.executable, str(HERE / f"bench_{name}.py"), "--json", str(out)]
    if opts.smoke:
        args.append("--smoke")
    if opts.python_load and name == "servers":
        args.append("--python-load")
    RESULTS.mkdir(exist_ok=True)
    log = RESULTS / f"{name}{'-smoke' if opts.smoke else ''}.log"
    started = time.monotonic()
    print(f"running {name} ...", end=" ", flush=True)
    try:
        with log.open("w") as f:
            proc = subprocess.run(
                args,
                stdout=f,
                stderr=subprocess.STDOUT,
                cwd=HERE,
                timeout=300 if opts.smoke else 1800,
            )
        took = time.monotonic() - started
        print(f"{took:.0f} s", flush=True)
        if proc.returncode != 0:
            tail = log.read_text().splitlines()[-15:]
            return {"bench": name, "error": f"exit {proc.returncode}", "log_tail": tail}
        result: dict[str, Any] = json.loads(out.read_text())
        result["seconds"] = round(took, 1)
        return result
    except (subprocess.TimeoutExpired, OSError, ValueError) as exc:
        print("broken", flush=True)
        return {"bench": name, "error": repr(exc)}
    finally:
        out.unlink(missing_ok=True)


def fmt(value: float) -> str:
    if value != value or value in (float("inf"), float("-inf")):
        return str(value)
    if value == 0 or abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def rows(results: list[dict[str, Any]]) -> list[list[str]]:
    table = []
    for result in results:
        if "error" in result:
            table.append([result["bench"], "BROKEN: " + result["error"], "", "", ""])
            continue
        for f in result["figures"]:
            verdict = "" if f["ok"] is None else ("pass" if f["ok"] else "FAIL")
            table.append(
                [
                    result["bench"],
                    f["name"],
                    f"{fmt(f['value'])} {f['unit']}",
                    f["target"] or "",
                    verdict,
                ]
            )
    return table


HEADER = ["benchmark", "figure", "value", "target", "result"]


def text_table(table: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [HEADER, *table]) for i in range(len(HEADER))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(HEADER, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in table]
    return "\n".join(lines)


def markdown_table(table: list[list[str]]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in table]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny counts: the harness works")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    parser.add_argument("--only", action="append", choices=BENCHES, help="run only these")
    parser.add_argument("--json", metavar="PATH", help="where to write the results")
    parser.add_argument("--python-load", action="store_true", help="servers: no wrk")
    opts = parser.parse_args()
    started = datetime.now(UTC)
    info: dict[str, Any] = {"date": started.strftime("%Y-%m-%d %H:%M UTC"), "machine": machine()}
    info["versions"] = versions()
    results = [run_one(name, opts) for name in (opts.only or BENCHES)]
    table = rows(results)
    m = info["machine"]
    print()
    smoke = " (SMOKE: tiny counts, the figures mean nothing)" if opts.smoke else ""
    print(f"sflow_app benchmarks, {info['date']}{smoke}")
    print(
        f"machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, Linux {m['kernel']}, "
        f"Python {m['python']}, load average at start {m['load_average_at_start']}"
    )
    print("versions: " + ", ".join(f"{k} {v}" for k, v in info["versions"].items()))
    print()
    print(markdown_table(table) if opts.markdown else text_table(table))
    path = (
        Path(opts.json) if opts.json else RESULTS / ("smoke.json" if opts.smoke else "latest.json")
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**info, "smoke": opts.smoke, "results": results}, indent=1))
    print(f"\nwritten: {path}")
    broken = [r["bench"] for r in results if "error" in r]
    if broken:
        print(f"BROKEN (see benchmarks/results/*.log): {', '.join(broken)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
