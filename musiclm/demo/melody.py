"""The melody figure of a ``--melody`` run: does the music follow a given melody?

Held-out clips become melody files (``melody_<i>.wav``), each generated under another clip's
caption twice: with ``--melody`` through PIPELINE.yaml and without through the plain pipeline.
The figure is the chroma cosine (per 0.1 s frame, as MusicGen reports melody adherence) of
each output against its melody clip, with against without.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from musiclm.datamodules.shards import atomic_file, atomic_write_json, atomic_write_text

FRAME_RATE = 10.0  # chroma frames per second


def write_clips(audio: Path, count: int, out: Path) -> int:
    """``count`` held-out clips (test split, then valid) as ``melody_<i>.wav`` with
    ``prompt_<i>.jsonl``: the caption of the next clip (so text and melody disagree)."""
    import soundfile as sf

    from musiclm.datamodules.shards import iter_audio_samples

    samples = []
    for split in ("test", "valid"):
        if (audio / split / "manifest.json").is_file():
            for s in iter_audio_samples(audio / split):
                samples.append(s)
                if len(samples) == count:
                    break
        if len(samples) == count:
            break
    if len(samples) < max(2, count):
        raise ValueError(f"{audio}: {len(samples)} held-out clips, the melody figure needs {count}")
    out.mkdir(parents=True, exist_ok=True)
    for i, s in enumerate(samples):
        with atomic_file(out / f"melody_{i}.wav", suffix=".wav") as tmp:
            sf.write(tmp, s["audio"], s["sample_rate"])
        caption = samples[(i + 1) % count]["caption"].strip() or "music"
        row = {"id": f"melody{i}", "prompt": caption, "attributes": {}}
        atomic_write_text(out / f"prompt_{i}.jsonl", json.dumps(row) + "\n")
    return count


def chroma_frames(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """(F, 12) unit chroma vectors at ``FRAME_RATE``."""
    import librosa

    hop = int(sample_rate / FRAME_RATE)
    c = librosa.feature.chroma_stft(y=audio, sr=sample_rate, hop_length=hop, n_fft=2048)
    return (c / np.maximum(np.linalg.norm(c, axis=0, keepdims=True), 1e-8)).T


def chroma_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over frames of the cosine between two chroma sequences (over the shorter)."""
    n = min(len(a), len(b))
    return float((a[:n] * b[:n]).sum(axis=1).mean())


def _mono(path: Path) -> tuple[np.ndarray, int]:
    import soundfile as sf

    audio, sr = sf.read(str(path), dtype="float32", always_2d=True)
    return audio.mean(axis=1), int(sr)


def write_figure(clips: Path, generated: Path, count: int, out: Path) -> dict[str, Any]:
    """Chroma cosine with and without the melody, per clip and overall -> ``out``."""
    rows = []
    for i in range(count):
        target = chroma_frames(*_mono(clips / f"melody_{i}.wav"))
        row: dict[str, Any] = {"clip": f"melody_{i}"}
        for name in ("with", "without"):
            wavs = sorted((generated / f"{name}_{i}").glob("*.wav"))
            if not wavs:
                raise ValueError(f"{generated / f'{name}_{i}'}: no generated clip")
            row[name] = float(np.mean([chroma_cosine(target, chroma_frames(*_mono(w)))
                                       for w in wavs]))  # fmt: skip
        rows.append(row)
    gains = np.array([r["with"] - r["without"] for r in rows])
    figure = {
        "clips": count,
        "with": float(np.mean([r["with"] for r in rows])),
        "without": float(np.mean([r["without"] for r in rows])),
        "gain": float(gains.mean()),
        "gain_sem": float(gains.std(ddof=1) / np.sqrt(len(gains))) if len(gains) > 1 else 0.0,
        "improved": int((gains > 0).sum()),
        "frame_rate": FRAME_RATE,
        "per_clip": rows,
    }
    atomic_write_json(out, figure)
    return figure
