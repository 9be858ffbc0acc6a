"""evaluate ignores hidden temp files, counts unreadable, truncated and too-short clips as
skips, and refuses a metric it was asked for by name but cannot compute."""

import json

import numpy as np
import pytest
import soundfile as sf

from musiclm.commands import evaluate as cmd
from musiclm.evaluation.clips import load_folder

SR = 8000


def _clip(path, seconds: float, freq: float, prompt: str | None = "a tone") -> None:
    t = np.arange(int(seconds * SR)) / SR
    sf.write(path, (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), SR, subtype="PCM_16")
    if prompt is not None:
        side = {"prompt": prompt, "attributes": {}, "seconds": seconds}
        path.with_suffix(".json").write_text(json.dumps(side))


@pytest.fixture
def folders(tmp_path):
    gen, ref = tmp_path / "gen", tmp_path / "ref"
    gen.mkdir()
    ref.mkdir()
    for i in range(4):
        _clip(gen / f"g{i}.wav", 2.0, 200 + 50 * i)
        _clip(ref / f"r{i}.wav", 2.0, 210 + 50 * i)
    # a killed generate's temporary file: hidden, half written
    (gen / ".g9.wav.abc123.wav").write_bytes((gen / "g0.wav").read_bytes()[:100])
    (gen / "junk.wav").write_bytes(b"RIFF not really a wav")
    _clip(gen / "cut.wav", 2.0, 300)
    whole = (gen / "cut.wav").read_bytes()
    (gen / "cut.wav").write_bytes(whole[: len(whole) // 2])  # truncated, header says 2 s
    _clip(gen / "blip.wav", 0.01, 300, prompt=None)
    return gen, ref


def test_load_folder_skips_hidden_unreadable_truncated_and_short_clips(folders):
    gen, _ = folders
    skipped: list[dict] = []
    clips, bare = load_folder(gen, skipped=skipped)
    assert [c.name for c in clips] == ["g0", "g1", "g2", "g3"] and bare == []
    reasons = {s["item"]: s["reason"] for s in skipped}
    assert set(reasons) == {"junk.wav", "cut.wav", "blip.wav"}  # the hidden file is no clip
    assert "cannot read audio" in reasons["junk.wav"]
    assert reasons["cut.wav"].startswith("truncated: ")
    assert reasons["blip.wav"].startswith("too short: ")


def test_evaluate_reports_skips_in_its_inputs(folders, tmp_path, capsys):
    gen, ref = folders
    out = tmp_path / "eval"
    argv = ["--generated", str(gen), "--reference", str(ref), "--out", str(out)]
    assert cmd.main([*argv, "--metrics", "fad", "--embedding", "logmel"]) == 0
    inputs = json.loads((out / "metrics.json").read_text())["inputs"]
    assert inputs["generated_clips"] == 4
    assert {s["item"] for s in inputs["generated_skipped"]} == {"junk.wav", "cut.wav", "blip.wav"}
    assert inputs["reference_skipped"] == []


def test_mcc_asked_for_without_a_mulan_is_an_error(folders, tmp_path, capsys):
    gen, ref = folders
    argv = ["--generated", str(gen), "--reference", str(ref), "--out", str(tmp_path / "e")]
    assert cmd.main([*argv, "--metrics", "mcc"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("musiclm evaluate: error: --metrics mcc needs a MuLan checkpoint")
