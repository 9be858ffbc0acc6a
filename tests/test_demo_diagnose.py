"""The demo diagnosis reads tempo from semantic tokens (research/demo_diagnose.py)."""

import numpy as np
import pytest
from research_script import load_research_script

from musiclm.evaluation.attributes import TempoEstimator, bpm_correct
from musiclm.tokenizers.semantic.music_features import ONSET_COLUMN


@pytest.fixture(scope="module")
def diagnose():
    return load_research_script("demo_diagnose")


@pytest.mark.parametrize("period", [12, 15, 20])  # frames at 25 Hz: 125, 100, 75 BPM
def test_token_tempo_follows_the_onset_feature_of_the_centroids(diagnose, period):
    rng = np.random.default_rng(0)
    centroids = rng.normal(0.0, 0.01, size=(4, 41))
    centroids[:, ONSET_COLUMN] = [0.0, 0.05, 1.0, 0.1]  # token 2 = a note onset
    tokens = np.where(np.arange(250) % period == 0, 2, rng.choice([0, 1, 3], size=250))
    est = TempoEstimator(sample_rate=16000, start_bpm=100.0, std_bpm=1.0)
    bpm = diagnose.token_tempo(tokens, centroids, est, rate=25.0)
    assert bpm_correct(bpm, 60 * 25 / period), bpm


def test_onset_column_is_the_tokenizers_onset_feature(diagnose):
    import torch

    from musiclm.tokenizers.semantic.music_features import MusicFeatureTokenizer

    tok = MusicFeatureTokenizer()
    sr, t = 16000, np.arange(16000 * 4) / 16000
    # a 440 Hz note struck every 0.48 s (12 frames at 25 Hz), decaying in between
    wav = np.sin(2 * np.pi * 440 * t) * np.exp(-((t % 0.48) / 0.05))
    feats = tok.features(torch.tensor(wav, dtype=torch.float32).view(1, 1, -1))[0].numpy()
    onset = feats[:, ONSET_COLUMN]
    strikes = np.round(np.arange(0, 4, 0.48) * sr / tok.hop).astype(int)
    assert onset[strikes].mean() > 5 * np.median(onset)
