"""Import time, each import in a fresh interpreter (interpreter start-up not counted: the
import statement is timed inside it), best of several, the imports interleaved:
``import sflow_app``, ``import sflow_app.wsgi``, ``import sflow_app.asgi`` beside
OpenTelemetry's WSGI instrumentation and, for reference, ``wrapt`` alone. Target:
``import sflow_app.wsgi`` no slower than ``opentelemetry.instrumentation.wsgi``.

Every module is imported with its bytecode cached, as an installed package has it: each
is imported once first, with a bytecode cache of the benchmark's own
(``PYTHONPYCACHEPREFIX``, a temporary directory; ``PYTHONDONTWRITEBYTECODE`` unset for the
probes). Otherwise, under ``PYTHONDONTWRITEBYTECODE=1``, an editable checkout's modules
are compiled from source on every import while pip-installed ones load their ``.pyc``:
that measured the compiler (about 40 % of the figure), not the import.

    .venv/bin/python benchmarks/bench_import.py [--smoke] [--json PATH]
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile

from _harness import Report, bench_args, ratio

MODULES = [
    "sflow_app",
    "sflow_app.wsgi",
    "sflow_app.asgi",
    "opentelemetry.instrumentation.wsgi",
    "wrapt",
]
PROBE = "import time; t = time.perf_counter(); import {}; print(time.perf_counter() - t)"


CACHE = tempfile.mkdtemp(prefix="sfa-bench-pyc-")
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
ENV["PYTHONPYCACHEPREFIX"] = CACHE


def import_ms(module: str) -> float | None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE.format(module)],
        capture_output=True,
        text=True,
        timeout=60,
        env=ENV,
    )
    if out.returncode != 0:
        return None  # not installed
    return float(out.stdout) * 1e3


def main() -> None:
    opts = bench_args(__doc__).parse_args()
    repeats = 1 if opts.smoke else 9
    report = Report("import")
    best: dict[str, float] = {}
    for module in MODULES:  # fills the bytecode cache: not timed
        import_ms(module)
    for _ in range(repeats):
        for module in MODULES:
            ms = import_ms(module)
            if ms is not None:
                best[module] = min(best.get(module, ms), ms)
    if "sflow_app" not in best or "sflow_app.wsgi" not in best:
        raise RuntimeError("sflow_app does not import")
    shutil.rmtree(CACHE, ignore_errors=True)
    print(f"import time, best of {repeats} fresh interpreters, bytecode cached")
    for module, ms in best.items():
        print(f"  import {module:40s} {ms:7.1f} ms")
    report.add("import sflow_app", best["sflow_app"], "ms")
    report.add("import sflow_app.wsgi", best["sflow_app.wsgi"], "ms")
    otel = best.get("opentelemetry.instrumentation.wsgi")
    if otel is not None:
        report.add("import OpenTelemetry WSGI instrumentation", otel, "ms")
        report.add(
            "import sflow_app.wsgi / OpenTelemetry's",
            ratio(best["sflow_app.wsgi"], otel),
            "x",
            "<= 1",
        )
    report.write(opts.json)


if __name__ == "__main__":
    main()
