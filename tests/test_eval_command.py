import json
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

sys.path.insert(0, str(Path(__file__).parent))
from eval_synth import INSTRUMENTS, synth_clip  # noqa: E402

from musiclm.commands import evaluate as cmd  # noqa: E402
from musiclm.datamodules.shards import ShardWriter, atomic_write_json, encode_flac  # noqa: E402
from musiclm.evaluation.attributes import PITCH_CLASSES  # noqa: E402

SR = 16000
SECONDS = 3.0
TINY_MULAN = dict(
    sample_rate=SR,
    embed_dim=16,
    n_mels=32,
    n_fft=512,
    hop_length=256,
    cnn_channels=[4, 8],
    text_encoder="scratch",
    text_encoder_args={"dim": 16, "depth": 1, "heads": 2, "vocab_size": 256},
    text_proj_hidden=0,
    window_s=1.0,
)


def _attrs(i: int) -> dict:
    return {
        "instrument": INSTRUMENTS[i % 3],
        "bpm": (80, 120, 150)[(i // 3) % 3],
        "key": PITCH_CLASSES[(5 * i) % 12],
        "mode": ("major", "minor")[i % 2],
    }


def _audio(a: dict, seed: int) -> np.ndarray:
    return synth_clip(
        instrument=a["instrument"],
        bpm=a["bpm"],
        key=PITCH_CLASSES.index(a["key"]),
        mode=a["mode"],
        seconds=SECONDS,
        seed=seed,
    )


def _caption(a: dict) -> str:
    return f"{a['instrument']} tune in {a['key']} {a['mode']} at {a['bpm']} BPM"


def _shards(directory: Path, n: int, seed: int) -> Path:
    with ShardWriter(directory, prefix="audio", max_count=8) as w:
        for i in range(n):
            a = _attrs(i)
            w.write(
                {
                    "__key__": f"clip{seed}x{i}",
                    "audio.flac": encode_flac(_audio(a, seed + i), SR),
                    "caption.txt": _caption(a),
                    "json": {"id": f"clip{i}", "attributes": a},
                },
                seconds=SECONDS,
            )
    atomic_write_json(
        directory / "manifest.json",
        {
            "schema_version": 1,
            "kind": "audio",
            "sample_rate": SR,
            "num_samples": n,
            "total_seconds": n * SECONDS,
            "shards": w.completed,
            "skipped": [],
            "source": {},
        },
    )
    return directory


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    train = _shards(root / "train", 18, seed=100)
    test = _shards(root / "test", 6, seed=200)
    gen = root / "generated"
    gen.mkdir()
    for i in range(6):
        a = _attrs(i)
        sf.write(gen / f"g{i}.wav", _audio(a, 300 + i), SR)
        (gen / f"g{i}.json").write_text(json.dumps({"prompt": _caption(a), "attributes": a}))
    from musiclm.models.mulan import MuLan

    torch.manual_seed(0)
    mulan = MuLan(**TINY_MULAN)
    ckpt = root / "mulan.ckpt"
    torch.save(
        {
            "hyper_parameters": TINY_MULAN,
            "state_dict": {f"mulan.{k}": v for k, v in mulan.state_dict().items()},
        },
        ckpt,
    )
    return {"root": root, "train": train, "test": test, "gen": gen, "mulan": ckpt}


def test_evaluate_end_to_end_with_tiny_mulan(data, tmp_path, capsys):
    out = tmp_path / "eval"
    rc = cmd.main(
        [
            "--generated",
            str(data["gen"]),
            "--reference",
            str(data["test"]),
            "--train-reference",
            str(data["train"]),
            "--mulan",
            str(data["mulan"]),
            "--out",
            str(out),
        ]
    )
    assert rc == 0, capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())
    adh = metrics["adherence"]
    # "generated" clips are rendered exactly as their sidecars say: the estimators agree
    assert adh["generated"]["instrument"]["accuracy"] >= 0.8
    assert adh["generated"]["instrument"]["n"] == 6
    assert adh["real"]["instrument"]["accuracy"] >= 0.8
    assert adh["chance"]["instrument"]["prior"] == pytest.approx(1 / 3)
    assert adh["chance_real"]["instrument"]["n"] == 6
    mcc = metrics["mcc"]
    assert mcc["generated"]["n"] == 6 and mcc["real"]["n"] == 6
    assert -1.0 <= mcc["generated"]["mean"] <= 1.0
    assert mcc["generated_mismatched"]["n"] == 30
    fad = metrics["fad"]
    assert fad["embedding"] == "mulan" and fad["dim"] == 16
    assert fad["generated_vs_reference"] >= 0 and fad["reference_halves"] >= 0
    md = (out / "metrics.md").read_text()
    for title in (
        "Musical structure",
        "Attribute adherence",
        "MuLan cycle consistency",
        "Fréchet audio distance",
    ):
        assert title in md
    assert (out / "attribute_estimators.json").is_file()
    # the "generated" clips are real renders: their structure matches the real clips'
    structure = metrics["structure"]
    assert len(structure["generated"]) == 6 and len(structure["real"]) == 6
    assert structure["summary"]["note_motion"]["ratio"] > 0.7
    assert structure["summary"]["static_share"]["generated"] == 0.0
    assert (out / "structure.png").read_bytes()[:4] == b"\x89PNG"
    assert "![structure distributions](structure.png)" in md


def test_evaluate_without_mulan_uses_logmel_and_reuses_estimators(data, tmp_path):
    out = tmp_path / "eval"
    args = ["--generated", str(data["gen"]), "--reference", str(data["test"]), "--out", str(out)]
    assert cmd.main([*args, "--train-reference", str(data["train"])]) == 0
    first = json.loads((out / "metrics.json").read_text())
    assert "mcc" not in first and any("MCC skipped" in n for n in first["notes"])
    assert first["fad"]["embedding"] == "logmel"
    # second run: no training clips needed, the saved estimators are loaded
    assert cmd.main([*args, "--metrics", "adherence"]) == 0
    second = json.loads((out / "metrics.json").read_text())
    assert second["adherence"]["generated"] == first["adherence"]["generated"]
    assert "fad" not in second


def test_fad_lower_for_matching_audio_than_for_other_instrument(data, tmp_path):
    gen = tmp_path / "other"
    gen.mkdir()
    for i in range(6):
        a = {**_attrs(i), "instrument": "square"}
        sf.write(gen / f"o{i}.wav", _audio(a, 400 + i), SR)
    out_same, out_other = tmp_path / "same", tmp_path / "oth"
    base = ["--reference", str(data["test"]), "--metrics", "fad", "--embedding", "logmel"]
    assert cmd.main([*base, "--generated", str(data["gen"]), "--out", str(out_same)]) == 0
    assert cmd.main([*base, "--generated", str(gen), "--out", str(out_other)]) == 0
    same = json.loads((out_same / "metrics.json").read_text())["fad"]["generated_vs_reference"]
    other = json.loads((out_other / "metrics.json").read_text())
    assert other["inputs"]["generated_without_sidecar"] == 6
    assert same < other["fad"]["generated_vs_reference"]


def test_bad_inputs_give_clear_errors(data, tmp_path, capsys):
    gen = tmp_path / "bad"
    gen.mkdir()
    sf.write(gen / "x.wav", np.zeros(SR, np.float32), SR)
    (gen / "x.json").write_text("{not json")
    rc = cmd.main(
        [
            "--generated",
            str(gen),
            "--reference",
            str(data["test"]),
            "--out",
            str(tmp_path / "o"),
            "--metrics",
            "fad",
        ]
    )
    assert rc == 2 and "invalid JSON sidecar" in capsys.readouterr().err
    rc = cmd.main(
        [
            "--generated",
            str(data["gen"]),
            "--reference",
            str(data["test"]),
            "--out",
            str(tmp_path / "o2"),
            "--metrics",
            "adherence",
        ]
    )
    assert rc == 2 and "--train-reference" in capsys.readouterr().err
    rc = cmd.main(
        [
            "--generated",
            str(data["gen"]),
            "--reference",
            str(data["test"]),
            "--out",
            str(tmp_path / "o3"),
            "--metrics",
            "fad",
            "--embedding",
            "mulan",
        ]
    )
    assert rc == 2 and "needs a MuLan checkpoint" in capsys.readouterr().err
    rc = cmd.main(
        [
            "--generated",
            str(data["gen"]),
            "--reference",
            str(data["test"]),
            "--out",
            str(tmp_path / "o4"),
            "--memorization",
            "--metrics",
            "fad",
        ]
    )
    assert rc == 2 and "memorization needs --tokens" in capsys.readouterr().err


def test_pipeline_paths_resolve_relative_to_file(tmp_path):
    for name in ("ckpt/mulan.ckpt", "rvq.safetensors", "sem.ckpt", "coarse.ckpt", "km.safetensors"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "PIPELINE.yaml").write_text(
        "mulan: {checkpoint: ckpt/mulan.ckpt, rvq: rvq.safetensors}\n"
        "codec: {name: stft-rvq, args: {}}\n"
        "semantic_tokenizer: {name: music-features, args: {kmeans: km.safetensors}}\n"
        "stages:\n"
        "  semantic: {checkpoint: sem.ckpt}\n"
        "  coarse: {checkpoint: coarse.ckpt}\n"
    )
    paths = cmd.read_pipeline(str(tmp_path / "PIPELINE.yaml"))
    assert paths["mulan"] == str(tmp_path / "ckpt/mulan.ckpt")
    assert paths["semantic"] == str(tmp_path / "sem.ckpt")
    assert paths["centroids"] == str(tmp_path / "km.safetensors")
    (tmp_path / "sem.ckpt").unlink()
    with pytest.raises(ValueError, match="sem.ckpt, which does not exist"):
        cmd.read_pipeline(str(tmp_path / "PIPELINE.yaml"))
