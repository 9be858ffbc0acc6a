"""Readers refuse a shard folder whose manifest is not complete (a multi-rank `prepare`
with a rank still running or killed), naming the folder and what is missing."""

import json

import numpy as np
import pytest
import soundfile as sf
from token_shards import write_synthetic_shards

from musiclm.commands import prepare_audio as pa
from musiclm.datamodules.audio_text import AudioTextDataModule
from musiclm.datamodules.shards import IncompleteShards, iter_audio_samples, read_manifest
from musiclm.datamodules.tokens import TokenDataModule
from musiclm.evaluation.clips import load_reference

SR = 16000


@pytest.fixture
def half_done(tmp_path, monkeypatch):
    """`prepare audio` of a 2-rank job where only rank 1 has run: OUT/train."""
    root = tmp_path / "corpus"
    root.mkdir()
    t = np.arange(SR) / SR
    rows = []
    for i in range(6):
        sf.write(root / f"c{i}.wav", 0.2 * np.sin(2 * np.pi * (200 + 30 * i) * t), SR)
        rows.append({"id": f"c{i}", "audio": f"c{i}.wav", "caption": f"tone {i}", "split": "train"})
    (root / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    argv = ["--source", "jsonl", "--input", str(root / "m.jsonl"), "--out", str(tmp_path / "a")]
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert pa.main([*argv, "--shard-size", "2", "--quiet"]) == 0
    return tmp_path / "a" / "train", argv


def _names_gap(message: str, folder) -> None:
    assert f"shard folder {folder} is incomplete" in message
    # rank 0's two chunks are what is missing
    assert "2 parts missing (audio-000-000000.tar, audio-000-000001.tar)" in message
    assert "musiclm prepare audio" in message


def test_half_finished_audio_shards_are_refused_by_every_reader(half_done):
    folder, _ = half_done
    manifest = read_manifest(folder, allow_incomplete=True)  # the writer's own view
    assert manifest["complete"] is False and len(manifest["shards"]) == 2
    for read in (
        lambda: read_manifest(folder),
        lambda: list(iter_audio_samples(folder)),  # fit-codec, fit-semantic, the RVQ fits
        lambda: AudioTextDataModule(str(folder), crop_seconds=0.5, batch_size=2),  # MuLan fit
        lambda: load_reference(folder),  # evaluate --reference / --train-reference
    ):
        with pytest.raises(IncompleteShards) as info:
            read()
        _names_gap(str(info.value), folder)


def test_finishing_the_other_rank_makes_the_folder_readable(half_done, monkeypatch):
    folder, argv = half_done
    monkeypatch.setenv("RANK", "0")
    assert pa.main([*argv, "--shard-size", "2", "--quiet"]) == 0
    manifest = read_manifest(folder)
    assert manifest["complete"] and manifest["missing"] == [] and manifest["num_samples"] == 6


def test_prepare_tokens_over_half_finished_audio_is_one_line(half_done, capsys):
    from musiclm.cli import main

    folder, _ = half_done
    argv = ["prepare", "tokens", "--audio", str(folder), "--out", str(folder.parent / "tok")]
    argv += ["--codec", "stft-rvq", "--codec-args", json.dumps({"codebooks": "none.safetensors"})]
    argv += ["--semantic", "music-features", "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("musiclm prepare tokens: error: ")
    _names_gap(last, folder)


def test_incomplete_token_shards_are_refused_by_the_token_datamodule(tmp_path):
    write_synthetic_shards(tmp_path, sizes=[2])
    path = tmp_path / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest.update(kind="tokens", complete=False, missing=["audio-000-000003.tar"])
    path.write_text(json.dumps(manifest))
    with pytest.raises(IncompleteShards, match="1 part missing \\(audio-000-000003.tar\\)"):
        TokenDataModule(str(tmp_path), seconds=1.0, batch_size=2, num_workers=0)


def test_a_manifest_without_the_record_of_what_is_missing_is_still_refused(tmp_path):
    write_synthetic_shards(tmp_path, sizes=[2])
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "complete": False}))
    with pytest.raises(IncompleteShards, match="what is missing is not recorded"):
        read_manifest(tmp_path)


@pytest.mark.parametrize("section,key", [("codec", "num_quantizers"), ("semantic", "vocab_size")])
def test_token_manifest_missing_a_key_is_a_value_error_naming_it(section, key):
    from musiclm.datamodules.token_spec import TokenSpec

    manifest = {
        "kind": "tokens",
        "semantic": {"vocab_size": 8, "frame_rate": 25.0, "fingerprint": "s"},
        "codec": {"codebook_size": 16, "num_quantizers": 2, "frame_rate": 50.0, "fingerprint": "c"},
    }
    del manifest[section][key]
    with pytest.raises(
        ValueError, match=rf"tokens/manifest.json: token manifest has no '{section}.{key}'"
    ):
        TokenSpec.from_manifest(manifest, "tokens/manifest.json")
