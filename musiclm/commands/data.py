"""``musiclm data demo``: render the embedded demo corpus (see ``musiclm.demo_corpus``)."""

from __future__ import annotations

import argparse
import os
import time

from musiclm.usage import number, run_command


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="musiclm data", description="build corpora")
    sub = p.add_subparsers(dest="job", required=True)
    d = sub.add_parser(
        "demo",
        help="render the demo corpus (music21 tunes, several instruments) to wav + manifest",
        description="Render real tunes from music21's corpus with the built-in synthesizer: "
        "writes OUT/audio/<id>.wav and OUT/manifest.jsonl (caption, split, attributes).",
    )
    d.add_argument("--out", required=True, help="output folder")
    d.add_argument(
        "--clips", type=number(int, low=1), default=200, help="number of clips (default 200)"
    )
    d.add_argument(
        "--seconds",
        type=number(float, low=0, low_open=True),
        default=10.0,
        help="clip length (default 10)",
    )
    d.add_argument(
        "--sample-rate", type=number(int, low=1), default=16000, help="Hz (default 16000)"
    )
    d.add_argument("--seed", type=int, default=0, help="same seed, same corpus (default 0)")
    d.add_argument(
        "--workers",
        type=number(int, low=1),
        default=min(4, os.cpu_count() or 1),
        help="processes",
    )
    d.add_argument("--quiet", action="store_true", help="no progress bar")
    sub.add_parser(
        "melody-pairs",
        add_help=False,
        help="same-melody groups in several instruments (melody stage; `--help` for options)",
    )
    return p


def main(argv: list[str]) -> int:
    if argv[:1] == ["melody-pairs"]:
        from musiclm.datamodules.melody import melody_pairs_main

        return melody_pairs_main(argv[1:])
    args = _parser().parse_args(argv)
    return run_command("musiclm data demo", lambda: _demo(args))


def _demo(args: argparse.Namespace) -> int:
    from musiclm.demo_corpus import build_demo_corpus

    start = time.perf_counter()
    manifest = build_demo_corpus(
        args.out,
        clips=args.clips,
        seconds=args.seconds,
        sample_rate=args.sample_rate,
        seed=args.seed,
        workers=args.workers,
        progress=not args.quiet,
    )
    took = time.perf_counter() - start
    print(f"wrote {args.clips} clips to {manifest} in {took:.1f} s")
    return 0
