"""``guided`` on a conditioning entry: conditioning dropout and classifier-free guidance drop
that stream with the text, a timed one (the semantic stage's beat clock) included."""

from __future__ import annotations

import pytest
import torch
from jsonargparse import ArgumentParser
from test_beats import beat_spec_tokens
from test_delay_stage import beat_spec, streams

from musiclm.conditioning.stream import Fuse, parse_conditioning
from musiclm.generation.decode import generate_window, guidance_rows
from musiclm.generation.sampling import SamplingConfig, guide, guide_streams
from musiclm.models.token_lm import TokenLM
from musiclm.stages.delay_layout import DelayLayout
from musiclm.stages.semantic import SemanticStage
from musiclm.stages.token_layout import BOS, NULL, TokenLayout

GUIDED_CLOCK = ["mulan", {"stream": "beat", "fuse": ["frame_sum", "aligned"], "guided": True}]


def test_an_entry_says_guided_and_keeps_it():
    fuse = Fuse.parse({"stream": "beat", "fuse": "frame_sum", "guided": True})
    assert fuse.guided is True and Fuse.parse(fuse.to_dict()) == fuse
    assert Fuse.parse("mulan").guided is None and "guided" not in Fuse.parse("mulan").to_dict()
    with pytest.raises(ValueError, match="guided must be true or false"):
        Fuse.parse({"stream": "beat", "guided": "yes"})
    with pytest.raises(ValueError, match="unknown key"):
        parse_conditioning([{"stream": "beat", "guide": True}])


def semantic_layout(conditioning) -> tuple[TokenLayout, dict[str, torch.Tensor]]:
    spec = beat_spec_tokens()
    layout = TokenLayout(stage="semantic", spec=spec, conditioning=conditioning)
    g = torch.Generator().manual_seed(0)
    batch = {
        "mulan": torch.randint(
            0, spec.streams["mulan"].codebook, (2, spec.streams["mulan"].levels), generator=g
        ),
        "beat": torch.randint(0, spec.streams["beats"].phase_bins, (2, 10), generator=g),
        "semantic": torch.randint(0, spec.semantic_vocab, (2, 10), generator=g),
    }
    return layout, batch


def test_a_guided_clock_is_dropped_with_the_text_in_the_prompt_and_the_frame_sums():
    plain, batch = semantic_layout(["mulan", {"stream": "beat", "fuse": ["frame_sum", "aligned"]}])
    layout, _ = semantic_layout(GUIDED_CLOCK)
    # the same network and sequence as the unguided list: only dropping differs
    assert layout.num_tokens == plain.num_tokens
    seq = layout.sequence(batch)
    assert torch.equal(seq.tokens, plain.sequence(batch).tokens)
    untimed, p = layout.untimed_len, seq.prefix_len
    drop = torch.tensor([True, False])
    kept = plain.drop_conditioning(seq.tokens, drop, p)
    assert torch.equal(kept[:, untimed:], seq.tokens[:, untimed:])  # the default keeps the clock
    dropped = layout.drop_conditioning(seq.tokens, drop, p)
    assert dropped[0, 0] == BOS and (dropped[0, 1:p] == NULL).all()
    assert torch.equal(dropped[0, p:], seq.tokens[0, p:])  # targets untouched
    assert torch.equal(dropped[1], seq.tokens[1])  # rows not dropped untouched
    # each target's input sums NULL instead of its frame's phase
    ids = layout.frame_ids(dropped[:, :-1], p)
    assert (ids[0, p - 1 :, 0] == NULL).all() and (ids[1, p - 1 :, 0] != NULL).all()
    with pytest.raises(ValueError, match="cond_len"):
        layout.drop_conditioning(seq.tokens, drop)


def decode_both(sampling_a: SamplingConfig, sampling_b: SamplingConfig, plain_a: bool):
    torch.manual_seed(0)
    plain, batch = semantic_layout(["mulan", {"stream": "beat", "fuse": ["frame_sum", "aligned"]}])
    layout, _ = semantic_layout(GUIDED_CLOCK)
    model = TokenLM(
        num_tokens=layout.num_tokens, num_targets=layout.num_targets, dim=32, depth=1, heads=2
    ).eval()
    prompt = layout.prefix(batch)
    outs = []
    for lay, sampling in ((plain if plain_a else layout, sampling_a), (layout, sampling_b)):
        gen = torch.Generator().manual_seed(0)
        outs.append(generate_window(model, prompt, 10, layout=lay, sampling=sampling,
                                    generator=gen))  # fmt: skip
    return outs


def test_text_guidance_keeps_a_guided_clock_and_stream_guidance_pushes_toward_it():
    text = SamplingConfig(temperature=1e-4, cfg_scale=8.0)
    # stream_cfg_scale 1: guidance against rows without the text but with the clock, as a
    # stage whose clock is not guided does
    same = decode_both(text, text, plain_a=True)
    assert torch.equal(same[0], same[1])
    toward = decode_both(text, text.replace(stream_cfg_scale=8.0), plain_a=False)
    assert toward[0].shape == toward[1].shape == (2, 10)
    assert not torch.equal(toward[0], toward[1])


