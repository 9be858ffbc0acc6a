"""evaluate refits attribute estimators fitted on another --train-reference, and commits
metrics.json + metrics.md as a pair (metrics.json last, the marker)."""

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from eval_synth import INSTRUMENTS, synth_clip  # noqa: E402

from musiclm.commands import evaluate as cmd  # noqa: E402
from musiclm.evaluation.attributes import PITCH_CLASSES  # noqa: E402

SR = 16000


def _folder(root: Path, n: int, seed: int) -> Path:
    root.mkdir()
    for i in range(n):
        a = {
            "instrument": INSTRUMENTS[i % 3],
            "bpm": (90, 140)[i % 2],
            "key": PITCH_CLASSES[(5 * i + seed) % 12],
            "mode": ("major", "minor")[i % 2],
        }
        audio = synth_clip(
            instrument=a["instrument"], bpm=a["bpm"], key=PITCH_CLASSES.index(a["key"]),
            mode=a["mode"], seconds=1.0, seed=seed + i,
        )  # fmt: skip
        sf.write(root / f"c{i}.wav", audio.astype(np.float32), SR)
        side = {"prompt": f"{a['instrument']} tune", "attributes": a, "seconds": 1.0}
        (root / f"c{i}.json").write_text(json.dumps(side))
    return root


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    return {
        name: _folder(root / name, n, seed)
        for name, n, seed in (("gen", 2, 0), ("ref", 2, 10), ("a", 4, 20), ("b", 4, 40))
    }


def test_estimators_fitted_on_another_train_reference_are_refitted(clips, tmp_path, capsys):
    out = tmp_path / "eval"
    base = ["--generated", str(clips["gen"]), "--reference", str(clips["ref"])]
    base += ["--out", str(out), "--metrics", "adherence"]
    estimators = out / "attribute_estimators.json"

    def run(train: str) -> str:
        assert cmd.main([*base, "--train-reference", str(clips[train])]) == 0
        return capsys.readouterr().err

    assert "fitting on 4 real training clips" in run("a")
    recorded = json.loads(estimators.read_text())["trained_on"]
    assert recorded["path"] == str(clips["a"].resolve()) and recorded["clips"] == 4
    err = run("a")  # the same reference: reused
    assert "attribute estimators: loading" in err and "fitting" not in err
    err = run("b")  # another reference: refitted, saying why
    assert f"was fitted on {clips['a'].resolve()}" in err and "refitting" in err
    assert json.loads(estimators.read_text())["trained_on"]["path"] == str(clips["b"].resolve())
    # a file changed inside the same reference folder counts as another reference
    (clips["b"] / "c0.json").write_text((clips["b"] / "c1.json").read_text())
    assert "refitting" in run("b")


@pytest.mark.parametrize("killed_at", ["metrics.md", "metrics.json"])
def test_metrics_json_and_md_never_disagree(clips, tmp_path, monkeypatch, killed_at):
    out = tmp_path / "eval"
    argv = ["--generated", str(clips["gen"]), "--out", str(out), "--metrics", "fad"]
    assert cmd.main([*argv, "--reference", str(clips["ref"])]) == 0
    replace = os.replace

    def dies_at(src, dst):  # a kill just before one of the two files reaches its final name
        if Path(dst) == out / killed_at:
            raise OSError(f"killed before {killed_at}")
        return replace(src, dst)

    monkeypatch.setattr(os, "replace", dies_at)
    assert cmd.main([*argv, "--reference", str(clips["a"])]) == 2
    monkeypatch.setattr(os, "replace", replace)
    if (out / "metrics.json").exists():  # the marker: its metrics.md must be its own
        reference = json.loads((out / "metrics.json").read_text())["inputs"]["reference"]
        assert f"- reference: {reference}" in (out / "metrics.md").read_text()
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no staging left
    assert cmd.main([*argv, "--reference", str(clips["a"])]) == 0
    reference = json.loads((out / "metrics.json").read_text())["inputs"]["reference"]
    assert reference == str(clips["a"]) and reference in (out / "metrics.md").read_text()
