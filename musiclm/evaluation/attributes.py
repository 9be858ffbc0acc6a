"""Attribute estimators for adherence: instrument, tempo, key and mode, from audio alone.

They are fitted only on real rendered clips (never on model output), so they judge generated
audio independently of the models under test:

* instrument: spectral statistics (MFCC, centroid, contrast, flatness, envelope) of
  loudness-normalised audio -> standardised multinomial logistic regression (scikit-learn);
* tempo: librosa's onset-autocorrelation tempo with a log-normal prior whose centre and width
  are chosen on the training clips (the prior is what decides octave errors);
* key and mode: mean STFT chroma correlated with 24 rotated key profiles (Krumhansl-Schmuckler);
  the profiles start as Krumhansl-Kessler's and are re-estimated from training chroma rotated
  to C when a mode has enough clips.

Fitted state is plain JSON (``save``/``load``), never pickle.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

PITCH_CLASSES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
_FLATS = {"Db": "C#", "Eb": "D#", "Gb": "F#", "Ab": "G#", "Bb": "A#", "Cb": "B", "Fb": "E"}
_SHARP_ODD = {"E#": "F", "B#": "C"}
# Krumhansl & Kessler (1982) probe-tone ratings, tonic first.
KK_MAJOR = (6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88)
KK_MINOR = (6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17)
MODES = ("major", "minor")
# Tempo words by upper BPM bound (exclusive): the demo corpus captions' buckets
# (musiclm.demo_corpus.captions.tempo_word; a test checks that they agree).
DEFAULT_TEMPO_WORDS: tuple[tuple[float, str], ...] = (
    (76.0, "slow"),
    (108.0, "moderate"),
    (140.0, "lively"),
)
DEFAULT_FAST_WORD = "fast"
TEMPO_TOLERANCE = 0.08  # relative BPM error counted as correct (MIREX "Acc1" uses 4 %)
_OCTAVE_FACTORS = (1.0, 2.0, 0.5, 3.0, 1.0 / 3.0)  # MIREX "Acc2" factors
HOP = 256
AC_SECONDS = 8.0  # autocorrelation window of the tempogram


def pitch_class(name: str) -> int:
    """Index 0-11 of a pitch-class name such as ``"D"``, ``"F#"``, ``"Bb"`` or ``"f♯"``."""
    text = str(name).strip().replace("♯", "#").replace("♭", "b").replace("-", "b")
    if not text:
        raise ValueError("empty key name")
    text = text[0].upper() + text[1:]
    text = _FLATS.get(text, _SHARP_ODD.get(text, text))
    if text not in PITCH_CLASSES:
        raise ValueError(f"unknown key name {name!r}; expected one of {PITCH_CLASSES} or a flat")
    return PITCH_CLASSES.index(text)


def tempo_word(bpm: float, words: Sequence[tuple[float, str]] = DEFAULT_TEMPO_WORDS) -> str:
    """Bucket a BPM into a tempo word (``words`` are (upper bound, word) in ascending order)."""
    for upper, word in words:
        if bpm < upper:
            return word
    return DEFAULT_FAST_WORD


# ----------------------------------------------------------------------------- features


@dataclass
class ClipAnalysis:
    """What the estimators need from one clip, computed once."""

    timbre: np.ndarray  # (F,) spectral statistics
    tempogram: np.ndarray  # (lags,) time-averaged onset autocorrelation at HOP
    chroma: np.ndarray  # (12,) mean chroma, sums to 1


def analyse_clip(audio: np.ndarray, sample_rate: int, *, target_rate: int = 16000) -> ClipAnalysis:
    """Spectral statistics, onset envelope and mean chroma of a mono clip."""
    import librosa

    y = np.asarray(audio, dtype=np.float32).reshape(-1)
    if y.size == 0 or not np.all(np.isfinite(y)):
        raise ValueError("audio is empty or holds non-finite samples")
    if sample_rate != target_rate:
        y = librosa.resample(y, orig_sr=sample_rate, target_sr=target_rate)
    sr = target_rate
    rms = float(np.sqrt(np.mean(y**2)))
    y = y / max(rms, 1e-6) * 0.1  # level does not identify an instrument
    if y.size < 2048:
        y = np.pad(y, (0, 2048 - y.size))
    spec = np.abs(librosa.stft(y, n_fft=1024, hop_length=HOP))
    power = spec**2
    mel = librosa.feature.melspectrogram(S=power, sr=sr, n_mels=64)
    mfcc = librosa.feature.mfcc(S=librosa.power_to_db(mel), n_mfcc=20)
    centroid = np.log1p(librosa.feature.spectral_centroid(S=spec, sr=sr)[0])
    bandwidth = np.log1p(librosa.feature.spectral_bandwidth(S=spec, sr=sr)[0])
    rolloff = np.log1p(librosa.feature.spectral_rolloff(S=spec, sr=sr)[0])
    flatness = np.log(librosa.feature.spectral_flatness(S=spec)[0] + 1e-8)
    contrast = librosa.feature.spectral_contrast(S=spec, sr=sr, n_bands=5, fmin=100.0)
    frame_rms = librosa.feature.rms(S=spec, frame_length=1024)[0]
    env = np.log(frame_rms + 1e-5)
    onset = librosa.onset.onset_strength(S=librosa.power_to_db(mel), sr=sr, hop_length=HOP)
    parts = [
        mfcc.mean(1),
        mfcc.std(1),
        np.diff(mfcc, axis=1).std(1) if mfcc.shape[1] > 1 else np.zeros(20),
        contrast.mean(1),
        contrast.std(1),
    ]
    scalars = [centroid, bandwidth, rolloff, flatness, env]
    parts += [np.array([s.mean(), s.std()]) for s in scalars]
    parts.append(np.array([onset.mean(), onset.std(), np.diff(env).clip(min=0).mean()]))
    timbre = np.concatenate(parts).astype(np.float64)
    win = int(round(AC_SECONDS * sr / HOP))
    tempogram = librosa.feature.tempogram(
        onset_envelope=onset, sr=sr, hop_length=HOP, win_length=win
    ).mean(1)
    # STFT chroma with a long window: on the demo corpus as accurate as CQT chroma for key
    # finding (slightly better) at a third of the cost (docs/results.md, evaluation)
    chroma = librosa.feature.chroma_stft(y=y, sr=sr, n_fft=4096, hop_length=1024).mean(1)
    chroma = chroma / max(float(chroma.sum()), 1e-8)
    return ClipAnalysis(timbre=timbre, tempogram=tempogram.astype(np.float64), chroma=chroma)


# ----------------------------------------------------------------------------- estimators


@dataclass
class InstrumentClassifier:
    """Standardised multinomial logistic regression over ``ClipAnalysis.timbre``."""

    classes: list[str]
    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray  # (C, F)
    intercept: np.ndarray  # (C,)

    @classmethod
    def fit(
        cls, features: np.ndarray, labels: Sequence[str], *, c: float = 1.0, seed: int = 0
    ) -> InstrumentClassifier:
        from sklearn.linear_model import LogisticRegression

        x = np.asarray(features, dtype=np.float64)
        classes = sorted(set(labels))
        if len(classes) < 2:
            raise ValueError(f"instrument classifier needs >= 2 classes, got {classes}")
        mean, scale = x.mean(0), x.std(0) + 1e-8
        model = LogisticRegression(C=c, max_iter=2000, random_state=seed)
        model.fit((x - mean) / scale, [classes.index(label) for label in labels])
        coef, intercept = model.coef_, model.intercept_
        if len(classes) == 2:  # sklearn keeps one row for binary problems
            coef = np.concatenate([-coef, coef]) / 2
            intercept = np.concatenate([-intercept, intercept]) / 2
        return cls(classes, mean, scale, coef, intercept)

    def predict(self, features: np.ndarray) -> list[str]:
        x = (np.atleast_2d(features) - self.mean) / self.scale
        return [self.classes[i] for i in np.argmax(x @ self.coef.T + self.intercept, axis=1)]

    def to_dict(self) -> dict:
        return {
            "classes": self.classes,
            "mean": self.mean.tolist(),
            "scale": self.scale.tolist(),
            "coef": self.coef.tolist(),
            "intercept": self.intercept.tolist(),
        }

    @classmethod
    def from_dict(cls, d: dict) -> InstrumentClassifier:
        return cls(
            list(d["classes"]),
            np.asarray(d["mean"], dtype=np.float64),
            np.asarray(d["scale"], dtype=np.float64),
            np.asarray(d["coef"], dtype=np.float64),
            np.asarray(d["intercept"], dtype=np.float64),
        )


def _tempo(tempogram: np.ndarray, sample_rate: int, start_bpm: float, std_bpm: float) -> float:
    import librosa

    bpm = librosa.feature.tempo(
        tg=tempogram[:, None],
        aggregate=None,
        sr=sample_rate,
        hop_length=HOP,
        start_bpm=start_bpm,
        std_bpm=std_bpm,
        max_tempo=320.0,
    )
    return float(np.atleast_1d(bpm)[0])


def bpm_correct(predicted: float, target: float, *, octave: bool = False) -> bool:
    """Within ``TEMPO_TOLERANCE`` of ``target`` (or of 2x, 1/2x, 3x, 1/3x with ``octave``)."""
    factors = _OCTAVE_FACTORS if octave else (1.0,)
    return any(abs(predicted - target * f) <= TEMPO_TOLERANCE * target * f for f in factors)


@dataclass
class TempoEstimator:
    """Onset-autocorrelation tempo with a log-normal prior (centre, width in octaves)."""

    sample_rate: int = 16000
    start_bpm: float = 120.0
    std_bpm: float = 1.0

    @classmethod
    def fit(
        cls, tempograms: Sequence[np.ndarray], bpms: Sequence[float], *, sample_rate: int
    ) -> TempoEstimator:
        """Choose the prior that makes the most training clips correct within tolerance."""
        best, best_score = cls(sample_rate), -1.0
        for start in np.arange(60.0, 200.0, 10.0):
            for std in (0.25, 0.5, 1.0, 2.0):
                est = cls(sample_rate, float(start), std)
                score = np.mean(
                    [bpm_correct(est.predict(e), b) for e, b in zip(tempograms, bpms, strict=True)]
                )
                if score > best_score:
                    best, best_score = est, float(score)
        return best

    def predict(self, tempogram: np.ndarray) -> float:
        return _tempo(tempogram, self.sample_rate, self.start_bpm, self.std_bpm)


@dataclass
class KeyEstimator:
    """Krumhansl-Schmuckler key finding with profiles (tonic first) per mode."""

    profiles: dict[str, list[float]] = field(
        default_factory=lambda: {"major": list(KK_MAJOR), "minor": list(KK_MINOR)}
    )

    @classmethod
    def fit(
        cls,
        chromas: Sequence[np.ndarray],
        keys: Sequence[str],
        modes: Sequence[str],
        *,
        min_clips: int = 5,
    ) -> KeyEstimator:
        """Mean training chroma rotated to C per mode; a mode with < ``min_clips`` keeps K-K."""
        est = cls()
        for mode in MODES:
            rotated = [
                np.roll(c, -pitch_class(k))
                for c, k, m in zip(chromas, keys, modes, strict=True)
                if m == mode
            ]
            if len(rotated) >= min_clips:
                est.profiles[mode] = np.mean(rotated, axis=0).tolist()
        return est

    def scores(self, chroma: np.ndarray) -> np.ndarray:
        """(2, 12) Pearson correlation of ``chroma`` with every mode x tonic profile."""
        out = np.zeros((len(MODES), 12))
        c = np.asarray(chroma, dtype=np.float64)
        for i, mode in enumerate(MODES):
            profile = np.asarray(self.profiles[mode], dtype=np.float64)
            for tonic in range(12):
                out[i, tonic] = np.corrcoef(c, np.roll(profile, tonic))[0, 1]
        return np.nan_to_num(out, nan=-1.0)

    def predict(self, chroma: np.ndarray) -> tuple[str, str]:
        """(tonic name, mode) of the best-correlated profile."""
        m, t = np.unravel_index(np.argmax(self.scores(chroma)), (len(MODES), 12))
        return PITCH_CLASSES[t], MODES[m]


# ----------------------------------------------------------------------------- the bundle


@dataclass
class AttributeEstimators:
    """All estimators, fitted together on real clips, saved as one JSON file."""

    sample_rate: int
    instrument: InstrumentClassifier | None
    tempo: TempoEstimator | None
    key: KeyEstimator | None
    tempo_words: list[tuple[float, str]] = field(default_factory=lambda: list(DEFAULT_TEMPO_WORDS))
    num_train_clips: int = 0
    # the training labels (instrument, bpm, key, mode), kept for chance levels
    train_attributes: list[dict] = field(default_factory=list)
    # what they were fitted on (``clips.reference_fingerprint`` plus the fit's settings), so
    # a file fitted on another training reference is refitted rather than reused
    trained_on: dict = field(default_factory=dict)

    @classmethod
    def fit(
        cls,
        analyses: Sequence[ClipAnalysis],
        attributes: Sequence[dict],
        *,
        sample_rate: int = 16000,
        seed: int = 0,
    ) -> AttributeEstimators:
        """Fit each estimator on the clips whose attributes carry its label."""
        if len(analyses) != len(attributes):
            raise ValueError(f"{len(analyses)} analyses but {len(attributes)} attribute dicts")
        idx = [i for i, a in enumerate(attributes) if a.get("instrument")]
        instrument = None
        if len({attributes[i]["instrument"] for i in idx}) >= 2:
            feats = np.stack([analyses[i].timbre for i in idx])
            labels = [str(attributes[i]["instrument"]) for i in idx]
            instrument = InstrumentClassifier.fit(feats, labels, seed=seed)
        idx = [i for i, a in enumerate(attributes) if a.get("bpm")]
        tempo = None
        if idx:
            envs = [analyses[i].tempogram for i in idx]
            bpms = [float(attributes[i]["bpm"]) for i in idx]
            tempo = TempoEstimator.fit(envs, bpms, sample_rate=sample_rate)
        idx = [i for i, a in enumerate(attributes) if a.get("key") and a.get("mode") in MODES]
        key = None
        if idx:
            key = KeyEstimator.fit(
                [analyses[i].chroma for i in idx],
                [attributes[i]["key"] for i in idx],
                [attributes[i]["mode"] for i in idx],
            )
        if instrument is None and tempo is None and key is None:
            raise ValueError(
                "no clip carries instrument/bpm/key+mode attributes: nothing to fit the "
                "attribute estimators on"
            )
        keep = ("instrument", "bpm", "key", "mode")
        labels = [{k: a[k] for k in keep if a.get(k) not in (None, "")} for a in attributes]
        return cls(
            sample_rate,
            instrument,
            tempo,
            key,
            num_train_clips=len(analyses),
            train_attributes=labels,
        )

    def analyse(self, audio: np.ndarray, sample_rate: int) -> ClipAnalysis:
        return analyse_clip(audio, sample_rate, target_rate=self.sample_rate)

    def predict(self, analysis: ClipAnalysis) -> dict[str, Any]:
        """Attributes with the corpus' keys: instrument, bpm, key, mode."""
        out: dict[str, Any] = {}
        if self.instrument is not None:
            out["instrument"] = self.instrument.predict(analysis.timbre)[0]
        if self.tempo is not None:
            out["bpm"] = round(self.tempo.predict(analysis.tempogram), 2)
        if self.key is not None:
            out["key"], out["mode"] = self.key.predict(analysis.chroma)
        return out

    def to_dict(self) -> dict:
        return {
            "format": "musiclm-attribute-estimators",
            "version": 1,
            "sample_rate": self.sample_rate,
            "num_train_clips": self.num_train_clips,
            "train_attributes": self.train_attributes,
            "trained_on": self.trained_on,
            "tempo_words": [[u, w] for u, w in self.tempo_words],
            "instrument": None if self.instrument is None else self.instrument.to_dict(),
            "tempo": None if self.tempo is None else vars(self.tempo),
            "key": None if self.key is None else {"profiles": self.key.profiles},
        }

    @classmethod
    def from_dict(cls, d: dict, *, where: str = "estimators") -> AttributeEstimators:
        if d.get("format") != "musiclm-attribute-estimators":
            raise ValueError(f"{where} is not a musiclm attribute-estimators file")
        return cls(
            sample_rate=int(d["sample_rate"]),
            instrument=None
            if d["instrument"] is None
            else InstrumentClassifier.from_dict(d["instrument"]),
            tempo=None if d["tempo"] is None else TempoEstimator(**d["tempo"]),
            key=None if d["key"] is None else KeyEstimator(profiles=d["key"]["profiles"]),
            tempo_words=[(float(u), str(w)) for u, w in d["tempo_words"]],
            num_train_clips=int(d.get("num_train_clips", 0)),
            train_attributes=list(d.get("train_attributes", [])),
            trained_on=dict(d.get("trained_on") or {}),
        )

    def save(self, path: str | Path) -> None:
        from musiclm.datamodules.shards import atomic_write_json

        atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> AttributeEstimators:
        try:
            d = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"cannot read attribute estimators {path}: {exc}") from exc
        return cls.from_dict(d, where=str(path))


