"""The shared token-LM network and the per-stage sequence layouts."""

import dataclasses

import pytest
import torch

from musiclm.datamodules.token_spec import MulanSpec, TokenSpec
from musiclm.models.token_lm import TokenLM
from musiclm.stages.token_layout import BOS, IGNORE, NULL, PAD, TokenLayout

SPEC = TokenSpec(
    semantic_vocab=10,
    semantic_rate=5.0,
    codebook_size=8,
    num_quantizers=4,
    acoustic_rate=10.0,
    streams={"mulan": MulanSpec(3, 6)},
)


def tiny(num_tokens=50, num_targets=20):
    torch.manual_seed(0)
    return TokenLM(num_tokens=num_tokens, num_targets=num_targets, dim=32, depth=2, heads=4).eval()


def streams(batch=2, seconds=2):
    g = torch.Generator().manual_seed(1)
    return {
        "mulan": torch.randint(0, 6, (batch, 3), generator=g),
        "semantic": torch.randint(0, 10, (batch, 5 * seconds), generator=g),
        "acoustic": torch.randint(0, 8, (batch, 4, 10 * seconds), generator=g),
    }


def test_forward_shapes_and_start_slice():
    model = tiny()
    x = torch.randint(0, 50, (2, 30))
    full = model(x)
    assert full.shape == (2, 30, 20)
    torch.testing.assert_close(model(x, start=7), full[:, 7:], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="batch, length"):
        model(torch.zeros(3, dtype=torch.long))


@torch.no_grad()
def test_cached_decoding_matches_full_pass_at_every_position():
    model = tiny()
    x = torch.randint(0, 50, (2, 40))
    pos = torch.arange(40) * 2  # any rotary positions, as aligned layouts use
    full = model(x, pos=pos)
    cache = model.new_cache(2, 40)
    logits = model(x[:, :10], cache=cache, pos=pos[:10])
    assert (logits - full[:, :10]).abs().max() <= 1e-4
    for i in range(10, 40):
        logits = model(x[:, i : i + 1], cache=cache, pos=pos[i : i + 1])
        assert (logits[:, 0] - full[:, i]).abs().max() <= 1e-4, i
    assert cache.length == 40


def test_flops_per_token_counts_weights_and_attention():
    model = tiny()
    weights = model.num_parameters()
    assert weights == sum(p.numel() for p in model.parameters()) - 50 * 32
    assert model.flops_per_token(100) == pytest.approx(3 * (2 * weights + 4 * 2 * 100 * 32))


@pytest.mark.parametrize("stage", ["semantic", "coarse", "fine"])
def test_layout_round_trip_and_disjoint_ranges(stage):
    layout = TokenLayout(stage=stage, spec=SPEC, coarse_levels=2)
    raw = streams()
    seq = layout.sequence(raw)
    n_target = seq.labels.shape[1]
    assert seq.tokens.shape[1] == seq.prefix_len + n_target
    assert (seq.tokens[:, 0] == BOS).all()
    assert seq.tokens.max() < layout.num_tokens and seq.tokens.min() >= 0
    assert seq.labels.max() < layout.num_targets
    # the target part of the input is exactly the labels shifted into the input range
    torch.testing.assert_close(seq.tokens[:, seq.prefix_len :], layout.target_to_input(seq.labels))
    # every label is allowed at its position, and only its level's range is
    allowed = layout.allowed_targets(n_target)
    assert allowed.gather(1, seq.labels[0].view(-1, 1)).all()
    assert allowed.sum(1).eq(layout.target_level_size).all()
    codes = layout.targets_to_codes(seq.labels)
    expected = {
        "semantic": raw["semantic"],
        "coarse": raw["acoustic"][:, :2],
        "fine": raw["acoustic"][:, 2:4],
    }[stage]
    torch.testing.assert_close(codes, expected)
    torch.testing.assert_close(layout.codes_to_targets(codes), seq.labels)
    torch.testing.assert_close(layout.prefix(raw), seq.tokens[:, : seq.prefix_len])


def test_layout_lengths_and_what_each_stage_sees():
    raw = streams(seconds=2)
    sem = TokenLayout(stage="semantic", spec=SPEC).sequence(raw)
    assert sem.prefix_len == 1 + 3 and sem.labels.shape[1] == 10
    coarse = TokenLayout(stage="coarse", spec=SPEC, coarse_levels=2).sequence(raw)
    assert coarse.prefix_len == 1 + 3 + 10 and coarse.labels.shape[1] == 20 * 2
    fine = TokenLayout(stage="fine", spec=SPEC, coarse_levels=2)
    assert not fine.uses_mulan and fine.sequence(raw).prefix_len == 1 + 20 * 2
    fine_m = TokenLayout(stage="fine", spec=SPEC, coarse_levels=2, fine_sees_mulan=True)
    assert fine_m.sequence(raw).prefix_len == 1 + 3 + 20 * 2
    # frame-major flattening: positions alternate levels 0, 1, 0, 1 ...
    assert coarse.labels[0, :4].div(8, rounding_mode="floor").tolist() == [0, 1, 0, 1]


def test_padding_is_pad_input_and_ignored_label():
    raw = streams()
    raw["semantic"][:, -3:] = -1
    layout = TokenLayout(stage="semantic", spec=SPEC)
    seq = layout.sequence(raw)
    assert (seq.tokens[:, -3:] == PAD).all() and (seq.labels[:, -3:] == IGNORE).all()


def test_drop_conditioning_nulls_only_mulan_of_chosen_rows():
    layout = TokenLayout(stage="coarse", spec=SPEC, coarse_levels=2)
    seq = layout.sequence(streams())
    out = layout.drop_conditioning(seq.tokens, torch.tensor([True, False]))
    assert (out[0, 1:4] == NULL).all()
    torch.testing.assert_close(out[0, 4:], seq.tokens[0, 4:])
    torch.testing.assert_close(out[1], seq.tokens[1])


def test_layout_without_mulan_and_bad_levels():
    spec = dataclasses.replace(SPEC, streams={})
    layout = TokenLayout(stage="semantic", spec=spec)
    seq = layout.sequence({"key": ["a", "b"], "semantic": torch.zeros(2, 4, dtype=torch.long)})
    assert seq.prefix_len == 1
    with pytest.raises(ValueError, match="coarse_levels=9"):
        TokenLayout(stage="coarse", spec=SPEC, coarse_levels=9)
    with pytest.raises(ValueError, match="fine stage needs"):
        TokenLayout(stage="fine", spec=SPEC, coarse_levels=4)
    with pytest.raises(KeyError, match="needs stream 'acoustic'"):
        TokenLayout(stage="coarse", spec=spec).sequence({"semantic": torch.zeros(1, 3)})
    assert TokenLayout.from_dict(layout.to_dict()) == layout


def test_spec_from_manifest_names_missing_key():
    manifest = {
        "kind": "tokens",
        "codec": {
            "name": "c",
            "fingerprint": "cf",
            "frame_rate": 50,
            "num_quantizers": 8,
            "codebook_size": 1024,
        },
        "semantic": {"name": "s", "fingerprint": "sf", "frame_rate": 25, "vocab_size": 500},
        "mulan": None,
    }
    spec = TokenSpec.from_manifest(manifest)
    assert spec.streams == {} and spec.codebook_size == 1024 and spec.semantic_vocab == 500
    del manifest["semantic"]["vocab_size"]
    with pytest.raises(ValueError, match=r"x/manifest.json.*semantic.vocab_size"):
        TokenSpec.from_manifest(manifest, where="x/manifest.json")
