"""``musiclm prepare fit-codec``: fit the offline ``stft-rvq`` codec on audio shards.

Reads clips from an audio shard folder (``musiclm prepare audio``), takes up to
``--max-frames`` spectral frames (evenly thinned when the corpus holds more), fits residual
k-means codebooks and writes them as a safetensors artifact for
``--codec stft-rvq --codec-args '{"codebooks": PATH}'``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from musiclm.tokenizers.artifacts import save_artifact
from musiclm.tokenizers.codecs.stft_rvq import ARTIFACT_KIND, SpectralFrames
from musiclm.tokenizers.kmeans import fit_residual_kmeans


def resample(audio: np.ndarray | torch.Tensor, orig: int, target: int) -> torch.Tensor:
    """1-D audio at ``orig`` Hz -> float tensor at ``target`` Hz."""
    x = torch.as_tensor(audio, dtype=torch.float32)
    if orig == target:
        return x
    import torchaudio.functional as AF

    return AF.resample(x, orig, target)


def fit_stft_rvq(
    clips: Iterable[tuple[np.ndarray | torch.Tensor, int]],
    out: str | Path,
    *,
    sample_rate: int = 16000,
    n_fft: int = 1024,
    hop: int = 320,
    power: float = 0.3,
    levels: int = 8,
    codebook_size: int = 1024,
    max_frames: int = 200_000,
    iters: int = 10,
    seed: int = 0,
) -> dict:
    """Fit codebooks on ``(audio [T], sample_rate)`` clips; write ``out``; return a summary."""
    frames = SpectralFrames(
        sample_rate=sample_rate, n_fft=n_fft, hop=hop, power=power, griffin_lim_iters=1
    )
    parts, held, seen, n_clips = [], 0, 0, 0
    for audio, sr in clips:
        x = resample(audio, sr, sample_rate)
        f = frames.analyse(x[None, None])[0]  # (F, D)
        seen += f.shape[0]
        n_clips += 1
        parts.append(f)
        held += f.shape[0]
        if held > 2 * max_frames:  # thin evenly so memory stays bounded on big corpora
            x_all = torch.cat(parts)
            parts, held = [x_all[::2]], (x_all.shape[0] + 1) // 2
    if not parts:
        raise ValueError("fit-codec: no audio clips to fit on")
    x = torch.cat(parts)
    if x.shape[0] > max_frames:
        x = x[torch.linspace(0, x.shape[0] - 1, max_frames).long()]
    if x.shape[0] < codebook_size:
        raise ValueError(
            f"fit-codec: only {x.shape[0]} frames for codebook_size={codebook_size}; "
            "give more audio or a smaller --codebook-size"
        )
    t0 = time.perf_counter()
    books = fit_residual_kmeans(x, levels, codebook_size, seed=seed, iters=iters)
    meta = {
        "kind": ARTIFACT_KIND,
        "sample_rate": sample_rate,
        "n_fft": n_fft,
        "hop": hop,
        "power": power,
        "levels": levels,
        "codebook_size": codebook_size,
        "seed": seed,
        "iters": iters,
        "fit_frames": int(x.shape[0]),
    }
    fingerprint = save_artifact(out, {"codebooks": books}, meta)
    return {
        "out": str(out),
        "fingerprint": fingerprint,
        "clips": n_clips,
        "frames_seen": seen,
        "frames_fit": int(x.shape[0]),
        "fit_seconds": round(time.perf_counter() - t0, 1),
    }
