"""``musiclm prepare tokens`` end to end on tiny demo shards, with two codecs."""

from __future__ import annotations

import io
import json
import math
import shutil
import tarfile

import numpy as np
import pytest
import torch

from musiclm.cli import main as cli
from musiclm.commands.prepare_tokens import check_fingerprints, prepare_tokens
from musiclm.datamodules.shards import decode_npy, iter_audio_samples, read_manifest
from musiclm.tokenizers.artifacts import load_artifact
from musiclm.tokenizers.base import build

TINY_ENCODEC = {
    "sampling_rate": 16000,
    "hidden_size": 16,
    "num_filters": 4,
    "upsampling_ratios": [4, 2],
    "codebook_size": 64,
    "target_bandwidths": [12.0, 36.0],
    "num_lstm_layers": 1,
}
TINY_DAC = {
    "encoder_dim": 4,
    "encoder_rates": [2, 4],
    "decoder_dim": 16,
    "decoder_rates": [4, 2],
    "n_codebooks": 3,
    "codebook_size": 32,
    "codebook_dim": 4,
    "sample_rate": 24000,  # differs from the shards' 16 kHz: exercises resampling
}
CODECS = {"encodec-hf": {"config": TINY_ENCODEC}, "dac": {"config": TINY_DAC}}


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """Tiny demo audio shards (8 clips of 1.5 s, 3 per shard) and a fitted semantic k-means."""
    from musiclm.demo_corpus import build_demo_corpus

    root = tmp_path_factory.mktemp("prep")
    manifest = build_demo_corpus(root / "corpus", clips=8, seconds=1.5, seed=0, progress=False)
    args = ["--source", "demo", "--input", str(manifest), "--out", str(root / "audio")]
    assert cli(["prepare", "audio", *args, "--shard-size", "3", "--quiet"]) == 0
    km = root / "km.safetensors"
    assert cli(["prepare", "fit-semantic", "--audio", str(root / "audio"), "--out", str(km),
                "--k", "8"]) == 0  # fmt: skip
    return root, {"kmeans": str(km)}


SEM = "music-features"


@pytest.fixture(scope="module")
def encodec_run(shards, tmp_path_factory):
    """One encodec-hf run shared by the tests that only read its output."""
    root, sem_args = shards
    out = tmp_path_factory.mktemp("tok") / "tokens"
    manifests = prepare_tokens(root / "audio", out, codec="encodec-hf",
                               codec_args=CODECS["encodec-hf"], semantic=SEM,
                               semantic_args=sem_args, batch_size=2, progress=False)  # fmt: skip
    return out, manifests


def read_tokens(split_dir):
    out = {}
    for shard in read_manifest(split_dir)["shards"]:
        with tarfile.open(split_dir / shard["file"]) as tar:
            for m in tar.getmembers():
                key, _, field = m.name.partition(".")
                out.setdefault(key, {})[field] = tar.extractfile(m).read()
    return out


@pytest.mark.parametrize("codec", sorted(CODECS))
def test_end_to_end(shards, encodec_run, tmp_path, codec):
    root, sem_args = shards
    if codec == "encodec-hf":
        out, manifests = encodec_run
    else:
        out = tmp_path / "tokens"
        manifests = prepare_tokens(root / "audio", out, codec=codec, codec_args=CODECS[codec],
                                   semantic=SEM, semantic_args=sem_args, batch_size=3,
                                   progress=False)  # fmt: skip
    c = build("codecs", codec, **CODECS[codec])
    s = build("semantic_tokenizers", "music-features", **sem_args)
    splits = [d.name for d in (root / "audio").iterdir() if (d / "manifest.json").is_file()]
    assert sorted(manifests) == sorted(splits)
    for split in splits:
        man = read_manifest(out / split)
        assert man == manifests[split]
        audio = {a["key"]: a for a in iter_audio_samples(root / "audio" / split)}
        assert man["kind"] == "tokens" and man["complete"] and man["num_samples"] == len(audio)
        assert man["codec"]["fingerprint"] == c.fingerprint()
        assert man["codec"]["num_quantizers"] == c.num_quantizers
        assert man["semantic"]["fingerprint"] == s.fingerprint()
        assert man["semantic"]["vocab_size"] == 8 and man["mulan"] is None
        assert man["total_seconds"] == pytest.approx(sum(len(a["audio"]) / 16000 for a in
                                                         audio.values()), abs=1e-3)  # fmt: skip
        tokens = read_tokens(out / split)
        assert sorted(tokens) == sorted(audio)
        for key, fields in tokens.items():
            sem = decode_npy(fields["semantic.npy"])
            ac = decode_npy(fields["acoustic.npy"])
            seconds = len(audio[key]["audio"]) / 16000
            assert sem.dtype == np.int16 and ac.dtype == np.int16
            assert sem.shape == (math.ceil(seconds * s.frame_rate - 1e-9),)
            assert ac.shape == (c.num_quantizers, math.ceil(seconds * c.frame_rate - 1e-9))
            assert fields["caption.txt"].decode() == audio[key]["caption"]
            assert json.loads(fields["json"])["seconds"] == pytest.approx(seconds)
            # batched and padded in the job = this clip alone
            wav = torch.tensor(audio[key]["audio"])[None, None]
            assert (s.tokenize(wav)[0].numpy() == sem).mean() >= 0.95
        assert "mulan.npy" not in fields


