"""The delay stage: its sequence, cached decoding against the full forward pass, learning a
rule across levels, checkpoints and a `semantic, delay` pipeline through `musiclm generate`."""

from __future__ import annotations

import inspect
import json

import lightning as L
import pytest
import soundfile as sf
import torch
import yaml
from generation_helpers import TINY_DAC, save_checkpoint, tiny_spec, tiny_stage, with_streams
from jsonargparse import ArgumentParser

from musiclm.commands.generate import main as generate_main
from musiclm.datamodules.token_spec import BeatSpec, MulanSpec, TokenSpec
from musiclm.generation.delay_decode import generate_delay_window, sliding_delay_generate
from musiclm.generation.pipeline import Pipeline
from musiclm.generation.sampling import SamplingConfig
from musiclm.stages.delay import CHECKPOINT_EXTRAS, DelayStage
from musiclm.stages.delay_layout import DelayLayout, delay_logits
from musiclm.stages.token_layout import IGNORE, NULL
from musiclm.stages.token_lm_stage import TokenLMStage, load_network


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models on a shared 2-core machine: one thread avoids waiting on a busy sibling."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_delay(spec: TokenSpec | None = None, *, seed: int = 0, **kw) -> DelayStage:
    torch.manual_seed(seed)
    args = {"dim": 32, "depth": 2, "heads": 4, "cond_dropout": 0.1} | kw
    return DelayStage(spec=(spec or tiny_spec()).to_dict(), **args).eval()


