import json

import numpy as np
import pytest
import soundfile as sf

from musiclm.demo_corpus import (
    INSTRUMENTS,
    Tune,
    build_demo_corpus,
    clip_notes,
    load_tunes,
    notes_for,
    render_notes,
)
from musiclm.demo_corpus.builder import assign_splits, key_name, plan_clip

SR = 16000
MELODY = [(i * 0.5, 0.5, 60 + (0, 2, 4, 5, 7, 9, 11, 12)[i % 8]) for i in range(16)]


@pytest.fixture(scope="module")
def tunes():
    return load_tunes(workers=2)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, tunes):
    out = tmp_path_factory.mktemp("demo")
    manifest = build_demo_corpus(out, clips=20, seconds=2.0, seed=3, progress=False)
    return out, [json.loads(line) for line in manifest.read_text().splitlines()]


def test_render_notes_shape_level_and_determinism():
    for inst in INSTRUMENTS:
        y = render_notes(MELODY, instrument=inst, bpm=120, sample_rate=SR, seconds=3.0, seed=1)
        assert y.dtype == np.float32 and y.shape == (3 * SR,)
        assert np.isfinite(y).all() and np.abs(y).max() <= 0.9 + 1e-6
        assert abs(np.sqrt(np.mean(y**2)) - 0.1) < 0.02 or np.abs(y).max() > 0.89
        again = render_notes(MELODY, instrument=inst, bpm=120, sample_rate=SR, seconds=3.0, seed=1)
        assert np.array_equal(y, again)


