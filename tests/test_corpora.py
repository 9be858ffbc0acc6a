import csv
import json

import numpy as np
import pytest
import soundfile as sf

from musiclm.datamodules.corpora import iter_items, list_entries, split_for


def tone(seconds: float, sr: int, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "audio"
    (root / "sub").mkdir(parents=True)
    sf.write(root / "a.wav", tone(2.0, 22050), 22050)
    (root / "a.txt").write_text("a calm piano piece\n")
    sf.write(root / "sub" / "b.flac", np.stack([tone(1.5, 16000)] * 2, axis=1), 16000)
    (root / "sub" / "b.json").write_text(json.dumps({"caption": "stereo flac", "genre": "jazz"}))
    sf.write(root / "c.ogg", tone(1.2, 16000), 16000, format="OGG")
    (root / "c.txt").write_text("an ogg clip")
    sf.write(root / "d.mp3", tone(1.5, 16000), 16000, format="MP3")
    (root / "d.txt").write_text("an mp3 clip")
    sf.write(root / "nocap.wav", tone(2.0, 16000), 16000)  # no sidecar
    (root / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunkjunk")
    (root / "corrupt.txt").write_text("broken")
    sf.write(root / "short.wav", tone(0.3, 16000), 16000)
    (root / "short.txt").write_text("too short")
    return root


def test_folder_adapter(folder):
    skipped = []
    items = {it.id: it for it in iter_items("folder", folder, sample_rate=16000, skipped=skipped)}
    assert set(items) == {"a", "sub_b", "c", "d"}
    assert abs(len(items["d"].audio) - 24000) < 2000  # mp3 decoders may pad a frame
    a = items["a"]
    assert a.sample_rate == 16000 and a.audio.dtype == np.float32 and a.audio.ndim == 1
    assert abs(len(a.audio) - 32000) <= 1  # resampled from 22.05 kHz
    assert a.caption == "a calm piano piece" and a.meta["source"] == "folder"
    assert items["sub_b"].meta["genre"] == "jazz" and items["sub_b"].audio.shape == (24000,)
    assert items["sub_b"].meta["duration_s"] == 1.5
    reasons = {s["item"]: s["reason"] for s in skipped}
    assert set(reasons) == {"nocap.wav", "corrupt.wav", "short.wav"}
    assert "no caption sidecar" in reasons["nocap.wav"]
    assert "unreadable" in reasons["corrupt.wav"]
    assert "too short" in reasons["short.wav"]


def test_jsonl_adapter(tmp_path):
    sf.write(tmp_path / "x.wav", tone(2.0, 16000), 16000)
    sf.write(tmp_path / "y.wav", tone(2.0, 16000), 16000)
    rows = [
        {"audio": "x.wav", "caption": "first", "split": "valid", "attributes": {"bpm": 90}},
        {"id": "why.not", "audio": str(tmp_path / "y.wav"), "caption": "second", "mood": "sad"},
        {"audio": "missing.wav", "caption": "gone"},
        {"audio": "x.wav"},
        {"id": "odd", "audio": "y.wav", "caption": "attributes not a dict", "attributes": "x"},
    ]
    lines = [json.dumps(r) for r in rows] + ["{not json"]
    (tmp_path / "m.jsonl").write_text("\n".join(lines) + "\n")
    skipped = []
    items = list(iter_items("jsonl", tmp_path / "m.jsonl", sample_rate=16000, skipped=skipped))
    assert [it.id for it in items] == ["x", "why_not", "odd"]
    assert items[0].meta["split"] == "valid" and items[0].meta["attributes"] == {"bpm": 90}
    assert items[1].meta["mood"] == "sad" and items[1].meta["split"] in ("train", "valid", "test")
    reasons = {s["item"]: s["reason"] for s in skipped}
    assert "audio missing" in reasons["m.jsonl:3"]
    assert "bad line" in reasons["m.jsonl:4"] and "bad line" in reasons["m.jsonl:6"]


def write_musiccaps(tmp_path, rows):
    path = tmp_path / "musiccaps.csv"
    cols = [
        "ytid",
        "start_s",
        "end_s",
        "audioset_positive_labels",
        "aspect_list",
        "caption",
        "author_id",
        "is_balanced_subset",
        "is_audioset_eval",
    ]
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for r in rows:
            w.writerow({c: r.get(c, "") for c in cols})
    return path


def test_musiccaps_adapter_cuts_and_keeps_aspects(tmp_path):
    audio_dir = tmp_path / "yt"
    audio_dir.mkdir()
    sr = 16000
    ramp = (np.arange(30 * sr) / (30 * sr) * 0.9).astype(np.float32)  # value encodes time
    sf.write(audio_dir / "-0Gj8-vB1q4.wav", ramp, sr, subtype="FLOAT")
    sf.write(audio_dir / "abc_DEF.flac", tone(12.0, 44100), 44100)
    rows = [
        {
            "ytid": "-0Gj8-vB1q4",
            "start_s": "10",
            "end_s": "20",
            "caption": "low quality rock",
            "aspect_list": "['low quality', \"sustained strings melody\"]",
            "is_audioset_eval": "True",
            "author_id": "4",
        },
        {
            "ytid": "abc_DEF",
            "start_s": "0",
            "end_s": "10",
            "caption": "a tone",
            "aspect_list": "['tone']",
            "is_audioset_eval": "False",
        },
        {
            "ytid": "notdownloaded",
            "start_s": "30",
            "end_s": "40",
            "caption": "x",
            "aspect_list": "[]",
        },
    ]
    csv_path = write_musiccaps(tmp_path, rows)
    skipped = []
    items = list(
        iter_items("musiccaps", csv_path, audio_dir=audio_dir, sample_rate=sr, skipped=skipped)
    )
    assert [it.id for it in items] == ["-0Gj8-vB1q4", "abc_DEF"]
    first = items[0]
    assert first.audio.shape == (10 * sr,) and first.meta["duration_s"] == 10.0
    assert first.audio[0] == pytest.approx(0.3, abs=1e-3)  # 10 s into a 30 s ramp to 0.9
    assert first.audio[-1] == pytest.approx(0.6, abs=1e-3)
    assert first.meta["aspect_list"] == ["low quality", "sustained strings melody"]
    assert first.meta["is_audioset_eval"] is True and first.meta["author_id"] == "4"
    assert first.caption == "low quality rock" and first.meta["ytid"] == "-0Gj8-vB1q4"
    assert items[1].audio.shape == (10 * sr,)  # resampled from 44.1 kHz
    assert len(skipped) == 1 and "audio missing" in skipped[0]["reason"]
    assert "notdownloaded" in skipped[0]["item"]


def test_musiccaps_needs_columns_and_audio_dir(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("ytid,caption\nabc,hello\n")
    (tmp_path / "yt").mkdir()
    with pytest.raises(ValueError, match="lacks columns"):
        list_entries("musiccaps", bad, audio_dir=tmp_path / "yt")
    with pytest.raises(ValueError, match="--audio-dir"):
        list_entries("musiccaps", bad)
    with pytest.raises(ValueError, match="unknown source 'youtube'"):
        list_entries("youtube", bad)


def test_splits_without_labels_are_stable_and_group_by_piece(tmp_path):
    assert split_for("piece-1", 0.1, 0.1) == split_for("piece-1", 0.1, 0.1)
    counts = {s: 0 for s in ("train", "valid", "test")}
    for i in range(2000):
        counts[split_for(f"item{i}", 0.1, 0.2)] += 1
    assert 150 < counts["valid"] < 250 and 320 < counts["test"] < 480
    lines = [
        {"audio": f"{i}.wav", "caption": "c", "attributes": {"piece": f"p{i % 5}"}}
        for i in range(40)
    ]
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(r) for r in lines))
    entries = list_entries("jsonl", tmp_path / "m.jsonl", valid_fraction=0.3, test_fraction=0.3)
    by_piece = {}
    for e in entries:
        assert by_piece.setdefault(e.meta["attributes"]["piece"], e.split) == e.split
