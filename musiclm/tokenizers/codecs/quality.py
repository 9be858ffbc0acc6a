"""Reconstruction figures for codecs: chroma cosine and multi-resolution mel distance."""

from __future__ import annotations

import numpy as np


def chroma_cosine(ref: np.ndarray, est: np.ndarray, sample_rate: int) -> float:
    """Mean frame-wise cosine similarity of the chroma of ``ref`` and ``est`` (1-D audio).

    Frames where the reference is silent are left out (their chroma is noise).
    """
    import librosa

    n = min(len(ref), len(est))
    kw = {"sr": sample_rate, "n_fft": 2048, "hop_length": 512}
    a = librosa.feature.chroma_stft(y=np.asarray(ref[:n], np.float32), norm=None, **kw)
    b = librosa.feature.chroma_stft(y=np.asarray(est[:n], np.float32), norm=None, **kw)
    energy = a.sum(0)
    keep = energy > 1e-3 * energy.max() if energy.max() > 0 else energy >= 0
    a, b = a[:, keep], b[:, keep]
    cos = (a * b).sum(0) / (np.linalg.norm(a, axis=0) * np.linalg.norm(b, axis=0) + 1e-9)
    return float(cos.mean())


def multires_mel_distance(
    ref: np.ndarray,
    est: np.ndarray,
    sample_rate: int,
    ffts: tuple[int, ...] = (512, 1024, 2048),
    n_mels: int = 80,
) -> float:
    """Mean L1 distance of log10 mel spectrograms over several STFT sizes (lower is better)."""
    import librosa

    n = min(len(ref), len(est))
    out = []
    for n_fft in ffts:
        kw = {"sr": sample_rate, "n_fft": n_fft, "hop_length": n_fft // 4, "n_mels": n_mels}
        a = librosa.feature.melspectrogram(y=np.asarray(ref[:n], np.float32), **kw)
        b = librosa.feature.melspectrogram(y=np.asarray(est[:n], np.float32), **kw)
        out.append(np.abs(np.log10(a + 1e-5) - np.log10(b + 1e-5)).mean())
    return float(np.mean(out))
