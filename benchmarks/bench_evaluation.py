"""Attribute estimators on the real demo corpus: held-out accuracy vs chance, and speed.

    python benchmarks/bench_evaluation.py [--quick] [--corpus DIR/manifest.jsonl] [--max-train 240]

Fits the estimators on the corpus' train split only, scores the valid+test splits, and prints
one JSON line per figure (accuracy per attribute with chance levels; analysis seconds per
clip-second). Without ``--corpus`` it renders one first, into a temporary folder: 300 clips of
10 s (seed 3), or with ``--quick`` 40 clips of 4 s (a smoke run). Figures: docs/results.md.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from common import emit, machine, musiclm

from musiclm.evaluation import attributes as A
from musiclm.evaluation.clips import read_audio


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--corpus", help="demo corpus manifest.jsonl (default: render one)")
    p.add_argument("--quick", action="store_true", help="a small corpus (a smoke run)")
    p.add_argument("--max-train", type=int, default=240)
    p.add_argument("--save", help="write the fitted estimators JSON here")
    p.add_argument(
        "--compare-chroma",
        action="store_true",
        help="also time CQT vs STFT chroma and score key finding with fitted vs K-K profiles",
    )
    args = p.parse_args()
    emit(figure="meta", machine=machine(), quick=args.quick)
    if args.corpus:
        run(args, Path(args.corpus))
        return
    clips, seconds = (40, 4.0) if args.quick else (300, 10.0)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "corpus"
        musiclm("data", "demo", "--out", str(out), "--clips", str(clips),
                "--seconds", str(seconds), "--seed", "3", "--quiet")  # fmt: skip
        run(args, out / "manifest.jsonl")


def run(args, manifest: Path) -> None:
    rows = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]
    train = [r for r in rows if r["split"] == "train"][: args.max_train]
    held = [r for r in rows if r["split"] != "train"]

    def analyse(rs):
        out, seconds = [], 0.0
        for r in rs:
            audio, sr = read_audio(manifest.parent / r["audio"])
            seconds += audio.size / sr
            out.append(A.analyse_clip(audio, sr))
        return out, seconds

    A.analyse_clip(read_audio(manifest.parent / train[0]["audio"])[0][:16000], 16000)  # warm-up
    t0 = time.perf_counter()
    train_an, train_s = analyse(train)
    t_an = time.perf_counter() - t0
    t0 = time.perf_counter()
    est = A.AttributeEstimators.fit(train_an, [r["attributes"] for r in train])
    t_fit = time.perf_counter() - t0
    if args.save:
        est.save(args.save)
    held_an, _ = analyse(held)
    preds = [est.predict(a) for a in held_an]
    targets = [r["attributes"] for r in held]
    acc = A.adherence(preds, targets, tempo_words=est.tempo_words)
    chance = A.chance_levels(est.train_attributes, targets, tempo_words=est.tempo_words)
    for name, v in acc.items():
        print(
            json.dumps(
                {
                    "figure": f"held-out accuracy: {name}",
                    "accuracy": round(v["accuracy"], 3),
                    "chance_prior": round(chance[name]["prior"], 3),
                    "chance_majority": round(chance[name]["majority"], 3),
                    "n": v["n"],
                    "train_clips": len(train),
                }
            )
        )
    print(
        json.dumps(
            {
                "figure": "analysis cost",
                "seconds_per_audio_second": round(t_an / train_s, 4),
                "clips": len(train),
                "audio_seconds": round(train_s, 1),
            }
        )
    )
    print(
        json.dumps(
            {
                "figure": "fit time",
                "seconds": round(t_fit, 2),
                "tempo_prior": [est.tempo.start_bpm, est.tempo.std_bpm] if est.tempo else None,
            }
        )
    )
    if args.compare_chroma:
        compare_chroma(manifest, train, held)


def compare_chroma(manifest: Path, train: list[dict], held: list[dict]) -> None:
    """Key-and-mode accuracy and time of CQT vs STFT chroma, fitted vs Krumhansl-Kessler."""
    import librosa

    kinds = {
        "cqt": lambda y, sr: librosa.feature.chroma_cqt(y=y, sr=sr, hop_length=512),
        "stft4096": lambda y, sr: librosa.feature.chroma_stft(
            y=y, sr=sr, n_fft=4096, hop_length=1024
        ),
    }
    for kind, fn in kinds.items():
        chromas, took = {}, 0.0
        for r in train + held:
            y, sr = read_audio(manifest.parent / r["audio"])
            t0 = time.perf_counter()
            c = fn(y, sr).mean(1)
            took += time.perf_counter() - t0
            chromas[r["id"]] = c / c.sum()
        fitted = A.KeyEstimator.fit(
            [chromas[r["id"]] for r in train],
            [r["attributes"]["key"] for r in train],
            [r["attributes"]["mode"] for r in train],
        )
        for name, est in (("fitted", fitted), ("krumhansl-kessler", A.KeyEstimator())):
            preds = [
                dict(zip(("key", "mode"), est.predict(chromas[r["id"]]), strict=True)) for r in held
            ]
            acc = A.adherence(preds, [r["attributes"] for r in held])["key_and_mode"]
            line = {
                "figure": f"key and mode: {kind} chroma, {name} profiles",
                "accuracy": round(acc["accuracy"], 3),
                "n": acc["n"],
                "chroma_seconds_total": round(took, 1),
                "clips": len(chromas),
            }
            print(json.dumps(line))


if __name__ == "__main__":
    main()