# ----------------------------------------------------------------------------- scoring

Scorer = Callable[[dict, dict], bool]


def scorers(
    tempo_words: Sequence[tuple[float, str]] = DEFAULT_TEMPO_WORDS,
) -> dict[str, tuple[tuple[str, ...], Scorer]]:
    """Attribute name -> (target keys it needs, correct(predicted, target))."""
    return {
        "instrument": (("instrument",), lambda p, t: p["instrument"] == t["instrument"]),
        "bpm_within_8pct": (("bpm",), lambda p, t: bpm_correct(float(p["bpm"]), float(t["bpm"]))),
        "bpm_octave_aware": (
            ("bpm",),
            lambda p, t: bpm_correct(float(p["bpm"]), float(t["bpm"]), octave=True),
        ),
        "tempo_word": (
            ("bpm",),
            lambda p, t: (
                tempo_word(float(p["bpm"]), tempo_words) == tempo_word(float(t["bpm"]), tempo_words)
            ),
        ),
        "key_and_mode": (
            ("key", "mode"),
            lambda p, t: p["mode"] == t["mode"] and pitch_class(p["key"]) == pitch_class(t["key"]),
        ),
        "mode": (("mode",), lambda p, t: p["mode"] == t["mode"]),
    }


def _applicable(keys: tuple[str, ...], *dicts: dict) -> bool:
    return all(d.get(k) not in (None, "") for d in dicts for k in keys)