def test_resume_redoes_only_missing_shards(shards, encodec_run, tmp_path):
    root, sem_args = shards
    out = tmp_path / "tokens"
    shutil.copytree(encodec_run[0], out)
    kw = dict(codec="encodec-hf", codec_args=CODECS["encodec-hf"], semantic=SEM,
              semantic_args=sem_args, batch_size=2, progress=False)  # fmt: skip
    first = encodec_run[1]
    split = max(first, key=lambda k: len(first[k]["shards"]))
    shard_files = sorted((out / split).glob("tokens-*.tar"))
    assert len(shard_files) >= 2
    # as if killed while writing the last shard: no record, no final file, a stale temp
    victim = shard_files[-1]
    victim.unlink()
    (out / split / "progress" / victim.name.replace(".tar", ".json")).unlink()
    (out / split / f".{victim.name}.tmp").write_bytes(b"half")
    kept = {p.name: p.stat().st_mtime_ns for p in shard_files[:-1]}
    man = read_manifest(out / split)  # the manifest still lists what was there before
    second = prepare_tokens(root / "audio", out, **kw)
    assert second[split] == first[split]
    assert {p.name: p.stat().st_mtime_ns for p in shard_files[:-1]} == kept
    assert victim.is_file() and not (out / split / f".{victim.name}.tmp").exists()
    assert len(read_tokens(out / split)) == first[split]["num_samples"] == man["num_samples"]


def test_corrupt_inputs_are_skipped_and_counted(shards, tmp_path):
    root, sem_args = shards
    audio = tmp_path / "audio"
    shutil.copytree(root / "audio", audio)
    split = "train"
    files = sorted((audio / split).glob("audio-*.tar"))
    for other in audio.iterdir():  # only train matters here
        if other.is_dir() and other.name != split:
            shutil.rmtree(other)
    # one whole shard is garbage; in another, one sample's FLAC is garbage
    files[0].write_bytes(b"this is not a tar file" * 50)
    with tarfile.open(files[1]) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    bad_key = members[0][0].name.split(".")[0]
    with tarfile.open(files[1], "w") as tar:
        for m, data in members:
            if m.name == f"{bad_key}.audio.flac":
                data = b"garbage"
                m.size = len(data)
            tar.addfile(m, io.BytesIO(data))
    manifests = prepare_tokens(audio, tmp_path / "tokens", codec="encodec-hf",
                               codec_args=CODECS["encodec-hf"], semantic=SEM,
                               semantic_args=sem_args, batch_size=2, progress=False)  # fmt: skip
    man = manifests[split]
    total = read_manifest(audio / split)["num_samples"]
    skipped = {s["input"]: s["count"] for s in man["skipped"]}
    assert skipped[files[1].name] == 1 and files[0].name in skipped
    assert man["complete"]
    assert bad_key not in read_tokens(tmp_path / "tokens" / split)
    assert (
        man["num_samples"] == total - 1 - read_manifest(audio / split)["shards"][0]["num_samples"]
    )


