"""Synthetic clips with known instrument, tempo and key for the evaluation tests."""

from __future__ import annotations

import numpy as np

MAJOR = (0, 2, 4, 5, 7, 9, 11)
MINOR = (0, 2, 3, 5, 7, 8, 10)
# how often each scale degree is played: tonic triad heavy, as in tonal melodies
DEGREE_WEIGHTS = np.array([5, 1, 3, 1.5, 4, 1, 1], dtype=np.float64)
INSTRUMENTS = ("sine", "square", "pluck")


def synth_clip(
    *,
    instrument: str,
    bpm: float,
    key: int,
    mode: str,
    seconds: float = 4.0,
    sample_rate: int = 16000,
    seed: int = 0,
) -> np.ndarray:
    """A melody of one note per beat in ``key``/``mode`` with a drone on the tonic."""
    rng = np.random.default_rng(seed)
    scale = MAJOR if mode == "major" else MINOR
    n = int(seconds * sample_rate)
    out = np.zeros(n, dtype=np.float64)
    beat = 60.0 / bpm
    t_note = np.arange(int(beat * sample_rate)) / sample_rate
    p = DEGREE_WEIGHTS / DEGREE_WEIGHTS.sum()
    for i in range(int(seconds / beat) + 1):
        degree = rng.choice(7, p=p)
        midi = 60 + key + scale[degree]
        f = 440.0 * 2 ** ((midi - 69) / 12)
        if instrument == "sine":
            tone = np.sin(2 * np.pi * f * t_note)
            env = np.minimum(t_note / 0.03, 1.0) * np.exp(-t_note * 1.5)
        elif instrument == "square":
            tone = sum(np.sin(2 * np.pi * f * h * t_note) / h for h in range(1, 16, 2))
            env = np.minimum(t_note / 0.01, 1.0) * np.exp(-t_note * 2.0)
        elif instrument == "pluck":
            tone = sum(np.sin(2 * np.pi * f * h * t_note) / h**0.7 for h in range(1, 12))
            env = np.exp(-t_note * 9.0)
        else:
            raise ValueError(instrument)
        start = int(i * beat * sample_rate)
        seg = (tone * env)[: max(0, n - start)]
        out[start : start + seg.size] += seg
    t = np.arange(n) / sample_rate
    out += 0.15 * np.sin(2 * np.pi * 440.0 * 2 ** ((48 + key - 69) / 12) * t)
    out += 0.003 * rng.standard_normal(n)
    return (0.3 * out / np.abs(out).max()).astype(np.float32)