def adherence(
    predicted: Sequence[dict],
    targets: Sequence[dict],
    *,
    tempo_words: Sequence[tuple[float, str]] = DEFAULT_TEMPO_WORDS,
) -> dict[str, dict[str, float]]:
    """Accuracy per attribute of ``predicted`` against ``targets`` ({"accuracy", "n"})."""
    if len(predicted) != len(targets):
        raise ValueError(f"{len(predicted)} predictions but {len(targets)} targets")
    out = {}
    for name, (keys, correct) in scorers(tempo_words).items():
        hits = [
            correct(p, t)
            for p, t in zip(predicted, targets, strict=True)
            if _applicable(keys, p, t)
        ]
        if hits:
            out[name] = {"accuracy": float(np.mean(hits)), "n": len(hits)}
    return out


def chance_levels(
    train: Sequence[dict],
    targets: Sequence[dict],
    *,
    tempo_words: Sequence[tuple[float, str]] = DEFAULT_TEMPO_WORDS,
) -> dict[str, dict[str, float]]:
    """Label-only baselines per attribute, with no audio.

    ``prior``: expected accuracy of guessing a random training label (the training clips'
    attribute distribution); ``majority``: the single training label that is right most often
    on the training clips, scored on ``targets``.
    """
    out = {}
    for name, (keys, correct) in scorers(tempo_words).items():
        guesses = [g for g in train if _applicable(keys, g)]
        tgt = [t for t in targets if _applicable(keys, t)]
        if not guesses or not tgt:
            continue
        prior = float(np.mean([np.mean([correct(g, t) for g in guesses]) for t in tgt]))
        unique = {json.dumps({k: g[k] for k in keys}, sort_keys=True): g for g in guesses}
        best = max(unique.values(), key=lambda g: sum(correct(g, t) for t in guesses))
        majority = float(np.mean([correct(best, t) for t in tgt]))
        out[name] = {"prior": prior, "majority": majority, "n": len(tgt)}
    return out


