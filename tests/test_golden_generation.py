"""Golden tokens: a tiny random pipeline generates exactly the recorded token ids.

Two pipelines of 2-layer stages (``PIPELINES``): the paper's prefix conditioning, and the
options (beat clock, aligned positions, frame conditioning), both MuLan-conditioned with
conditioning dropout so classifier-free guidance applies. Every case generates longer than
each stage's context (sliding windows) for two prompts, greedily or by sampling with
top-k / top-p and CFG. The networks run in float64 (``torch.set_default_dtype`` while the
pipeline is built), so the float kernels of another CPU (Intel AMX, AMD AVX-512) change no
token; greedy cases also record their smallest top-1 / top-2 logit margin, and a margin
below ``MIN_MARGIN`` would make the case too fragile to keep. MuLan tokens are fixed per
prompt (no MuLan tower): the test is about the LM stages and decoding.

Re-record (after a deliberate change of what is generated, never to make a refactor pass):

    MUSICLM_RECORD_GOLDEN=1 HF_HUB_OFFLINE=1 .venv/bin/pytest -q tests/test_golden_generation.py
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import yaml
from generation_helpers import TINY_DAC, save_checkpoint, tiny_spec, tiny_stage, with_streams

import musiclm.generation.decode as decode
from musiclm.datamodules.token_spec import BeatSpec
from musiclm.generation.pipeline import Pipeline

GOLDEN = Path(__file__).parent / "golden" / "generation.json"
RECORD = os.environ.get("MUSICLM_RECORD_GOLDEN") == "1"
MIN_MARGIN = 1e-6
PROMPTS = [[(0.0, "a calm piano")], [(0.0, "fast drums"), (2.0, "a slow violin")]]
BEATS = BeatSpec(phase_bins=8, tempo_bins=6, min_bpm=60.0, max_bpm=240.0)

# stage -> layout options of each pipeline
PIPELINES = {
    "paper": {"semantic": {}, "coarse": {}, "fine": {}},
    "options": {
        "semantic": {"beats": True, "frame_conditioning": True, "aligned_positions": True},
        "coarse": {"frame_conditioning": True, "aligned_positions": True},
        "fine": {"aligned_positions": True, "fine_sees_mulan": True},
    },
}
# name -> (pipeline, sampling per stage, seed)
CASES = {
    "paper-greedy": ("paper", {"temperature": 0.0}, 0),
    "paper-sampled-cfg": ("paper", {"temperature": 1.0, "top_k": 6, "cfg_scale": 3.0}, 1),
    "options-greedy-cfg": ("options", {"temperature": 0.0, "cfg_scale": 2.0}, 2),
    "options-sampled": ("options", {"temperature": 0.9, "top_p": 0.9}, 3),
}


def build_pipeline(tmp: Path, options: dict[str, dict]) -> Pipeline:
    """Three float64 tiny stages (2 / 1 / 1 s contexts) behind a PIPELINE.yaml."""
    spec = tiny_spec(mulan_levels=3, num_quantizers=4)
    beat_spec = with_streams(spec, beats=BEATS)
    stages = {}
    for seed, (name, seconds) in enumerate(zip(options, (2.0, 1.0, 1.0), strict=True)):
        layout = options[name]
        module = tiny_stage(name, beat_spec if layout.get("beats") else spec, seed=seed, **layout)
        save_checkpoint(module, tmp / f"{name}.ckpt", seconds=seconds)
        stages[name] = {"checkpoint": f"{name}.ckpt"}
    data = {"codec": {"name": "dac", "args": {"config": TINY_DAC}}, "stages": stages}
    (tmp / "PIPELINE.yaml").write_text(yaml.safe_dump(data))
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        pipe = Pipeline.from_file(str(tmp / "PIPELINE.yaml"))
    finally:
        torch.set_default_dtype(default)
    for stage in pipe.stages.values():
        assert next(stage.net.parameters()).dtype == torch.float64
    pipe.mulan_tokens = fixed_mulan_tokens
    return pipe


def fixed_mulan_tokens(texts: list[str]) -> dict[str, torch.Tensor]:
    """Three MuLan token ids of 8 per text, from the text's characters."""
    return {t: torch.tensor([sum(map(ord, t)) % 8, len(t) % 8, ord(t[0]) % 8]) for t in texts}


def run_case(pipe: Pipeline, sampling: dict, seed: int, monkeypatch) -> dict:
    margins: list[float] = []
    real_sample = decode.sample

    def sample(logits, config, generator=None):
        if config.temperature == 0:
            top = torch.topk(logits, 2, dim=-1).values
            margins.append(float((top[:, 0] - top[:, 1]).min()))
        return real_sample(logits, config, generator)

    monkeypatch.setattr(decode, "sample", sample)
    for name, stage in pipe.stages.items():
        guided = stage.layout.uses_mulan  # CFG where the stage has MuLan tokens to drop
        pipe.set_sampling(name, **{k: v for k, v in sampling.items() if guided or k != "cfg_scale"})
    bpm = 120.0 if pipe.stages["semantic"].layout.beats else None
    out = pipe.generate(PROMPTS, seconds=4.0, seed=seed, bpm=bpm)
    assert out.codes["semantic"].shape == (2, 20) and out.codes["acoustic"].shape == (2, 4, 40)
    return {
        "semantic": out.codes["semantic"].tolist(),
        "acoustic": out.codes["acoustic"].tolist(),
        "min_margin": min(margins) if margins else None,
    }


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory):
    return {
        name: build_pipeline(tmp_path_factory.mktemp(name), options)
        for name, options in PIPELINES.items()
    }


@pytest.fixture(scope="module")
def golden():
    if RECORD:
        recorded: dict = {}
        yield recorded
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(recorded, indent=1, sort_keys=True) + "\n")
        return
    yield json.loads(GOLDEN.read_text())


@pytest.mark.parametrize("case", CASES)
def test_generation_matches_the_recorded_tokens(case, pipelines, golden, monkeypatch):
    pipeline, sampling, seed = CASES[case]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        got = run_case(pipelines[pipeline], sampling, seed, monkeypatch)
    finally:
        torch.set_num_threads(threads)
    if got["min_margin"] is not None:
        assert got["min_margin"] > MIN_MARGIN, f"{case}: a near-tie, pick another seed"
    if RECORD:
        golden[case] = got
        return
    want = golden[case]
    assert got["semantic"] == want["semantic"], f"{case}: semantic tokens differ"
    assert got["acoustic"] == want["acoustic"], f"{case}: acoustic tokens differ"
