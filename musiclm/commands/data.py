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


def melody_pairs_main(argv: list[str]) -> int:
    """``musiclm data melody-pairs``: same-melody groups from the demo tunes, as a manifest."""
    from musiclm.datamodules.melody import build_melody_pairs

    p = argparse.ArgumentParser(
        prog="musiclm data melody-pairs",
        description="Render groups of the same stretch of a demo tune played by different "
        "instruments, tempi and octaves (train/valid/test pieces kept apart): writes "
        "OUT/audio/*.wav and OUT/melodies.jsonl for MelodyDataModule(manifest=...).",
    )
    p.add_argument("--out", required=True)
    count = number(int, low=0)
    p.add_argument("--train", type=count, default=600, help="groups from training pieces")
    p.add_argument("--valid", type=count, default=36, help="groups from validation pieces")
    p.add_argument("--test", type=count, default=36, help="groups from test pieces")
    p.add_argument("--views", type=number(int, low=2), default=2, help="instruments per group")
    p.add_argument("--seconds", type=number(float, low=0, low_open=True), default=4.0)
    p.add_argument("--sample-rate", type=number(int, low=1), default=16000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=number(int, low=1), default=min(4, os.cpu_count() or 1))
    a = p.parse_args(argv)
    counts = {k: v for k, v in (("train", a.train), ("valid", a.valid), ("test", a.test)) if v}
    if not counts:
        p.error("--train, --valid and --test are all 0: no groups to render")

    def work() -> int:
        manifest = build_melody_pairs(
            a.out, groups=counts, views=a.views, sample_rate=a.sample_rate, seconds=a.seconds,
            seed=a.seed, workers=a.workers,
        )  # fmt: skip
        print(f"wrote {sum(counts.values())} groups x {a.views} views to {manifest}")
        return 0

    return run_command("musiclm data melody-pairs", work)