def shuffled_prompts(
    predicted: Sequence[dict],
    targets: Sequence[dict],
    *,
    tempo_words: Sequence[tuple[float, str]] = DEFAULT_TEMPO_WORDS,
    permutations: int = 2000,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """The same predictions scored against the targets of *other* prompts, per attribute.

    ``accuracy``: mean over random re-pairings; ``p``: share of re-pairings at least as
    accurate as the true pairing (one-sided permutation test, ``(k + 1) / (permutations +
    1)``). Unlike the label-only chances, this baseline keeps the generated clips' own
    attribute distribution: output that always lands on the commonest tempo scores as well
    re-paired as paired, so it cannot pass for following its prompts.
    """
    if len(predicted) != len(targets):
        raise ValueError(f"{len(predicted)} predictions but {len(targets)} targets")
    rng = np.random.default_rng(seed)
    out = {}
    for name, (keys, correct) in scorers(tempo_words).items():
        pairs = [(p, t) for p, t in zip(predicted, targets, strict=True) if _applicable(keys, p, t)]
        if len(pairs) < 2:
            continue
        hits = np.array([[correct(p, t) for _, t in pairs] for p, _ in pairs])  # (pred, target)
        actual = float(np.mean(np.diag(hits)))
        rows = np.arange(len(pairs))
        shuffled = np.array(
            [hits[rows, rng.permutation(len(pairs))].mean() for _ in range(permutations)]
        )
        p = (int(np.sum(shuffled >= actual - 1e-12)) + 1) / (permutations + 1)
        out[name] = {"accuracy": float(shuffled.mean()), "p": p, "n": len(pairs)}
    return out


def analyse_many(
    clips: Iterable[tuple[np.ndarray, int]], *, target_rate: int = 16000
) -> list[ClipAnalysis]:
    """``analyse_clip`` over (audio, sample rate) pairs."""
    return [analyse_clip(a, sr, target_rate=target_rate) for a, sr in clips]