def test_mismatched_fingerprint_is_refused_naming_both(shards, encodec_run):
    root, sem_args = shards
    out, manifests = encodec_run
    kw = dict(semantic=SEM, semantic_args=sem_args, batch_size=4, progress=False)
    man = manifests["train"]
    other = build("codecs", "encodec-hf", config=TINY_ENCODEC, seed=5).fingerprint()
    with pytest.raises(ValueError) as err:
        check_fingerprints(man, codec=other, where="conf/coarse.yaml")
    assert man["codec"]["fingerprint"] in str(err.value) and other in str(err.value)
    assert "conf/coarse.yaml" in str(err.value)
    check_fingerprints(man, codec=man["codec"]["fingerprint"], where="x")  # agreeing: fine
    # resuming into the same folder with another codec is refused, too
    with pytest.raises(ValueError, match="codec fingerprint"):
        prepare_tokens(root / "audio", out, codec="encodec-hf",
                       codec_args={"config": TINY_ENCODEC, "seed": 5}, **kw)  # fmt: skip


def test_cli_arguments_are_checked(shards, tmp_path, capsys):
    root, _ = shards
    with pytest.raises(SystemExit):
        cli(["prepare", "tokens", "--audio", str(root / "audio"), "--out", str(tmp_path),
             "--codec", "dac", "--semantic", "music-features", "--codec-args", "{bad"])  # fmt: skip
    assert "--codec-args is not valid JSON" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli(["prepare", "tokens", "--audio", str(root / "audio"), "--out", str(tmp_path),
             "--codec", "dac", "--semantic", "music-features", "--mulan", "x.ckpt"])  # fmt: skip


