"""``musiclm prepare audio``: a corpus (folder, JSONL, MusicCaps) -> WebDataset audio shards.

The work is ``musiclm.datamodules.prepare_audio.prepare_audio``; this module is its command
line (flags, rank from the environment, the summary it prints).
"""

from __future__ import annotations

import argparse
import time

from musiclm.datamodules.corpora import SOURCES
from musiclm.datamodules.prepare_audio import prepare_audio, rank_from_env
from musiclm.usage import run_command


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="musiclm prepare audio",
        description="Corpus -> WebDataset audio shards OUT/<split>/audio-*.tar + manifest.json. "
        "Resumable: rerun the same command after an interruption.",
    )
    p.add_argument("--source", required=True, choices=SOURCES, help="corpus adapter")
    p.add_argument("--input", required=True, help="folder, JSONL manifest or MusicCaps CSV")
    p.add_argument("--audio-dir", help="musiccaps: folder holding <ytid>.<ext>")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--sample-rate", type=int, default=16000)
    p.add_argument("--min-seconds", type=float, default=1.0, help="shorter items are skipped")
    p.add_argument("--shard-size", type=int, default=64, help="samples per shard")
    p.add_argument("--workers", type=int, default=1, help="processes on this machine")
    p.add_argument("--rank", type=int, help="this job's slice (default: RANK/NODE_RANK env)")
    p.add_argument("--world-size", type=int, help="number of slices (default: WORLD_SIZE env)")
    p.add_argument("--valid-fraction", type=float, default=0.05, help="for items without split")
    p.add_argument("--test-fraction", type=float, default=0.05, help="for items without split")
    p.add_argument(
        "--captions",
        choices=("required", "optional"),
        default="required",
        help="optional: keep items without a caption (audio only, for a run whose MuLan is a "
        "pretrained joint embedding); default: such items are skipped",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    return run_command("musiclm prepare audio", lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    env_rank, env_world = rank_from_env()
    rank = env_rank if args.rank is None else args.rank
    world = env_world if args.world_size is None else args.world_size
    start = time.perf_counter()
    manifests = prepare_audio(
        args.source,
        args.input,
        args.out,
        sample_rate=args.sample_rate,
        audio_dir=args.audio_dir,
        min_seconds=args.min_seconds,
        shard_size=args.shard_size,
        workers=args.workers,
        rank=rank,
        world_size=world,
        valid_fraction=args.valid_fraction,
        test_fraction=args.test_fraction,
        captions=args.captions == "required",
        progress=not args.quiet,
    )
    took = time.perf_counter() - start
    for split, m in manifests.items():
        state = "" if m["complete"] else " (other ranks still running)"
        print(
            f"{split}: {m['num_samples']} samples, {m['total_seconds']:.1f} s in "
            f"{len(m['shards'])} shards, {len(m['skipped'])} skipped{state}"
        )
        for s in m["skipped"][:10]:
            print(f"  skipped {s['item']}: {s['reason']}")
    print(f"done in {took:.1f} s -> {args.out}")
    return 0
