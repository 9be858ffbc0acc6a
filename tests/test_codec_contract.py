"""The codec contract, run over every registered codec with a tiny untrained/fitted config."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from musiclm import registry
from musiclm.tokenizers.base import Codec, build

TINY_DAC = {
    "encoder_dim": 4,
    "encoder_rates": [2, 4],
    "decoder_dim": 16,
    "decoder_rates": [4, 2],
    "n_codebooks": 3,
    "codebook_size": 32,
    "codebook_dim": 4,
    "sample_rate": 16000,
}
TINY_ENCODEC = {
    "sampling_rate": 16000,
    "hidden_size": 16,
    "num_filters": 4,
    "upsampling_ratios": [4, 2],
    "codebook_size": 64,
    "target_bandwidths": [12.0, 36.0],  # 2000 Hz x 6 bits per level -> 1 and 3 levels
    "num_lstm_layers": 1,
}


def tone(seconds: float, sample_rate: int, seed: int = 0) -> torch.Tensor:
    """A few harmonic partials plus a little noise, (T,)."""
    g = np.random.default_rng(seed)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    f0 = g.uniform(150, 400)
    y = sum(np.sin(2 * np.pi * f0 * h * t) / h for h in range(1, 4)) * 0.3
    return torch.tensor(y + 0.01 * g.standard_normal(t.shape), dtype=torch.float32)


@pytest.fixture(scope="session")
def stft_rvq_books(tmp_path_factory):
    """Two tiny stft-rvq artifacts fitted with different seeds."""
    from musiclm.tokenizers.fit_codec import fit_stft_rvq

    out = tmp_path_factory.mktemp("stft_rvq")
    clips = [(tone(1.0, 16000, seed=i).numpy(), 16000) for i in range(4)]
    paths = []
    for seed in (0, 1):
        path = out / f"books{seed}.safetensors"
        fit_stft_rvq(clips, path, n_fft=256, hop=64, levels=3, codebook_size=16, seed=seed)
        paths.append(str(path))
    return paths


def codec_kwargs(name: str, variant: str, books: list[str]) -> dict:
    """kwargs for ``name``: variant "base", "weights" (other weights), "config" (other config)."""
    if name == "dac":
        return {
            "base": {"config": TINY_DAC},
            "weights": {"config": TINY_DAC, "seed": 1},
            "config": {"config": TINY_DAC, "num_quantizers": 2},
        }[variant]
    if name == "encodec-hf":
        return {
            "base": {"config": TINY_ENCODEC},
            "weights": {"config": TINY_ENCODEC, "seed": 1},
            "config": {"config": TINY_ENCODEC, "bandwidth": 12.0},
        }[variant]
    if name == "stft-rvq":
        return {
            "base": {"codebooks": books[0], "griffin_lim_iters": 4},
            "weights": {"codebooks": books[1], "griffin_lim_iters": 4},
            "config": {"codebooks": books[0], "griffin_lim_iters": 4, "num_quantizers": 2},
        }[variant]
    raise AssertionError(f"codec {name!r} is registered but has no tiny config in this test")


CODECS = registry.available("codecs")


@pytest.fixture(scope="module", params=CODECS)
def codec(request, stft_rvq_books):
    return request.param, build(
        "codecs", request.param, **codec_kwargs(request.param, "base", stft_rvq_books)
    )


def test_every_registered_codec_has_a_tiny_config(stft_rvq_books):
    for name in CODECS:
        codec_kwargs(name, "base", stft_rvq_books)


def test_attributes(codec):
    name, c = codec
    assert isinstance(c, Codec)
    assert isinstance(c.sample_rate, int) and c.sample_rate > 0
    assert c.frame_rate > 0 and c.num_quantizers >= 1 and c.codebook_size >= 2


def test_encode_shapes_dtypes_and_determinism(codec):
    name, c = codec
    length = int(0.2 * c.sample_rate) + 7  # not a multiple of any hop
    wav = torch.stack([tone(0.3, c.sample_rate, 1)[:length], tone(0.3, c.sample_rate, 2)[:length]])
    codes = c.encode(wav[:, None])
    frames = math.ceil(length * c.frame_rate / c.sample_rate)
    assert codes.dtype == torch.long
    assert tuple(codes.shape) == (2, c.num_quantizers, frames), name
    assert int(codes.min()) >= 0 and int(codes.max()) < c.codebook_size
    assert torch.equal(codes, c.encode(wav[:, None])), "encode is not deterministic"


def test_batch_equals_one_by_one(codec):
    name, c = codec
    n = int(0.2 * c.sample_rate)
    wav = torch.stack([tone(0.2, c.sample_rate, s)[:n] for s in (3, 4, 5)])[:, None]
    together = c.encode(wav)
    alone = torch.cat([c.encode(wav[i : i + 1]) for i in range(3)])
    assert (together == alone).float().mean() >= 0.99, name


def test_decode_length_and_fewer_levels(codec):
    name, c = codec
    length = int(0.2 * c.sample_rate) + 5
    wav = tone(0.3, c.sample_rate, 6)[:length][None, None]
    codes = c.encode(wav)
    hop = c.sample_rate / c.frame_rate
    full = c.decode(codes)
    assert full.shape == (1, 1, round(codes.shape[-1] * hop)) and full.dtype == torch.float32
    assert c.decode(codes, length=length).shape == (1, 1, length)
    coarse = c.decode(codes[:, :1])
    assert coarse.shape == full.shape and torch.isfinite(coarse).all()
    if c.num_quantizers > 1:
        assert not torch.allclose(coarse, full), "the finer levels change nothing"
    with pytest.raises(ValueError, match="levels"):
        c.decode(torch.zeros(1, c.num_quantizers + 1, 3, dtype=torch.long))


def test_fingerprint_tracks_weights_and_config(codec, stft_rvq_books):
    name, c = codec
    same = build("codecs", name, **codec_kwargs(name, "base", stft_rvq_books))
    other_weights = build("codecs", name, **codec_kwargs(name, "weights", stft_rvq_books))
    other_config = build("codecs", name, **codec_kwargs(name, "config", stft_rvq_books))
    assert c.fingerprint() == same.fingerprint()
    assert name in c.fingerprint()
    assert len({c.fingerprint(), other_weights.fingerprint(), other_config.fingerprint()}) == 3


def test_bad_input_is_named(codec):
    name, c = codec
    with pytest.raises(ValueError, match=r"\(B, 1, T\)"):
        c.encode(torch.zeros(2, 100))


def test_dac_weights_file_roundtrip_and_mismatch(tmp_path, monkeypatch):
    from musiclm.tokenizers.codecs.dac import DacCodec

    made = DacCodec(config=TINY_DAC, seed=3)
    path = tmp_path / "weights_tiny.pth"
    # the layout of DAC's released weights files: state dict + constructor kwargs
    torch.save({"state_dict": made.model.state_dict(), "metadata": {"kwargs": TINY_DAC}}, path)
    loaded = DacCodec(weights_path=str(path))
    wav = tone(0.2, 16000, 7)[None, None]
    assert torch.equal(made.encode(wav), loaded.encode(wav))

    state = made.model.state_dict()
    state.pop(next(iter(state)))
    torch.save({"state_dict": state, "metadata": {"kwargs": TINY_DAC}}, path)
    with pytest.raises(ValueError, match="missing"):
        DacCodec(weights_path=str(path))

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RuntimeError, match="weights_path"):
        DacCodec(model_type="16khz")


def test_dac_chunked_encoding_with_context_matches_one_pass(tmp_path):
    from musiclm.tokenizers.codecs.dac import DacCodec

    wav = tone(0.3, 16000, 8)[None, None]
    whole = DacCodec(config=TINY_DAC).encode(wav)
    bare = DacCodec(config=TINY_DAC, chunk_seconds=0.05, context_seconds=0.0).encode(wav)
    framed = DacCodec(config=TINY_DAC, chunk_seconds=0.05, context_seconds=0.02).encode(wav)
    assert bare.shape == framed.shape == whole.shape
    assert whole.shape[-1] == math.ceil(wav.shape[-1] / 8)
    # without context the frames near every cut differ; with it the chunks match one pass
    assert (bare != whole).any()
    assert torch.equal(framed, whole)
    with pytest.raises(ValueError, match="context_seconds"):
        DacCodec(config=TINY_DAC, context_seconds=-1.0)
