"""Aligned rotary positions: the timed conditioning on the targets' clock, the same function
in training, cached decoding and sliding windows."""

import pytest
import torch
from generation_helpers import tiny_spec, tiny_stage
from test_token_stages import datamodule, shards, trainer  # noqa: F401  (fixture)

from musiclm.stages.coarse import CoarseStage
from musiclm.stages.token_layout import TokenLayout
from musiclm.stages.token_lm_stage import load_network

TOL = 1e-4


def _streams(spec, batch=2, seconds=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "mulan": torch.randint(
            0, spec.streams["mulan"].codebook, (batch, spec.streams["mulan"].levels), generator=g
        ),
        "semantic": torch.randint(
            0, spec.semantic_vocab, (batch, int(seconds * spec.semantic_rate)), generator=g
        ),
        "acoustic": torch.randint(
            0,
            spec.codebook_size,
            (batch, spec.num_quantizers, int(seconds * spec.acoustic_rate)),
            generator=g,
        ),
    }


def test_conditioning_of_a_moment_sits_at_its_targets_position():
    spec = tiny_spec()  # semantic 5 Hz, acoustic 10 Hz, 3 MuLan levels
    coarse = TokenLayout(stage="coarse", spec=spec, coarse_levels=2, aligned_positions=True)
    seq = coarse.sequence(_streams(spec))
    pos = coarse.positions(seq.prefix_len, seq.tokens.shape[1])
    untimed = 1 + spec.streams["mulan"].levels
    assert pos[:untimed].tolist() == list(range(untimed))
    sem = pos[untimed : seq.prefix_len]
    targets = pos[seq.prefix_len :]
    # semantic frame g (time g / 5 s) shares its position with coarse frame 2g, level 0
    for g in range(len(sem)):
        assert sem[g] == targets[2 * g * 2]
    fine = TokenLayout(stage="fine", spec=spec, coarse_levels=2, aligned_positions=True)
    seq = fine.sequence(_streams(spec))
    pos = fine.positions(seq.prefix_len, seq.tokens.shape[1])
    cond, targets = pos[1 : seq.prefix_len], pos[seq.prefix_len :]
    assert torch.equal(cond, targets)  # coarse (f, q) and fine (f, q): 2 levels each
    plain = TokenLayout(stage="coarse", spec=spec, coarse_levels=2)
    assert torch.equal(plain.positions(7, 20), torch.arange(20))


@pytest.mark.parametrize("stage", ["coarse", "fine"])
def test_cached_decoding_with_aligned_positions_equals_full_forward(stage):
    module = tiny_stage(stage, aligned_positions=True)
    layout = module.layout
    seq = layout.sequence(_streams(layout.spec, batch=3))
    x, p = seq.tokens, seq.prefix_len
    pos = layout.positions(p, x.shape[1])
    with torch.no_grad():
        full = module.net(x, pos=pos)
        assert (full - module.net(x)).abs().max() > 1e-3  # the positions do matter
    net = module.net
    cache = net.new_cache(3, x.shape[1])
    prefill = net(x[:, :p], cache=cache, pos=pos[:p])
    assert (prefill - full[:, :p]).abs().max() <= TOL
    for i in range(p, x.shape[1]):
        step = net(x[:, i : i + 1], cache=cache, pos=pos[i : i + 1])
        assert (step[:, 0] - full[:, i]).abs().max() <= TOL, (stage, i)


def test_stage_trains_with_aligned_positions_and_checkpoint_keeps_them(shards, tmp_path):  # noqa: F811
    model = CoarseStage(dim=32, depth=2, heads=4, warmup_steps=2, coarse_levels=2,
                        aligned_positions=True)  # fmt: skip
    t = trainer(tmp_path, steps=2, limit_val_batches=0)
    t.fit(model, datamodule(shards))
    assert torch.isfinite(t.callback_metrics["train/loss"])
    net, layout = load_network(t.checkpoint_callback.last_model_path or next(
        str(p) for p in tmp_path.rglob("*.ckpt")))  # fmt: skip
    assert layout.aligned_positions and layout == model.layout
