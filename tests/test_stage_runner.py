"""The stage runner: each loaded stage declares its streams and builds its own prompt."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import yaml
from test_golden_generation import PIPELINES, build_pipeline, fixed_mulan_tokens

from musiclm.conditioning.request import Streams
from musiclm.generation.sampling import SamplingConfig


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    return build_pipeline(tmp_path_factory.mktemp("options"), PIPELINES["options"])


def test_stages_declare_what_they_need_and_produce_in_pipeline_order(pipe):
    made = {"mulan", "beat"}  # the request's streams (no melody in this pipeline)
    for stage in pipe.stages.values():
        assert set(stage.needs) <= made, (stage.name, stage.needs, made)
        made.add(stage.produces)
    assert [s.produces for s in pipe.stages.values()] == ["semantic", "coarse", "fine"]
    assert "beat" in pipe.stages["semantic"].needs
    assert "mulan" in pipe.stages["fine"].needs  # fine_sees_mulan


def test_coarse_prompt_is_its_semantic_window_after_the_text(pipe):
    coarse = pipe.stages["coarse"]
    rows = [[(0.0, "a calm piano")], [(0.0, "fast drums"), (0.5, "a slow violin")]]
    texts = {text for s in rows for _, text in s}
    streams = Streams(rows, fixed_mulan_tokens(sorted(texts)), None, "cpu")
    semantic = torch.randint(0, coarse.layout.spec.semantic_vocab, (2, 20))
    prompt = coarse.conditioning(streams, {"semantic": semantic})
    ratio = coarse.layout.spec.semantic_rate / coarse.rate
    f0, f1, new = 4, 12, 10
    s0, s1 = math.floor(f0 * ratio), math.ceil(f1 * ratio)
    mulan = torch.stack([fixed_mulan_tokens([t])[t] for t in ("a calm piano", "a slow violin")])
    by_hand = coarse.layout.prefix({"mulan": mulan, "semantic": semantic[:, s0:s1]})
    torch.testing.assert_close(prompt(f0, f1, new), by_hand)


def test_a_stage_missing_its_upstream_stream_says_so(pipe):
    fine = pipe.stages["fine"]
    streams = Streams([[(0.0, "x")]], fixed_mulan_tokens(["x"]), None, "cpu")
    gen = torch.Generator().manual_seed(0)
    fine.sampling = SamplingConfig(temperature=0.0)
    with pytest.raises(ValueError, match="coarse"):
        fine.run(streams, {}, 1.0, None, gen)


def test_stages_run_in_read_order_whatever_order_the_file_lists(pipe):
    assert list(pipe.spec.stages) == ["coarse", "fine", "semantic"]  # safe_dump sorts keys
    assert list(pipe.stages) == ["semantic", "coarse", "fine"]


def test_generation_preview_and_memorization_build_prompts_with_one_function(pipe, monkeypatch):
    """The preview callback and the memorization study reach the stage code generation
    uses: every prompt goes through ``stage_runner.window_prompt``."""
    import musiclm.generation.stage_runner as runner
    from musiclm.evaluation.memorization import semantic_lm_continue_fn

    calls: list[str] = []
    real = runner.window_prompt

    def counted(layout, streams, kept=None):
        calls.append(layout.stage)
        return real(layout, streams, kept)

    monkeypatch.setattr(runner, "window_prompt", counted)
    pipe.set_sampling("semantic", temperature=0.0)
    pipe.generate([[(0.0, "a calm piano")]], seconds=1.0, seed=0, bpm=120.0)
    assert set(calls) == {"semantic", "coarse", "fine"}
    calls.clear()
    coarse = pipe.stages["coarse"]
    example = {
        "mulan": torch.tensor([[1, 2, 3]]),
        "semantic": torch.randint(0, 16, (1, 5)),
        "acoustic": torch.randint(0, 8, (1, 4, 10)),
    }
    greedy = SamplingConfig(temperature=0.0)
    codes = runner.sample_example(coarse.net, coarse.layout, example, greedy, None)
    assert codes.shape == (1, 2, 10) and calls == ["coarse"]
    calls.clear()
    sem_ckpt = pipe.spec.stages["semantic"].checkpoint
    cont = semantic_lm_continue_fn(sem_ckpt)
    beat = np.zeros(12, dtype=np.int64)
    out = cont(np.array([1, 2, 3]), {"mulan": np.array([1, 2, 3]), "beat": beat}, 4)
    assert out.shape == (4,) and calls == ["semantic"]


def test_a_stage_reading_a_stream_no_stage_makes_is_refused(tmp_path):
    from generation_helpers import write_pipeline

    from musiclm.generation.pipeline_file import PipelineFileError, load_pipeline_file

    path = write_pipeline(tmp_path)
    data = yaml.safe_load(path.read_text())
    data["stages"].pop("semantic")
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(PipelineFileError, match="missing key 'stages.semantic'"):
        load_pipeline_file(path)
    data["stages"] = {"semantic": data["stages"].get("semantic", {"checkpoint": "semantic.ckpt"})}
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(PipelineFileError, match="no stage makes codec tokens"):
        load_pipeline_file(path)


def test_stages_reading_each_others_streams_must_share_their_tokens(tmp_path):
    from generation_helpers import save_checkpoint, tiny_spec, tiny_stage

    from musiclm.generation.pipeline import Pipeline
    from musiclm.generation.pipeline_file import PipelineFileError

    spec = tiny_spec()
    other = type(spec)(**{**spec.to_dict(), "semantic_vocab": 32})
    save_checkpoint(tiny_stage("semantic", spec), tmp_path / "semantic.ckpt", seconds=2.0)
    save_checkpoint(tiny_stage("coarse", other), tmp_path / "coarse.ckpt", seconds=1.0)
    save_checkpoint(tiny_stage("fine", spec, coarse_levels=3), tmp_path / "fine.ckpt", seconds=1.0)
    stages = {n: {"checkpoint": f"{n}.ckpt"} for n in ("semantic", "coarse", "fine")}
    data = {"codec": {"name": "dac", "args": {"config": {}}}, "stages": stages}
    path = tmp_path / "PIPELINE.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(PipelineFileError, match="stages semantic and coarse .* semantic_vocab"):
        Pipeline.from_file(str(path))
    save_checkpoint(tiny_stage("coarse", spec), tmp_path / "coarse.ckpt", seconds=1.0)
    with pytest.raises(PipelineFileError, match="fine stage expects 3 coarse levels"):
        Pipeline.from_file(str(path))


def test_each_stream_prepares_the_request_once_for_every_stage(pipe):
    """MuLan tokens are read by all three stages but made once; the beat clock by the
    semantic stage; the upstream streams prepare nothing (earlier stages make them)."""
    from musiclm.conditioning.request import GenerationRequest
    from musiclm.generation.stage_runner import prepare_streams, request_streams

    asked: list[list[str]] = []

    class Conditioners:
        def mulan_tokens(self, texts):
            asked.append(texts)
            return fixed_mulan_tokens(sorted(set(texts)))

    assert [s.name for s, _ in request_streams(pipe.stages.values())] == ["mulan", "beat"]
    rows = [[(0.0, "a calm piano")], [(0.0, "fast drums"), (0.5, "a slow violin")]]
    request = GenerationRequest(rows, 2.0, "cpu", Conditioners(), "p", bpm=[60.0, 120.0])
    streams = prepare_streams(pipe.stages.values(), request)
    assert asked == [["a calm piano", "fast drums", "a slow violin"]]
    assert set(streams.prepared) == {"mulan", "beat", "bpm"}
    assert streams.prepared["bpm"] == [60.0, 120.0]
    assert streams.prepared["beat"].shape == (2, pipe.stages["semantic"].frames(2.0))
    with pytest.raises(ValueError, match="p: a melody was given but no stage"):
        melody = GenerationRequest(rows, 2.0, "cpu", Conditioners(), "p", melody_audio=(1, 2))
        prepare_streams(pipe.stages.values(), melody)
