"""``musiclm prepare fit-semantic``: stream a semantic tokenizer's features over audio shards
and fit its k-means (paper: 1024 clusters), saved as a safetensors artifact.

Frames are never all held: batches of ``--batch-frames`` go to the streaming k-means
(``musiclm.tokenizers.kmeans.fit_kmeans``), and ``--passes`` > 1 re-reads the shards.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from musiclm.tokenizers.artifacts import save_artifact
from musiclm.tokenizers.kmeans import fit_kmeans
from musiclm.tokenizers.semantic.common import ARTIFACT_KIND


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
