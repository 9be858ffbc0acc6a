import pytest
import torch

from musiclm.stages.interleaving import INTERLEAVINGS, Interleaving, get_interleaving


@pytest.mark.parametrize("name", sorted(INTERLEAVINGS))
@pytest.mark.parametrize("levels", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("frames", [1, 5, 16])
def test_interleave_then_deinterleave_is_the_identity(name, levels, frames):
    pattern = get_interleaving(name)
    assert isinstance(pattern, Interleaving)
    codes = torch.randint(0, 1024, (3, levels, frames), generator=torch.Generator().manual_seed(0))
    seq = pattern.interleave(codes)
    assert seq.shape[0] == 3
    torch.testing.assert_close(pattern.deinterleave(seq, levels), codes)
    # each position's level is the level its code came from
    level_of = pattern.levels(seq.shape[1], 0, levels)
    marked = pattern.interleave(torch.arange(levels).view(1, -1, 1).expand(1, -1, frames))
    torch.testing.assert_close(level_of, marked[0])


def test_flatten_is_frame_by_frame():
    codes = torch.tensor([[[0, 1, 2], [10, 11, 12]]])  # (B=1, L=2, F=3)
    assert get_interleaving("flatten").interleave(codes).tolist() == [[0, 10, 1, 11, 2, 12]]


def test_unknown_interleaving_lists_the_known_ones():
    with pytest.raises(ValueError, match="flatten"):
        get_interleaving("no-such-pattern")
