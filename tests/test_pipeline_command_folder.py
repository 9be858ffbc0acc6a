"""`musiclm pipeline --source folder` over recordings that look real: several timbres, noise,
reverberation, 16 / 22.05 / 44.1 kHz, mono and stereo, a few corrupt files.

``write_folder_corpus`` is also what the timing run of ``docs/pipeline.md`` lays out
(``python -m tests.test_pipeline_command_folder DIR --clips 100 --seconds 10``).
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

RATES = (16000, 22050, 44100)
NOTES = {"C": 261.63, "D": 293.66, "E": 329.63, "G": 392.0, "A": 440.0}


def _envelope(n: int, sr: int, onsets: np.ndarray, decay: float) -> np.ndarray:
    """A sum of exponential decays starting at each onset (seconds)."""
    t = np.arange(n) / sr
    env = np.zeros(n)
    for o in onsets:
        env += np.where(t >= o, np.exp(-(t - o) / decay), 0.0)
    return env


def _timbre(kind: str, f0: np.ndarray, sr: int, rng: np.random.Generator) -> np.ndarray:
    """One instrument-like voice over a per-sample pitch track ``f0`` (Hz)."""
    phase = 2 * np.pi * np.cumsum(f0) / sr
    if kind == "organ":  # sustained odd and even harmonics
        return sum(np.sin(k * phase) / k for k in range(1, 7))
    if kind == "reed":  # square-ish: odd harmonics
        return sum(np.sin(k * phase) / k for k in range(1, 12, 2))
    if kind == "bell":  # inharmonic partials
        return sum(np.sin(r * phase + rng.uniform(0, 6)) / r for r in (1.0, 2.76, 5.4, 8.93))
    return sum(np.sin(k * phase) * 0.6**k for k in range(1, 9))  # "piano": bright, decaying


TIMBRES = ("piano", "organ", "reed", "bell")


def render_clip(kind: str, seconds: float, sr: int, seed: int, *, bpm: float) -> np.ndarray:
    """A melody in one timbre at ``bpm``, with room reverberation and background noise."""
    from scipy.signal import fftconvolve

    rng = np.random.default_rng(seed)
    n = int(seconds * sr)
    beat = 60.0 / bpm
    onsets = np.arange(0.0, seconds, beat)
    pitches = rng.choice(list(NOTES.values()), size=len(onsets)) * rng.choice([0.5, 1.0, 2.0])
    f0 = np.repeat(pitches, int(beat * sr) + 1)[:n]
    decay = 0.15 if kind in ("piano", "bell") else 2.0
    dry = _timbre(kind, f0, sr, rng) * _envelope(n, sr, onsets, decay)
    # Reverberation: a decaying noise impulse response of 0.3-0.8 s.
    ir_len = int(rng.uniform(0.3, 0.8) * sr)
    ir = rng.normal(size=ir_len) * np.exp(-np.arange(ir_len) / (0.12 * sr))
    ir[0] = 1.0
    wet = fftconvolve(dry, ir * 0.3)[:n]
    wet += rng.normal(scale=rng.uniform(0.005, 0.05), size=n)  # hiss / room noise
    return (0.8 * wet / max(1e-6, np.abs(wet).max())).astype(np.float32)


CORRUPT = {
    "broken/random_bytes.wav": lambda rng: rng.integers(0, 256, 4000, dtype=np.uint8).tobytes(),
    "broken/empty.flac": lambda rng: b"",
    "broken/header_only.wav": lambda rng: b"RIFF\x24\x00\x00\x00WAVEfmt ",
}


def write_folder_corpus(root: Path, *, clips: int = 24, seconds: float = 4.0, seed: int = 0):
    """``clips`` recordings with JSON sidecars (caption, split), then the corrupt files
    (with sidecars too, so only their audio is wrong). Returns (clips, corrupt) counts."""
    import soundfile as sf

    rng = np.random.default_rng(seed)
    for i in range(clips):
        kind, sr = TIMBRES[i % len(TIMBRES)], RATES[i % len(RATES)]
        bpm = float(rng.integers(60, 160))
        audio = render_clip(kind, seconds, sr, seed * 10_000 + i, bpm=bpm)
        if i % 2:  # stereo: the two channels differ by a small delay
            audio = np.stack([audio, np.roll(audio, int(0.01 * sr))], axis=1)
        split = "test" if i % 8 == 3 else "valid" if i % 8 == 5 else "train"
        path = root / kind / f"take_{i:03d}.{'flac' if i % 5 == 0 else 'wav'}"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, audio, sr)
        tempo = "slow" if bpm < 90 else "fast" if bpm > 130 else "moderate"
        caption = f"a {tempo} {kind} melody in a reverberant room, {int(bpm)} bpm"
        path.with_suffix(".json").write_text(json.dumps({"caption": caption, "split": split}))
    for name, make in CORRUPT.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(make(rng))
        path.with_suffix(".json").write_text(json.dumps({"caption": "broken", "split": "train"}))
    return clips, len(CORRUPT)


def test_corpus_has_the_variety_it_claims(tmp_path):
    import soundfile as sf

    write_folder_corpus(tmp_path, clips=8, seconds=1.0)
    audio = [p for p in sorted(tmp_path.rglob("take_*.*")) if p.suffix != ".json"]
    infos = [sf.info(p) for p in audio]
    assert {i.samplerate for i in infos} == set(RATES)
    assert {i.channels for i in infos} == {1, 2}
    assert {p.parent.name for p in audio} == set(TIMBRES)
    assert all(p.with_suffix(".json").is_file() for p in audio)


@pytest.mark.slow
def test_folder_pipeline_quick_end_to_end_then_rerun_skips(tmp_path):
    """`musiclm pipeline --source folder --quick` from nothing; a rerun skips every step."""
    from musiclm.commands import pipeline
    from musiclm.generation.pipeline_file import load_pipeline_file

    corpus, out = tmp_path / "corpus", tmp_path / "run"
    clips, corrupt = write_folder_corpus(corpus)
    argv = ["--source", "folder", "--input", str(corpus), "--out", str(out), "--quick"]
    assert pipeline.main(argv) == 0

    assert load_pipeline_file(out / "PIPELINE.yaml").stages.keys() == {"semantic", "delay"}
    wavs = sorted((out / "generated").glob("*.wav"))
    assert len(wavs) == 3 and all(w.with_suffix(".json").is_file() for w in wavs)
    skipped = []
    for split in ("train", "valid", "test"):
        skipped += json.loads((out / "audio" / split / "manifest.json").read_text())["skipped"]
    assert sorted(Path(s["item"]).name for s in skipped) == sorted(Path(n).name for n in CORRUPT)
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    assert {"structure", "mcc", "fad"} <= set(metrics) and "adherence" not in metrics
    report = (out / "report.md").read_text()
    assert f"Skipped items: {corrupt}." in report and "random_bytes.wav" in report
    assert "attribute adherence not scored" in report and "## Evaluation" in report
    clip = subprocess.run(
        [sys.executable, "-m", "musiclm.cli", "generate", "a slow organ melody", "--pipeline",
         str(out / "PIPELINE.yaml"), "--out", str(tmp_path / "clips"), "--seconds", "1"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert clip.returncode == 0, clip.stderr[-2000:]
    assert len(list((tmp_path / "clips").glob("*.wav"))) == 1

    before = {m.name: m.stat().st_mtime_ns for m in (out / "steps").glob("*.done")}
    start = time.perf_counter()
    assert pipeline.main(argv) == 0
    assert time.perf_counter() - start < 60
    after = {m.name: m.stat().st_mtime_ns for m in (out / "steps").glob("*.done")}
    assert before == after, "a rerun of a finished run must skip every step"


@pytest.mark.slow
def test_audio_without_captions_on_a_pretrained_clap(tmp_path):
    """Sidecars without captions: every stage but MuLan trains, CLAP stands in for MuLan and
    the prompts come from --prompts."""
    import yaml
    from joint_helpers import write_tiny_clap

    from musiclm.commands import pipeline

    corpus, out = tmp_path / "corpus", tmp_path / "run"
    write_folder_corpus(corpus, clips=16, seconds=3.0)
    for side in corpus.rglob("*.json"):
        side.write_text(json.dumps({"split": json.loads(side.read_text())["split"]}))
    (tmp_path / "prompts.txt").write_text("a slow organ melody\na fast bell tune\n")
    clap = write_tiny_clap(tmp_path / "clap")
    argv = ["--source", "folder", "--input", str(corpus), "--out", str(out), "--quick",
            "--joint-embedding", "clap", "--joint-embedding-args", json.dumps({"model": str(clap)}),
            "--prompts", str(tmp_path / "prompts.txt")]  # fmt: skip
    assert pipeline.main(argv) == 0
    assert not (out / "mulan" / "checkpoints").exists()
    assert yaml.safe_load((out / "PIPELINE.yaml").read_text())["mulan"]["name"] == "clap"
    assert len(list((out / "generated").glob("*.wav"))) == 2
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    assert {"mcc", "fad", "structure"} <= set(metrics)


@pytest.mark.slow
def test_melody_run_generates_with_a_melody_and_reports_the_figure(tmp_path):
    """`--melody`: generate --melody works on the run's PIPELINE.yaml; the report has both
    chroma figures."""
    from musiclm.commands import pipeline

    corpus, out = tmp_path / "corpus", tmp_path / "run"
    write_folder_corpus(corpus, clips=16, seconds=3.0)
    argv = ["--source", "folder", "--input", str(corpus), "--out", str(out), "--quick"]
    assert pipeline.main([*argv, "--melody"]) == 0
    figure = json.loads((out / "eval" / "melody.json").read_text())
    assert figure["clips"] == 2 and {"with", "without", "gain"} <= set(figure)
    report = (out / "report.md").read_text()
    assert "## Melody" in report and f"| {figure['with']:.3f} | {figure['without']:.3f} |" in report
    clip = subprocess.run(
        [sys.executable, "-m", "musiclm.cli", "generate", "a bell tune", "--melody",
         str(out / "melody_clips" / "melody_1.wav"), "--pipeline", str(out / "PIPELINE.yaml"),
         "--out", str(tmp_path / "clips"), "--seconds", "1"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert clip.returncode == 0, clip.stderr[-2000:]
    assert pipeline.main(argv) == 2, "a melody run folder refuses a run without --melody"


def run_files(run: Path) -> set[str]:
    """The files of a run folder, relative, without the runner's own bookkeeping (markers,
    logs, settings) and with TensorBoard's host-and-time event names made alike."""
    names = set()
    for path in run.rglob("*"):
        rel = path.relative_to(run).as_posix()
        if path.is_dir() or rel.split("/")[0] in ("steps", "logs") or rel == "settings.json":
            continue
        names.add(re.sub(r"events\.out\.tfevents\..*", "events.out.tfevents.*", rel))
    return names


