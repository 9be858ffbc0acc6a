"""The beat clock: tracking, token shards, the beat-conditioned semantic layout, its training
(the LM follows the clock, the tempo predictor learns the tempo) and generation."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from generation_helpers import save_checkpoint, tiny_spec, tiny_stage, with_streams
from test_token_stages import trainer
from token_shards import write_synthetic_shards

from musiclm.callbacks.generation_preview import GenerationPreview
from musiclm.datamodules.token_spec import BeatSpec, TokenSpec
from musiclm.datamodules.tokens import TokenDataModule
from musiclm.models.tempo import TempoPredictor, tempo_loss
from musiclm.stages.semantic import SemanticStage
from musiclm.stages.token_layout import BOS, NULL, PAD, TokenLayout
from musiclm.stages.token_lm_stage import load_network, load_tempo
from musiclm.tokenizers.beats import BeatTracker, metadata_bpm

BEATS = BeatSpec(phase_bins=8, tempo_bins=6, min_bpm=60.0, max_bpm=240.0, tempo_input_dim=6)


def beat_spec_tokens(**kw) -> TokenSpec:
    """``tiny_spec`` with the beat clock ``BEATS``, changed by ``kw``."""
    return with_streams(tiny_spec(), beats=dataclasses.replace(BEATS, **kw))


def click_track(bpm: float, seconds: float, sr: int = 16000, offset: float = 0.1) -> np.ndarray:
    wav = np.zeros(int(seconds * sr), dtype=np.float32)
    burst = np.random.default_rng(0).normal(0, 0.5, int(0.02 * sr)) * np.hanning(int(0.02 * sr))
    for t in np.arange(offset, seconds - 0.03, 60.0 / bpm):
        at = int(t * sr)
        wav[at : at + burst.size] += burst
    return wav


def test_tempo_bins_and_a_steady_clock():
    spec = BeatSpec()
    for i in range(spec.tempo_bins):
        assert spec.tempo_bin(spec.bin_bpm(i)) == i
    assert spec.tempo_bin(10.0) == 0 and spec.tempo_bin(1000.0) == spec.tempo_bins - 1
    ratio = spec.bin_bpm(1) / spec.bin_bpm(0)
    assert ratio == pytest.approx((spec.max_bpm / spec.min_bpm) ** (1 / spec.tempo_bins))
    clock = spec.clock(120.0, 250, 25.0)  # 2 beats a second for 10 s
    assert clock[0] == 0 and clock.max() == spec.phase_bins - 1
    wraps = int((np.diff(clock) < 0).sum())
    assert wraps == 19  # 20 beats started in 10 s, the first at frame 0
    # a half-beat start shifts the phase by half the bins
    assert spec.clock(120.0, 1, 25.0, start=0.5)[0] == spec.phase_bins // 2
    with pytest.raises(ValueError, match="tempo bin"):
        spec.bin_bpm(spec.tempo_bins)


@pytest.mark.parametrize("known", [None, 100.0])
def test_tracker_finds_tempo_and_phase_of_a_click_track(known):
    spec = BeatSpec()
    tracker = BeatTracker(spec, sample_rate=16000, frame_rate=25.0)
    wav = click_track(100.0, 8.0)
    frames = 200
    phase, tempo = tracker.track(wav, frames, known)
    assert phase.shape == (frames,)
    assert abs(spec.bin_bpm(tempo) / 100.0 - 1) < 0.06
    # each click sits at the start of its beat (phase near 0, circularly)
    clicks = (np.arange(0.1, 7.9, 0.6) * 25).round().astype(int)
    dist = np.minimum(phase[clicks], spec.phase_bins - phase[clicks])
    assert np.median(dist) <= 2, phase[clicks]
    silent, none = tracker.track(np.zeros(16000 * 4, dtype=np.float32), 100)
    assert none == -1 and (silent == -1).all()


def test_metadata_tempo():
    assert metadata_bpm({"bpm": 96}) == 96.0
    assert metadata_bpm({"attributes": {"bpm": 120.5}}) == 120.5
    assert metadata_bpm({"attributes": {"bpm": "fast"}}) is None
    assert metadata_bpm({}) is None


def test_token_batches_carry_the_clock_aligned_with_the_crop(tmp_path):
    spec = beat_spec_tokens()
    write_synthetic_shards(tmp_path / "train", sizes=[4], seconds=3.0, spec=spec)
    write_synthetic_shards(tmp_path / "val", sizes=[2], seconds=3.0, spec=spec, seed=1)
    dm = TokenDataModule(str(tmp_path / "train"), str(tmp_path / "val"), seconds=2.0,
                         batch_size=4, num_workers=0, batches_per_epoch=2)  # fmt: skip
    dm.setup("fit")
    assert dm.spec.streams["beats"] == BeatSpec(8, 6, 60.0, 240.0, tempo_input_dim=6)
    batch = next(iter(dm.train_dataloader()))
    assert batch["beat"].shape == batch["semantic"].shape
    # the synthetic semantic token is the phase id: a misaligned crop would break it
    assert torch.equal(batch["semantic"], batch["beat"] % spec.semantic_vocab)
    assert batch["tempo"].shape == (4,) and batch["mulan_embedding"].shape == (4, 6)


def test_layout_puts_the_clock_on_the_targets_clock():
    spec = beat_spec_tokens()
    layout = TokenLayout(stage="semantic", spec=spec, beats=True, frame_conditioning=True,
                         aligned_positions=True)  # fmt: skip
    g = torch.Generator().manual_seed(0)
    beat = torch.randint(0, spec.streams["beats"].phase_bins, (2, 10), generator=g)
    beat[1, -1] = -1  # no pulse there: PAD
    streams = {
        "mulan": torch.randint(
            0, spec.streams["mulan"].codebook, (2, spec.streams["mulan"].levels), generator=g
        ),
        "beat": beat,
        "semantic": torch.randint(0, spec.semantic_vocab, (2, 10), generator=g),
    }
    seq = layout.sequence(streams)
    untimed = 1 + spec.streams["mulan"].levels
    assert seq.prefix_len == untimed + 10
    clock = seq.tokens[:, untimed : seq.prefix_len]
    assert torch.equal(clock[0], beat[0] + layout.offsets()["beat"])
    assert clock[1, -1] == PAD
    # the input predicting target j embeds the clock of frame j
    inputs = seq.tokens[:, :-1]
    ids = layout.frame_ids(inputs, seq.prefix_len)
    for j in range(10):
        expected = torch.where(clock[:, j] == PAD, -1, clock[:, j])
        assert torch.equal(ids[:, seq.prefix_len - 1 + j, 0], expected)
    # frame t of the clock shares its rotary position with target t
    pos = layout.positions(seq.prefix_len, seq.tokens.shape[1])
    assert torch.equal(pos[untimed : seq.prefix_len], pos[seq.prefix_len :])
    # guidance drops the text, not the clock
    dropped = layout.drop_conditioning(seq.tokens, torch.tensor([True, False]))
    assert (dropped[0, 1:untimed] == NULL).all() and dropped[0, 0] == BOS
    assert torch.equal(dropped[:, untimed:], seq.tokens[:, untimed:])
    with pytest.raises(ValueError, match="--beats"):
        TokenLayout(stage="semantic", spec=tiny_spec(), beats=True)
    with pytest.raises(ValueError, match="semantic stage"):
        TokenLayout(stage="coarse", spec=spec, beats=True, coarse_levels=2)
    with pytest.raises(KeyError, match="'beat'"):
        layout.sequence({k: v for k, v in streams.items() if k != "beat"})


def test_tempo_predictor_and_its_spread_targets():
    model = TempoPredictor(input_dim=4, bins=10)
    logits = model(torch.randn(3, 4))
    assert logits.shape == (3, 10)
    with pytest.raises(ValueError, match=r"\(B, 4\)"):
        model(torch.randn(3, 5))
    # a near miss costs less than a far one; unlabelled rows are left out
    near = torch.zeros(1, 10)
    near[0, 4] = 5.0
    far = torch.zeros(1, 10)
    far[0, 9] = 5.0
    target = torch.tensor([5])
    assert tempo_loss(near, target) < tempo_loss(far, target)
    both = tempo_loss(torch.cat([near, far]), torch.tensor([5, -1]))
    assert both == pytest.approx(float(tempo_loss(near, target)))


@pytest.fixture(scope="module")
def beat_shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("beat_tokens")
    spec = beat_spec_tokens()
    write_synthetic_shards(root / "train", sizes=[16, 16], seconds=4.0, spec=spec)
    write_synthetic_shards(root / "val", sizes=[8], seconds=4.0, spec=spec, seed=1)
    return root


def test_beat_conditioned_semantic_lm_follows_the_clock_and_learns_the_tempo(beat_shards, tmp_path):
    """In these shards the semantic token is the clock's phase id, at a random tempo: with
    the clock the LM reads each token off its frame's clock; without it, it has to infer the
    tempo from the tokens so far. The tempo predictor learns the tempo from the embedding."""

    def fit(beats: bool, where):
        torch.manual_seed(0)
        model = SemanticStage(dim=32, depth=2, heads=4, warmup_steps=5, lr=3e-3, beats=beats,
                              frame_conditioning=beats, aligned_positions=beats)  # fmt: skip
        dm = TokenDataModule(str(beat_shards / "train"), str(beat_shards / "val"), seconds=3.0,
                             batch_size=8, num_workers=0, batches_per_epoch=20,
                             val_batches=1)  # fmt: skip
        preview = GenerationPreview(every_n_steps=60, max_seconds=3.0, temperature=0.0)
        t = trainer(where, steps=60, callbacks=[preview] if beats else [])
        t.fit(model, dm)
        assert not preview.disabled
        return t

    with_clock = fit(True, tmp_path / "clock")
    without = fit(False, tmp_path / "plain")
    acc = with_clock.callback_metrics["val/accuracy_level0"]
    assert acc > 0.9, acc
    assert acc > without.callback_metrics["val/accuracy_level0"] + 0.1
    assert with_clock.callback_metrics["val/tempo_accuracy"] > 0.5
    assert "val/tempo_accuracy" not in without.callback_metrics
    # the in-training preview samples along the example's clock, and so follows it
    assert with_clock.callback_metrics["preview_val/semantic_token_match"] > 0.9

    path = with_clock.checkpoint_callback.best_model_path
    net, layout = load_network(path)
    assert layout.beats and layout.spec.streams["beats"].phase_bins == 8
    tempo = load_tempo(path, layout)
    assert isinstance(tempo, TempoPredictor) and not tempo.training


def test_generation_follows_a_given_or_predicted_tempo(tmp_path):
    import yaml
    from generation_helpers import TINY_DAC, write_mulan, write_semantic_tokenizer

    from musiclm.generation.pipeline import Pipeline

    mulan = write_mulan(tmp_path)  # MuLan embeddings of 32 dimensions
    spec = beat_spec_tokens(tempo_input_dim=32)
    plain = with_streams(spec, beats=None)
    kw = {"cond_dropout": 0.1}
    sem = tiny_stage("semantic", spec, beats=True, frame_conditioning=True, **kw)
    stages = {"semantic": sem, "coarse": tiny_stage("coarse", plain, seed=1, **kw),
              "fine": tiny_stage("fine", plain, seed=2, **kw)}  # fmt: skip
    entries = {}
    for name, module in stages.items():
        save_checkpoint(module, tmp_path / f"{name}.ckpt", seconds=2.0)
        entries[name] = {"checkpoint": f"{name}.ckpt"}
    data = {"codec": {"name": "dac", "args": {"config": TINY_DAC}}, "stages": entries,
            "mulan": mulan, "semantic_tokenizer": write_semantic_tokenizer(tmp_path)}  # fmt: skip
    (tmp_path / "PIPELINE.yaml").write_text(yaml.safe_dump(data))
    pipe = Pipeline.from_file(str(tmp_path / "PIPELINE.yaml"))
    assert pipe.stages["semantic"].tempo is not None

    prompts = [[(0.0, "a fast piano")], [(0.0, "a slow violin")]]
    slow = pipe.generate(prompts, seconds=3.0, seed=0, bpm=[60.0, 60.0])
    fast = pipe.generate(prompts, seconds=3.0, seed=0, bpm=[200.0, 200.0])
    assert slow.bpm == [60.0, 60.0] and fast.bpm == [200.0, 200.0]
    # the clock reaches the LM: same seed, different tempo, different tokens
    assert not torch.equal(slow.codes["semantic"], fast.codes["semantic"])
    clock, bpms = pipe._beat_clock(pipe.stages["semantic"], ["x"], 1.0, 150.0, None)
    frames = pipe.stages["semantic"].frames(1.0)  # the clock covers the request's seconds
    assert bpms == [150.0] and clock.shape[-1] == frames
    assert (
        clock[0].tolist() == spec.streams["beats"].clock(150.0, frames, spec.semantic_rate).tolist()
    )

    # without a tempo: the predictor's most likely bin, from the MuLan text embedding
    predicted = pipe.generate(prompts, seconds=2.0, seed=0)
    emb = pipe.conditioner.embed_text([p[0][1] for p in prompts]).float()
    bins = pipe.stages["semantic"].tempo(emb).argmax(-1).tolist()
    assert predicted.bpm == [spec.streams["beats"].bin_bpm(b) for b in bins]
    # a continued clip keeps its own beat: a 60 BPM click track at the codec's 1.6 kHz
    clip = torch.from_numpy(click_track(60.0, 6.0, sr=1600, offset=0.3))
    continued = pipe.generate(prompts, seconds=2.0, seed=0, continue_audio=(clip, 1600))
    assert continued.bpm == [pytest.approx(60.0, rel=0.05)] * 2
    # the command line: --bpm reaches the clock and the sidecar says which tempo was used
    import json

    from musiclm.commands.generate import main

    out = tmp_path / "out"
    argv = ["a fast piano", "--pipeline", str(tmp_path / "PIPELINE.yaml"), "--seconds", "1",
            "--bpm", "90", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    assert json.loads(next(out.glob("*.json")).read_text())["bpm"] == 90.0
    with pytest.raises(ValueError, match="2 prompts"):
        pipe.generate(prompts, seconds=2.0, bpm=[60.0])
    with pytest.raises(ValueError, match="positive"):
        pipe.generate(prompts, seconds=2.0, bpm=-5.0)


def test_a_batch_without_tempo_labels_still_touches_the_predictor():
    stage = tiny_stage("semantic", beat_spec_tokens(), beats=True, frame_conditioning=True)
    batch = {"mulan_embedding": torch.randn(2, 6), "tempo": torch.tensor([-1, -1])}
    loss = stage._tempo_loss(batch, "train")
    loss.backward()
    assert float(loss) == 0.0
    assert all(p.grad is not None for p in stage.tempo.parameters())