def test_guidance_rows_and_their_composition():
    layout, batch = semantic_layout(GUIDED_CLOCK)
    prompt = layout.prefix(batch)
    p = prompt.shape[1]
    every = torch.ones(2, dtype=torch.bool)
    rows = guidance_rows(layout, prompt, p, SamplingConfig(cfg_scale=3.0, stream_cfg_scale=2.0))
    text = layout.drop_conditioning(prompt, every, p, text_only=True)
    assert torch.equal(rows[:2], prompt) and torch.equal(rows[2:4], text)
    assert torch.equal(rows[4:], layout.drop_conditioning(prompt, every, p))
    untimed = layout.untimed_len
    assert (text[:, 1:untimed] == NULL).all() and torch.equal(
        text[:, untimed:], prompt[:, untimed:]
    )
    two = guidance_rows(layout, prompt, p, SamplingConfig(cfg_scale=3.0))
    assert torch.equal(two, rows[:4])
    cond, streams, none = torch.randn(3, 2, 7).unbind(0)
    want = none + 2.0 * (streams - none) + 3.0 * (cond - streams)
    assert torch.allclose(guide_streams(cond, streams, none, 3.0, 2.0), want, atol=1e-6)
    assert torch.equal(guide_streams(cond, streams, none, 3.0, 1.0), guide(cond, streams, 3.0))
    plain, _ = semantic_layout(["mulan", {"stream": "beat", "fuse": "frame_sum"}])
    with pytest.raises(ValueError, match="says guided: true"):
        guidance_rows(plain, prompt, p, SamplingConfig(stream_cfg_scale=2.0))


def test_training_drops_the_text_alone_in_a_share_of_rows():
    from musiclm.stages.semantic import SemanticStage as Stage

    layout, batch = semantic_layout(GUIDED_CLOCK)
    stage = Stage(dim=16, depth=1, heads=2, cond_dropout=0.25, conditioning=GUIDED_CLOCK)
    stage.layout = layout
    seq = layout.sequence({k: v.repeat(200, 1) for k, v in batch.items()})
    torch.manual_seed(0)
    out = stage._drop_conditioning(seq.tokens, seq.prefix_len)
    untimed, p = layout.untimed_len, seq.prefix_len
    text_gone = (out[:, 1:untimed] == NULL).all(1)
    clock_gone = (out[:, untimed:p] == NULL).all(1)
    assert not (clock_gone & ~text_gone).any()  # the clock never goes without the text
    both, alone = (text_gone & clock_gone).float().mean(), (text_gone & ~clock_gone).float().mean()
    assert 0.17 < both < 0.33 and 0.17 < alone < 0.33


def test_the_delay_stage_guides_one_step_stream_by_its_entry():
    spec = beat_spec()
    entries = ["mulan", {"stream": "semantic", "fuse": "frame_sum"},
               {"stream": "beat", "fuse": "frame_sum", "guided": True}]  # fmt: skip
    layout = DelayLayout(spec=spec, conditioning=entries)
    batch = streams(spec, 2, 6)
    batch["beat"] = torch.tensor([[0, 1, 2], [3, 0, 1]])
    seq = layout.sequence(batch)
    dropped = layout.drop_conditioning(seq.ids, torch.tensor([True, False]))
    beat, sem = layout.column("beat"), layout.column("semantic")
    assert (dropped[0, :, beat] == -1).all()
    assert torch.equal(dropped[0, :, sem], seq.ids[0, :, sem])  # semantic stays
    assert torch.equal(dropped[1], seq.ids[1])
    # an entry's guided: false overrides guide_semantic for that stream
    entries[1] = {"stream": "semantic", "fuse": "frame_sum", "guided": False}
    mixed = DelayLayout(spec=spec, conditioning=entries, guide_semantic=True)
    out = mixed.drop_conditioning(seq.ids, torch.tensor([True, True]))
    assert torch.equal(out[..., sem], seq.ids[..., sem]) and (out[..., beat] == -1).all()
    with pytest.raises(ValueError, match="always drops the MuLan tokens"):
        DelayLayout(spec=spec, conditioning=[{"stream": "mulan", "guided": False}])


def test_a_stage_config_takes_the_short_entry_form():
    """``- mulan`` is an entry in a token stage's list as in the delay stage's (LightningCLI
    parses the config against the signature's type)."""
    parser = ArgumentParser()
    parser.add_class_arguments(SemanticStage, "model")
    cfg = parser.parse_object({"model": {"conditioning": GUIDED_CLOCK}})
    assert cfg.model.conditioning == GUIDED_CLOCK
