import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from eval_synth import INSTRUMENTS, synth_clip  # noqa: E402

from musiclm.evaluation import attributes as A  # noqa: E402

SR = 16000


def _corpus(n: int, seed: int) -> tuple[list, list[dict]]:
    rng = np.random.default_rng(seed)
    clips, attrs = [], []
    for i in range(n):
        a = {
            "instrument": INSTRUMENTS[i % len(INSTRUMENTS)],
            "bpm": int(rng.choice([70, 100, 140])),
            "key": A.PITCH_CLASSES[int(rng.integers(12))],
            "mode": ("major", "minor")[int(rng.integers(2))],
        }
        y = synth_clip(
            instrument=a["instrument"],
            bpm=a["bpm"],
            key=A.pitch_class(a["key"]),
            mode=a["mode"],
            seconds=4.0,
            seed=seed * 1000 + i,
        )
        clips.append((y, SR))
        attrs.append(a)
    return clips, attrs


@pytest.fixture(scope="module")
def fitted():
    train_clips, train_attrs = _corpus(18, seed=1)
    test_clips, test_attrs = _corpus(9, seed=2)
    est = A.AttributeEstimators.fit(A.analyse_many(train_clips), train_attrs, sample_rate=SR)
    return est, train_attrs, test_clips, test_attrs


def test_pitch_class_names():
    assert A.pitch_class("C") == 0
    assert A.pitch_class("Bb") == A.pitch_class("A#") == 10
    assert A.pitch_class("f♯") == 6
    with pytest.raises(ValueError, match="unknown key name 'H'"):
        A.pitch_class("H")


def test_bpm_tolerance_and_octaves():
    assert A.bpm_correct(104.0, 100.0)
    assert not A.bpm_correct(110.0, 100.0)
    assert not A.bpm_correct(200.0, 100.0)
    assert A.bpm_correct(200.0, 100.0, octave=True)
    assert A.bpm_correct(50.0, 100.0, octave=True)
    assert A.tempo_word(60.0) == "slow" and A.tempo_word(150.0) == "fast"
    assert A.tempo_word(120.0) == "lively"


def test_key_estimator_on_profile_chroma():
    est = A.KeyEstimator()
    for tonic in (0, 5, 9):
        chroma = np.roll(np.asarray(A.KK_MINOR), tonic)
        assert est.predict(chroma) == (A.PITCH_CLASSES[tonic], "minor")


def test_estimators_beat_chance_on_held_out_synthetic_clips(fitted):
    est, train_attrs, test_clips, test_attrs = fitted
    preds = [est.predict(est.analyse(y, sr)) for y, sr in test_clips]
    acc = A.adherence(preds, test_attrs)
    chance = A.chance_levels(train_attrs, test_attrs)
    assert acc["instrument"]["accuracy"] >= 0.9
    assert acc["bpm_within_8pct"]["accuracy"] >= 0.75
    assert acc["key_and_mode"]["accuracy"] >= 0.5  # 4 s random melodies: little tonal evidence
    for name in ("instrument", "bpm_within_8pct", "key_and_mode"):
        assert acc[name]["accuracy"] > chance[name]["majority"]
        assert acc[name]["accuracy"] > chance[name]["prior"]


def test_wrong_targets_score_low(fitted):
    est, _, test_clips, test_attrs = fitted
    preds = [est.predict(est.analyse(y, sr)) for y, sr in test_clips]
    shifted = [
        {**t, "instrument": INSTRUMENTS[(INSTRUMENTS.index(t["instrument"]) + 1) % 3]}
        for t in test_attrs
    ]
    assert A.adherence(preds, shifted)["instrument"]["accuracy"] <= 0.2


def test_save_load_round_trip_is_json(fitted, tmp_path):
    est, _, test_clips, _ = fitted
    path = tmp_path / "est.json"
    est.save(path)
    json.loads(path.read_text())  # plain JSON, no pickle
    again = A.AttributeEstimators.load(path)
    y, sr = test_clips[0]
    analysis = est.analyse(y, sr)
    assert again.predict(analysis) == est.predict(analysis)


def test_load_rejects_other_json(tmp_path):
    path = tmp_path / "x.json"
    path.write_text('{"hello": 1}')
    with pytest.raises(ValueError, match="not a musiclm attribute-estimators file"):
        A.AttributeEstimators.load(path)


def test_chance_levels_closed_form():
    train = [{"instrument": "a"}] * 3 + [{"instrument": "b"}]
    targets = [{"instrument": "a"}, {"instrument": "b"}]
    c = A.chance_levels(train, targets)["instrument"]
    assert c["prior"] == pytest.approx((0.75 + 0.25) / 2)
    assert c["majority"] == pytest.approx(0.5)


def test_shuffled_prompts_tell_following_from_a_constant_output():
    rng = np.random.default_rng(0)
    targets = [{"instrument": str(i % 5), "bpm": float(rng.choice([60, 90, 120, 150, 180]))}
               for i in range(60)]  # fmt: skip
    # output that follows its prompt: right on its own, mostly wrong re-paired
    follow = A.shuffled_prompts(targets, targets, permutations=500)
    assert follow["instrument"]["accuracy"] == pytest.approx(0.2, abs=0.05)
    assert follow["instrument"]["p"] < 0.01 and follow["bpm_within_8pct"]["p"] < 0.01
    # output that always takes one value: as good re-paired as paired
    constant = [{"instrument": "0", "bpm": 120.0}] * 60
    same = A.shuffled_prompts(constant, targets, permutations=500)
    real = A.adherence(constant, targets)
    assert same["instrument"]["accuracy"] == pytest.approx(real["instrument"]["accuracy"])
    assert same["instrument"]["p"] == 1.0 and same["bpm_within_8pct"]["p"] == 1.0
    with pytest.raises(ValueError, match="targets"):
        A.shuffled_prompts(constant, targets[:3])


def test_fit_without_labels_is_an_error():
    analysis = A.ClipAnalysis(np.zeros(3), np.ones(500), np.full(12, 1 / 12))
    with pytest.raises(ValueError, match="nothing to fit"):
        A.AttributeEstimators.fit([analysis], [{"caption": "x"}])


def test_tempo_words_agree_with_demo_captions():
    captions = pytest.importorskip("musiclm.demo_corpus.captions")
    for bpm in range(40, 220):
        assert A.tempo_word(bpm) == captions.tempo_word(bpm), bpm
