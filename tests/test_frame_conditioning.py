"""Per-level output heads and frame-aligned conditioning of the coarse and fine stages:
the same function in training, cached decoding and sliding windows (with aligned positions
too)."""

import pytest
import torch
import torch.nn.functional as F
from generation_helpers import tiny_spec, tiny_stage, window_checker
from test_aligned_positions import _streams
from test_token_stages import datamodule, shards, trainer  # noqa: F401  (fixture)

from musiclm.generation.decode import generate_window, sliding_generate
from musiclm.generation.sampling import SamplingConfig
from musiclm.models.token_lm import TokenLM
from musiclm.stages.coarse import CoarseStage
from musiclm.stages.token_layout import IGNORE, PAD, TokenLayout
from musiclm.stages.token_lm_stage import load_network, target_logits, target_loss

TOL = 1e-4


def test_per_level_logits_are_the_full_heads_rows_of_each_level():
    torch.manual_seed(0)
    net = TokenLM(num_tokens=50, num_targets=24, dim=32, depth=2, heads=4).eval()
    x = torch.randint(0, 50, (2, 13))
    with torch.no_grad():
        full = net(x, start=1)  # (2, 12, 24): 3 levels of 8 ids, 4 frames
        level = net(x, start=1, levels=3)
    assert level.shape == (2, 12, 8)
    for i in range(12):
        ids = slice(8 * (i % 3), 8 * (i % 3) + 8)
        assert torch.allclose(level[:, i], full[:, i, ids], atol=1e-5)
    with pytest.raises(ValueError, match="levels=5"):
        net(x, start=1, levels=5)


def test_loss_over_level_logits_is_cross_entropy_with_other_levels_masked():
    module = tiny_stage("coarse")
    layout = module.layout
    seq = layout.sequence(_streams(layout.spec, seconds=2.0))
    labels = seq.labels.clone()
    labels[0, -3:] = IGNORE
    with torch.no_grad():
        loss = target_loss(target_logits(module.net, layout, seq.tokens, seq.prefix_len),
                           labels, layout)  # fmt: skip
        full = module.net(seq.tokens[:, :-1], start=seq.prefix_len - 1)
    allowed = layout.allowed_targets(full.shape[1])
    masked = full.masked_fill(~allowed, float("-inf"))
    expected = F.cross_entropy(masked.reshape(-1, full.shape[-1]), labels.reshape(-1),
                               ignore_index=IGNORE)  # fmt: skip
    assert loss == pytest.approx(float(expected), abs=1e-5)
    assert module.net.flops_per_token(10, levels=2) < module.net.flops_per_token(10)


