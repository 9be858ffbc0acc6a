"""A small additive synthesizer: note lists -> mono audio in several clearly different timbres.

Each instrument is a set of partials (frequency ratio, amplitude, decay time) with an attack,
a release, optional vibrato and optional noise. A note is rendered as a (partials x samples)
matrix in one numpy expression, so a 10 s clip costs a few tens of milliseconds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Voice:
    """How one instrument sounds. Decays are in seconds (``inf``: sustained)."""

    ratios: tuple[float, ...]
    amps: tuple[float, ...]
    decays: tuple[float, ...]
    attack: float
    release: float
    vibrato_hz: float = 0.0
    vibrato_depth: float = 0.0  # relative frequency deviation
    noise: float = 0.0  # breath / bow / hammer noise level
    noise_decay: float = math.inf
    inharmonicity: float = 0.0  # stiff-string stretch of partial k: sqrt(1 + B k^2)
    decay_scale: float = 0.0  # decays shrink as (f0 / 262 Hz) ** -decay_scale
    formants: tuple[tuple[float, float, float], ...] = ()  # (centre Hz, width Hz, gain)
    detune: float = 0.0  # a second, slightly detuned oscillator (relative), as in analog leads
    range: tuple[int, int] = (36, 96)  # playable MIDI range


def _harmonic(n: int, *, odd: bool = False) -> tuple[float, ...]:
    return (
        tuple(float(k) for k in range(1, 2 * n, 2))
        if odd
        else tuple(float(k) for k in range(1, n + 1))
    )


_PLUCK = 0.18  # plucking point as a fraction of string length
_VOICES: dict[str, Voice] = {
    "piano": Voice(
        ratios=_harmonic(12),
        amps=tuple(1.0 / k**1.3 for k in range(1, 13)),
        decays=tuple(2.2 / k**0.7 for k in range(1, 13)),
        attack=0.004, release=0.12, noise=0.08, noise_decay=0.015,
        inharmonicity=3e-4, decay_scale=0.5, range=(33, 100),
    ),
    "organ": Voice(
        ratios=(0.5, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0),
        amps=(0.45, 1.0, 0.65, 0.3, 0.35, 0.12, 0.18),
        decays=(math.inf,) * 7,
        attack=0.025, release=0.07, vibrato_hz=6.5, vibrato_depth=0.0015, range=(36, 91),
    ),
    "flute": Voice(
        ratios=(1.0, 2.0, 3.0, 4.0),
        amps=(1.0, 0.3, 0.1, 0.04),
        decays=(math.inf,) * 4,
        attack=0.07, release=0.09, vibrato_hz=5.0, vibrato_depth=0.005, noise=0.05,
        range=(60, 96),
    ),
    "violin": Voice(
        ratios=_harmonic(18),
        amps=tuple(1.0 / k for k in range(1, 19)),
        decays=(math.inf,) * 18,
        attack=0.09, release=0.14, vibrato_hz=5.6, vibrato_depth=0.007, noise=0.015,
        formants=((480.0, 220.0, 1.2), (2900.0, 900.0, 1.6)), range=(55, 98),
    ),
    "acoustic guitar": Voice(
        ratios=_harmonic(14),
        amps=tuple(abs(math.sin(math.pi * k * _PLUCK)) / k**1.1 for k in range(1, 15)),
        decays=tuple(1.6 / (1 + 0.6 * (k - 1)) for k in range(1, 15)),
        attack=0.002, release=0.1, noise=0.04, noise_decay=0.006, decay_scale=0.3,
        formants=((110.0, 60.0, 0.8), (250.0, 120.0, 0.6)), range=(40, 84),
    ),
    "square lead synth": Voice(
        ratios=_harmonic(12, odd=True),
        amps=tuple(1.0 / k for k in range(1, 24, 2)),
        decays=(math.inf,) * 12,
        attack=0.008, release=0.06, vibrato_hz=6.0, vibrato_depth=0.003, detune=0.004,
        range=(40, 96),
    ),
    "marimba": Voice(
        ratios=(1.0, 3.93, 9.2),
        amps=(1.0, 0.3, 0.08),
        decays=(0.55, 0.12, 0.04),
        attack=0.001, release=0.05, noise=0.05, noise_decay=0.004, decay_scale=0.6,
        range=(45, 96),
    ),
}  # fmt: skip

INSTRUMENTS: tuple[str, ...] = tuple(_VOICES)


def voice(instrument: str) -> Voice:
    """The :class:`Voice` of an instrument name from :data:`INSTRUMENTS`."""
    try:
        return _VOICES[instrument]
    except KeyError:
        known = ", ".join(INSTRUMENTS)
        raise ValueError(f"unknown instrument {instrument!r}; known: {known}") from None


_TABLE = 2048


def _wavetable(
    ratios: np.ndarray, amps: np.ndarray, f0: float, time_axis: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """A sustained harmonic tone: one period tabulated, then read at f0 (linear interpolation).

    Costs O(samples) instead of O(partials x samples); ratios must be multiples of 0.5.
    """
    unit = 0.5 if np.any(np.abs(ratios - np.round(ratios)) > 1e-6) else 1.0
    harmonics = np.round(ratios / unit)
    x = np.arange(_TABLE) / _TABLE
    phases = rng.uniform(0, 2 * np.pi, (len(ratios), 1))
    table = (amps[:, None] * np.sin(2 * np.pi * harmonics[:, None] * x + phases)).sum(axis=0)
    table = np.append(table, table[0]).astype(np.float32)
    cycles = f0 * unit * time_axis + rng.uniform(0, 1)
    pos = (cycles - np.floor(cycles)) * _TABLE
    whole = np.floor(pos)
    frac = (pos - whole).astype(np.float32)
    i = whole.astype(np.int64) % _TABLE  # pos can round up to exactly _TABLE
    return table[i] * (1.0 - frac) + table[i + 1] * frac


def _render_note(
    v: Voice, f0: float, dur: float, gain: float, sr: int, rng: np.random.Generator
) -> np.ndarray:
    n = int((dur + v.release) * sr)
    t = np.arange(n, dtype=np.float64) / sr
    k = np.arange(1, len(v.ratios) + 1)
    freqs = f0 * np.asarray(v.ratios) * np.sqrt(1.0 + v.inharmonicity * k**2)
    keep = freqs < 0.45 * sr  # no aliasing partials
    freqs = freqs[keep]
    amps = np.asarray(v.amps)[keep].copy()
    for centre, width, g in v.formants:
        amps *= 1.0 + g * np.exp(-(((freqs - centre) / width) ** 2))
    if v.vibrato_depth:
        # vibrato fades in after 0.15 s, like a player's
        depth = v.vibrato_depth * np.clip((t - 0.15) / 0.2, 0.0, 1.0)
        warp = np.cumsum(1.0 + depth * np.sin(2 * np.pi * v.vibrato_hz * t + rng.uniform(0, 6.3)))
        time_axis = warp / sr
    else:
        time_axis = t
    if np.isinf(v.decays).all() and not v.inharmonicity:
        y = _wavetable(freqs / f0, amps, f0, time_axis, rng)
        if v.detune:
            y = 0.5 * (y + _wavetable(freqs / f0, amps, f0 * (1 + v.detune), time_axis, rng))
    else:
        cycles = np.outer(freqs, time_axis) + rng.uniform(0, 1, (len(freqs), 1))
        phase = (2 * np.pi * (cycles - np.floor(cycles))).astype(np.float32)
        decays = np.asarray(v.decays)[keep] * (f0 / 262.0) ** -v.decay_scale
        env_k = np.exp(-np.outer(1.0 / decays, t)).astype(np.float32)
        y = (amps[:, None].astype(np.float32) * env_k * np.sin(phase)).sum(axis=0)
    if v.noise:
        noise = rng.standard_normal(n).astype(np.float32)
        noise = np.diff(noise, prepend=0.0)  # a cheap high-pass: breath, not rumble
        y += v.noise * noise * np.exp(-t / v.noise_decay).astype(np.float32)
    env = np.minimum(t / v.attack, 1.0) * np.clip(1.0 - (t - dur) / v.release, 0.0, 1.0)
    return (gain * y * env).astype(np.float32)


def _reverb(y: np.ndarray, sr: int, rng: np.random.Generator, wet: float = 0.12) -> np.ndarray:
    n = int(0.35 * sr)
    ir = rng.standard_normal(n) * np.exp(-np.arange(n) / (0.08 * sr))
    ir[: int(0.01 * sr)] = 0.0  # pre-delay
    ir /= np.sqrt((ir**2).sum())
    size = 1 << int(np.ceil(np.log2(len(y) + n)))  # FFT convolution, no scipy import
    tail = np.fft.irfft(np.fft.rfft(y, size) * np.fft.rfft(ir, size), size)[: len(y)]
    return (y + wet * tail).astype(np.float32)


def normalize_loudness(y: np.ndarray, *, rms: float = 0.1, peak: float = 0.9) -> np.ndarray:
    """Scale to ``rms`` (about -20 dBFS) unless that would push the peak above ``peak``."""
    cur_rms = float(np.sqrt(np.mean(y.astype(np.float64) ** 2)))
    cur_peak = float(np.abs(y).max()) if y.size else 0.0
    if cur_rms < 1e-9:
        return y.astype(np.float32)
    return (y * min(rms / cur_rms, peak / cur_peak)).astype(np.float32)


def render_notes(
    notes: Sequence[Sequence[float]],
    *,
    instrument: str,
    bpm: float,
    sample_rate: int,
    seconds: float,
    seed: int,
) -> np.ndarray:
    """Render notes ``(onset_beats, duration_beats, midi_pitch)`` to float32 mono audio.

    Beats are quarter notes at ``bpm``; the output is exactly ``seconds`` long (notes past it
    are cut), loudness-normalised to about -20 dBFS with peaks below 0.9. The same arguments
    give the same samples.
    """
    v = voice(instrument)
    rng = np.random.default_rng(seed)
    total = int(round(seconds * sample_rate))
    out = np.zeros(total + int(2 * sample_rate), dtype=np.float32)
    spb = 60.0 / bpm
    for onset, dur, pitch in notes:
        start = int(round(onset * spb * sample_rate))
        if start >= total:
            continue
        accent = 1.0 if abs(onset - round(onset)) < 1e-6 else 0.8
        gain = accent * rng.uniform(0.85, 1.0)
        f0 = 440.0 * 2.0 ** ((pitch - 69) / 12.0)
        note = _render_note(v, f0, max(dur * spb, 0.03), gain, sample_rate, rng)
        end = min(start + len(note), len(out))
        out[start:end] += note[: end - start]
    y = _reverb(out[:total], sample_rate, rng)
    return normalize_loudness(y)


def render_percussion(
    *, beats_per_bar: int, bpm: float, sample_rate: int, seconds: float, seed: int
) -> np.ndarray:
    """A soft kick on each downbeat and a hi-hat on every beat (float32, not normalised)."""
    rng = np.random.default_rng(seed)
    total = int(round(seconds * sample_rate))
    out = np.zeros(total + sample_rate, dtype=np.float32)
    spb = 60.0 / bpm
    kick_t = np.arange(int(0.25 * sample_rate)) / sample_rate
    sweep = 45.0 + 80.0 * np.exp(-kick_t / 0.03)
    kick = np.sin(2 * np.pi * np.cumsum(sweep) / sample_rate) * np.exp(-kick_t / 0.09)
    hat_t = np.arange(int(0.06 * sample_rate)) / sample_rate
    for beat in range(int(seconds / spb) + 1):
        start = int(beat * spb * sample_rate)
        hat = np.diff(rng.standard_normal(len(hat_t)), prepend=0.0) * np.exp(-hat_t / 0.012)
        out[start : start + len(hat)] += 0.12 * hat.astype(np.float32)
        if beat % beats_per_bar == 0:
            out[start : start + len(kick)] += 0.8 * kick.astype(np.float32)
    return out[:total]
