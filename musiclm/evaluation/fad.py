"""Fréchet audio distance (FAD) between two sets of clips, with a pluggable embedding.

Each clip becomes a set of embedding frames (one per window); the frames of each set are
summarised as a Gaussian and the Fréchet distance between the two Gaussians is reported:

    FAD = |mu_g - mu_r|^2 + tr(S_g + S_r - 2 (S_g S_r)^(1/2))

An embedding is any callable ``(audio float32 [T], sample_rate) -> frames (N, D)``; named
choices (``resolve_embedding``): ``mulan`` (MuLan's audio tower on sliding windows),
``logmel`` (mean log-mel per window, needs no model), ``semantic:NAME[:JSON]`` (a registered
semantic tokenizer's features) and ``package.module:function`` (anything a user writes).
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

FrameEmbedder = Callable[[np.ndarray, int], np.ndarray]
LOGMEL_RATE = 16000


def gaussian_stats(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and covariance (D, D) of frames (N, D), in float64."""
    x = np.asarray(frames, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"need at least 2 embedding frames (N, D), got shape {x.shape}")
    return x.mean(0), np.cov(x, rowvar=False).reshape(x.shape[1], x.shape[1])


def _psd_sqrt(a: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((a + a.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """tr((S1 S2)^(1/2)) for PSD S1, S2.

    S1 S2 is similar to S1^(1/2) S2 S1^(1/2), which is symmetric PSD, so its square root's
    trace is the sum of square roots of real, clipped eigenvalues: no complex parts and no
    failure on singular covariances (few clips, many dimensions), where a general ``sqrtm``
    of the non-symmetric product returns complex noise.
    """
    root1 = _psd_sqrt(sigma1)
    middle = root1 @ sigma2 @ root1
    w = np.linalg.eigvalsh((middle + middle.T) / 2)
    return float(np.sqrt(np.clip(w, 0.0, None)).sum())


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray
) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2)."""
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    sigma1, sigma2 = np.atleast_2d(sigma1), np.atleast_2d(sigma2)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape[0] != mu1.size:
        raise ValueError(
            f"Gaussians differ in dimension: mu {mu1.shape} vs {mu2.shape}, "
            f"sigma {sigma1.shape} vs {sigma2.shape}"
        )
    diff = mu1 - mu2
    d = diff @ diff + np.trace(sigma1) + np.trace(sigma2)
    d -= 2.0 * trace_sqrt_product(sigma1, sigma2)
    return float(max(d, 0.0))  # rounding can push an exact 0 slightly negative


def frechet_audio_distance(generated: np.ndarray, reference: np.ndarray) -> float:
    """FAD between two frame sets (N1, D) and (N2, D)."""
    return frechet_distance(*gaussian_stats(generated), *gaussian_stats(reference))


# ----------------------------------------------------------------------------- embeddings


def _resample(audio: np.ndarray, sample_rate: int, target: int):
    import torch
    import torchaudio

    wav = torch.as_tensor(np.asarray(audio, dtype=np.float32)).reshape(-1)
    if sample_rate != target:
        wav = torchaudio.functional.resample(wav, sample_rate, target)
    return wav


def logmel_frames(
    audio: np.ndarray, sample_rate: int, *, window_s: float = 0.5, n_mels: int = 64
) -> np.ndarray:
    """Model-free embedding: mean log-mel spectrum of each ``window_s`` window (N, n_mels).

    Audio is resampled to ``LOGMEL_RATE`` first, so clips at different rates share one mel
    scale (otherwise the bands would span different frequency ranges).
    """
    import librosa

    y = np.asarray(audio, dtype=np.float32).reshape(-1)
    if sample_rate != LOGMEL_RATE:
        y = librosa.resample(y, orig_sr=sample_rate, target_sr=LOGMEL_RATE)
    sample_rate = LOGMEL_RATE
    mel = librosa.feature.melspectrogram(
        y=y,
        sr=sample_rate,
        n_fft=1024,
        hop_length=256,
        n_mels=n_mels,
    )
    logmel = np.log(mel + 1e-6)  # (n_mels, frames)
    per = max(1, int(round(window_s * sample_rate / 256)))
    if logmel.shape[1] < per:
        return logmel.mean(1)[None]
    n = logmel.shape[1] // per
    return logmel[:, : n * per].reshape(n_mels, n, per).mean(2).T


def mulan_frames(mulan: Any, *, window_s: float | None = None, hop_s: float = 1.0) -> FrameEmbedder:
    """MuLan audio-tower embeddings of sliding windows (the paper's 10 s windows, 1 s hop).

    ``mulan`` is a ``musiclm.models.mulan.MuLan`` (or anything with ``sample_rate``,
    ``embed_audio(wav (B, T))`` and optionally ``window_s``).
    """
    import torch

    win_s = window_s if window_s is not None else float(getattr(mulan, "window_s", 10.0))

    @torch.no_grad()
    def embed(audio: np.ndarray, sample_rate: int) -> np.ndarray:
        wav = _resample(audio, sample_rate, mulan.sample_rate)
        win = int(round(win_s * mulan.sample_rate))
        hop = max(1, int(round(hop_s * mulan.sample_rate)))
        windows = wav[None] if wav.numel() <= win else wav.unfold(0, win, hop)
        return mulan.embed_audio(windows).float().cpu().numpy()

    return embed


def semantic_frames(name: str, **kwargs: Any) -> FrameEmbedder:
    """Frame features (F, D) of a registered semantic tokenizer (``features``, no k-means)."""
    import torch

    from musiclm.tokenizers.base import build

    tok = build("semantic_tokenizers", name, **kwargs)

    @torch.no_grad()
    def embed(audio: np.ndarray, sample_rate: int) -> np.ndarray:
        wav = _resample(audio, sample_rate, tok.sample_rate)
        return tok.features(wav[None, None])[0].float().cpu().numpy()

    return embed


def import_callable(spec: str) -> Callable:
    """``package.module:function`` -> the function, with an error naming what failed."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"embedding {spec!r}: expected 'package.module:function'")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"embedding {spec!r}: cannot import {module_name!r}: {exc}") from exc
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"embedding {spec!r}: {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"embedding {spec!r} is not callable")
    return obj


def resolve_embedding(spec: str, *, mulan: Any = None) -> FrameEmbedder:
    """An embedding by name: ``mulan``, ``logmel``, ``semantic:NAME[:JSON]`` or ``mod:fn``."""
    if spec == "mulan":
        if mulan is None:
            raise ValueError(
                "embedding 'mulan' needs a MuLan checkpoint (--pipeline or --mulan); "
                "or choose --embedding logmel / semantic:NAME / package.module:function"
            )
        return mulan_frames(mulan)
    if spec == "logmel":
        return logmel_frames
    if spec.startswith("semantic:"):
        name, _, args = spec[len("semantic:") :].partition(":")
        try:
            kwargs = json.loads(args) if args else {}
        except json.JSONDecodeError as exc:
            raise ValueError(f"embedding {spec!r}: arguments are not JSON: {exc}") from exc
        return semantic_frames(name, **kwargs)
    return import_callable(spec)


def embed_clips(embed: FrameEmbedder, clips: Iterable[tuple[str, np.ndarray, int]]) -> np.ndarray:
    """Stack the frames (N, D) of (name, audio, sample_rate) clips; a bad output names its clip."""
    frames = []
    for name, audio, sr in clips:
        out = np.asarray(embed(audio, sr), dtype=np.float64)
        if out.ndim == 1:
            out = out[None]
        if out.ndim != 2 or out.shape[0] == 0 or not np.all(np.isfinite(out)):
            raise ValueError(
                f"embedding of clip {name!r} must be finite frames (N, D), got shape {out.shape}"
            )
        if frames and out.shape[1] != frames[0].shape[1]:
            raise ValueError(f"clip {name!r}: embedding dim {out.shape[1]} != {frames[0].shape[1]}")
        frames.append(out)
    if not frames:
        raise ValueError("no clips to embed")
    return np.concatenate(frames)
