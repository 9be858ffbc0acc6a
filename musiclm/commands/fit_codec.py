"""``musiclm prepare fit-codec``: fit the offline STFT residual k-means codec on audio shards
(``musiclm.tokenizers.fit_codec.fit_stft_rvq``), saved as a safetensors artifact."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from musiclm.tokenizers.fit_codec import fit_stft_rvq
from musiclm.usage import number, run_command


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="musiclm prepare fit-codec", description=__doc__)
    p.add_argument("--audio", required=True, help="audio shard folder (one split)")
    p.add_argument("--out", required=True, help="artifact path (.safetensors)")
    p.add_argument("--levels", type=number(int, low=1), default=8)
    p.add_argument("--codebook-size", type=number(int, low=1), default=1024)
    p.add_argument("--sample-rate", type=number(int, low=1), default=16000)
    p.add_argument("--n-fft", type=number(int, low=2), default=1024)
    p.add_argument(
        "--hop", type=number(int, low=1), default=320, help="samples per frame (320 = 50 Hz)"
    )
    p.add_argument(
        "--power",
        type=number(float, low=0, low_open=True),
        default=0.3,
        help="magnitude compression exponent",
    )
    p.add_argument("--max-frames", type=number(int, low=1), default=200_000)
    p.add_argument("--iters", type=number(int, low=1), default=10)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    return run_command("musiclm prepare fit-codec", lambda: _run(a))


def _run(a: argparse.Namespace) -> int:
    from musiclm.datamodules.shards import SkipCounter, iter_audio_samples, read_manifest

    audio_dir = Path(a.audio)
    if not (audio_dir / "manifest.json").is_file() and (audio_dir / "train").is_dir():
        audio_dir = audio_dir / "train"
    read_manifest(audio_dir)  # a missing or incomplete folder is refused before any work
    skips = SkipCounter()
    clips = ((s["audio"], s["sample_rate"]) for s in iter_audio_samples(audio_dir, skips=skips))
    summary = fit_stft_rvq(
        clips,
        a.out,
        sample_rate=a.sample_rate,
        n_fft=a.n_fft,
        hop=a.hop,
        power=a.power,
        levels=a.levels,
        codebook_size=a.codebook_size,
        max_frames=a.max_frames,
        iters=a.iters,
        seed=a.seed,
    )
    summary["skipped"] = skips.count
    print(json.dumps(summary))
    return 0
