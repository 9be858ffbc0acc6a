"""``musiclm demo``: corpus -> shards -> every stage -> generate -> evaluate, resumably.

    musiclm demo --out runs/demo [--quick] [--clips N] [--seconds S] [--rerank N] [--force STEP]

Each step is skipped when its outputs are complete, so rerunning the same command after a
kill continues where it stopped. ``--force STEP`` reruns that step and every step after it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="musiclm demo",
        description="Run the whole system on the demo corpus: build it, prepare shards, train "
        "MuLan and its RVQ, fit the tokenizers, train the semantic/coarse/fine stages with "
        "`musiclm fit`, write PIPELINE.yaml, generate for held-out prompts, evaluate, and "
        "write report.md. Rerun the same command to continue after an interruption.",
    )
    p.add_argument("--out", default="runs/demo", help="run folder (default runs/demo)")
    p.add_argument("--quick", action="store_true", help="tiny run for tests (a few minutes)")
    p.add_argument("--clips", type=int, help="corpus size (default 1000; quick 30)")
    p.add_argument("--seconds", type=float, help="clip length in seconds (default 10; quick 4)")
    p.add_argument(
        "--rerank",
        type=int,
        help="candidates per prompt, MuLan keeps the best (default 1; 3 costs ~2.7x generation)",
    )
    p.add_argument(
        "--force",
        action="append",
        default=[],
        metavar="STEP",
        help="rerun STEP and the steps after it ('all' for everything); repeatable",
    )
    p.add_argument(
        "--seed",
        type=int,
        help="seed of the corpus, every training job, generation and evaluation (default 0)",
    )
    p.add_argument("--until", metavar="STEP", help="stop after STEP")
    p.add_argument("--conf", help="folder of the stage configs (default: conf/demo of the source)")
    p.add_argument("--list", action="store_true", help="list the steps and their state, run none")
    return p


def _settings(args: argparse.Namespace):
    from musiclm.demo.plan import DemoSettings

    s = DemoSettings.quick() if args.quick else DemoSettings()
    if args.clips is not None:
        if args.clips < 10:
            raise ValueError(f"--clips {args.clips}: need at least 10 (train/valid/test splits)")
        s.clips = args.clips
    if args.seconds is not None:
        if args.seconds <= 0:
            raise ValueError(f"--seconds {args.seconds}: must be positive")
        s.seconds = args.seconds
        s.gen_seconds = min(s.gen_seconds, args.seconds)
    if args.seed is not None:
        if args.seed < 0:
            raise ValueError(f"--seed {args.seed}: must be >= 0")
        s.seed = args.seed
    if args.rerank is not None:
        if args.rerank < 1:
            raise ValueError(f"--rerank {args.rerank}: need at least 1 candidate per prompt")
        s.rerank = args.rerank
    return s


def _check_settings(out: Path, settings: dict, forcing: bool) -> None:
    """A run folder keeps the settings it was made with; other sizes would mix outputs."""
    from musiclm.datamodules.shards import atomic_write_json

    path = out / "settings.json"
    if path.is_file() and not forcing:
        old = json.loads(path.read_text())
        # Keys only one side knows (a newer version's settings) are not a conflict.
        diff = {k: (old[k], v) for k, v in settings.items() if k in old and old[k] != v}
        if diff:
            shown = ", ".join(f"{k}: {a} -> {b}" for k, (a, b) in diff.items())
            raise ValueError(
                f"{out} was made with other settings ({shown}); use another --out, or "
                "--force all to redo it"
            )
    atomic_write_json(path, settings)


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    from musiclm.demo.paths import DemoPaths
    from musiclm.demo.plan import build_steps, default_conf_dir
    from musiclm.demo.steps import StepFailed, StepRunner

    out = Path(args.out)
    conf = Path(args.conf) if args.conf else default_conf_dir()
    try:
        settings = _settings(args)
        missing = [
            s for s in ("mulan", "semantic", "coarse", "fine") if not (conf / f"{s}.yaml").is_file()
        ]
        if missing:
            raise ValueError(f"--conf {conf}: no {', '.join(m + '.yaml' for m in missing)}")
        runner = StepRunner(out, force=args.force)
        paths = DemoPaths(out=out, conf=conf)
        steps = build_steps(runner, paths, settings)
        names = [s.name for s in steps]
        if args.until and args.until not in names:
            raise ValueError(f"--until {args.until!r}: no such step; steps are {names}")
        if args.list:
            for step in steps:
                state = "done" if runner.is_done(step) else "to do"
                print(f"{step.name:<16} {state:<6} {step.describe}")
            return 0
        _check_settings(out, settings.to_json(), bool(args.force))
        if args.until:
            steps = steps[: names.index(args.until) + 1]
        start = time.perf_counter()
        print(f"musiclm demo: run folder {out} ({'quick' if args.quick else 'full'})", flush=True)
        runner.run(steps)
    except (ValueError, StepFailed) as exc:
        print(f"musiclm demo: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ValueError) else 1
    took = time.perf_counter() - start
    print(f"musiclm demo: finished in {took / 60:.1f} min; see {out / 'report.md'}")
    return 0
