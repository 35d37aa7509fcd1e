"""The course's own cost: each notebook's time under nbval, the unit tests', and the whole suite's.

    python benchmarks/bench_course.py [--notebooks-only] [--save benchmarks/RESULTS.md]

Runs ``python -m pytest <notebook>`` (strict nbval, as CI does) once per notebook, then the
tests in ``tests/`` once, each in a fresh process, and reports wall-clock times.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

from common import ROOT, header, save


def timed_pytest(target: str) -> tuple[float, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", target], cwd=ROOT, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    tail = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else f"exit {proc.returncode}"
    return elapsed, tail


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--save")
    p.add_argument("--notebooks-only", action="store_true", help="time the notebooks, not tests/")
    args = p.parse_args()
    notebooks = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "notebooks").rglob("*.ipynb") if ".ipynb_checkpoints" not in str(p))
    rows = []
    for nb in notebooks + ([] if args.notebooks_only else ["tests"]):
        elapsed, tail = timed_pytest(nb)
        rows.append((nb, elapsed, tail))
        print(f"{nb}: {elapsed:.1f} s  ({tail})", flush=True)
    lines = [header("The course's own run time (pytest, strict nbval)", "cpu"), "| target | wall s | pytest says |", "| --- | --- | --- |"]
    lines += [f"| `{nb}` | {t:.1f} | {tail} |" for nb, t, tail in rows]
    nb_total = sum(t for nb, t, _ in rows if nb.endswith(".ipynb"))
    lines.append(f"| all notebooks | {nb_total:.1f} | |")
    if not args.notebooks_only:
        lines.append(f"| whole suite (notebooks + tests) | {sum(t for _, t, _ in rows):.1f} | |")
    save("\n".join(lines) + "\n", args.save)


if __name__ == "__main__":
    main()
