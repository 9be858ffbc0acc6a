"""The pipeline file, the whole hierarchy and `musiclm generate`, on tiny random checkpoints."""

import json

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio
import yaml
from generation_helpers import write_pipeline, write_semantic_tokenizer

from musiclm.commands.generate import main, parse_stage_values, read_story
from musiclm.generation.pipeline import Pipeline
from musiclm.generation.pipeline_file import PipelineFileError, load_pipeline_file


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models on a shared 2-core machine: one thread avoids waiting on a busy sibling."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    """Stages without MuLan conditioning (8 s contexts are not needed: 4 / 2 / 1 s)."""
    return write_pipeline(tmp_path_factory.mktemp("plain"))


@pytest.fixture(scope="module")
def conditioned(tmp_path_factory):
    """MuLan-conditioned stages trained (here: built) with conditioning dropout."""
    tmp = tmp_path_factory.mktemp("mulan")
    return write_pipeline(
        tmp, mulan=True, extra={"semantic_tokenizer": write_semantic_tokenizer(tmp)}
    )


def _edit(path, tmp_path, change):
    data = yaml.safe_load(path.read_text())
    change(data)
    out = path.parent / f"edited-{tmp_path.name}.yaml"
    out.write_text(yaml.safe_dump(data))
    return out


def test_pipeline_file_errors_name_file_and_key(plain, tmp_path):
    spec = load_pipeline_file(plain)
    assert set(spec.stages) == {"semantic", "coarse", "fine"}
    assert spec.stages["fine"].sampling.temperature == 0.4  # the paper's default
    cases = [
        (lambda d: d["stages"].pop("coarse"), "missing key 'stages.coarse'"),
        (lambda d: d["stages"]["semantic"].pop("checkpoint"), "'stages.semantic.checkpoint'"),
        (lambda d: d["stages"]["coarse"].update(temprature=1), "unknown key"),
        (lambda d: d["stages"]["fine"].update(top_p=2.0), "top_p"),
        (lambda d: d["stages"]["fine"].update(checkpoint="nope.ckpt"), "does not exist"),
        (lambda d: d.pop("codec"), "missing key 'codec'"),
        (lambda d: d.update(extra=1), "unknown key"),
    ]
    for change, message in cases:
        path = _edit(plain, tmp_path, change)
        with pytest.raises(PipelineFileError, match=message) as err:
            load_pipeline_file(path)
        assert str(path) in str(err.value)
    swapped = _edit(plain, tmp_path, lambda d: d["stages"]["coarse"].update(checkpoint="fine.ckpt"))
    with pytest.raises(PipelineFileError, match="is a fine stage checkpoint"):
        Pipeline.from_file(str(swapped))
    no_dropout = _edit(plain, tmp_path, lambda d: d["stages"]["coarse"].update(cfg_scale=3.0))
    with pytest.raises(PipelineFileError, match="without conditioning dropout"):
        Pipeline.from_file(str(no_dropout))


def test_text_neighbours_reach_the_mulan_tokens(conditioned, tmp_path):
    from musiclm.conditioning.conditioning_rvq import ConditioningRVQ, neighbour_mean

    for value, message in [(-1, ">= 0"), (2.5, "integer"), (True, "integer")]:
        path = _edit(conditioned, tmp_path, lambda d, v=value: d["mulan"].update(text_neighbours=v))
        with pytest.raises(PipelineFileError, match=f"'mulan.text_neighbours' must be .*{message}"):
            load_pipeline_file(path)
    # the fixture's RVQ kept no audio embeddings: refused, naming the key and the file
    asked = _edit(conditioned, tmp_path, lambda d: d["mulan"].update(text_neighbours=2))
    with pytest.raises(PipelineFileError, match="'mulan.text_neighbours'.*refit") as err:
        _ = Pipeline.from_file(str(asked)).conditioner
    assert str(asked) in str(err.value) and "rvq.safetensors" in str(err.value)

    rvq = ConditioningRVQ.load(conditioned.parent / "rvq.safetensors")
    gen = torch.Generator().manual_seed(0)
    bank = torch.nn.functional.normalize(torch.randn(40, rvq.dim, generator=gen), dim=-1)
    ConditioningRVQ(rvq.codebooks, rvq.meta, bank).save(tmp_path / "rvq_kept.safetensors")

    def use_bank(d):
        d["mulan"].update(rvq=str(tmp_path / "rvq_kept.safetensors"), text_neighbours=2)

    pipe = Pipeline.from_file(str(_edit(conditioned, tmp_path, use_bank)))
    texts = ["a flute melody", "a harp melody"]
    tokens = pipe.mulan_tokens(texts)
    text = pipe.conditioner.embed_text(sorted(texts))
    rvq = pipe.conditioner.rvq
    want = rvq.tokens(neighbour_mean(text, rvq.audio_embeddings, 2))
    assert torch.equal(torch.stack([tokens[t] for t in sorted(texts)]), want)
    assert not torch.equal(want, rvq.tokens(text))  # not the text's own
    out = pipe.generate([[(0.0, "a flute melody")]], seconds=1.0, seed=0)
    assert out.audio.shape == (1, 1, 1600)


def test_checkpoints_load_without_unpickling(plain):
    for entry in load_pipeline_file(plain).stages.values():
        ckpt = torch.load(entry.checkpoint, weights_only=True)
        assert isinstance(ckpt["hyper_parameters"]["spec"], dict)


def test_whole_hierarchy_with_sliding_windows_is_seeded(plain):
    pipe = Pipeline.from_file(str(plain))
    schedules = [[(0.0, "a")], [(0.0, "b")]]
    a = pipe.generate(schedules, seconds=5.0, seed=3)  # beyond every stage's context
    assert a.audio.shape == (2, 1, 5 * 1600) and a.sample_rate == 1600
    assert a.codes["semantic"].shape == (2, 25) and a.codes["acoustic"].shape == (2, 4, 50)
    assert torch.isfinite(a.audio).all()
    b = pipe.generate(schedules, seconds=5.0, seed=3)
    assert torch.equal(a.audio, b.audio) and torch.equal(a.codes["acoustic"], b.codes["acoustic"])
    c = pipe.generate(schedules, seconds=5.0, seed=4)
    assert not torch.equal(a.codes["acoustic"], c.codes["acoustic"])
    with pytest.raises(ValueError, match="re-ranking scores candidates with MuLan"):
        pipe.generate(schedules, seconds=1.0, rerank=2)


def test_story_mode_changes_the_conditioning_per_window(conditioned):
    pipe = Pipeline.from_file(str(conditioned))
    plain = pipe.generate([[(0.0, "a piano melody")]], seconds=6.0, seed=0)
    story = pipe.generate([[(0.0, "a piano melody"), (4.0, "a harp melody")]], seconds=6.0, seed=0)
    # semantic windows: [0, 4) s new from 0 s (first text), [2, 6) s new from 4 s (second text)
    first, later = slice(0, 20), slice(20, 30)
    assert torch.equal(plain.codes["semantic"][:, first], story.codes["semantic"][:, first])
    assert not torch.equal(plain.codes["semantic"][:, later], story.codes["semantic"][:, later])


def test_cfg_rerank_and_continuation(conditioned, tmp_path):
    pipe = Pipeline.from_file(str(conditioned))
    pipe.set_sampling("semantic", cfg_scale=3.0)
    out = pipe.generate([[(0.0, "a flute melody")]] * 2, seconds=2.0, seed=0, rerank=3)
    assert out.audio.shape == (2, 1, 3200)
    assert all(isinstance(s, float) and -1 <= s <= 1 for s in out.scores)
    # every candidate's score is kept; the output is the best of its three
    assert [len(c) for c in out.candidate_scores] == [3, 3]
    assert out.scores == [max(c) for c in out.candidate_scores]
    cond = pipe.conditioner
    wav = torchaudio.functional.resample(out.audio, pipe.codec.sample_rate, cond.sample_rate)
    again = torch.nn.functional.cosine_similarity(
        cond.embed_audio(wav), cond.embed_text(["a flute melody"]), dim=-1
    )
    torch.testing.assert_close(again, torch.tensor(out.scores), atol=1e-4, rtol=0)

    clip = 0.3 * torch.sin(torch.arange(1600 * 3) / 1600 * 2 * torch.pi * 220)
    cont = pipe.generate(
        [[(0.0, "a flute melody")]], seconds=2.0, seed=0, continue_audio=(clip, 1600)
    )
    assert cont.prompt_seconds == pytest.approx(3.0) and cont.audio.shape == (1, 1, 5 * 1600)
    expected = pipe.codec.encode(clip.view(1, 1, -1))
    assert torch.equal(cont.codes["acoustic"][..., :30], expected[..., :30])
    expected_s = pipe.semantic_tokenizer.tokenize(clip.view(1, 1, -1))
    assert torch.equal(cont.codes["semantic"][:, :15], expected_s[:, :15])


def test_generate_command_writes_wavs_sidecars_and_plots(plain, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(
        'calm piano\n# a comment\n{"prompt": "fast drums", "attributes": {"tempo": 150}}\n'
    )
    out = tmp_path / "out"
    argv = ["--pipeline", str(plain), "--prompts", str(prompts), "--seconds", "3",
            "--num-samples", "2", "--seed", "5", "--out", str(out), "--plot",
            "--temperature", "0.9,fine=0.3", "--top-k", "coarse=4"]  # fmt: skip
    assert main(argv) == 0
    wavs = sorted(out.glob("*.wav"))
    assert len(wavs) == 4 and len(list(out.glob("*.png"))) == 4
    data, rate = sf.read(wavs[0])
    assert rate == 1600 and len(data) == 3 * 1600 and np.isfinite(data).all()
    side = json.loads(wavs[2].with_suffix(".json").read_text())
    assert side["prompt"] == "fast drums" and side["attributes"] == {"tempo": 150}
    assert side["seed"] == 5 and side["seconds"] == 3.0 and side["sample"] == 0
    assert side["sampling"]["fine"]["temperature"] == 0.3
    assert side["sampling"]["semantic"]["temperature"] == 0.9
    assert side["sampling"]["coarse"]["top_k"] == 4
    assert not list(out.glob(".*"))  # no temp files left behind


def test_command_line_errors(plain, tmp_path, capsys):
    assert main(["--pipeline", str(plain), "--out", str(tmp_path)]) == 2
    assert "exactly one of" in capsys.readouterr().err
    assert main(["x", "--pipeline", str(plain), "--out", str(tmp_path), "--top-p", "bass=0.9"]) == 2
    assert "unknown stage 'bass'" in capsys.readouterr().err
    assert parse_stage_values("0.5", float, "t", ["semantic", "fine"]) == {
        "semantic": 0.5,
        "fine": 0.5,
    }
    argv = ["x", "--pipeline", str(plain), "--out", str(tmp_path), "--bpm", "120"]
    assert main(argv) == 2
    assert "not trained with a beat clock" in capsys.readouterr().err
    story = tmp_path / "story.txt"
    story.write_text("0 calm piano\n15 drums join in\n")
    assert read_story(str(story)) == [(0.0, "calm piano"), (15.0, "drums join in")]
    story.write_text("5 late start\n")
    with pytest.raises(ValueError, match="time 0"):
        read_story(str(story))


def test_generate_command_writes_every_candidates_score_when_reranking(conditioned, tmp_path):
    out = tmp_path / "out"
    argv = ["a flute melody", "--pipeline", str(conditioned), "--seconds", "2",
            "--rerank", "3", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    side = json.loads(next(out.glob("*.json")).read_text())
    assert side["rerank"] == 3 and len(side["candidate_scores"]) == 3
    assert side["mulan_score"] == max(side["candidate_scores"])
    assert side["bpm"] is None  # no beat clock in this pipeline
