"""Text-encoder plugins: the protocol for every registered one, minilm freezing, scratch."""

from __future__ import annotations

import pytest
import torch

from musiclm import registry
from musiclm.tokenizers.base import TextEncoder, build
from musiclm.tokenizers.text.scratch import hash_tokens

SMALL_ARGS = {"scratch": {"dim": 32, "depth": 1, "heads": 2, "vocab_size": 256}}
TEXTS = ["a calm piano melody in C major", "fast violin", ""]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # A shared 2-core CPU: more threads mostly spin while other jobs hold the cores.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def minilm():
    return build("text_encoders", "minilm", trainable_layers=1)


def _encoder(name, minilm):
    return minilm if name == "minilm" else build("text_encoders", name, **SMALL_ARGS.get(name, {}))


@pytest.mark.parametrize("name", registry.available("text_encoders"))
def test_every_text_encoder_meets_the_protocol(name, minilm):
    enc = _encoder(name, minilm)
    assert isinstance(enc, TextEncoder) and isinstance(enc, torch.nn.Module)
    hidden, mask = enc(TEXTS)
    assert hidden.shape[:2] == mask.shape and hidden.shape[0] == 3 and hidden.shape[2] == enc.dim
    assert mask.dtype == torch.bool and mask.any(dim=1).all()
    assert mask[0].sum() > mask[1].sum()  # longer caption, more valid positions
    assert torch.isfinite(hidden).all()


def test_minilm_loads_offline_and_trains_only_its_top_layers(minilm):
    assert minilm.dim == 384
    trainable = {n for n, p in minilm.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("model.encoder.layer.5.") for n in trainable)
    minilm.train()
    assert minilm.model.training is False  # frozen parts keep dropout off
    assert minilm.model.encoder.layer[5].training is True
    hidden, mask = minilm(["a piano"])
    hidden[mask].sum().backward()
    assert minilm.model.encoder.layer[5].output.dense.weight.grad is not None
    assert minilm.model.encoder.layer[0].output.dense.weight.grad is None
    minilm.zero_grad()
    minilm.eval()


def test_minilm_bad_arguments_are_clear(tmp_path, minilm):
    with pytest.raises(OSError, match=str(tmp_path)):
        build("text_encoders", "minilm", path=str(tmp_path))
    with pytest.raises(ValueError, match="trainable_layers=7"):
        build("text_encoders", "minilm", path=minilm.path, trainable_layers=7)


def test_frozen_minilm_has_no_trainable_parameters(minilm):
    frozen = build("text_encoders", "minilm", path=minilm.path)
    assert not any(p.requires_grad for p in frozen.parameters())
    with torch.no_grad():
        a, _ = frozen(["a piano"])
        b, _ = minilm(["a piano"])
    assert torch.allclose(a, b, atol=1e-5)  # same pretrained weights either way


def test_scratch_tokenizer_is_stable_and_case_insensitive():
    assert hash_tokens("Solo PIANO, slow", 1000) == hash_tokens("solo piano , slow", 1000)
    ids = hash_tokens("solo piano, slow", 1000)
    assert len(ids) == 4 and all(2 <= i < 1000 for i in ids)
    assert hash_tokens("piano", 1000) != hash_tokens("violin", 1000)


def test_scratch_trains_and_pads():
    enc = build("text_encoders", "scratch", **SMALL_ARGS["scratch"], max_length=4)
    hidden, mask = enc(["one two three four five six", "one"])
    assert hidden.shape == (2, 4, 32) and mask.tolist() == [[True] * 4, [True, True, False, False]]
    hidden[mask].pow(2).mean().backward()
    assert all(p.grad is not None for p in enc.parameters() if p.requires_grad)
    with pytest.raises(ValueError, match="vocab_size"):
        build("text_encoders", "scratch", vocab_size=2)


def test_frozen_minilm_cache_gives_the_uncached_states(minilm):
    cached = build("text_encoders", "minilm", path=minilm.path, cache_size=2)
    uncached = build("text_encoders", "minilm", path=minilm.path, cache_size=0)
    for batch in (TEXTS[:2], [TEXTS[1], "organ", TEXTS[0]], ["organ", "organ"]):
        (h1, m1), (h2, m2) = cached(batch), uncached(batch)
        assert torch.equal(m1, m2)
        assert torch.allclose(h1[m1], h2[m2], atol=1e-5)
    assert len(cached._cache) == 2  # bounded
