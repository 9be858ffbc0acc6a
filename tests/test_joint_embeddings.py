"""Joint embeddings (MuLan's role): one contract for every built-in plugin (our own MuLan, a
tiny random CLAP saved like a hub model), then CLAP through the commands that take a MuLan:
the conditioning RVQ, token preparation, a pipeline that generates, and MCC."""

from __future__ import annotations

import json
import os
import tarfile

import numpy as np
import pytest
import soundfile as sf
import torch
import torch.nn.functional as F
import yaml
from joint_helpers import CLAP_DIM, CLAP_SAMPLE_RATE, write_tiny_clap
from mulan_helpers import SAMPLE_RATE, ToneDataset
from test_conditioning_rvq import _audio_shards, _checkpoint

from musiclm import registry
from musiclm.cli import main as cli
from musiclm.conditioning.conditioning_rvq import ConditioningRVQ, MulanConditioner
from musiclm.tokenizers.base import JointEmbedding
from musiclm.tokenizers.joint import JointEmbeddingSpec


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _mulan_spec(tmp) -> JointEmbeddingSpec:
    return JointEmbeddingSpec("mulan", {"checkpoint": _checkpoint(tmp)})


def _clap_spec(tmp) -> JointEmbeddingSpec:
    return JointEmbeddingSpec("clap", {"model": str(write_tiny_clap(tmp / "clap"))})


SPECS = {"mulan": _mulan_spec, "clap": _clap_spec}


def test_every_built_in_joint_embedding_has_a_contract_fixture():
    built_in = {
        name
        for name, spec in registry.discover("joint_embeddings").items()
        if spec.distribution == "musiclm"
    }
    assert built_in == set(SPECS)


@pytest.fixture(scope="module", params=sorted(SPECS))
def spec(request, tmp_path_factory) -> JointEmbeddingSpec:
    return SPECS[request.param](tmp_path_factory.mktemp(request.param))


@pytest.fixture(scope="module")
def embedding(spec):
    return spec.build()


