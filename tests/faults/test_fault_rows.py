"""Malformed corpus rows are counted skips with file, line and reason, never a crash."""

import json

import numpy as np
import soundfile as sf

from musiclm.commands import prepare_audio as pa
from musiclm.datamodules.corpora import Entry, SkipItem, iter_items, load_entry

SR = 8000
HEADER = "ytid,start_s,end_s,aspect_list,caption\n"


def _tone(path, seconds: float = 2.0) -> None:
    t = np.arange(int(seconds * SR)) / SR
    sf.write(path, (0.2 * np.sin(2 * np.pi * 330 * t)).astype(np.float32), SR)


def _musiccaps(tmp_path, rows: list[str]):
    audio = tmp_path / "yt"
    audio.mkdir()
    for ytid in ("good", "short_row", "infinite", "blank", "backwards", "nan"):
        _tone(audio / f"{ytid}.wav")
    csv_path = tmp_path / "mc.csv"
    csv_path.write_text(HEADER + "".join(r + "\n" for r in rows))
    return csv_path, audio


def test_musiccaps_rows_with_missing_columns_inf_nan_and_blank_captions_are_skips(tmp_path):
    csv_path, audio = _musiccaps(
        tmp_path,
        [
            "good,0,1.5,\"['x']\",a calm tune",
            "short_row,0",  # missing columns: float(None) was a TypeError
            "infinite,inf,1,[],a tune",  # int(round(inf)) was an OverflowError
            'blank,0,1,[],"   "',  # blanks were a training pair without text
            "backwards,1.5,0.5,[],a tune",
            "nan,nan,1,[],a tune",
        ],
    )
    skipped: list[dict] = []
    items = list(
        iter_items("musiccaps", csv_path, audio_dir=audio, sample_rate=SR, skipped=skipped)
    )
    assert [it.id for it in items] == ["good"]
    reasons = {s["item"]: s["reason"] for s in skipped}
    assert set(reasons) == {
        "mc.csv:3 (short_row)",
        "mc.csv:4 (infinite)",
        "mc.csv:5 (blank)",
        "mc.csv:6 (backwards)",
        "mc.csv:7 (nan)",
    }
    assert "no value for end_s, aspect_list, caption" in reasons["mc.csv:3 (short_row)"]
    assert "start_s='inf'" in reasons["mc.csv:4 (infinite)"]
    assert reasons["mc.csv:5 (blank)"] == "empty caption"
    assert "not after start_s" in reasons["mc.csv:6 (backwards)"]
    assert "start_s='nan'" in reasons["mc.csv:7 (nan)"]


def test_whitespace_captions_in_jsonl_and_folder_sidecars_are_skips(tmp_path):
    _tone(tmp_path / "a.wav")
    _tone(tmp_path / "b.wav")
    rows = [{"audio": "a.wav", "caption": "  \t "}, {"audio": "b.wav", "caption": " real "}]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    skipped: list[dict] = []
    items = list(iter_items("jsonl", manifest, sample_rate=SR, skipped=skipped))
    assert [it.caption for it in items] == ["real"]
    assert skipped[0]["item"] == "m.jsonl:1" and "must not be empty" in skipped[0]["reason"]

    folder = tmp_path / "folder"
    folder.mkdir()
    _tone(folder / "x.wav")
    (folder / "x.json").write_text(json.dumps({"caption": "   "}))
    skipped = []
    assert list(iter_items("folder", folder, sample_rate=SR, skipped=skipped)) == []
    assert skipped == [{"item": "x.wav", "reason": "empty caption"}]


def test_an_entry_with_an_infinite_cut_is_a_skip_not_an_overflow(tmp_path):
    _tone(tmp_path / "a.wav")
    entry = Entry(id="a", name="a", caption="c", path=str(tmp_path / "a.wav"), start_s=np.inf)
    try:
        load_entry(entry, sample_rate=SR)
    except SkipItem as exc:
        assert "start_s" in str(exc)
    else:
        raise AssertionError("an infinite start was loaded")


def test_prepare_audio_finishes_over_a_musiccaps_file_with_bad_rows(tmp_path, capsys):
    csv_path, audio = _musiccaps(
        tmp_path, ["good,0,1.5,[],a calm tune", "short_row,0", "infinite,inf,1,[],a tune"]
    )
    argv = ["--source", "musiccaps", "--input", str(csv_path), "--audio-dir", str(audio)]
    argv += ["--out", str(tmp_path / "out"), "--quiet", "--valid-fraction", "0"]
    argv += ["--test-fraction", "0", "--sample-rate", str(SR)]
    assert pa.main(argv) == 0
    out = capsys.readouterr().out
    assert "train: 1 samples" in out and "2 skipped" in out
    assert "skipped mc.csv:4 (infinite)" in out