def streams(spec: TokenSpec, batch: int, frames: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    n_s = round(frames * spec.semantic_rate / spec.acoustic_rate)
    return {
        "mulan": torch.randint(
            0, spec.streams["mulan"].codebook, (batch, spec.streams["mulan"].levels), generator=g
        ),
        "semantic": torch.randint(0, spec.semantic_vocab, (batch, n_s), generator=g),
        "acoustic": torch.randint(
            0, spec.codebook_size, (batch, spec.num_quantizers, frames), generator=g
        ),
    }


def test_sequence_sums_a_steps_levels_and_ignores_special_slots():
    spec = tiny_spec(mulan_levels=3, num_quantizers=4)
    layout = DelayLayout(spec=spec)
    batch = streams(spec, 2, 6)
    batch["acoustic"][1, :, 5:] = -1  # padding at the end of the second clip
    seq = layout.sequence(batch)
    p, q, k = seq.prefix_len, 4, spec.codebook_size
    assert p == 4 and seq.ids.shape == (2, p + 6 + q - 1, q + 1)
    assert seq.labels.shape == (2, 6 + q - 1, q)
    steps = seq.ids[:, p:, :q]
    acoustic = batch["acoustic"]
    for level in range(q):
        # level q of frame f sits at step f + q, its label is predicted from input p - 1 + f + q
        offset = layout.acoustic_offset + level * (k + 1)
        assert steps[0, level : level + 6, level].tolist() == (acoustic[0, level] + offset).tolist()
        assert (steps[0, :level, level] == offset + layout.special).all()
        assert seq.labels[0, level : level + 6, level].tolist() == acoustic[0, level].tolist()
        assert (seq.labels[:, :level, level] == IGNORE).all()
    assert (seq.labels[1, 5 + torch.arange(q), torch.arange(q)] == IGNORE).all()
    # the semantic token under frame s (2 codec frames per semantic frame) at input p - 1 + s
    sem = seq.ids[0, p - 1 : p - 1 + 6, -1] - layout.semantic_offset
    assert sem.tolist() == batch["semantic"][0, [0, 0, 1, 1, 2, 2]].tolist()
    assert seq.ids.max() < layout.num_tokens
    dropped = layout.drop_conditioning(seq.ids, torch.tensor([True, False]))
    assert (dropped[0, 1:4, 0] == NULL).all() and torch.equal(dropped[1], seq.ids[1])
    assert torch.equal(dropped[0, :, -1], seq.ids[0, :, -1])  # semantic tokens stay
    # guide_semantic: guidance's unconditional rows lose the semantic tokens too
    guided = DelayLayout(spec=spec, guide_semantic=True).drop_conditioning(
        seq.ids, torch.tensor([True, False])
    )
    assert (guided[0, 1:4, 0] == NULL).all() and (guided[0, :, -1] == -1).all()
    assert torch.equal(guided[0, :, :-1], dropped[0, :, :-1]) and torch.equal(guided[1], seq.ids[1])


def test_training_forward_equals_generation_logits_at_every_step():
    """The sequence training builds from a clip is the one decoding builds as it goes."""
    torch.set_default_dtype(torch.float64)
    try:
        module = tiny_delay(tiny_spec(num_quantizers=3))
    finally:
        torch.set_default_dtype(torch.float32)
    layout, net = module.layout, module.net
    batch = streams(layout.spec, 2, 7, seed=1)
    prompt = layout.prompt(batch, layout.pattern.steps(7, 3))
    seen: list[torch.Tensor] = []
    greedy = SamplingConfig(temperature=0.0)
    codes = generate_delay_window(
        net, layout, prompt, 7, sampling=greedy, on_step=lambda raw, s: seen.append(raw.clone())
    )
    seq = layout.sequence({**batch, "acoustic": codes})
    with torch.no_grad():
        full = delay_logits(net, layout, seq.ids, seq.prefix_len)
    torch.testing.assert_close(torch.stack(seen, 1), full)
    assert torch.equal(full.argmax(-1)[seq.labels != IGNORE], seq.labels[seq.labels != IGNORE])


@pytest.mark.parametrize("pattern", ["delay", "parallel"])
@pytest.mark.parametrize(
    "sampling",
    [
        {"temperature": 0.0},
        {"temperature": 1.0, "top_k": 5, "cfg_scale": 3.0},
        {"temperature": 0.0, "cfg_scale": 2.0},
    ],
    ids=["greedy", "sampled-cfg", "greedy-cfg"],
)
@pytest.mark.parametrize("guide_semantic", [False, True], ids=["guide-mulan", "guide-semantic"])
def test_cached_decoding_equals_the_full_forward_at_every_step(pattern, sampling, guide_semantic):
    """Over sliding windows (each window after the first keeps frames of the last), with
    classifier-free guidance's stacked rows; float64 so no tie flips a token."""
    torch.set_default_dtype(torch.float64)
    try:
        module = tiny_delay(
            tiny_spec(num_quantizers=4), interleaving=pattern, guide_semantic=guide_semantic
        )
    finally:
        torch.set_default_dtype(torch.float32)
    layout, net = module.layout, module.net
    spec = layout.spec
    semantic = torch.randint(0, spec.semantic_vocab, (2, 12), generator=torch.Generator())
    mulan = torch.tensor([[1, 2, 3], [4, 5, 6]])

    def conditioning(f0: int, f1: int, new: int):
        steps = layout.pattern.steps(f1 - f0, layout.num_levels)
        window = {"mulan": mulan, "step_semantic": layout.step_semantic(semantic, steps, f0)}
        from musiclm.stages.delay_layout import DelayPrompt

        return DelayPrompt(layout.prefix(window), window["step_semantic"])

    runs = []
    for use_cache in (True, False):
        logits: list[torch.Tensor] = []
        codes = sliding_delay_generate(
            net,
            layout=layout,
            conditioning=conditioning,
            total_frames=23,
            context_frames=10,
            prefix_frames=4,
            sampling=SamplingConfig(**sampling),
            generator=torch.Generator().manual_seed(3),
            batch=2,
            use_cache=use_cache,
            on_step=lambda raw, s, out=logits: out.append(raw.clone()),
        )
        runs.append((codes, logits))
    (cached, cached_logits), (full, full_logits) = runs
    assert cached.shape == (2, 4, 23) and torch.equal(cached, full)
    rows = 4 if sampling.get("cfg_scale") else 2
    assert len(cached_logits) == len(full_logits) and cached_logits[0].shape[0] == rows
    for a, b in zip(cached_logits, full_logits, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    assert 0 <= int(cached.min()) and int(cached.max()) < spec.codebook_size


def test_a_tiny_delay_lm_learns_a_rule_across_levels():
    """Level 1 copies level 0 of the same frame (seen one step earlier with the delay
    pattern); level 0 is random. A few hundred CPU steps teach the copy."""
    spec = TokenSpec(
        semantic_vocab=4, semantic_rate=5.0, codebook_size=16, num_quantizers=2,
        acoustic_rate=10.0, streams={"mulan": MulanSpec(levels=1, codebook=2)},
    )  # fmt: skip
    torch.manual_seed(0)
    module = DelayStage(spec=spec.to_dict(), dim=64, depth=2, heads=4, semantic=False)
    module.train()
    opt = torch.optim.AdamW(module.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)

    def batch(n: int) -> dict[str, torch.Tensor]:
        level0 = torch.randint(0, 16, (n, 1, 20), generator=g)
        return {
            "mulan": torch.zeros(n, 1, dtype=torch.long),
            "semantic": torch.zeros(n, 10, dtype=torch.long),
            "acoustic": torch.cat([level0, level0], dim=1),
        }

    for _ in range(300):
        loss, _, _ = module._loss(batch(16), train=True)
        opt.zero_grad()
        loss.backward()
        opt.step()
    module.eval()
    with torch.no_grad():
        _, logits, seq = module._loss(batch(32), train=False)
    acc = module._level_accuracy(logits, seq)
    assert acc["accuracy_level1"] > 0.95, acc
    assert acc["accuracy_level0"] < 0.3, acc  # random: nothing to learn
    layout = module.layout
    prompt = layout.prompt(batch(4), layout.pattern.steps(20, 2))
    codes = generate_delay_window(
        module.net, layout, prompt, 20, sampling=SamplingConfig(temperature=1.0),
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    assert (codes[:, 1] == codes[:, 0]).float().mean() > 0.95


def test_bad_stage_config_names_the_key():
    with pytest.raises(ValueError, match="interleaving 'flatten'"):
        DelayStage(interleaving="flatten")
    with pytest.raises(ValueError, match="levels"):
        DelayStage(levels=0)
    with pytest.raises(ValueError, match="levels=9 not in 1..4"):
        DelayLayout(spec=tiny_spec(), levels=9)


def write_delay_pipeline(tmp_path, *, semantic: bool = True, cfg: bool = False):
    spec = tiny_spec(mulan_levels=3, num_quantizers=4)
    stages = {}
    if semantic:
        save_checkpoint(tiny_stage("semantic", spec), tmp_path / "semantic.ckpt", seconds=2.0)
        stages["semantic"] = {"checkpoint": "semantic.ckpt", "temperature": 0.0}
    module = tiny_delay(spec, seed=1, semantic=semantic)
    save_checkpoint(module, tmp_path / "delay.ckpt", seconds=1.0)
    stages["delay"] = {"checkpoint": "delay.ckpt", "cfg_scale": 2.0 if cfg else 1.0}
    data = {"codec": {"name": "dac", "args": {"config": TINY_DAC}}, "stages": stages}
    (tmp_path / "PIPELINE.yaml").write_text(yaml.safe_dump(data))  # sorted: delay first
    return tmp_path / "PIPELINE.yaml"


def test_checkpoint_loads_with_weights_only(tmp_path):
    module = tiny_delay(levels=3, interleaving="parallel")
    path = save_checkpoint(module, tmp_path / "delay.ckpt", seconds=1.0)
    torch.load(path, weights_only=True)
    net, layout = load_network(str(path))
    assert isinstance(layout, DelayLayout) and layout == module.layout
    ids = module.layout.sequence(streams(layout.spec, 1, 5)).ids
    with torch.no_grad():
        torch.testing.assert_close(
            delay_logits(net, layout, ids, 4), delay_logits(module.net, layout, ids, 4)
        )
    # Lightning passes every hyper-parameter back, the stage's name and the cascade's fixed
    # layout arguments too
    assert {"stage", "coarse_levels", "target_noise"} <= module.hparams.keys()
    trainer = L.Trainer(logger=False, enable_checkpointing=False, accelerator="cpu")
    trainer.strategy.connect(module)
    trainer.save_checkpoint(tmp_path / "lightning.ckpt")
    reloaded = DelayStage.load_from_checkpoint(tmp_path / "lightning.ckpt", weights_only=True)
    assert reloaded.layout == module.layout and reloaded.hparams == module.hparams


def test_config_schema_is_the_delay_arguments_and_the_shared_ones():
    """LightningCLI reads ``**kwargs`` through the ``super().__init__`` call: the base class's
    arguments with their defaults, but for the cascade's layout arguments."""
    parser = ArgumentParser()
    parser.add_class_arguments(DelayStage, "model")
    defaults = parser.get_defaults().model.as_dict()
    assert defaults == {
        "levels": None,
        "interleaving": "delay",
        "semantic": True,
        "guide_semantic": False,
        "conditioning": None,
        "dim": 1024,
        "depth": 24,
        "heads": 16,
        "ff_mult": 4,
        "dropout": 0.0,
        "cond_dropout": 0.0,
        "lr": 3e-4,
        "weight_decay": 0.01,
        "warmup_steps": 1000,
        "decay_steps": 0,
        "codec": None,
        "semantic_tokenizer": None,
        "mulan": None,
        "spec": None,
        "compile": False,
        "stage": None,
    }
    shared = inspect.signature(TokenLMStage.__init__).parameters.keys() - {"self"}
    assert shared - defaults.keys() == set(CHECKPOINT_EXTRAS) - {"stage"}
    with pytest.raises(TypeError, match="target_noise"):
        DelayStage(target_noise=0.1)


def test_semantic_delay_pipeline_generates_through_the_command(tmp_path, monkeypatch):
    path = write_delay_pipeline(tmp_path, cfg=True)
    pipe = Pipeline.from_file(str(path))
    assert list(pipe.stages) == ["semantic", "delay"]
    assert pipe.stages["delay"].needs == ("mulan", "semantic")
    pipe.mulan_tokens = lambda texts: {t: torch.tensor([1, 2, 3]) for t in texts}
    out = pipe.generate([[(0.0, "a")], [(0.0, "b")]], seconds=2.5, seed=0)  # sliding windows
    assert out.codes["acoustic"].shape == (2, 4, 25) and out.codes["semantic"].shape == (2, 12)
    assert set(out.timings) >= {"semantic", "delay", "codec"}
    # `musiclm generate` unchanged (MuLan tokens fixed: the test is about the stages)
    monkeypatch.setattr(Pipeline, "mulan_tokens", lambda self, texts: pipe.mulan_tokens(texts))
    argv = ["calm piano", "--pipeline", str(path), "--seconds", "2", "--out",
            str(tmp_path / "out"), "--temperature", "delay=0.9"]  # fmt: skip
    assert generate_main(argv) == 0
    wav = next((tmp_path / "out").glob("*.wav"))
    data, rate = sf.read(wav)
    assert len(data) == 2 * rate
    side = json.loads(wav.with_suffix(".json").read_text())
    assert side["sampling"]["delay"]["temperature"] == 0.9


def test_delay_alone_and_continuation(tmp_path):
    path = write_delay_pipeline(tmp_path, semantic=False)
    pipe = Pipeline.from_file(str(path))
    assert list(pipe.stages) == ["delay"]
    pipe.mulan_tokens = lambda texts: {t: torch.tensor([1, 2, 3]) for t in texts}
    first = pipe.generate([[(0.0, "a")]], seconds=1.0, seed=0)
    clip = first.audio[0, 0]
    out = pipe.generate([[(0.0, "a")]], seconds=1.0, seed=1, continue_audio=(clip, 1600))
    assert out.prompt_seconds == pytest.approx(1.0)
    assert out.codes["acoustic"].shape == (1, 4, 20)
    again = pipe.codec.encode(clip.reshape(1, 1, -1))[:, :4, :10]
    assert torch.equal(out.codes["acoustic"][..., :10], again)
    assert "semantic" not in out.codes


def test_a_delay_stage_reading_semantic_tokens_needs_a_semantic_stage(tmp_path):
    path = write_delay_pipeline(tmp_path)
    data = yaml.safe_load(path.read_text())
    data["stages"].pop("semantic")
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ValueError, match="missing key 'stages.semantic'"):
        Pipeline.from_file(str(path))


def test_story_mode_changes_the_delay_windows_text(tmp_path):
    """A window whose new frames start after a story's change reads the next text."""
    from musiclm.generation.stage_runner import Streams

    pipe = Pipeline.from_file(str(write_delay_pipeline(tmp_path)))
    delay = pipe.stages["delay"]
    texts = {"calm": torch.tensor([1, 1, 1]), "drums": torch.tensor([5, 6, 7])}
    streams = Streams([[(0.0, "calm"), (1.5, "drums")]], texts, None, "cpu")
    semantic = torch.randint(0, 16, (1, 20))
    prompt = delay.conditioning(streams, {"semantic": semantic})
    early, late = prompt(0, 10, 0), prompt(10, 20, 15)  # new frames from 0 s and 1.5 s
    mulan = (
        delay.layout.mulan_offset + torch.arange(3) * delay.layout.spec.streams["mulan"].codebook
    )
    assert early.prefix[0, 1:].tolist() == (texts["calm"] + mulan).tolist()
    assert late.prefix[0, 1:].tolist() == (texts["drums"] + mulan).tolist()
    steps = delay.layout.pattern.steps(10, 4)
    assert late.semantic.shape == (1, steps)
    assert late.semantic[0, 0] == semantic[0, 5]  # frame 10 at 10 Hz = semantic frame 5


BEAT_FUSES = ["mulan", {"stream": "semantic", "fuse": "frame_sum"},
              {"stream": "beat", "fuse": "frame_sum"}]  # fmt: skip


def beat_spec(mulan_levels: int = 3) -> TokenSpec:
    spec = tiny_spec(mulan_levels=mulan_levels, num_quantizers=3)
    return with_streams(spec, beats=BeatSpec(4, 3, 60.0, 240.0))


def test_beat_clock_is_summed_at_each_step_and_guided_with_the_semantic_tokens():
    spec = beat_spec()
    layout = DelayLayout(spec=spec, conditioning=BEAT_FUSES)
    assert layout.beats and layout.semantic and layout.columns == 3 + 2
    assert layout.num_tokens == DelayLayout(spec=spec).num_tokens + spec.streams["beats"].phase_bins
    batch = streams(spec, 2, 6)
    batch["beat"] = torch.tensor([[0, 1, 2], [3, -1, 0]])  # -1: no beat found in that frame
    seq = layout.sequence(batch)
    p = seq.prefix_len
    beat = seq.ids[:, p - 1 : p - 1 + 6, layout.column("beat")]
    at = [0, 0, 1, 1, 2, 2]  # 2 codec frames per semantic (and beat clock) frame
    want = torch.where(
        batch["beat"][:, at] < 0, -1, batch["beat"][:, at] + layout.offsets()["beat"]
    )
    assert torch.equal(beat, want)
    sem = seq.ids[0, p - 1 : p - 1 + 6, layout.column("semantic")] - layout.semantic_offset
    assert sem.tolist() == batch["semantic"][0, at].tolist()
    assert seq.ids.max() < layout.num_tokens
    drop = torch.tensor([True, False])
    kept = layout.drop_conditioning(seq.ids, drop)
    assert torch.equal(kept[0, :, 3:], seq.ids[0, :, 3:])  # the clock stays with the MuLan drop
    guided = DelayLayout(spec=spec, conditioning=BEAT_FUSES, guide_semantic=True)
    dropped = guided.drop_conditioning(seq.ids, drop)
    assert (dropped[0, :, 3:] == -1).all() and torch.equal(dropped[1], seq.ids[1])
    with pytest.raises(ValueError, match="no beat clock"):
        DelayLayout(spec=tiny_spec(num_quantizers=3), conditioning=BEAT_FUSES)
    with pytest.raises(ValueError, match="beat stream; none given"):
        layout.inputs(seq.ids[:, :p, 0], batch["semantic"], 3)


def test_beat_clock_training_forward_equals_cached_generation():
    torch.set_default_dtype(torch.float64)
    try:
        module = tiny_delay(beat_spec(), conditioning=BEAT_FUSES, guide_semantic=True)
    finally:
        torch.set_default_dtype(torch.float32)
    layout, net = module.layout, module.net
    batch = streams(layout.spec, 2, 7, seed=1)
    batch["beat"] = torch.tensor([[0, 1, 2, 3], [2, 3, 0, 1]])
    prompt = layout.prompt(batch, layout.pattern.steps(7, 3))
    assert prompt.beat is not None
    seen: list[torch.Tensor] = []
    codes = generate_delay_window(
        net, layout, prompt, 7, sampling=SamplingConfig(temperature=0.0, cfg_scale=2.0),
        on_step=lambda raw, s: seen.append(raw[:2].clone()),
    )  # fmt: skip
    seq = layout.sequence({**batch, "acoustic": codes})
    with torch.no_grad():
        full = delay_logits(net, layout, seq.ids, seq.prefix_len)
    torch.testing.assert_close(torch.stack(seen, 1), full)
    # the clock reaches the network: another clock, other logits
    other = layout.sequence({**batch, "beat": batch["beat"].flip(0), "acoustic": codes})
    with torch.no_grad():
        moved = delay_logits(net, layout, other.ids, other.prefix_len)
    assert not torch.allclose(moved, full)


def test_a_delay_stage_follows_the_requests_beat_clock(tmp_path):
    """A semantic stage and a delay stage that both read the beat clock: generation makes the
    clock once (at the given tempo) and the delay stage reads it on its own frames."""
    spec = beat_spec(mulan_levels=0)  # no MuLan to load: the tempo is given
    sem = tiny_stage("semantic", spec, beats=True, frame_conditioning=True, cond_dropout=0.0)
    delay = tiny_delay(spec, seed=1, conditioning=BEAT_FUSES[1:], cond_dropout=0.0)
    entries = {}
    for name, module in {"semantic": sem, "delay": delay}.items():
        save_checkpoint(module, tmp_path / f"{name}.ckpt", seconds=2.0)
        entries[name] = {"checkpoint": f"{name}.ckpt", "temperature": 0.0}
    data = {"codec": {"name": "dac", "args": {"config": TINY_DAC}}, "stages": entries}
    (tmp_path / "PIPELINE.yaml").write_text(yaml.safe_dump(data))
    pipe = Pipeline.from_file(str(tmp_path / "PIPELINE.yaml"))
    assert pipe.stages["delay"].layout.beats
    rows = [[(0.0, "")]]
    slow = pipe.generate(rows, seconds=2.0, seed=0, bpm=60.0)
    fast = pipe.generate(rows, seconds=2.0, seed=0, bpm=200.0)
    assert slow.bpm == [60.0] and fast.bpm == [200.0]
    # same semantic tokens, another clock: the delay stage's codes change with the clock alone
    stage = pipe.stages["delay"]
    semantic = slow.codes["semantic"]
    made = {}
    for bpm in (60.0, 200.0):
        streams_, codes, _ = pipe._request(rows, rows, 2.0, None, bpm, None)
        window = stage.kind.window(stage, streams_, {**codes, "semantic": semantic}, 0, 20, 0)
        steps = stage.layout.pattern.steps(20, stage.layout.num_levels)
        clock = spec.streams["beats"].clock(bpm, 10, spec.semantic_rate)
        want = stage.layout.step_semantic(torch.as_tensor(clock)[None], steps)
        assert torch.equal(window["step_beat"], want)
        made[bpm] = stage.run(streams_, {**codes, "semantic": semantic}, 2.0, None,
                              torch.Generator().manual_seed(0))  # fmt: skip
    assert not torch.equal(made[60.0], made[200.0])
