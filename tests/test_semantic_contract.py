"""The semantic-tokenizer contract over every registered tokenizer, with tiny configs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from musiclm import registry
from musiclm.tokenizers.artifacts import save_artifact
from musiclm.tokenizers.base import SemanticTokenizer, build
from musiclm.tokenizers.kmeans import fit_kmeans
from musiclm.tokenizers.semantic.common import ARTIFACT_KIND

TINY_HUBERT = {
    "model_type": "hubert",
    "hidden_size": 16,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 32,
    "conv_dim": [8, 8],
    "conv_stride": [5, 4],
    "conv_kernel": [10, 8],
    "num_conv_pos_embeddings": 8,
    "num_conv_pos_embedding_groups": 2,
}


def notes(pitches: list[int], seconds_each: float, sr: int = 16000, amp: float = 0.5) -> np.ndarray:
    """A melody of harmonic tones (MIDI pitches), each with a decaying envelope."""
    t = np.arange(int(seconds_each * sr)) / sr
    out = []
    for p in pitches:
        f = 440 * 2 ** ((p - 69) / 12)
        tone = sum(np.sin(2 * np.pi * f * h * t) / h for h in range(1, 4))
        out.append(amp * np.exp(-2 * t) * tone / 2)
    return np.concatenate(out).astype(np.float32)


def clip(seed: int, sr: int, seconds: float = 0.5) -> torch.Tensor:
    g = np.random.default_rng(seed)
    y = notes(list(g.integers(55, 75, 4)), seconds / 4, sr)
    return torch.tensor(y + 0.01 * g.standard_normal(y.shape).astype(np.float32))


def tokenizer_kwargs(name: str) -> dict:
    if name == "hf-ssl":
        return {"config": TINY_HUBERT, "layer": 1}
    if name == "music-features":
        return {}
    raise AssertionError(f"semantic tokenizer {name!r} is registered but has no tiny config here")


def fit_artifact(tok, path, k: int, seed: int) -> str:
    feats = torch.cat([tok.features(clip(s, tok.sample_rate)[None, None])[0] for s in range(6)])
    c = fit_kmeans([feats], k, seed=seed, iters=3, init_frames=feats.shape[0])
    meta = {"kind": ARTIFACT_KIND, "features_fingerprint": tok.features_fingerprint, "k": k}
    save_artifact(path, {"centroids": c}, meta)
    return str(path)


NAMES = registry.available("semantic_tokenizers")


@pytest.fixture(scope="module", params=NAMES)
def fitted(request, tmp_path_factory):
    name = request.param
    out = tmp_path_factory.mktemp(f"sem-{name}")
    bare = build("semantic_tokenizers", name, **tokenizer_kwargs(name))
    paths = [fit_artifact(bare, out / f"km{s}.safetensors", 8, s) for s in (0, 1)]
    tok = build("semantic_tokenizers", name, kmeans=paths[0], **tokenizer_kwargs(name))
    return name, bare, tok, paths


def test_every_registered_tokenizer_has_a_tiny_config():
    for name in NAMES:
        tokenizer_kwargs(name)


def test_features_shapes_determinism_and_batching(fitted):
    name, bare, tok, _ = fitted
    assert isinstance(tok, SemanticTokenizer)
    assert tok.vocab_size == 8 and tok.frame_rate > 0
    n = int(0.4 * tok.sample_rate) + 3
    wav = torch.stack([clip(s, tok.sample_rate)[:n] for s in (10, 11, 12)])[:, None]
    f = tok.features(wav)
    frames = math.ceil(n * tok.frame_rate / tok.sample_rate)
    assert f.dtype == torch.float32 and f.shape[:2] == (3, frames), (name, f.shape)
    assert torch.equal(f, tok.features(wav))
    alone = torch.cat([tok.features(wav[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(f, alone, atol=1e-4, rtol=1e-4)
    tokens = tok.tokenize(wav)
    assert tokens.dtype == torch.long and tokens.shape == (3, frames)
    assert 0 <= int(tokens.min()) and int(tokens.max()) < tok.vocab_size
    one_by_one = torch.cat([tok.tokenize(wav[i : i + 1]) for i in range(3)])
    assert (tokens == one_by_one).float().mean() >= 0.99


def test_tokenize_without_kmeans_says_how_to_fit(fitted):
    name, bare, _, _ = fitted
    assert bare.features(clip(0, bare.sample_rate)[None, None]).ndim == 3
    with pytest.raises(RuntimeError, match="fit-semantic"):
        bare.tokenize(clip(0, bare.sample_rate)[None, None])


def test_fingerprint_tracks_kmeans_and_config(fitted):
    name, bare, tok, paths = fitted
    again = build("semantic_tokenizers", name, kmeans=paths[0], **tokenizer_kwargs(name))
    other_km = build("semantic_tokenizers", name, kmeans=paths[1], **tokenizer_kwargs(name))
    assert tok.fingerprint() == again.fingerprint() and name in tok.fingerprint()
    assert len({tok.fingerprint(), other_km.fingerprint(), bare.fingerprint()}) == 3


def test_kmeans_fitted_on_other_features_is_refused(fitted):
    name, _, _, paths = fitted
    other = {"hf-ssl": {"config": TINY_HUBERT, "layer": 2}, "music-features": {"hop": 320}}[name]
    with pytest.raises(ValueError, match="fitted on features"):
        build("semantic_tokenizers", name, kmeans=paths[0], **other)


def test_hf_ssl_weights_change_fingerprint():
    a = build("semantic_tokenizers", "hf-ssl", config=TINY_HUBERT, layer=1, seed=0)
    b = build("semantic_tokenizers", "hf-ssl", config=TINY_HUBERT, layer=1, seed=1)
    assert a.features_fingerprint != b.features_fingerprint


def test_music_features_follow_pitch_and_rhythm_not_loudness():
    tok = build("semantic_tokenizers", "music-features")
    melody = [60, 64, 67, 72, 67, 64, 60, 62]
    base = tok.features(torch.tensor(notes(melody, 0.25))[None, None])[0]
    quiet = tok.features(torch.tensor(notes(melody, 0.25, amp=0.25))[None, None])[0]
    moved = tok.features(torch.tensor(notes([p + 6 for p in melody], 0.25))[None, None])[0]
    slower = tok.features(torch.tensor(notes(melody[:4], 0.5))[None, None])[0]

    def pitch_dist(a, b):
        return (a[:, :15] - b[:, :15]).norm(dim=1).mean()

    assert pitch_dist(base, quiet) < 0.25 * pitch_dist(base, moved)
    rhythm = slice(20, 32)
    mid = slice(10, 40)  # frames away from the clip edges
    assert (base[mid, rhythm] - slower[mid, rhythm]).norm(dim=1).mean() > (
        base[mid, rhythm] - quiet[mid, rhythm]
    ).norm(dim=1).mean()


def test_music_features_beat_phase_and_tempo():
    """The beat group: tempo near the true BPM, the phase turning once per beat and near 0
    on the note onsets (a 4-beat pattern with accents, so the beat is the strongest pulse);
    silence and a clip shorter than two beats have no pulse (zeros)."""
    from musiclm.tokenizers.semantic.music_features import (
        FEATURE_DIM,
        beat_features,
        beat_phase,
        phase_distance,
    )

    tok = build("semantic_tokenizers", "music-features")
    sr, bpm = tok.sample_rate, 100
    spb = 60.0 / bpm
    melody = [60, 67, 64, 67] * 4 * 3
    y = notes(melody, spb)
    f = tok.features(torch.tensor(y)[None, None])[0]
    assert f.shape[-1] == FEATURE_DIM  # the width research/semantic_conditioning.py checks
    beat = f[:, -3:] / torch.tensor([tok.weights["beat"]] * 2 + [tok.weights["tempo"]])
    assert abs(120 * 2 ** float(beat[0, 2]) / bpm - 1) < 0.05
    phase = beat_phase(f)
    turns = float((phase.diff() < -0.5).sum())
    beats_seen = len(y) / sr / spb
    assert abs(turns - beats_seen) <= 1.5, (turns, beats_seen)
    onset_frames = (torch.arange(4, len(melody) - 1) * spb * tok.frame_rate).round().long()
    dist = phase_distance(phase[onset_frames], torch.zeros(len(onset_frames)))
    assert float(dist.mean()) < 0.15, dist

    t = np.arange(16000 * 4) / 16000
    strikes = np.sin(2 * np.pi * 440 * t) * np.exp(-((t % 0.5) / 0.05))  # 120 BPM
    phase = beat_phase(tok.features(torch.tensor(strikes, dtype=torch.float32)[None, None])[0])
    at = (torch.arange(2, 7) * 12.5).round().long()  # frames of the strikes, off the edges
    assert phase_distance(phase[at], torch.zeros(5)).max() < 0.1

    got = phase_distance(torch.tensor([0.95, 0.2]), torch.tensor([0.05, 0.7]))
    assert torch.allclose(got, torch.tensor([0.1, 0.5]))

    assert not beat_features(np.zeros(200), tok.frame_rate).any()
    assert not beat_features(np.ones(3), tok.frame_rate).any()


def test_hf_ssl_w2v_bert_from_a_local_folder(tmp_path):
    """Models taking input_features (Wav2Vec2-BERT) go through their own feature extractor."""
    from transformers import SeamlessM4TFeatureExtractor, Wav2Vec2BertConfig, Wav2Vec2BertModel

    cfg = Wav2Vec2BertConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                             intermediate_size=32, feature_projection_input_dim=160,
                             output_hidden_size=16, conv_depthwise_kernel_size=3)  # fmt: skip
    torch.manual_seed(0)
    Wav2Vec2BertModel(cfg).save_pretrained(tmp_path)
    SeamlessM4TFeatureExtractor(feature_size=80, stride=2).save_pretrained(tmp_path)
    tok = build("semantic_tokenizers", "hf-ssl", pretrained=str(tmp_path), layer=1)
    assert tok.frame_rate == 50.0 and tok.sample_rate == 16000
    wav = torch.stack([clip(1, 16000, 1.0), clip(2, 16000, 1.0)])[:, None]
    f = tok.features(wav)
    assert f.shape == (2, 50, 16)
    torch.testing.assert_close(f, torch.cat([tok.features(wav[:1]), tok.features(wav[1:])]),
                               atol=1e-4, rtol=1e-4)  # fmt: skip
