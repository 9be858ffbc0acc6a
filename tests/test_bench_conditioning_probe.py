"""The conditioning probe reads attributes linearly from one-hot tokens
(research/conditioning_probe.py)."""

import numpy as np
from research_script import load_research_script


def _module():
    return load_research_script("conditioning_probe")


def _labels(codes: np.ndarray) -> dict:
    # level 0 decides the tempo (code < 2: slow 70 BPM, else fast 150), level 1 the instrument
    bpm = np.where(codes[:, 0] < 2, 70.0, 150.0)
    return {
        "bpm": bpm,
        "tempo_word": np.where(bpm < 100, "slow", "fast"),
        "instrument": np.array(["flute", "organ", "piano", "violin"])[codes[:, 1]],
    }


def test_probe_reads_attributes_one_level_carries_and_not_the_others():
    bench = _module()
    rng = np.random.default_rng(0)
    train, test = rng.integers(0, 4, (200, 3)), rng.integers(0, 4, (50, 3))
    x = bench.one_hot(train, 4)
    assert x.shape == (200, 12) and (x.sum(1) == 3).all()
    assert (x[np.arange(200), 4 + train[:, 1]] == 1).all()  # level 1 owns columns 4..7
    got = bench.probe(x, _labels(train), bench.one_hot(test, 4), _labels(test))
    assert got == {"tempo_word": 1.0, "instrument": 1.0, "bpm_within_8pct": 1.0}
    # tokens that do not carry the attributes: the probe falls to about chance
    noise = rng.integers(0, 4, (50, 3))
    shuffled = bench.probe(x, _labels(train), bench.one_hot(noise, 4), _labels(test))
    assert shuffled["instrument"] < 0.5 and shuffled["tempo_word"] < 0.8