def test_fit_codec_cli_writes_a_loadable_artifact(shards, tmp_path, capsys):
    root, _ = shards
    path = tmp_path / "books.safetensors"
    args = ["--audio", str(root / "audio"), "--out", str(path), "--levels", "2"]
    assert cli(["prepare", "fit-codec", *args, "--codebook-size", "16", "--iters", "2"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    codec = build("codecs", "stft-rvq", codebooks=str(path))
    assert codec.num_quantizers == 2 and codec.codebook_size == 16
    assert summary["fingerprint"] == load_artifact(path)[1]["fingerprint"]
    assert summary["clips"] == read_manifest(root / "audio" / "train")["num_samples"]


def _cli_args(root, sem_args, out) -> list[str]:
    return ["prepare", "tokens", "--audio", str(root / "audio"), "--out", str(out),
            "--codec", "encodec-hf", "--codec-args", json.dumps(CODECS["encodec-hf"]),
            "--semantic", SEM, "--semantic-args", json.dumps(sem_args),
            "--batch-size", "2", "--no-progress"]  # fmt: skip


@pytest.mark.slow
def test_killed_job_resumes_and_two_ranks_agree(shards, encodec_run, tmp_path):
    """A real kill mid-run, then a rerun on two CPU ranks (DDP): same tokens as one clean run."""
    import os
    import signal
    import subprocess
    import sys
    import time

    root, sem_args = shards
    out = tmp_path / "tokens"
    cmd = [sys.executable, "-m", "musiclm.cli", *_cli_args(root, sem_args, out)]
    proc = subprocess.Popen(cmd, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and not list(out.glob("*/progress/*.json")):
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = list(out.glob("*/progress/*.json"))
    assert done, "the job wrote no shard before the deadline"
    subprocess.run([*cmd, "--devices", "2"], check=True, timeout=600)
    clean_out, clean = encodec_run
    for split, man in clean.items():
        assert read_manifest(out / split)["num_samples"] == man["num_samples"]
        a, b = read_tokens(out / split), read_tokens(clean_out / split)
        assert sorted(a) == sorted(b)
        for key in a:
            assert a[key]["acoustic.npy"] == b[key]["acoustic.npy"]
            assert a[key]["semantic.npy"] == b[key]["semantic.npy"]


def _with_mulan(shards, tmp_path):
    """The train split copied to ``tmp_path/audio``, a tiny MuLan and its 2 x 2 RVQ fitted on
    it: (audio folder, checkpoint, RVQ path, conditioner)."""
    from test_conditioning_rvq import _checkpoint

    from musiclm.conditioning.conditioning_rvq import MulanConditioner

    root, _ = shards
    audio = tmp_path / "audio"
    shutil.copytree(root / "audio" / "train", audio / "train")
    ckpt = _checkpoint(tmp_path)
    rvq = tmp_path / "rvq.safetensors"
    args = ["--checkpoint", ckpt, "--audio", str(audio / "train"), "--out", str(rvq)]
    assert cli(["prepare", "mulan-rvq", *args, "--levels", "2", "--codebook-size", "2"]) == 0
    return audio, ckpt, rvq, MulanConditioner.from_files(ckpt, str(rvq))


def test_mulan_tokens_when_a_checkpoint_is_given(shards, tmp_path, capsys):
    from musiclm.tokenizers.fit_codec import resample

    sem_args = shards[1]
    audio, ckpt, rvq, cond = _with_mulan(shards, tmp_path)
    man = prepare_tokens(audio, tmp_path / "tokens", codec="encodec-hf",
                         codec_args=CODECS["encodec-hf"], semantic=SEM, semantic_args=sem_args,
                         mulan=(ckpt, str(rvq)), batch_size=2, progress=False)["train"]  # fmt: skip
    assert man["mulan"]["fingerprint"] == cond.fingerprint()
    assert (man["mulan"]["num_levels"], man["mulan"]["codebook_size"]) == (2, 2)
    clips = {a["key"]: a for a in iter_audio_samples(audio / "train")}
    for key, fields in read_tokens(tmp_path / "tokens" / "train").items():
        got = decode_npy(fields["mulan.npy"])
        wav = resample(clips[key]["audio"], 16000, cond.sample_rate)[None, None]
        assert got.shape == (2,) and got.tolist() == cond.audio_tokens(wav)[0].tolist()


def test_beat_clock_with_the_stated_tempo_and_caption_embeddings(shards, tmp_path):
    from musiclm.datamodules.token_spec import BeatSpec
    from musiclm.datamodules.tokens import TokenDataModule

    sem_args = shards[1]
    audio, ckpt, rvq, cond = _with_mulan(shards, tmp_path)
    spec = BeatSpec()
    run = dict(codec="encodec-hf", codec_args=CODECS["encodec-hf"], semantic=SEM,
               semantic_args=sem_args, mulan=(ckpt, str(rvq)), batch_size=2,
               progress=False)  # fmt: skip
    man = prepare_tokens(audio, tmp_path / "tokens", beats=spec, **run)["train"]
    assert man["beats"]["phase_bins"] == 16 and man["beats"]["tempo_bins"] == 32
    assert man["beats"]["embedding_dim"] == cond.mulan.embed_dim
    clips = {a["key"]: a for a in iter_audio_samples(audio / "train")}
    tracked = 0
    for key, fields in read_tokens(tmp_path / "tokens" / "train").items():
        beat, tempo = decode_npy(fields["beat.npy"]), int(decode_npy(fields["tempo.npy"])[0])
        assert beat.shape == decode_npy(fields["semantic.npy"]).shape
        stated = clips[key]["meta"]["attributes"]["bpm"]
        if tempo >= 0:  # 1.5 s clips: a slow one may hold fewer than two beats
            tracked += 1
            assert tempo == spec.tempo_bin(stated)  # the metadata's tempo, not a guess
            assert beat.min() >= 0 and beat.max() < spec.phase_bins
        emb = decode_npy(fields["mulan_embedding.npy"]).astype(np.float32)
        caption = fields["caption.txt"].decode()
        expected = cond.embed_text([caption])[0].numpy()
        assert np.allclose(emb, expected, atol=2e-3)  # stored as float16
    assert tracked >= len(clips) // 2
    dm = TokenDataModule(str(tmp_path / "tokens" / "train"), str(tmp_path / "tokens" / "train"),
                         seconds=1.0, batch_size=2, num_workers=0)  # fmt: skip
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert {"beat", "tempo", "mulan_embedding"} <= set(batch)
    # the same folder with another clock (or none) is refused, not mixed
    with pytest.raises(ValueError, match="beat clock"):
        prepare_tokens(audio, tmp_path / "tokens", beats=BeatSpec(phase_bins=8), **run)
