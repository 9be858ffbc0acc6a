"""``guided`` on a conditioning entry: conditioning dropout and classifier-free guidance drop
that stream with the text, a timed one (the semantic stage's beat clock) included."""

from __future__ import annotations

import pytest
import torch
from jsonargparse import ArgumentParser
from test_beats import beat_spec_tokens
from test_delay_stage import beat_spec, streams

from musiclm.conditioning.stream import Fuse, parse_conditioning
from musiclm.generation.decode import generate_window
from musiclm.generation.sampling import SamplingConfig
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


def test_guided_decoding_with_a_guided_clock_differs_from_the_plain_one():
    """Guidance against rows without the clock: the logits change, so sampling at a low
    temperature picks other tokens than guidance against rows that keep it."""
    torch.manual_seed(0)
    plain, batch = semantic_layout(["mulan", {"stream": "beat", "fuse": ["frame_sum", "aligned"]}])
    layout, _ = semantic_layout(GUIDED_CLOCK)
    model = TokenLM(
        num_tokens=layout.num_tokens,
        num_targets=layout.num_targets,
        dim=32,
        depth=1,
        heads=2,
    ).eval()
    prompt = layout.prefix(batch)
    sampling = SamplingConfig(temperature=1e-4, cfg_scale=8.0)
    outs = []
    for lay in (plain, layout):
        gen = torch.Generator().manual_seed(0)
        outs.append(generate_window(model, prompt, 10, layout=lay, sampling=sampling,
                                    generator=gen))  # fmt: skip
    assert outs[0].shape == outs[1].shape == (2, 10)
    assert not torch.equal(outs[0], outs[1])


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