def test_instruments_have_different_timbres():
    """Same melody, different instruments: their average spectra must clearly differ."""
    assert len(INSTRUMENTS) >= 6 and len(set(INSTRUMENTS)) == len(INSTRUMENTS)
    spectra = {}
    for inst in INSTRUMENTS:
        y = render_notes(MELODY, instrument=inst, bpm=100, sample_rate=SR, seconds=4.0, seed=0)
        frames = y[: len(y) // 1024 * 1024].reshape(-1, 1024)
        mag = np.abs(np.fft.rfft(frames * np.hanning(1024), axis=1)).mean(axis=0)
        spectra[inst] = mag / np.linalg.norm(mag)
    names = list(spectra)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert float(spectra[a] @ spectra[b]) < 0.97, (a, b)


def test_render_notes_rejects_unknown_instrument():
    with pytest.raises(ValueError, match="unknown instrument 'kazoo'.*piano"):
        render_notes(MELODY, instrument="kazoo", bpm=100, sample_rate=SR, seconds=1, seed=0)


def test_tempo_changes_note_timing():
    one = [(0.0, 0.25, 69), (2.0, 0.25, 69)]
    y = render_notes(one, instrument="marimba", bpm=60, sample_rate=SR, seconds=3.0, seed=0)
    env = np.abs(y)
    # second note at beat 2 = 2 s at 60 BPM: silence before it, an onset right after
    assert env[int(1.7 * SR) : int(1.95 * SR)].max() < 0.2 * env[2 * SR : int(2.1 * SR)].max()


def test_clip_notes_loops_and_transposes():
    tune = Tune("t", "t", "Irish reel", 2, "major", "4/4", 4.0, [(0.0, 1.0, 60), (2.0, 2.0, 64)])
    notes = clip_notes(tune, start=2.0, beats=6.0, transpose=3)
    assert notes == [(0.0, 2.0, 67), (2.0, 1.0, 63), (4.0, 2.0, 67)]


def test_tune_selection_is_real_music(tunes):
    sources = {t.source for t in tunes}
    assert {"Bach chorale", "German folk song", "Irish reel"} <= sources
    assert len(tunes) >= 200
    chorale = next(t for t in tunes if t.source == "Bach chorale")
    onsets = [o for o, _, _ in chorale.notes]
    assert len(onsets) > len(set(onsets))  # several voices sound together: harmony
    assert all(t.mode in ("major", "minor") for t in tunes)


def test_manifest_schema(corpus):
    out, rows = corpus
    assert [r["id"] for r in rows] == [f"demo{i:06d}" for i in range(20)]
    for r in rows:
        assert "." not in r["id"] and r["audio"] == f"audio/{r['id']}.wav"
        a = r["attributes"]
        assert a["instrument"] in INSTRUMENTS
        assert isinstance(a["bpm"], int) and 30 <= a["bpm"] <= 240
        assert a["mode"] in ("major", "minor") and a["meter"].count("/") == 1
        assert a["melody_id"] == a["piece"] and isinstance(a["transpose"], int)
        assert a["register"] in ("low", "middle", "high")
        assert r["split"] in ("train", "valid", "test")
        audio, sr = sf.read(out / r["audio"], dtype="float32")
        assert sr == SR and audio.shape == (2 * SR,) and np.abs(audio).max() <= 0.95
    assert {r["split"] for r in rows} == {"train", "valid", "test"}


def test_captions_describe_attributes(corpus):
    _, rows = corpus
    words = {
        "piano": "piano",
        "organ": "organ",
        "flute": "flute",
        "violin": "violin",
        "acoustic guitar": "guitar",
        "square lead synth": "synth",
        "marimba": "marimba",
    }
    for r in rows:
        a = r["attributes"]
        assert words[a["instrument"]] in r["caption"]
        assert a["source"].lower() in r["caption"].lower()
    assert len({r["caption"] for r in rows}) == len(rows)


def test_splits_are_disjoint_by_piece(corpus, tunes):
    _, rows = corpus
    split_of = {}
    for r in rows:
        piece = r["attributes"]["piece"]
        assert split_of.setdefault(piece, r["split"]) == r["split"], piece
    splits = assign_splits(tunes, seed=3)
    assert {splits[r["attributes"]["piece"]] for r in rows if r["split"] == "valid"} == {"valid"}


def test_deterministic_for_a_seed(tmp_path, corpus):
    out, rows = corpus
    again = build_demo_corpus(tmp_path / "a", clips=6, seconds=2.0, seed=3, progress=False)
    rows_again = [json.loads(line) for line in again.read_text().splitlines()]
    assert rows_again == rows[:6]  # a corpus of N clips is a prefix of a larger one
    for r in rows_again:
        assert (tmp_path / "a" / r["audio"]).read_bytes() == (out / r["audio"]).read_bytes()
    other = build_demo_corpus(tmp_path / "b", clips=6, seconds=2.0, seed=4, progress=False)
    assert [json.loads(x) for x in other.read_text().splitlines()] != rows[:6]


def test_notes_for_recovers_the_melody(tunes):
    splits = assign_splits(tunes, seed=0)
    plan = plan_clip(tunes, splits, index=5, seed=0, seconds=4.0)
    assert notes_for(plan["attributes"], seconds=4.0) == plan["_notes"]
    lo, hi = min(p for *_, p in plan["_notes"]), max(p for *_, p in plan["_notes"])
    assert lo >= 20 and hi <= 108


def test_key_names():
    assert key_name(2, "major") == "D" and key_name(10, "major") == "Bb"
    assert key_name(1, "minor") == "C#" and key_name(13, "minor") == "C#"


def test_cli_writes_corpus(tmp_path):
    from musiclm.commands.data import main

    code = main(
        [
            "demo",
            "--out",
            str(tmp_path),
            "--clips",
            "3",
            "--seconds",
            "1",
            "--workers",
            "1",
            "--quiet",
        ]
    )
    assert code == 0
    rows = (tmp_path / "manifest.jsonl").read_text().splitlines()
    assert len(rows) == 3 and all((tmp_path / json.loads(r)["audio"]).is_file() for r in rows)
    with pytest.raises(SystemExit) as refused:  # refused while parsing, naming the flag
        main(["demo", "--out", str(tmp_path), "--clips", "0", "--quiet"])
    assert refused.value.code == 2


def test_wavetable_phase_rounding_stays_in_bounds():
    """A phase a hair below a full cycle once rounded to the table end (IndexError)."""
    from musiclm.demo_corpus.synth import _wavetable

    class ZeroPhases:
        def uniform(self, low, high, size=None):
            return np.zeros(size) if size is not None else 0.0

    t = np.array([0.0, 0.5, np.nextafter(1.0, 0.0)])
    y = _wavetable(np.array([1.0]), np.array([1.0]), 1.0, t, ZeroPhases())
    assert y.shape == (3,) and abs(y[2]) < 1e-3 and abs(y[1]) < 1e-3


def test_other_wording_prompts_avoid_the_caption_templates():
    from musiclm.demo_corpus.captions import _INSTRUMENT_PHRASES, make_caption
    from musiclm.demo_corpus.paraphrases import INSTRUMENT_WORDS, other_wording_rows, paraphrase

    assert set(INSTRUMENT_WORDS) == set(_INSTRUMENT_PHRASES)
    rng = np.random.default_rng(0)
    for inst, words in INSTRUMENT_WORDS.items():
        assert len(set(words)) >= 4, inst
        assert not set(words) & set(_INSTRUMENT_PHRASES[inst]), inst
        for bpm in (60, 90, 120, 160):
            attrs = {"instrument": inst, "bpm": bpm, "key": "D", "mode": "minor",
                     "source": "jig", "meter": "6/8"}  # fmt: skip
            prompt = paraphrase(attrs, rng)
            assert not any(ch.isdigit() for ch in prompt.replace("8-bit", "")), prompt
            assert "BPM" not in prompt and "beats per minute" not in prompt
            assert prompt not in {make_caption({**attrs, "register": "middle"}, rng)}
    rows = [{"id": f"c{i}", "attributes": {"instrument": inst, "bpm": 100, "key": "C",
             "mode": "major", "source": "reel"}}
            for i, inst in enumerate(list(INSTRUMENT_WORDS) * 5)]  # fmt: skip
    got = other_wording_rows(rows, per_instrument=4, seed=1)
    assert len(got) == 4 * len(INSTRUMENT_WORDS)
    assert got == other_wording_rows(rows, per_instrument=4, seed=1)  # deterministic
