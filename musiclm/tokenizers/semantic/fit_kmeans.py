"""``musiclm prepare fit-semantic``: stream a semantic tokenizer's features over audio shards
and fit its k-means (paper: 1024 clusters), saved as a safetensors artifact.

Frames are never all held: batches of ``--batch-frames`` go to the streaming k-means
(``musiclm.tokenizers.kmeans.fit_kmeans``), and ``--passes`` > 1 re-reads the shards.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from musiclm.tokenizers.artifacts import save_artifact
from musiclm.tokenizers.kmeans import fit_kmeans
from musiclm.tokenizers.semantic.common import ARTIFACT_KIND
from musiclm.usage import number, run_command


def feature_batches(
    tokenizer: Any,
    clips: Iterator[tuple[Any, int]],
    *,
    batch_frames: int = 8192,
    max_frames: int | None = None,
    chunk_seconds: float = 30.0,
) -> Iterator[torch.Tensor]:
    """Yield (N, D) feature batches of ``tokenizer`` over ``(audio [T], sample_rate)`` clips."""
    from musiclm.tokenizers.fit_codec import resample

    pending: list[torch.Tensor] = []
    held = total = 0
    chunk = int(chunk_seconds * tokenizer.sample_rate)
    for audio, sr in clips:
        x = resample(audio, sr, tokenizer.sample_rate)
        for piece in x.split(chunk):
            f = tokenizer.features(piece[None, None])[0]
            pending.append(f)
            held += f.shape[0]
            total += f.shape[0]
            if held >= batch_frames:
                yield torch.cat(pending)
                pending, held = [], 0
            if max_frames is not None and total >= max_frames:
                break
        if max_frames is not None and total >= max_frames:
            break
    if pending:
        yield torch.cat(pending)


def fit_semantic(
    name: str,
    tokenizer_args: dict[str, Any],
    audio_dir: str | Path,
    out: str | Path,
    *,
    k: int = 1024,
    seed: int = 0,
    iters: int = 10,
    passes: int = 1,
    batch_frames: int = 8192,
    max_frames: int | None = None,
) -> dict:
    """Fit and save the k-means of semantic tokenizer ``name``; returns a summary."""
    from musiclm.datamodules.shards import SkipCounter, iter_audio_samples
    from musiclm.tokenizers.base import build

    args = {key: v for key, v in tokenizer_args.items() if key != "kmeans"}
    tok = build("semantic_tokenizers", name, **args)
    skips = SkipCounter()
    seen = {"frames": 0}

    def stream() -> Iterator[torch.Tensor]:
        clips = ((s["audio"], s["sample_rate"]) for s in iter_audio_samples(audio_dir, skips=skips))
        for b in feature_batches(tok, clips, batch_frames=batch_frames, max_frames=max_frames):
            seen["frames"] += b.shape[0]
            yield b

    t0 = time.perf_counter()
    centroids = fit_kmeans(stream, k, seed=seed, iters=iters, passes=passes)
    meta = {
        "kind": ARTIFACT_KIND,
        "tokenizer": name,
        "tokenizer_args": args,
        "features_fingerprint": tok.features_fingerprint,
        "k": k,
        "dim": int(centroids.shape[1]),
        "seed": seed,
        "iters": iters,
        "passes": passes,
        "frames": seen["frames"],
    }
    fp = save_artifact(out, {"centroids": centroids}, meta)
    return {
        "out": str(out),
        "fingerprint": fp,
        "frames": seen["frames"],
        "skipped": skips.count,
        "seconds": round(time.perf_counter() - t0, 1),
    }


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="musiclm prepare fit-semantic", description=__doc__)
    p.add_argument("--audio", required=True, help="audio shard folder (a split, or its parent)")
    p.add_argument("--out", required=True, help="artifact path (.safetensors)")
    p.add_argument("--semantic", default="music-features", help="semantic tokenizer plugin")
    p.add_argument("--semantic-args", default="{}", help="JSON kwargs for the tokenizer")
    p.add_argument("--k", type=number(int, low=1), default=1024, help="clusters (vocabulary size)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--iters", type=number(int, low=1), default=10, help="Lloyd steps on the initial buffer"
    )
    p.add_argument(
        "--passes", type=number(int, low=1), default=1, help="mini-batch passes over the shards"
    )
    p.add_argument("--batch-frames", type=number(int, low=1), default=8192)
    p.add_argument("--max-frames", type=number(int, low=1), default=None)
    a = p.parse_args(argv)
    try:
        args = json.loads(a.semantic_args)
    except json.JSONDecodeError as exc:
        p.error(f"--semantic-args is not valid JSON: {exc}")
    if not isinstance(args, dict):
        p.error("--semantic-args must be a JSON object")
    return run_command("musiclm prepare fit-semantic", lambda: _run(a, args))


def _run(a: argparse.Namespace, args: dict) -> int:
    from musiclm import registry
    from musiclm.datamodules.shards import read_manifest

    audio_dir = Path(a.audio)
    if not (audio_dir / "manifest.json").is_file() and (audio_dir / "train").is_dir():
        audio_dir = audio_dir / "train"
    # the plugin, its arguments and the folder are checked before the tokenizer is built
    registry.check_arguments("semantic_tokenizers", a.semantic, **args)
    read_manifest(audio_dir)
    summary = fit_semantic(
        a.semantic,
        args,
        audio_dir,
        a.out,
        k=a.k,
        seed=a.seed,
        iters=a.iters,
        passes=a.passes,
        batch_frames=a.batch_frames,
        max_frames=a.max_frames,
    )
    print(json.dumps(summary))
    return 0
