"""The delay stage's conditioning list: MuLan tokens as ``prefix``, semantic tokens as
``frame_sum`` on the targets' clock, the list that its ``semantic`` switch (and the shards)
describe for older configs and checkpoints."""

from __future__ import annotations

import pytest
import torch
from generation_helpers import tiny_spec

from musiclm.conditioning.stream import Fuse
from musiclm.stages.delay_layout import DelayLayout

SEMANTIC = {"stream": "semantic", "fuse": "frame_sum"}


def vocabulary(layout: DelayLayout) -> tuple:
    return (
        layout.mulan_offset,
        layout.semantic_offset,
        layout.acoustic_offset,
        layout.num_tokens,
        layout.columns,
        layout.uses_mulan,
        layout.semantic,
    )


@pytest.mark.parametrize(
    ("mulan_levels", "semantic", "listed"),
    [
        (3, True, ["mulan", SEMANTIC]),
        (3, False, ["mulan"]),
        (0, True, [SEMANTIC]),
        (0, False, []),
    ],
)
def test_the_semantic_switch_is_a_conditioning_list(mulan_levels, semantic, listed):
    spec = tiny_spec(mulan_levels=mulan_levels)
    switched = DelayLayout(spec=spec, semantic=semantic)
    given = DelayLayout(spec=spec, conditioning=listed)
    assert [f.to_dict() for f in switched.fuses] == [f.to_dict() for f in given.fuses]
    assert [s.name for s in switched.conditioning_streams] == [f.stream for f in switched.fuses]
    assert vocabulary(switched) == vocabulary(given)
    assert switched.conditioning is None and given.conditioning == given.fuses


def test_the_list_keeps_the_vocabulary_of_the_switches():
    """Ids as before the list: NUM_SPECIAL, MuLan levels, semantic vocabulary, codec levels."""
    spec = tiny_spec(mulan_levels=3)
    layout = DelayLayout(spec=spec)
    assert layout.fuses == (Fuse("mulan"), Fuse("semantic", ("frame_sum",)))
    assert layout.mulan_offset == 3
    assert layout.semantic_offset == 3 + 3 * 8
    assert layout.acoustic_offset == 3 + 3 * 8 + 16
    plain = DelayLayout(spec=spec, semantic=False)
    assert plain.acoustic_offset == plain.semantic_offset == 3 + 3 * 8
    assert plain.columns == plain.num_levels


def test_checkpoint_hparams_rebuild_the_same_layout():
    spec = tiny_spec()
    old = {"levels": None, "interleaving": "delay", "semantic": False, "guide_semantic": False}
    assert DelayLayout.from_hparams(spec, old) == DelayLayout(spec=spec, semantic=False)
    assert DelayLayout.from_hparams(spec, {**old, "conditioning": None}).semantic is False
    listed = DelayLayout.from_hparams(spec, {**old, "semantic": True, "conditioning": ["mulan"]})
    assert not listed.semantic and listed.uses_mulan
    assert listed.to_dict()["conditioning"] == [{"stream": "mulan", "fuse": "prefix"}]
    again = DelayLayout.from_hparams(spec, listed.to_dict())
    assert again == listed


def test_a_sequence_is_the_same_with_the_list_or_the_switch():
    spec = tiny_spec()
    g = torch.Generator().manual_seed(0)
    batch = {
        "mulan": torch.randint(0, 8, (2, 3), generator=g),
        "semantic": torch.randint(0, 16, (2, 5), generator=g),
        "acoustic": torch.randint(0, 8, (2, 4, 10), generator=g),
    }
    a = DelayLayout(spec=spec).sequence(batch)
    b = DelayLayout(spec=spec, conditioning=["mulan", SEMANTIC]).sequence(batch)
    assert torch.equal(a.ids, b.ids) and torch.equal(a.labels, b.labels)


def test_what_the_delay_stage_cannot_fuse_is_refused():
    spec = tiny_spec()
    with pytest.raises(ValueError, match="delay stage fuses"):
        DelayLayout(spec=spec, conditioning=["mulan", "semantic"])  # semantic as a prefix
    with pytest.raises(ValueError, match="delay stage fuses"):
        DelayLayout(spec=spec, conditioning=["mulan", "beat"])  # the clock as a prefix
    with pytest.raises(ValueError, match="delay stage: .*no beat clock"):
        DelayLayout(spec=spec, conditioning=["mulan", {"stream": "beat", "fuse": "frame_sum"}])
    with pytest.raises(ValueError, match="disagrees with its conditioning list"):
        DelayLayout(spec=spec, semantic=True, conditioning=["mulan"])
    with pytest.raises(ValueError, match="delay stage: .*no MuLan tokens"):
        DelayLayout(spec=tiny_spec(mulan_levels=0), conditioning=["mulan"])