def _clips(n: int, seconds: float, rate: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    t = torch.arange(int(seconds * rate)) / rate
    f0 = 200.0 * (1 + torch.arange(n))[:, None]
    return 0.3 * torch.sin(2 * torch.pi * f0 * t) + 0.02 * torch.randn(n, t.numel(), generator=gen)


def _unit(x: torch.Tensor) -> bool:
    return bool(torch.allclose(x.norm(dim=-1), torch.ones(x.shape[0]), atol=1e-5))


def test_meets_the_protocol(embedding):
    assert isinstance(embedding, JointEmbedding)
    assert embedding.sample_rate > 0 and embedding.embed_dim > 0 and embedding.window_s > 0
    assert not embedding.training


def test_audio_embeddings_are_deterministic_unit_vectors_of_each_clip(embedding):
    wav = _clips(3, 0.4, embedding.sample_rate)
    emb = embedding.embed_audio(wav)
    assert emb.shape == (3, embedding.embed_dim) and emb.dtype == torch.float32
    assert _unit(emb) and torch.isfinite(emb).all() and not emb.requires_grad
    torch.testing.assert_close(embedding.embed_audio(wav[:, None]), emb)  # (B, 1, T) too
    torch.testing.assert_close(embedding.embed_audio(wav), emb)  # deterministic
    # a clip's embedding does not depend on the rest of its batch
    torch.testing.assert_close(embedding.embed_audio(wav[1:2]), emb[1:2], atol=1e-5, rtol=0)
    assert not torch.allclose(emb[0], emb[2])
    with pytest.raises(ValueError, match="audio must be"):
        embedding.embed_audio(torch.zeros(2, 2, 100))


def test_text_embeddings_are_deterministic_unit_vectors(embedding):
    texts = ["a piano melody", "two violins playing slowly", "x"]
    emb = embedding.embed_text(texts)
    assert emb.shape == (3, embedding.embed_dim) and _unit(emb) and not emb.requires_grad
    torch.testing.assert_close(embedding.embed_text(texts), emb)
    torch.testing.assert_close(embedding.embed_text(texts[1:2]), emb[1:2], atol=1e-5, rtol=0)
    assert not torch.allclose(emb[0], emb[1])
    with pytest.raises(TypeError, match="list of strings"):
        embedding.embed_text("a piano")


def test_text_and_audio_share_one_space(embedding):
    text = embedding.embed_text(["a harp melody"])
    audio = embedding.embed_audio(_clips(1, 0.4, embedding.sample_rate))
    assert text.shape == audio.shape == (1, embedding.embed_dim)
    assert -1.0 - 1e-6 <= float(F.cosine_similarity(text, audio)) <= 1.0 + 1e-6


def test_windows_average_and_renormalise(embedding):
    rate, window = embedding.sample_rate, embedding.window_s
    short = _clips(2, 0.4 * window, rate)
    torch.testing.assert_close(embedding.embed_audio_windows(short), embedding.embed_audio(short))
    long = _clips(2, 2.5 * window, rate, seed=1)
    got = embedding.embed_audio_windows(long, hop_s=window / 2)
    win, hop = round(window * rate), round(window / 2 * rate)
    windows = long.unfold(-1, win, hop)  # (2, W, win)
    each = embedding.embed_audio(windows.reshape(-1, win)).view(2, windows.shape[1], -1)
    torch.testing.assert_close(got, F.normalize(each.mean(1), dim=-1), atol=1e-5, rtol=0)
    assert _unit(got)


def test_fingerprint_names_the_plugin_and_is_stable(spec, embedding):
    fp = embedding.fingerprint()
    assert fp.startswith(f"{spec.name}:") and len(fp) == len(spec.name) + 17
    assert spec.build().fingerprint() == fp


def test_a_checkpoint_path_is_the_mulan_plugin(tmp_path):
    spec = JointEmbeddingSpec.of("m.ckpt")
    assert spec == JointEmbeddingSpec("mulan", {"checkpoint": "m.ckpt"})
    assert spec.to_block() == {"checkpoint": "m.ckpt"} and spec.checkpoint == "m.ckpt"
    clap = JointEmbeddingSpec("clap", {"model": "dir"})
    assert clap.to_block() == {"name": "clap", "args": {"model": "dir"}} and not clap.checkpoint


# --- CLAP through the commands -----------------------------------------------------------


@pytest.fixture(scope="module")
def clap(tmp_path_factory) -> JointEmbeddingSpec:
    return _clap_spec(tmp_path_factory.mktemp("clapdir"))


@pytest.fixture(scope="module")
def audio(tmp_path_factory):
    """24 one-second tone clips at 8 kHz (CLAP's rate here) in ``audio/train``."""
    root = tmp_path_factory.mktemp("jointaudio") / "audio"
    _audio_shards(root / "train")
    return root


def _last_error_line(err: str, prog: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err, err
    assert lines[-1].startswith(f"{prog}: error: "), err
    return lines[-1]


def test_a_missing_clap_model_is_one_line_naming_it(audio, tmp_path, capsys):
    missing = tmp_path / "no-clap-here"
    argv = ["prepare", "mulan-rvq", "--joint-embedding", "clap", "--joint-embedding-args",
            json.dumps({"model": str(missing)}), "--audio", str(audio / "train"),
            "--out", str(tmp_path / "rvq.safetensors")]  # fmt: skip
    assert cli(argv) == 2
    line = _last_error_line(capsys.readouterr().err, "musiclm prepare mulan-rvq")
    assert str(missing) in line and "weights are needed" in line
    # a misspelled argument is refused before anything is read or loaded
    argv[5] = json.dumps({"modle": "x"})
    assert cli(argv) == 2
    line = _last_error_line(capsys.readouterr().err, "musiclm prepare mulan-rvq")
    assert "'modle'" in line and "model" in line
    with pytest.raises(SystemExit) as usage:  # argparse's own usage error
        cli([*argv[:5], "{}", "--checkpoint", "x.ckpt", *argv[6:]])
    assert usage.value.code == 2 and "not both" in capsys.readouterr().err


@pytest.mark.skipif(os.environ.get("HF_HUB_OFFLINE") != "1", reason="needs HF_HUB_OFFLINE=1")
def test_a_hub_id_offline_is_one_line_saying_weights_are_needed(capsys):
    from musiclm.usage import run_command

    spec = JointEmbeddingSpec("clap", {"model": "laion/larger_clap_music"})
    assert run_command("musiclm prepare mulan-rvq", spec.build) == 2
    line = _last_error_line(capsys.readouterr().err, "musiclm prepare mulan-rvq")
    assert "'laion/larger_clap_music' (offline)" in line and "weights are needed" in line


def test_clap_conditioning_tokens_from_rvq_to_token_shards(clap, audio, tmp_path, capsys):
    from generation_helpers import TINY_DAC, write_semantic_tokenizer

    from musiclm.datamodules.shards import decode_npy, iter_audio_samples

    rvq = tmp_path / "rvq.safetensors"
    joint = ["--joint-embedding", "clap", "--joint-embedding-args", json.dumps(clap.args)]
    argv = ["--audio", str(audio / "train"), "--out", str(rvq), "--levels", "2",
            "--codebook-size", "4", "--device", "cpu"]  # fmt: skip
    assert cli(["prepare", "mulan-rvq", *joint, *argv]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["clips"] == 24
    fitted = ConditioningRVQ.load(rvq)
    assert fitted.dim == CLAP_DIM and fitted.meta["joint_embedding"] == clap.to_block()

    cond = MulanConditioner.from_files(clap, str(rvq))
    assert cond.fingerprint().startswith("clap:") and cond.sample_rate == CLAP_SAMPLE_RATE
    assert cond.text_tokens(["a piano melody"]).shape == (1, 2)

    sem = write_semantic_tokenizer(tmp_path)
    sem["args"]["kmeans"] = str(tmp_path / sem["args"]["kmeans"])
    out = tmp_path / "tokens"
    argv = ["prepare", "tokens", "--audio", str(audio), "--out", str(out), "--codec", "dac",
            "--codec-args", json.dumps({"config": TINY_DAC}), "--semantic", sem["name"],
            "--semantic-args", json.dumps(sem["args"]), *joint, "--mulan-rvq", str(rvq),
            "--no-progress"]  # fmt: skip
    assert cli(argv) == 0
    manifest = json.loads((out / "train" / "manifest.json").read_text())
    section = manifest["mulan"]
    assert section["name"] == "clap" and section["args"] == clap.args
    assert section["fingerprint"] == cond.fingerprint() and section["num_levels"] == 2
    clips = {c["key"]: c for c in iter_audio_samples(audio / "train")}  # 8 kHz, CLAP's rate
    seen = 0
    for tar in sorted((out / "train").glob("tokens-*.tar")):
        with tarfile.open(tar) as f:
            for member in f.getmembers():
                if member.name.endswith(".mulan.npy"):
                    key = member.name.split(".")[0]
                    got = decode_npy(f.extractfile(member).read())
                    wav = torch.from_numpy(clips[key]["audio"]).float()[None]
                    assert got.tolist() == cond.audio_tokens(wav)[0].tolist()
                    seen += 1
    assert seen == 24


def test_pipeline_file_names_a_joint_embedding_by_plugin(tmp_path):
    from generation_helpers import write_pipeline

    from musiclm.generation.pipeline_file import load_pipeline_file

    path = write_pipeline(tmp_path, mulan=True)
    data = yaml.safe_load(path.read_text())
    data["mulan"] = {
        "name": "mulan",
        "args": {"checkpoint": "mulan.ckpt"},
        "rvq": "rvq.safetensors",
    }
    path.write_text(yaml.safe_dump(data))
    mulan, rvq = load_pipeline_file(path).mulan
    assert mulan == JointEmbeddingSpec("mulan", {"checkpoint": str(tmp_path / "mulan.ckpt")})
    assert rvq == str(tmp_path / "rvq.safetensors")
    # from a token manifest's section, paths relative to the manifest's folder
    (tmp_path / "tokens" / "clap").mkdir(parents=True)
    (tmp_path / "tokens" / "rvq.safetensors").write_bytes(b"")
    section = {"name": "clap", "args": {"model": "clap", "window_s": 1.0},
               "rvq": "rvq.safetensors", "fingerprint": "clap:0", "num_levels": 3}  # fmt: skip
    (tmp_path / "tokens" / "manifest.json").write_text(json.dumps({"mulan": section}))
    del data["mulan"]
    data["manifest"] = "tokens/manifest.json"
    path.write_text(yaml.safe_dump(data))
    mulan, rvq = load_pipeline_file(path).mulan
    model = str(tmp_path / "tokens" / "clap")
    assert mulan == JointEmbeddingSpec("clap", {"model": model, "window_s": 1.0})
    assert rvq == str(tmp_path / "tokens" / "rvq.safetensors")


def test_a_pipeline_conditioned_by_clap_generates_and_reranks(clap, tmp_path):
    from generation_helpers import write_pipeline

    from musiclm.generation.pipeline import Pipeline

    model = clap.build()
    emb = F.normalize(torch.randn(64, CLAP_DIM, generator=torch.Generator().manual_seed(0)), dim=-1)
    meta = {"mulan_fingerprint": model.fingerprint()}
    ConditioningRVQ.fit(emb, levels=3, codebook_size=8, meta=meta).save(tmp_path / "crvq.st")
    block = {"name": "clap", "args": clap.args, "rvq": "crvq.st"}
    path = write_pipeline(tmp_path, mulan=True, extra={"mulan": block})
    pipe = Pipeline.from_file(str(path))
    assert pipe.conditioner.fingerprint().startswith("clap:")
    out = pipe.generate([[(0.0, "a flute melody")]] * 2, seconds=2.0, seed=0, rerank=2)
    assert out.audio.shape == (2, 1, 3200) and torch.isfinite(out.audio).all()
    assert [len(c) for c in out.candidate_scores] == [2, 2]
    again = pipe.generate([[(0.0, "a flute melody")]] * 2, seconds=2.0, seed=0, rerank=2)
    assert torch.equal(out.audio, again.audio)


def test_evaluate_scores_mcc_and_fad_with_clap(clap, audio, tmp_path, capsys):
    from musiclm.commands import evaluate

    gen = tmp_path / "generated"
    gen.mkdir()
    clips = ToneDataset(3, 1.0, seed=7)
    for i in range(3):
        item = clips[i]
        sf.write(gen / f"g{i}.wav", np.clip(item["audio"].numpy(), -1, 1), SAMPLE_RATE)
        (gen / f"g{i}.json").write_text(json.dumps({"prompt": item["caption"]}))
    out = tmp_path / "eval"
    argv = ["--generated", str(gen), "--reference", str(audio / "train"), "--out", str(out),
            "--metrics", "mcc,fad", "--embedding", "mulan", "--joint-embedding", "clap",
            "--joint-embedding-args", json.dumps(clap.args)]  # fmt: skip
    assert evaluate.main(argv) == 0, capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["inputs"]["mulan"] == clap.to_block()
    assert metrics["mcc"]["generated"]["n"] == 3 and metrics["mcc"]["real"]["n"] == 24
    assert metrics["fad"]["embedding"] == "mulan" and metrics["fad"]["dim"] == CLAP_DIM
