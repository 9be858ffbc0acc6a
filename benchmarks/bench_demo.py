"""Wall time of `musiclm demo` per step, and the demo's acceptance figures: one JSON line each.

    python benchmarks/bench_demo.py [--quick] [--out DIR]   # runs the demo in DIR (fresh)
    python benchmarks/bench_demo.py --report runs/demo      # reads a finished run folder

Step times come from the markers the run leaves (``steps/<name>.done``), the figures from
``eval/metrics.json``. A fresh folder is needed for times that mean anything (a rerun skips).
Without ``--out`` the run goes to a new temporary folder; ``--quick`` is the tiny demo of the
integration test (a few minutes), the default the full demo (about 17 minutes on 2 quiet
cores). Figures: docs/results.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import machine  # noqa: E402


def report(run: Path, *, wall: float | None = None) -> None:
    from musiclm.demo.report import acceptance

    steps = {}
    for marker in sorted((run / "steps").glob("*.done")):
        steps[marker.stem] = json.loads(marker.read_text())["seconds"]
    load = os.getloadavg()[0]
    for name, seconds in steps.items():
        print(json.dumps({"figure": "demo step seconds", "step": name, "value": round(seconds, 1)}))
    total = sum(steps.values())
    print(json.dumps({"figure": "demo total minutes", "value": round(total / 60, 2)}))
    if wall is not None:
        print(json.dumps({"figure": "demo wall minutes", "value": round(wall / 60, 2)}))
    print(json.dumps({"figure": "load average (1 min) at the end", "value": round(load, 2)}))
    print(json.dumps({"figure": "machine", "value": machine()}))
    metrics_path = run / "eval" / "metrics.json"
    if metrics_path.is_file():
        metrics = json.loads(metrics_path.read_text())
        for what, ok, figures in acceptance(metrics):
            print(json.dumps({"figure": what, "passed": ok, "value": figures}))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="the tiny demo (integration-test size)")
    ap.add_argument("--out", help="run folder (default: a new temporary folder)")
    ap.add_argument("--report", help="only read this finished run folder")
    args = ap.parse_args()
    if args.report:
        report(Path(args.report))
        return 0
    from musiclm.commands import demo

    out = Path(args.out or tempfile.mkdtemp(prefix="bench_demo_"))
    if (out / "steps").is_dir() and any((out / "steps").iterdir()):
        print(f"{out} already holds a run; give a fresh --out", file=sys.stderr)
        return 2
    start = time.perf_counter()
    code = demo.main(["--out", str(out), *(["--quick"] if args.quick else [])])
    report(out, wall=time.perf_counter() - start)
    if not args.out:
        shutil.rmtree(out, ignore_errors=True)  # a temporary run: give --out to keep it
    return code


if __name__ == "__main__":
    sys.exit(main())