def test_frame_ids_carry_each_targets_own_moment():
    spec = tiny_spec()  # semantic 5 Hz, acoustic 10 Hz, 3 MuLan levels
    coarse = TokenLayout(stage="coarse", spec=spec, coarse_levels=2, frame_conditioning=True)
    streams = _streams(spec, seconds=2.0)
    streams["semantic"][1, -1] = -1  # padding: nothing added
    seq = coarse.sequence(streams)
    inputs = seq.tokens[:, :-1]
    ids = coarse.frame_ids(inputs, seq.prefix_len)
    p = seq.prefix_len
    assert ids.shape == (*inputs.shape, 1)
    assert (ids[:, : p - 1] == -1).all()
    untimed = 1 + spec.streams["mulan"].levels
    for j in range(inputs.shape[1] - (p - 1)):  # input p-1+j predicts target j
        frame = j // 2  # 2 coarse levels per frame
        expected = seq.tokens[:, untimed + frame // 2]  # 2 acoustic frames per semantic one
        expected = torch.where(expected == PAD, -1, expected)
        assert torch.equal(ids[:, p - 1 + j, 0], expected), j
    assert ids[1, -1, 0] == -1 and ids[0, -1, 0] >= 0

    fine = TokenLayout(stage="fine", spec=spec, coarse_levels=2, frame_conditioning=True)
    seq = fine.sequence(_streams(spec, seconds=1.0))
    ids = fine.frame_ids(seq.tokens[:, :-1], seq.prefix_len)
    assert ids.shape[-1] == 2  # both coarse levels of the frame
    p = seq.prefix_len
    for j in range(seq.labels.shape[1]):
        frame = j // 2
        assert torch.equal(ids[:, p - 1 + j], seq.tokens[:, 1 + 2 * frame : 3 + 2 * frame])
    assert TokenLayout(stage="coarse", spec=spec).frame_ids(seq.tokens, 5) is None

    # semantic: no timed stream; every target's input carries the clip's MuLan tokens
    semantic = TokenLayout(stage="semantic", spec=spec, frame_conditioning=True)
    seq = semantic.sequence(_streams(spec, seconds=2.0))
    p = seq.prefix_len
    ids = semantic.frame_ids(seq.tokens[:, :-1], p)
    assert ids.shape == (*seq.tokens[:, :-1].shape, spec.streams["mulan"].levels)
    assert (ids[:, : p - 1] == -1).all()
    mulan = seq.tokens[:, 1 : 1 + spec.streams["mulan"].levels]
    assert torch.equal(ids[:, p - 1 :], mulan[:, None].expand(-1, ids.shape[1] - p + 1, -1))
    dropped = semantic.drop_conditioning(seq.tokens, torch.tensor([True, False]))
    again = semantic.frame_ids(dropped[:, :-1], p)  # CFG's unconditional rows: NULL ids
    assert not torch.equal(again[0], ids[0]) and torch.equal(again[1], ids[1])
    with pytest.raises(ValueError, match="no MuLan tokens"):
        TokenLayout(stage="semantic", spec=tiny_spec(mulan_levels=0), frame_conditioning=True)


@pytest.mark.parametrize(
    ("stage", "aligned"),
    [("semantic", False), ("coarse", False), ("coarse", True), ("fine", False), ("fine", True)],
)
def test_cached_decoding_with_frame_conditioning_equals_full_forward(stage, aligned):
    module = tiny_stage(stage, frame_conditioning=True, aligned_positions=aligned)
    layout = module.layout
    seq = layout.sequence(_streams(layout.spec, batch=3))
    x, p = seq.tokens, seq.prefix_len
    pos = layout.positions(p, x.shape[1])
    frame = layout.frame_ids(x, p)
    with torch.no_grad():
        full = module.net(x, pos=pos, frame_ids=frame)
        assert (full - module.net(x, pos=pos)).abs().max() > 1e-3  # the frame ids matter
    net = module.net
    cache = net.new_cache(3, x.shape[1])
    prefill = net(x[:, :p], cache=cache, pos=pos[:p], frame_ids=frame[:, :p])
    assert (prefill - full[:, :p]).abs().max() <= TOL
    for i in range(p, x.shape[1]):
        at = slice(i, i + 1)
        step = net(x[:, at], cache=cache, pos=pos[at], frame_ids=frame[:, at])
        assert (step[:, 0] - full[:, i]).abs().max() <= TOL, (stage, i)


@pytest.mark.parametrize("cfg_scale", [1.0, 3.0])
@pytest.mark.parametrize(
    "options",
    [
        {"aligned_positions": True},
        {"frame_conditioning": True},
        {"frame_conditioning": True, "aligned_positions": True},
    ],
)
def test_generated_windows_see_what_training_sees(cfg_scale, options):
    """One window, then sliding windows whose prompts keep generated frames: the decoder's
    logits equal the training forward pass (positions and frame ids from the [BOS] +
    conditioning length, the kept targets on the targets' clock)."""
    module = tiny_stage("coarse", **options)
    layout = module.layout
    records = []
    hook = window_checker(module.net, layout, records)
    sampling = SamplingConfig(temperature=1.0, cfg_scale=cfg_scale)
    fast = module.net
    generate_window(fast, layout.prefix(_streams(layout.spec)), 8, layout=layout,
                    sampling=sampling, on_window=hook)  # fmt: skip
    spec = layout.spec
    semantic = torch.randint(0, spec.semantic_vocab, (2, 10))

    def conditioning(f0, f1, new):
        streams = {"mulan": torch.zeros(2, spec.streams["mulan"].levels, dtype=torch.long)}
        return layout.prefix({**streams, "semantic": semantic[:, f0 // 2 : (f1 + 1) // 2]})

    codes = sliding_generate(
        fast, layout=layout, conditioning=conditioning, total_frames=14, context_frames=6,
        prefix_frames=2, sampling=sampling, batch=2, on_window=hook,
    )  # fmt: skip
    assert codes.shape == (2, 2, 14)
    assert len(records) > 2 and max(r[0] for r in records) <= TOL
    assert any(
        prompt_len > 1 + spec.streams["mulan"].levels + 3 for _, _, prompt_len in records[1:]
    )


@pytest.mark.parametrize("cfg_scale", [1.0, 3.0])
def test_generated_semantic_windows_see_the_mulan_tokens_as_training_does(cfg_scale):
    module = tiny_stage("semantic", frame_conditioning=True)
    layout, spec = module.layout, module.layout.spec
    records = []
    hook = window_checker(module.net, layout, records)
    mulan = torch.randint(0, spec.streams["mulan"].codebook, (2, spec.streams["mulan"].levels))
    tokens = sliding_generate(
        module.net, layout=layout,
        conditioning=lambda f0, f1, new: layout.prefix({"mulan": mulan}), total_frames=14,
        context_frames=6, prefix_frames=2, batch=2, on_window=hook,
        sampling=SamplingConfig(temperature=1.0, cfg_scale=cfg_scale),
    )  # fmt: skip
    assert tokens.shape == (2, 1, 14)
    assert len(records) > 2 and max(r[0] for r in records) <= TOL
    assert any(prompt_len > 1 + spec.streams["mulan"].levels for _, _, prompt_len in records[1:])


def test_frame_conditioning_learns_a_frame_aligned_rule_faster():
    """Coarse level 0 of frame f is a function of the semantic token of f's moment: with
    frame conditioning a tiny model learns the rule within a few dozen steps; reading it
    through attention from the prefix takes it much longer."""
    spec = tiny_spec(mulan_levels=0)

    def batch(g):
        sem = torch.randint(0, spec.semantic_vocab, (16, 10), generator=g)
        acoustic = torch.randint(0, spec.codebook_size, (16, spec.num_quantizers, 20), generator=g)
        acoustic[:, 0] = (sem.repeat_interleave(2, dim=1) * 3) % spec.codebook_size
        return {"semantic": sem, "acoustic": acoustic}

    def level0_accuracy(frame_conditioning: bool) -> float:
        module = tiny_stage("coarse", spec, frame_conditioning=frame_conditioning).train()
        layout = module.layout
        opt = torch.optim.Adam(module.net.parameters(), lr=3e-3)
        g = torch.Generator().manual_seed(1)
        for _ in range(60):
            seq = layout.sequence(batch(g))
            loss = target_loss(target_logits(module.net, layout, seq.tokens, seq.prefix_len),
                               seq.labels, layout)  # fmt: skip
            opt.zero_grad()
            loss.backward()
            opt.step()
        seq = layout.sequence(batch(g))
        with torch.no_grad():
            logits = target_logits(module.net.eval(), layout, seq.tokens, seq.prefix_len)
        pred, labels = logits[:, 0::2].argmax(-1), seq.labels[:, 0::2]
        return float((pred == labels).float().mean())

    with_frames, without = level0_accuracy(True), level0_accuracy(False)
    assert with_frames > 0.9 and with_frames > without + 0.3, (with_frames, without)


def test_stage_trains_with_frame_conditioning_and_checkpoint_keeps_it(shards, tmp_path):  # noqa: F811
    model = CoarseStage(dim=32, depth=2, heads=4, warmup_steps=2, coarse_levels=2,
                        frame_conditioning=True)  # fmt: skip
    t = trainer(tmp_path, steps=2, limit_val_batches=0)
    t.fit(model, datamodule(shards))
    assert torch.isfinite(t.callback_metrics["train/loss"])
    path = next(str(p) for p in tmp_path.rglob("*.ckpt"))
    net, layout = load_network(path)
    assert layout.frame_conditioning and layout == model.layout
