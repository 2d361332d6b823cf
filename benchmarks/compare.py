"""Before and after: the benchmarks with another revision's package and with this checkout's,
interleaved round by round (``./scripts/bench --against REV`` runs this in the venv).

    ./scripts/bench --against REV [--after REV2] [--rounds N] [--only NAME ...] [--json PATH]

``--after REV2``: REV2's package instead of this checkout's (one step of the history
against its parent, say); ``--smoke``: tiny counts, the harness works.

REV's package (``git archive``: ``sflow_app/`` and ``integrations/``, laid out as installed)
is unpacked into a temporary directory. Each round runs every chosen benchmark once with
REV's package and once with this checkout's -- ``PYTHONPATH`` decides, checked before the
first round -- in an order that alternates from round to round, so drift and other load
on a shared machine fall on both alike. The benchmarks and their harness are this
checkout's for both sides: only the library differs.

Prints, per figure: each side's median over the rounds, the change, each side's spread
(half the range of its rounds, relative to its median: the noise a change must be read
against) and a verdict -- ``worse`` when the change is over 5 % in the figure's bad
direction, ``better`` when over 5 % in its good one, ``same`` otherwise; figures that
measure something else than us (the bare server, the floor, OpenTelemetry's import) get
none. Writes everything to ``benchmarks/results/compare.json`` (or ``--json``).

Exit status: 0 whatever the figures; 1 when a benchmark broke or REV has no package.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from datetime import UTC, datetime
from io import BytesIO
from pathlib import Path
from typing import Any

from _harness import fmt

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
# In-process figures first; the servers benchmark is the long one.
DEFAULT = ["wsgi", "asgi", "memcache", "exporter", "idle", "encoder", "sampler", "servers"]
CHOICES = [*DEFAULT, "import", "memory"]
THRESHOLD = 5.0  # per cent
# Figures of what we compare against, not of us: shown, never judged.
NOT_OURS = ("floor overhead", "bare: server CPU", "import OpenTelemetry")
HIGHER_UNITS = ("/s", "samples/s", "requests/s", "%")


def unpack(rev: str, into: Path) -> str:
    """REV's package under ``into``, as installed (integrations/ inside it); its commit."""
    commit = subprocess.run(
        ["git", "rev-parse", "--verify", f"{rev}^{{commit}}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    archive = subprocess.run(
        ["git", "archive", "--format=tar", commit, "sflow_app", "integrations"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout
    into.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    if (into / "integrations").is_dir():
        (into / "integrations").rename(into / "sflow_app" / "integrations")
    return commit


def package_of(root: Path) -> Path:
    """Where ``import sflow_app`` comes from with ``root`` first on the path."""
    out = subprocess.run(
        [sys.executable, "-c", "import sflow_app; print(sflow_app.__file__)"],
        env={**os.environ, "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        check=True,
        cwd=HERE,
    ).stdout.strip()
    return Path(out).resolve().parent


def run_one(name: str, root: Path, log: Path, smoke: bool) -> dict[str, Any]:
    """One benchmark in its own interpreter with ``root``'s package: its figures."""
    out = Path(tempfile.mkstemp(suffix=".json")[1])
    env = {**os.environ, "PYTHONPATH": str(root)}
    args = [sys.executable, str(HERE / f"bench_{name}.py"), "--json", str(out)]
    started = time.monotonic()
    try:
        with log.open("w") as f:
            proc = subprocess.run(
                [*args, "--smoke"] if smoke else args,
                stdout=f,
                stderr=subprocess.STDOUT,
                cwd=HERE,
                env=env,
                timeout=1800,
            )
        if proc.returncode != 0:
            return {"bench": name, "error": f"exit {proc.returncode}, see {log}"}
        result: dict[str, Any] = json.loads(out.read_text())
        package = Path(result.get("package") or "?").resolve()
        if not package.is_relative_to(root.resolve()):  # PYTHONPATH did not decide
            return {"bench": name, "error": f"measured the package at {package}"}
        result["seconds"] = round(time.monotonic() - started, 1)
        return result
    except (subprocess.TimeoutExpired, OSError, ValueError) as exc:
        return {"bench": name, "error": repr(exc)}
    finally:
        out.unlink(missing_ok=True)


def direction(figure: dict[str, Any]) -> str | None:
    """ "lower" or "higher" (which way is better), None for a figure that is not ours."""
    name, target, unit = figure["name"], figure["target"] or "", figure["unit"]
    if any(part in name for part in NOT_OURS):
        return None
    if target.startswith("<="):
        return "lower"
    if target.startswith(">=") or unit in HIGHER_UNITS or " / ours" in name:
        return "higher"
    return "lower"


def spread(values: list[float]) -> float:
    """Half the range of ``values``, in per cent of their median."""
    mid = statistics.median(values)
    return 50 * (max(values) - min(values)) / abs(mid) if mid else float("nan")


def compare(runs: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per figure: both sides' medians, the change, spreads and the verdict."""
    values: dict[tuple[str, str], dict[str, list[float]]] = {}
    figures: dict[tuple[str, str], dict[str, Any]] = {}
    for side, results in runs.items():
        for result in results:
            for figure in result.get("figures", []):
                key = (result["bench"], figure["name"])
                figures.setdefault(key, figure)
                values.setdefault(key, {"before": [], "after": []})[side].append(figure["value"])
    rows = []
    for key, sides in values.items():
        before, after = sides["before"], sides["after"]
        if not before or not after:
            continue
        b, a = statistics.median(before), statistics.median(after)
        change = 100 * (a - b) / abs(b) if b else float("nan")
        better = direction(figures[key])
        verdict = ""
        if better is not None and change == change:
            worse = change > THRESHOLD if better == "lower" else change < -THRESHOLD
            improved = change < -THRESHOLD if better == "lower" else change > THRESHOLD
            verdict = "worse" if worse else "better" if improved else "same"
        rows.append(
            {
                "bench": key[0],
                "figure": key[1],
                "unit": figures[key]["unit"],
                "better": better,
                "before": b,
                "after": a,
                "change_pct": change,
                "spread_before_pct": spread(before),
                "spread_after_pct": spread(after),
                "rounds": [len(before), len(after)],
                "verdict": verdict,
            }
        )
    return rows


def markdown(rows: list[dict[str, Any]], before: str, after: str) -> str:
    lines = [
        f"| benchmark | figure | {before} (median) | {after} (median) | change "
        "| spread before / after | verdict |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['bench']} | {r['figure']} | {fmt(r['before'])} {r['unit']} "
            f"| {fmt(r['after'])} {r['unit']} | {r['change_pct']:+.1f} % "
            f"| ±{r['spread_before_pct']:.1f} / ±{r['spread_after_pct']:.1f} % | {r['verdict']} |"
        )
    return "\n".join(lines)


def sides(opts: argparse.Namespace, tmp: Path) -> tuple[dict[str, Path], dict[str, str]]:
    """Each side's root (its package unpacked under ``tmp``, or this checkout) and commit;
    checked to be what ``import sflow_app`` finds with the root on PYTHONPATH."""
    roots = {"before": tmp / "before", "after": tmp / "after" if opts.after else ROOT}
    revs = {"before": opts.against, "after": opts.after}
    commits = {"after": ""}
    for side, root in roots.items():
        if root != ROOT:
            commits[side] = unpack(revs[side], root)
        found = package_of(root)
        if found != (root / "sflow_app").resolve():
            raise RuntimeError(f"{side} imports sflow_app from {found}")
    if not commits["after"]:
        commits["after"] = subprocess.run(
            ["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
    return roots, commits


def rounds(
    opts: argparse.Namespace, roots: dict[str, Path]
) -> tuple[dict[str, list[dict[str, Any]]], list[str]]:
    """Every benchmark on both sides, round after round, the order alternating."""
    runs: dict[str, list[dict[str, Any]]] = {"before": [], "after": []}
    broken = []
    for r in range(opts.rounds):
        for side in ["before", "after"] if r % 2 == 0 else ["after", "before"]:
            for name in opts.only or DEFAULT:
                print(f"round {r + 1}/{opts.rounds}: {side} {name} ...", end=" ", flush=True)
                log = RESULTS / f"compare-{side}-{name}-{r + 1}.log"
                result = run_one(name, roots[side], log, opts.smoke)
                runs[side].append(result)
                if "error" in result:
                    broken.append(f"{side} {name}: {result['error']}")
                    print("broken", flush=True)
                else:
                    print(f"{result['seconds']:.0f} s", flush=True)
    return runs, broken


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--against", metavar="REV", required=True, help="the 'before' revision")
    parser.add_argument("--after", metavar="REV2", help="the 'after' revision (default: here)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per side (default 5)")
    parser.add_argument("--only", action="append", choices=CHOICES, help="run only these")
    parser.add_argument("--json", metavar="PATH", help="where to write the comparison")
    parser.add_argument("--smoke", action="store_true", help="tiny counts: the harness works")
    opts = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="sfa-compare-") as tmp:
        try:
            roots, commits = sides(opts, Path(tmp))
        except (subprocess.CalledProcessError, RuntimeError) as exc:
            print(f"compare: {getattr(exc, 'stderr', None) or exc}", file=sys.stderr)
            return 1
        runs, broken = rounds(opts, roots)
    rows = compare(runs)
    before, after = commits["before"][:10], commits["after"][:10]
    date = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    print(f"\nbefore {before} ({opts.against}), after {after}, {opts.rounds} rounds, {date}")
    print(markdown(rows, before, after))
    worse = [r for r in rows if r["verdict"] == "worse"]
    print(f"\n{len(worse)} of {len(rows)} figures more than {THRESHOLD:g} % worse")
    path = Path(opts.json) if opts.json else RESULTS / "compare.json"
    summary = {"date": date, **commits, "rows": rows, "runs": runs}
    path.write_text(json.dumps(summary, indent=1))
    print(f"written: {path}")
    for line in broken:
        print(f"BROKEN: {line}", file=sys.stderr)
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
