"""The structure metrics tell a tune from a drone, noise, silence and shuffled frames."""

from __future__ import annotations

import numpy as np
import pytest
from eval_synth import synth_clip

from musiclm.evaluation import structure as S

SR = 22050
SECONDS = 8.0


def _tune(seed: int = 0, bpm: float = 120.0, instrument: str = "pluck") -> np.ndarray:
    return synth_clip(
        instrument=instrument, bpm=bpm, key=seed % 12, mode="major", seconds=SECONDS,
        sample_rate=SR, seed=seed,
    )  # fmt: skip


def _t() -> np.ndarray:
    return np.arange(int(SECONDS * SR)) / SR


def _drone() -> np.ndarray:
    return (0.2 * sum(np.sin(2 * np.pi * f * _t()) for f in (261.6, 329.6, 392.0))).astype(
        np.float32
    )


def _noise(seed: int = 0) -> np.ndarray:
    return (0.1 * np.random.default_rng(seed).standard_normal(_t().size)).astype(np.float32)


def _silence() -> np.ndarray:
    return np.zeros(_t().size, dtype=np.float32)


def _shuffled(y: np.ndarray, seed: int = 0, block_s: float = 0.05) -> np.ndarray:
    blk = int(block_s * SR)
    n = y.size // blk
    order = np.random.default_rng(seed).permutation(n)
    return y[: n * blk].reshape(n, blk)[order].reshape(-1)


@pytest.fixture(scope="module")
def tunes() -> list[dict[str, float]]:
    return [S.analyse_structure(_tune(seed), SR) for seed in range(4)]


@pytest.mark.parametrize("make", [_drone, _noise, _silence], ids=["drone", "noise", "silence"])
def test_motion_pulse_onsets_fail_without_music(make, tunes):
    m = S.analyse_structure(make(), SR)
    for name in ("note_motion", "pulse_clarity", "onset_rate", "pitch_range", "pitch_entropy"):
        real = float(np.median([t[name] for t in tunes]))
        assert real > 0, name
        assert m[name] < 0.25 * real, (name, m[name], real)
    assert m["static"] == 1.0


def test_tunes_move_and_keep_a_pulse(tunes):
    for t in tunes:
        assert t["note_motion"] > 0.2
        assert t["pulse_clarity"] > 0.5
        assert 1.0 < t["onset_rate"] < 4.0  # one note per beat at 120 BPM: 2 per second
        assert t["pitch_range"] >= 3
        assert t["pitch_entropy"] > 0.8  # the clips hold a tonic drone under the tune
        assert t["key_clarity"] > 0.5
        assert t["static"] == 0.0


def test_key_clarity_zero_without_pitch():
    assert S.analyse_structure(_noise(1), SR)["key_clarity"] == 0.0
    assert S.analyse_structure(_silence(), SR)["key_clarity"] == 0.0


def test_shuffled_frames_lose_the_pulse(tunes):
    shuffled = [S.analyse_structure(_shuffled(_tune(seed), seed), SR) for seed in range(4)]
    real = np.median([t["pulse_clarity"] for t in tunes])
    got = np.median([s["pulse_clarity"] for s in shuffled])
    assert got < 0.6 * real, (got, real)


def test_onset_rate_follows_the_tempo():
    slow = S.analyse_structure(_tune(1, bpm=60.0), SR)["onset_rate"]
    fast = S.analyse_structure(_tune(1, bpm=180.0), SR)["onset_rate"]
    assert fast > 2.0 * slow


def test_level_does_not_matter():
    y = _tune(2)
    loud, quiet = S.analyse_structure(y, SR), S.analyse_structure(0.05 * y, SR)
    for name in S.METRICS:
        assert loud[name] == pytest.approx(quiet[name], rel=0.1, abs=0.05), name


def test_compare_and_acceptance_refuse_drones_noise_and_silence(tunes):
    for make in (_drone, _noise, _silence):
        fake = [S.analyse_structure(make(), SR) for _ in range(2)]
        summary = S.compare(fake, tunes)
        checks = S.acceptance_checks(summary)
        assert checks and not any(ok for _, ok, _ in checks), (make.__name__, checks)
    same = S.compare(tunes, tunes)
    assert all(ok for _, ok, _ in S.acceptance_checks(same))
    assert same["note_motion"]["ratio"] == pytest.approx(1.0)
    assert same["note_motion"]["wasserstein"] == pytest.approx(0.0)


def test_acceptance_is_two_sided():
    real = [{**dict.fromkeys(S.METRICS, 1.0), "static": 0.0}] * 3
    busy = [{**dict.fromkeys(S.METRICS, 3.0), "static": 0.0}] * 3
    checks = dict((w, ok) for w, ok, _ in S.acceptance_checks(S.compare(busy, real)))
    assert not any(v for k, v in checks.items() if not k.startswith("static"))


def test_resampling_and_bad_audio():
    y16 = synth_clip(instrument="square", bpm=100, key=3, mode="minor", seconds=SECONDS,
                     sample_rate=16000, seed=3)  # fmt: skip
    m = S.analyse_structure(y16, 16000)
    assert m["note_motion"] > 0.2 and m["pulse_clarity"] > 0.4
    with pytest.raises(ValueError, match="non-finite"):
        S.analyse_structure(np.array([0.0, np.nan], dtype=np.float32), SR)


def test_plot_writes_png(tmp_path, tunes):
    png = tmp_path / "structure.png"
    S.plot_distributions(tunes, tunes, png)
    assert png.read_bytes()[:4] == b"\x89PNG"
