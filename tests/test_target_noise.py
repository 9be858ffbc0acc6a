"""``target_noise``: training inputs of targets swapped for another sample's token at the same
position (same codec level), labels untouched, padding never mixed in."""

import pytest
import torch

from musiclm.stages.token_layout import IGNORE, LMSequence
from musiclm.stages.token_lm_stage import corrupt_targets


def _seq(b=6, prefix=5, frames=40, levels=2, pad_from=None):
    torch.manual_seed(0)
    t = frames * levels
    prefix_ids = torch.randint(0, 50, (b, prefix))
    # level l of every frame uses ids 1000*(l+1) .. 1000*(l+1)+99
    level = torch.arange(t) % levels
    target_ids = 1000 * (level + 1) + torch.randint(0, 100, (b, t))
    tokens = torch.cat([prefix_ids, target_ids], 1)
    labels = target_ids.clone()
    if pad_from is not None:
        labels[0, pad_from:] = IGNORE
        tokens[0, prefix + pad_from :] = 0
    return LMSequence(tokens, labels, prefix)


def test_noise_changes_about_p_of_targets_and_never_the_prefix():
    seq = _seq()
    out = corrupt_targets(seq.tokens, seq, 0.3)
    assert torch.equal(out[:, : seq.prefix_len], seq.tokens[:, : seq.prefix_len])
    changed = (out != seq.tokens)[:, seq.prefix_len :].float().mean().item()
    assert 0.2 < changed < 0.35  # p, less the rare draws of an identical token
    assert torch.equal(seq.labels, _seq().labels)  # labels are the caller's, untouched


def test_swapped_tokens_keep_their_codec_level():
    seq = _seq()
    out = corrupt_targets(seq.tokens, seq, 0.5)[:, seq.prefix_len :]
    level = torch.arange(out.shape[1]) % 2
    assert torch.equal(out // 1000 - 1, level.expand_as(out))


def test_padding_is_neither_corrupted_nor_donated():
    seq = _seq(pad_from=30)
    out = corrupt_targets(seq.tokens, seq, 0.9)
    p = seq.prefix_len
    assert torch.equal(out[0, p + 30 :], seq.tokens[0, p + 30 :])  # padding stays padding
    assert (out[1, p + 30 :] != 0).all()  # sample 1's donor is sample 0: no pad ids come in


@pytest.mark.parametrize("p", [0.0])
def test_zero_noise_and_single_sample_batches_are_unchanged(p):
    seq = _seq()
    assert torch.equal(corrupt_targets(seq.tokens, seq, p), seq.tokens)
    one = _seq(b=1)
    assert torch.equal(corrupt_targets(one.tokens, one, 0.5), one.tokens)


def test_stage_refuses_out_of_range_noise():
    from musiclm.stages.coarse import CoarseStage

    with pytest.raises(ValueError, match="target_noise"):
        CoarseStage(dim=16, depth=1, heads=2, target_noise=1.0)
