"""The demo corpus: real tunes rendered in several timbres, tempi, keys and registers.

Clip ``i`` is planned from ``(seed, i)`` alone, so a corpus of N clips is a prefix of one of
2N clips with the same seed, and workers render in any order with identical results. Splits
follow the source piece: every piece belongs to exactly one of train/valid/test.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from musiclm.datamodules.shards import atomic_file, atomic_write_text
from musiclm.demo_corpus.captions import make_caption
from musiclm.demo_corpus.synth import INSTRUMENTS, render_notes, render_percussion, voice
from musiclm.demo_corpus.tunes import Tune, clip_notes, load_tunes

SPLIT_FRACTIONS = {"train": 0.8, "valid": 0.1, "test": 0.1}
_BPM_RANGES = {
    "Bach chorale": (60, 96),
    "Irish air": (56, 84),
    "German folk song": (80, 132),
    "Irish reel": (150, 196),
    "Irish jig": (140, 184),
    "Irish hornpipe": (108, 148),
    "Scottish strathspey": (100, 128),
}
_MAJOR_NAMES = ("C", "Db", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
_MINOR_NAMES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "G#", "A", "Bb", "B")
_REGISTER_TARGET = {"low": 52, "middle": 64, "high": 76}


def key_name(pitch_class: int, mode: str) -> str:
    """Conventional spelling of a tonic pitch class (0 = C) in a mode."""
    return (_MAJOR_NAMES if mode == "major" else _MINOR_NAMES)[pitch_class % 12]


def beats_per_bar(meter: str) -> float:
    """Quarter-note beats in one bar of ``meter`` ("6/8" -> 3.0)."""
    num, den = meter.split("/")
    return int(num) * 4.0 / int(den)


def assign_splits(tunes: Sequence[Tune], seed: int) -> dict[str, str]:
    """Piece id -> split, by a seeded permutation of the pieces (80/10/10)."""
    ids = sorted(t.id for t in tunes)
    order = np.random.default_rng([seed, 7]).permutation(len(ids))
    n_valid = max(1, round(SPLIT_FRACTIONS["valid"] * len(ids)))
    n_test = max(1, round(SPLIT_FRACTIONS["test"] * len(ids)))
    splits = {}
    for rank, j in enumerate(order):
        splits[ids[j]] = (
            "valid" if rank < n_valid else "test" if rank < n_valid + n_test else "train"
        )
    return splits


def _octave_shift(pitches: list[int], register: str, instrument: str) -> int:
    lo, hi = voice(instrument).range
    median = float(np.median(pitches))
    shift = int(round((_REGISTER_TARGET[register] - median) / 12.0)) * 12
    for _ in range(4):  # keep the melody inside the instrument's range where it fits
        if max(pitches) + shift > hi:
            shift -= 12
        elif min(pitches) + shift < lo and max(pitches) + shift + 12 <= hi:
            shift += 12
        else:
            break
    return shift


def _register_of(pitches: list[int]) -> str:
    median = float(np.median(pitches))
    return "low" if median < 57 else "middle" if median < 70 else "high"


def _family(tune: Tune) -> str:
    return tune.id.split("-", 1)[0]  # ids start with the selection family


def plan_clip(
    tunes: Sequence[Tune], splits: dict[str, str], *, index: int, seed: int, seconds: float
) -> dict:
    """The manifest entry (without audio) and render arguments of clip ``index``."""
    rng = np.random.default_rng([seed, index])
    split = "train" if index % 10 < 8 else "valid" if index % 10 == 8 else "test"
    pool = [t for t in tunes if splits[t.id] == split]
    # draw the family (chorale, dance, air, folk) first so each is about equally common
    families = sorted({_family(t) for t in pool})
    family = families[rng.integers(len(families))]
    family_pool = [t for t in pool if _family(t) == family]
    tune = family_pool[rng.integers(len(family_pool))]
    instrument = INSTRUMENTS[rng.integers(len(INSTRUMENTS))]
    bpm = int(rng.integers(*_BPM_RANGES.get(tune.source, (80, 140)), endpoint=True))
    transpose = int(rng.integers(-5, 7))
    beats = seconds * bpm / 60.0
    bar = beats_per_bar(tune.meter)
    n_bars = int(max(0.0, tune.length - beats) // bar)
    start = float(rng.integers(0, n_bars + 1) * bar)
    register = ("low", "middle", "high")[rng.integers(3)]
    notes = clip_notes(tune, start=start, beats=beats, transpose=transpose)
    shift = _octave_shift([p for _, _, p in notes], register, instrument)
    percussion = tune.source != "Bach chorale" and bool(rng.random() < 0.25)
    attributes = {
        "instrument": instrument,
        "bpm": bpm,
        "key": key_name(tune.tonic_pc + transpose, tune.mode),
        "mode": tune.mode,
        "meter": tune.meter,
        "source": tune.source,
        "piece": tune.id,
        "melody_id": tune.id,
        "title": tune.title,
        "transpose": transpose,
        "octave_shift": shift,
        "register": _register_of([p + shift for _, _, p in notes]),
        "start_beat": start,
        "percussion": percussion,
    }
    clip_id = f"demo{index:06d}"
    return {
        "id": clip_id,
        "audio": f"audio/{clip_id}.wav",
        "caption": make_caption(attributes, rng),
        "split": split,
        "attributes": attributes,
        "_render_seed": int(np.random.SeedSequence([seed, index, 1]).generate_state(1)[0]),
        "_notes": [(o, d, p + shift) for o, d, p in notes],
    }


def render_clip(plan: dict, *, seconds: float, sample_rate: int) -> np.ndarray:
    """Audio of a planned clip (float32 mono, ``seconds`` long)."""
    attrs = plan["attributes"]
    y = render_notes(
        plan["_notes"],
        instrument=attrs["instrument"],
        bpm=attrs["bpm"],
        sample_rate=sample_rate,
        seconds=seconds,
        seed=plan["_render_seed"],
    )
    if attrs["percussion"]:
        drums = render_percussion(
            beats_per_bar=max(1, int(beats_per_bar(attrs["meter"]))),
            bpm=attrs["bpm"],
            sample_rate=sample_rate,
            seconds=seconds,
            seed=plan["_render_seed"] + 1,
        )
        y = y + 0.6 * drums * float(np.sqrt(np.mean(y**2))) / 0.1
        y = y * min(1.0, 0.9 / float(np.abs(y).max()))
    return y.astype(np.float32)


def _write_clip(job: tuple[dict, Path, float, int]) -> dict:
    import soundfile as sf

    plan, out, seconds, sample_rate = job
    y = render_clip(plan, seconds=seconds, sample_rate=sample_rate)
    path = out / plan["audio"]
    with atomic_file(path) as tmp:
        sf.write(tmp, y, sample_rate, format="WAV", subtype="PCM_16")
    return {k: v for k, v in plan.items() if not k.startswith("_")}


def build_demo_corpus(
    out: str | Path,
    *,
    clips: int,
    seconds: float,
    sample_rate: int = 16000,
    seed: int = 0,
    workers: int = 1,
    progress: bool = True,
) -> Path:
    """Render ``clips`` clips into ``out/audio/<id>.wav`` and write ``out/manifest.jsonl``.

    Returns the manifest path. The same arguments give byte-identical files.
    """
    from tqdm import tqdm

    if clips < 1 or seconds <= 0 or sample_rate < 1000:
        raise ValueError(
            f"build_demo_corpus: need clips >= 1, seconds > 0, sample_rate >= 1000 "
            f"(got {clips}, {seconds}, {sample_rate})"
        )
    out = Path(out)
    (out / "audio").mkdir(parents=True, exist_ok=True)
    tunes = load_tunes(workers=workers)
    splits = assign_splits(tunes, seed)
    jobs = [
        (plan_clip(tunes, splits, index=i, seed=seed, seconds=seconds), out, seconds, sample_rate)
        for i in range(clips)
    ]
    bar = tqdm(total=clips, desc="demo corpus", unit="clip", disable=not progress)
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            entries = []
            for entry in pool.map(_write_clip, jobs, chunksize=4):
                entries.append(entry)
                bar.update()
    else:
        entries = []
        for job in jobs:
            entries.append(_write_clip(job))
            bar.update()
    bar.close()
    manifest = out / "manifest.jsonl"
    atomic_write_text(manifest, "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in entries))
    return manifest


def notes_for(attributes: dict, *, seconds: float) -> list[tuple[float, float, int]]:
    """The notes a clip with these manifest ``attributes`` plays (for re-rendering its melody
    in another timbre or tempo with :func:`render_notes`)."""
    tunes = {t.id: t for t in load_tunes()}
    if attributes["piece"] not in tunes:
        raise KeyError(f"piece {attributes['piece']!r} is not in the cached tune selection")
    tune = tunes[attributes["piece"]]
    beats = seconds * attributes["bpm"] / 60.0
    notes = clip_notes(
        tune, start=attributes["start_beat"], beats=beats, transpose=attributes["transpose"]
    )
    return [(o, d, p + attributes["octave_shift"]) for o, d, p in notes]
