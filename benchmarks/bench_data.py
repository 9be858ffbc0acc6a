"""Data benchmarks: demo-corpus rendering rate and ``prepare audio`` throughput.

    .venv/bin/python benchmarks/bench_data.py [--quick] [--clips 120] [--seconds 10] [--workers 2]

Prints one JSON line per figure. The tune cache (``~/.cache/musiclm``) is built first and not
timed: it is a one-off cost, reported separately when it had to be built. ``--quick`` renders
16 clips of 4 s (a smoke run). Figures: docs/results.md.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from common import machine


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--clips", type=int, default=120)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="16 clips of 4 s (a smoke run)")
    args = p.parse_args()
    if args.quick:
        args.clips, args.seconds = 16, 4.0

    from musiclm.datamodules.prepare_audio import prepare_audio
    from musiclm.demo_corpus import build_demo_corpus, load_tunes

    t = time.perf_counter()
    load_tunes(workers=args.workers)
    print(json.dumps({"figure": "tune cache load", "seconds": round(time.perf_counter() - t, 2)}))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        for workers in sorted({1, args.workers}):
            clips = args.clips if workers > 1 else max(min(20, args.clips), args.clips // 4)
            t, cpu = time.perf_counter(), time.process_time()
            build_demo_corpus(
                out / f"demo{workers}",
                clips=clips,
                seconds=args.seconds,
                workers=workers,
                progress=False,
            )
            took, cpu = time.perf_counter() - t, time.process_time() - cpu
            print(
                json.dumps(
                    {
                        "figure": "demo corpus rendering",
                        "clips": clips,
                        "clip_seconds": args.seconds,
                        "workers": workers,
                        "clips_per_minute": round(clips / took * 60, 1),
                        # with one worker all work is in this process: CPU time per clip is
                        # the figure the other jobs on a shared machine do not distort
                        "cpu_seconds_per_clip": round(cpu / clips, 3) if workers == 1 else None,
                        "load_average_1min": round(os.getloadavg()[0], 1),
                        "machine": machine(),
                    }
                )
            )
        manifest = out / f"demo{args.workers}" / "manifest.jsonl"
        audio_seconds = args.clips * args.seconds
        for workers in sorted({1, args.workers}):
            t, cpu = time.perf_counter(), time.process_time()
            prepare_audio(
                "demo",
                manifest,
                out / f"shards{workers}",
                shard_size=16,
                workers=workers,
                progress=False,
            )
            took, cpu = time.perf_counter() - t, time.process_time() - cpu
            print(
                json.dumps(
                    {
                        "figure": "prepare audio throughput",
                        "workers": workers,
                        "audio_seconds": audio_seconds,
                        "audio_seconds_per_second": round(audio_seconds / took, 1),
                        "audio_seconds_per_cpu_second": (
                            round(audio_seconds / cpu, 1) if workers == 1 else None
                        ),
                        "load_average_1min": round(os.getloadavg()[0], 1),
                        "machine": machine(),
                    }
                )
            )


if __name__ == "__main__":
    main()
