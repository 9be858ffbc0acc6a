"""Musical-structure metrics: does a clip move like music, or hold a chord, hiss or stay silent?

Each clip is measured from its audio alone by fixed signal-processing estimators (librosa), which
never see model output during any fitting (there is none), so they judge generated and real
audio alike:

* ``note_motion``: how far the pitch content moves in about a second: the total-variation
  distance between the pitch-class distributions of 0.25 s windows 1 s apart, averaged over the
  clip. A held chord or a drone stays near 0; noise has no pitch content (0).
* ``pulse_clarity``: the strongest normalised autocorrelation of the onset envelope at a beat
  period between 40 and 240 BPM. A regular beat is near 1; a drone, noise or shuffled frames
  have no periodic onsets.
* ``onset_rate``: note onsets per second whose strength stands out of the envelope's own floor
  (so the flicker of stationary noise is not counted).
* ``pitch_range``: the semitone span (10th to 90th percentile) of the dominant pitch over the
  pitched frames; ``pitch_entropy``: entropy (bits) of the dominant pitches' pitch classes.
  Frames without a clear pitch (noise, silence) are left out; a clip with too few pitched
  frames scores 0 on both.
* ``key_clarity``: the best correlation of the clip's mean chroma with the 24 rotated
  Krumhansl-Kessler key profiles (Krumhansl-Schmuckler key finding); 0 for a clip without
  pitch content.
* ``static``: a clip whose note motion is below ``STATIC_MOTION`` (one held sound, or silence).

No single number is a quality measure: a held major triad has a clear key and a metronome has a
pulse. Together, compared with the real clips' distributions (ratio of medians, Wasserstein and
Kolmogorov-Smirnov distances), they say whether the output is music like the corpus.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from musiclm.evaluation.attributes import KK_MAJOR, KK_MINOR

RATE = 22050
HOP = 512  # 43 frames per second
MOTION_WINDOW_S = 0.25
MOTION_LAG_S = 1.0
STATIC_MOTION = 0.03
MIN_BPM, MAX_BPM = 40.0, 240.0
# Frames quieter than the clip's loudest by more than QUIET_DB (or below SILENCE_DB full scale)
# carry no pitch content: relative, so a clip's level does not change its figures.
QUIET_DB = 40.0
SILENCE_DB = -80.0
PITCHED_FLATNESS = 0.1  # spectral flatness above this: a frame without a clear pitch
MIN_PITCHED_FRAMES = 20
# An onset must stand out of the envelope (mean positive change of log-mel bands, dB per frame)
# by ONSET_DB over its median, and by ONSET_FLOOR times its upper quartile spread. Stationary
# noise's flicker peaks at about 2.2 dB over its median (8 s at 22 kHz); a held tone's at 0.3;
# the demo corpus's notes at 4-30 dB.
ONSET_DB = 3.0
ONSET_FLOOR = 2.0
METRICS = (
    "note_motion",
    "pulse_clarity",
    "onset_rate",
    "pitch_range",
    "pitch_entropy",
    "key_clarity",
)
# A generated distribution "like the corpus" has a median within these factors of the real
# one. Two-sided: noise makes more onsets than music, and too-much is as unlike as too-little.
ACCEPT_RATIO = {"note_motion": 0.8, "pulse_clarity": 0.5, "onset_rate": 0.7}
MAX_STATIC_SHARE = 0.05


def _prepare(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    import librosa

    y = np.asarray(audio, dtype=np.float32).reshape(-1)
    if y.size == 0 or not np.all(np.isfinite(y)):
        raise ValueError("audio is empty or holds non-finite samples")
    if int(sample_rate) <= 0:
        raise ValueError(f"sample rate must be positive, got {sample_rate}")
    if sample_rate != RATE:
        y = librosa.resample(y, orig_sr=int(sample_rate), target_sr=RATE)
    if y.size < 4 * HOP:
        y = np.pad(y, (0, 4 * HOP - y.size))
    return y


def _frame_db(y: np.ndarray) -> np.ndarray:
    import librosa

    rms = librosa.feature.rms(y=y, frame_length=2048, hop_length=HOP)[0]
    return 20.0 * np.log10(rms + 1e-10)


def note_motion(chroma: np.ndarray, active: np.ndarray) -> float:
    """Mean total-variation distance of pitch-class distributions 1 s apart (0.25 s windows);
    windows without pitched sound count as no motion."""
    win = max(1, int(round(MOTION_WINDOW_S * RATE / HOP)))
    lag = max(1, int(round(MOTION_LAG_S * RATE / HOP)))
    n = chroma.shape[1] // win
    if n * win < lag + win or n < 2:
        return 0.0
    weighted = chroma[:, : n * win] * active[None, : n * win]
    pooled = weighted.reshape(12, n, win).sum(2)  # (12, n)
    mass = pooled.sum(0)
    dist = pooled / np.maximum(mass, 1e-12)
    has = mass > 1e-6
    step = lag // win
    if step >= n:
        return 0.0
    a, b = dist[:, :-step], dist[:, step:]
    both = has[:-step] & has[step:]
    tv = 0.5 * np.abs(a - b).sum(0)
    return float(np.where(both, tv, 0.0).mean())


def _has_onsets(onset: np.ndarray) -> bool:
    x = np.asarray(onset, dtype=np.float64)
    return x.size > 0 and float(x.max() - np.median(x)) >= ONSET_DB


def pulse_clarity(onset: np.ndarray) -> float:
    """Peak normalised autocorrelation of the onset envelope at lags of 40-240 BPM; 0 when no
    onset stands out of the envelope (a held sound, noise, silence)."""
    x = np.asarray(onset, dtype=np.float64)
    if not _has_onsets(x):
        return 0.0
    x = x - x.mean()
    energy = float(np.dot(x, x))
    if x.size < 8 or energy <= 1e-12:
        return 0.0
    fps = RATE / HOP
    lo = max(1, int(np.floor(60.0 / MAX_BPM * fps)))
    hi = min(x.size - 1, int(np.ceil(60.0 / MIN_BPM * fps)))
    if hi <= lo:
        return 0.0
    n = x.size
    spec = np.fft.rfft(x, 2 * n)
    ac = np.fft.irfft(spec * np.conj(spec))[:n]
    # unbiased: each lag's sum over its own overlap, so long lags are not penalised
    ac = ac / np.arange(n, 0, -1) / (energy / n)
    return float(np.clip(ac[lo : hi + 1].max(), 0.0, 1.0))


def onset_rate(onset: np.ndarray, seconds: float) -> float:
    """Onsets per second: local maxima of the envelope above its floor."""
    import librosa

    x = np.asarray(onset, dtype=np.float64)
    if x.size < 3 or seconds <= 0:
        return 0.0
    med = float(np.median(x))
    spread = float(np.percentile(x, 75)) - med
    threshold = med + max(ONSET_FLOOR * spread, ONSET_DB)
    fps = RATE / HOP
    wait = max(1, int(0.05 * fps))
    peaks = librosa.util.peak_pick(
        x, pre_max=3, post_max=3, pre_avg=10, post_avg=10, delta=0.0, wait=wait
    )
    return float(np.sum(x[peaks] > threshold) / seconds)


def pitch_stats(cqt_mag: np.ndarray, pitched: np.ndarray, fmin_midi: int) -> tuple[float, float]:
    """(range in semitones, pitch-class entropy in bits) of the dominant CQT pitch of the
    pitched frames; (0, 0) when fewer than ``MIN_PITCHED_FRAMES`` are pitched."""
    if int(pitched.sum()) < MIN_PITCHED_FRAMES:
        return 0.0, 0.0
    midi = fmin_midi + np.argmax(cqt_mag[:, pitched], axis=0)
    lo, hi = np.percentile(midi, [10, 90])
    counts = np.bincount(midi % 12, minlength=12).astype(np.float64)
    p = counts / counts.sum()
    nz = p[p > 0]
    return float(hi - lo), float(-(nz * np.log2(nz)).sum())


def key_clarity(mean_chroma: np.ndarray) -> float:
    """Best correlation of mean chroma with the 24 rotated Krumhansl-Kessler profiles."""
    c = np.asarray(mean_chroma, dtype=np.float64)
    if c.sum() <= 1e-9 or c.std() <= 1e-9:
        return 0.0
    best = -1.0
    for profile in (KK_MAJOR, KK_MINOR):
        prof = np.asarray(profile, dtype=np.float64)
        for shift in range(12):
            best = max(best, float(np.corrcoef(c, np.roll(prof, shift))[0, 1]))
    return max(best, 0.0)


def analyse_structure(audio: np.ndarray, sample_rate: int) -> dict[str, float]:
    """The structure metrics of one mono clip (see the module docstring)."""
    import librosa

    y = _prepare(audio, sample_rate)
    seconds = y.size / RATE
    db = _frame_db(y)
    loud = db > max(float(db.max()) - QUIET_DB, SILENCE_DB)
    stft = np.abs(librosa.stft(y, n_fft=2048, hop_length=HOP))
    flat = librosa.feature.spectral_flatness(S=stft)[0]
    n = min(stft.shape[1], db.size)
    pitched = loud[:n] & (flat[:n] < PITCHED_FLATNESS)
    chroma = librosa.feature.chroma_stft(S=stft[:, :n] ** 2, sr=RATE, hop_length=HOP, tuning=0.0)
    motion = note_motion(chroma, pitched.astype(np.float64))
    mel_db = librosa.power_to_db(
        librosa.feature.melspectrogram(S=stft**2, sr=RATE, n_mels=96), ref=1.0
    )
    # power_to_db floors at 80 dB below the loudest bin, so silence stays flat
    onset = librosa.onset.onset_strength(S=mel_db, sr=RATE, hop_length=HOP)
    fmin_midi = 36  # C2
    cqt = np.abs(
        librosa.cqt(
            y,
            sr=RATE,
            hop_length=HOP,
            fmin=librosa.midi_to_hz(fmin_midi),
            n_bins=60,
            bins_per_octave=12,
        )
    )
    m = min(cqt.shape[1], pitched.size)
    prange, pent = pitch_stats(cqt[:, :m], pitched[:m], fmin_midi)
    mean_chroma = (chroma * pitched[None, : chroma.shape[1]]).sum(1)
    return {
        "note_motion": motion,
        "pulse_clarity": pulse_clarity(onset),
        "onset_rate": onset_rate(onset, seconds),
        "pitch_range": prange,
        "pitch_entropy": pent,
        "key_clarity": key_clarity(mean_chroma),
        "static": float(motion < STATIC_MOTION),
    }


def compare(generated: Sequence[dict[str, float]], real: Sequence[dict[str, float]]) -> dict:
    """Per metric: medians, the ratio of medians, Wasserstein and KS distances between the
    generated and real per-clip values; and the share of static clips of each."""
    from scipy.stats import ks_2samp, wasserstein_distance

    out: dict[str, Any] = {}
    for name in METRICS:
        g = np.array([c[name] for c in generated], dtype=np.float64)
        r = np.array([c[name] for c in real], dtype=np.float64)
        row: dict[str, Any] = {"n_generated": int(g.size), "n_real": int(r.size)}
        if g.size and r.size:
            gm, rm = float(np.median(g)), float(np.median(r))
            ks = ks_2samp(g, r)
            row.update(
                generated_median=gm,
                real_median=rm,
                ratio=gm / rm if rm > 0 else None,
                wasserstein=float(wasserstein_distance(g, r)),
                ks=float(ks.statistic),
                ks_p=float(ks.pvalue),
            )
        out[name] = row
    out["static_share"] = {
        "generated": float(np.mean([c["static"] for c in generated])) if generated else None,
        "real": float(np.mean([c["static"] for c in real])) if real else None,
    }
    return out


def acceptance_checks(summary: dict) -> list[tuple[str, bool | None, str]]:
    """(what, passed or None when not measured, figures) for the structure floor: each ratio
    of medians within [floor, 1/floor] of real, and at most ``MAX_STATIC_SHARE`` static clips."""
    checks: list[tuple[str, bool | None, str]] = []
    for name, floor in ACCEPT_RATIO.items():
        row = summary.get(name) or {}
        ratio = row.get("ratio")
        what = f"{name.replace('_', ' ')} {floor:g}x-{1 / floor:.2g}x real"
        if ratio is None:
            checks.append((what, None, "not measured"))
            continue
        ok = floor <= ratio <= 1.0 / floor
        checks.append(
            (
                what,
                bool(ok),
                f"{row['generated_median']:.3f} vs {row['real_median']:.3f} ({ratio:.2f}x; "
                f"KS {row['ks']:.2f})",
            )
        )
    static = (summary.get("static_share") or {}).get("generated")
    what = f"static clips <= {MAX_STATIC_SHARE:.0%}"
    if static is None:
        checks.append((what, None, "not measured"))
    else:
        real = summary["static_share"].get("real")
        checks.append((what, bool(static <= MAX_STATIC_SHARE), f"{static:.0%} (real {real:.0%})"))
    return checks


def plot_distributions(
    generated: Sequence[dict[str, float]], real: Sequence[dict[str, float]], png: Any
) -> None:
    """One panel per metric: histograms of the generated and real per-clip values."""
    from pathlib import Path

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    png = Path(png)
    fig, axes = plt.subplots(2, 3, figsize=(12, 6))
    for ax, name in zip(axes.ravel(), METRICS, strict=True):
        g = [c[name] for c in generated]
        r = [c[name] for c in real]
        both = g + r
        lo, hi = (min(both), max(both)) if both else (0.0, 1.0)
        bins = np.linspace(lo, hi if hi > lo else lo + 1.0, 21)
        ax.hist(r, bins=bins, alpha=0.5, label=f"real ({len(r)})", density=True)
        ax.hist(g, bins=bins, alpha=0.5, label=f"generated ({len(g)})", density=True)
        ax.set_title(name.replace("_", " "))
        ax.legend(fontsize=7)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    tmp = png.with_name(f".{png.name}.tmp.png")
    fig.savefig(tmp, dpi=80)
    plt.close(fig)
    tmp.replace(png)
