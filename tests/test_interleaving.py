import pytest
import torch

from musiclm.stages.interleaving import INTERLEAVINGS, Interleaving, get_interleaving


@pytest.mark.parametrize("name", sorted(INTERLEAVINGS))
@pytest.mark.parametrize("levels", range(1, 9))
@pytest.mark.parametrize("frames", [1, 2, 5, 16, 37])
def test_interleave_then_deinterleave_is_the_identity(name, levels, frames):
    pattern = get_interleaving(name)
    assert isinstance(pattern, Interleaving)
    codes = torch.randint(0, 1024, (3, levels, frames), generator=torch.Generator().manual_seed(0))
    seq = pattern.interleave(codes, fill=-7)
    assert seq.shape == (3, pattern.steps(frames, levels) * (levels if pattern.grouped else 1))
    torch.testing.assert_close(pattern.deinterleave(seq, levels), codes)
    # each position's level is the level its code came from (fill slots have no code)
    level_of = pattern.levels(seq.shape[1], 0, levels)
    marked = pattern.interleave(torch.arange(levels).view(1, -1, 1).expand(1, -1, frames))
    has_code = marked[0] >= 0
    torch.testing.assert_close(level_of[has_code], marked[0][has_code])
    assert int((seq == -7).sum()) == 3 * (seq.shape[1] - levels * frames)


def test_flatten_is_frame_by_frame():
    codes = torch.tensor([[[0, 1, 2], [10, 11, 12]]])  # (B=1, L=2, F=3)
    assert get_interleaving("flatten").interleave(codes).tolist() == [[0, 10, 1, 11, 2, 12]]
    assert get_interleaving("parallel").interleave(codes).tolist() == [[0, 10, 1, 11, 2, 12]]


def test_delay_shifts_level_q_by_q_steps():
    codes = torch.tensor([[[0, 1, 2], [10, 11, 12], [20, 21, 22]]])  # (B=1, L=3, F=3)
    seq = get_interleaving("delay").interleave(codes, fill=-1).view(-1, 3)  # (steps, L)
    assert seq.tolist() == [
        [0, -1, -1],
        [1, 10, -1],
        [2, 11, 20],
        [-1, 12, 21],
        [-1, -1, 22],
    ]


def test_unknown_interleaving_lists_the_known_ones():
    with pytest.raises(ValueError, match="delay, flatten, parallel"):
        get_interleaving("no-such-pattern")