@pytest.mark.slow
def test_printed_commands_rebuild_the_same_run_folder(tmp_path):
    """`--print-commands` lines run one by one give the run folder `musiclm pipeline` gives."""
    from musiclm.commands import pipeline

    corpus = tmp_path / "corpus"
    write_folder_corpus(corpus, clips=16, seconds=3.0)
    flags = ["--source", "folder", "--input", str(corpus), "--quick"]
    assert pipeline.main([*flags, "--out", str(tmp_path / "a")]) == 0
    musiclm = [sys.executable, "-m", "musiclm.cli"]
    printed = subprocess.run(
        [*musiclm, "pipeline", *flags, "--out", str(tmp_path / "b"), "--print-commands"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    lines = [x for x in printed.splitlines() if not x.startswith("#")]
    assert len(lines) == 14  # 10 single-command steps (one delay LM), generate's three, the report
    for line in lines:
        argv = shlex.split(line)
        assert argv[0] == "musiclm"
        subprocess.run([*musiclm, *argv[1:]], check=True, capture_output=True)
    a, b = run_files(tmp_path / "a"), run_files(tmp_path / "b")
    assert a == b, (sorted(a - b), sorted(b - a))
    same = ["PIPELINE.yaml", "prompts.jsonl", "audio/train/manifest.json"]
    for name in same:
        assert (tmp_path / "a" / name).read_text().replace(str(tmp_path / "a"), "RUN") == (
            tmp_path / "b" / name
        ).read_text().replace(str(tmp_path / "b"), "RUN"), name


if __name__ == "__main__":
    cli = argparse.ArgumentParser(description="Lay out the folder corpus of these tests.")
    cli.add_argument("out")
    cli.add_argument("--clips", type=int, default=100)
    cli.add_argument("--seconds", type=float, default=10.0)
    a = cli.parse_args()
    print(write_folder_corpus(Path(a.out), clips=a.clips, seconds=a.seconds))
