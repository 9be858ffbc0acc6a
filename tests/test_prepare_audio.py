import json
import tarfile

import numpy as np
import pytest
import soundfile as sf

from musiclm.commands.prepare_audio import main as prepare_audio_main
from musiclm.datamodules import prepare_audio as pa
from musiclm.datamodules.shards import (
    IncompleteShards,
    SkipCounter,
    decode_flac,
    decode_npy,
    encode_flac,
    encode_npy,
    iter_audio_samples,
    read_manifest,
)

SR = 16000


@pytest.fixture
def corpus(tmp_path):
    """A JSONL corpus of 23 clips (distinct tones), one missing and one corrupt file."""
    root = tmp_path / "corpus"
    root.mkdir()
    rows = []
    for i in range(23):
        t = np.arange(int((1.0 + 0.1 * (i % 3)) * SR)) / SR
        sf.write(root / f"c{i}.wav", 0.2 * np.sin(2 * np.pi * (200 + 20 * i) * t), SR)
        split = "valid" if i % 7 == 3 else "train"
        rows.append(
            {
                "id": f"c{i}",
                "audio": f"c{i}.wav",
                "caption": f"tone {i}",
                "split": split,
                "attributes": {"piece": f"p{i}", "bpm": 100 + i},
            }
        )
    rows.append({"id": "gone", "audio": "gone.wav", "caption": "missing", "split": "train"})
    (root / "bad.wav").write_bytes(b"not audio at all")
    rows.append({"id": "bad", "audio": "bad.wav", "caption": "corrupt", "split": "train"})
    (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root / "manifest.jsonl"


def samples(split_dir):
    return {s["key"]: s for s in iter_audio_samples(split_dir)}


def test_codecs_roundtrip():
    a = np.linspace(-1, 1, 1000, dtype=np.float32)
    back, sr = decode_flac(encode_flac(a, SR))
    assert sr == SR and np.abs(back - a).max() < 1e-4
    arr = np.arange(12, dtype=np.int16).reshape(3, 4)
    assert np.array_equal(decode_npy(encode_npy(arr)), arr)
    with pytest.raises(TypeError, match="pickle"):
        encode_npy(np.array([{"a": 1}], dtype=object))


def test_read_manifest_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{broken")
    with pytest.raises(ValueError, match="invalid JSON.*manifest.json"):
        read_manifest(tmp_path)


def test_prepare_audio_writes_shards_and_manifest(tmp_path, corpus):
    out = tmp_path / "shards"
    code = prepare_audio_main(
        [
            "--source",
            "demo",
            "--input",
            str(corpus),
            "--out",
            str(out),
            "--shard-size",
            "4",
            "--quiet",
        ]
    )
    assert code == 0
    train, valid = read_manifest(out / "train"), read_manifest(out / "valid")
    assert train["kind"] == "audio" and train["sample_rate"] == SR and train["complete"]
    assert valid["num_samples"] == 3 and train["num_samples"] == 20
    assert sum(s["num_samples"] for s in train["shards"]) == 20
    assert train["total_seconds"] == pytest.approx(sum(s["seconds"] for s in train["shards"]))
    reasons = {s["item"]: s["reason"] for s in train["skipped"]}
    assert "audio missing" in reasons["manifest.jsonl:24"]
    assert "unreadable" in reasons["manifest.jsonl:25"]
    got = samples(out / "train")
    assert len(got) == 20 and "c3" not in got
    s = got["c4"]
    original, _ = sf.read(corpus.parent / "c4.wav", dtype="float32")
    assert s["sample_rate"] == SR and np.abs(s["audio"] - original).max() < 1e-3
    assert s["caption"] == "tone 4" and s["meta"]["attributes"] == {"piece": "p4", "bpm": 104}
    assert s["meta"]["split"] == "train" and s["meta"]["duration_s"] == pytest.approx(1.1)
    assert s["meta"]["id"] == "c4" and s["meta"]["source"] == "demo"


def test_killed_and_rerun_equals_uninterrupted(tmp_path, corpus, monkeypatch):
    full = tmp_path / "full"
    pa.prepare_audio("demo", corpus, full, shard_size=3, progress=False)

    killed = tmp_path / "killed"
    real = pa._write_chunk
    calls = {"n": 0}

    def dies_after_two(job):
        calls["n"] += 1
        if calls["n"] == 3:
            # what a SIGKILL leaves: a half-written temporary shard and no record
            (job[0] / f".audio-000-{job[2]:06d}.tar.999.tmp").write_bytes(b"half a tar")
            raise KeyboardInterrupt
        return real(job)

    monkeypatch.setattr(pa, "_write_chunk", dies_after_two)
    with pytest.raises(KeyboardInterrupt):
        pa.prepare_audio("demo", corpus, killed, shard_size=3, progress=False)
    monkeypatch.setattr(pa, "_write_chunk", real)
    done_before = sorted(p.name for p in (killed / "train").glob("*.tar"))
    assert len(done_before) == 2
    mtimes = {n: (killed / "train" / n).stat().st_mtime_ns for n in done_before}

    redone = []
    monkeypatch.setattr(
        pa, "_write_chunk", lambda job: redone.append((job[0].name, job[2])) or real(job)
    )
    pa.prepare_audio("demo", corpus, killed, shard_size=3, progress=False)
    # finished shards kept, not rewritten; the rest (incl. the killed one) redone
    assert ("train", 0) not in redone and ("train", 1) not in redone and ("train", 2) in redone
    assert {n: (killed / "train" / n).stat().st_mtime_ns for n in done_before} == mtimes
    assert not list((killed / "train").glob(".*.tmp"))
    for split in ("train", "valid"):
        a, b = read_manifest(full / split), read_manifest(killed / split)
        assert a["shards"] == b["shards"] and a["skipped"] == b["skipped"]
        sa, sb = samples(full / split), samples(killed / split)
        assert list(sa) == list(sb)
        for key in sa:
            assert np.array_equal(sa[key]["audio"], sb[key]["audio"])
            assert sa[key]["meta"] == sb[key]["meta"]
        for shard in a["shards"]:
            assert (full / split / shard["file"]).read_bytes() == (
                killed / split / shard["file"]
            ).read_bytes()


def test_ranks_write_disjoint_slices(tmp_path, corpus, monkeypatch):
    out = tmp_path / "ranked"
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert (
        prepare_audio_main(
            [
                "--source",
                "jsonl",
                "--input",
                str(corpus),
                "--out",
                str(out),
                "--shard-size",
                "4",
                "--quiet",
            ]
        )
        == 0
    )
    half = read_manifest(out / "train", allow_incomplete=True)
    assert not half["complete"] and all("-001-" in s["file"] for s in half["shards"])
    assert half["missing"] and all("-000-" in name for name in half["missing"])
    with pytest.raises(IncompleteShards):  # readers wait for rank 0
        samples(out / "train")
    ones = {
        name.split(".")[0]
        for s in half["shards"]
        for name in tarfile.open(out / "train" / s["file"]).getnames()
    }
    monkeypatch.setenv("RANK", "0")
    assert (
        prepare_audio_main(
            [
                "--source",
                "jsonl",
                "--input",
                str(corpus),
                "--out",
                str(out),
                "--shard-size",
                "4",
                "--quiet",
            ]
        )
        == 0
    )
    both = read_manifest(out / "train")
    assert both["complete"] and both["num_samples"] == 20
    keys = list(samples(out / "train"))
    assert len(keys) == len(set(keys)) == 20 and ones < set(keys)


def test_parallel_workers_match_serial(tmp_path, corpus):
    pa.prepare_audio("demo", corpus, tmp_path / "serial", shard_size=5, progress=False)
    pa.prepare_audio("demo", corpus, tmp_path / "par", shard_size=5, workers=2, progress=False)
    for split in ("train", "valid"):
        a = read_manifest(tmp_path / "serial" / split)["shards"]
        assert a == read_manifest(tmp_path / "par" / split)["shards"]
        for s in a:
            assert (tmp_path / "serial" / split / s["file"]).read_bytes() == (
                tmp_path / "par" / split / s["file"]
            ).read_bytes()


def test_truncated_shard_is_skipped_and_counted(tmp_path, corpus):
    out = tmp_path / "shards"
    pa.prepare_audio("demo", corpus, out, shard_size=4, progress=False)
    shard = out / "train" / "audio-000-000001.tar"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    skips = SkipCounter(warn=False)
    got = list(iter_audio_samples(out / "train", skips=skips))
    assert 16 <= len(got) < 20 and skips.count >= 1
    assert any("audio-000-000001.tar" in r for r in skips.reasons)


def test_bad_arguments_are_reported(tmp_path, corpus, capsys):
    assert (
        prepare_audio_main(
            [
                "--source",
                "demo",
                "--input",
                str(tmp_path / "nope.jsonl"),
                "--out",
                str(tmp_path / "o"),
                "--quiet",
            ]
        )
        == 2
    )
    assert "nope.jsonl" in capsys.readouterr().err
    assert (
        prepare_audio_main(
            [
                "--source",
                "demo",
                "--input",
                str(corpus),
                "--out",
                str(tmp_path / "o"),
                "--rank",
                "3",
                "--world-size",
                "2",
                "--quiet",
            ]
        )
        == 2
    )


def test_truncated_tar_counts_once_and_missing_shard_is_skipped(tmp_path, corpus):
    out = tmp_path / "shards"
    pa.prepare_audio("demo", corpus, out, shard_size=4, progress=False)
    shard = out / "train" / "audio-000-000002.tar"
    shard.write_bytes(shard.read_bytes()[:3000])  # inside the first member
    (out / "train" / "audio-000-000004.tar").unlink()
    skips = SkipCounter(warn=False)
    got = list(iter_audio_samples(out / "train", skips=skips))
    assert len(got) == 12 and skips.count == 2, skips.reasons


def test_split_by_rank_partitions_shards(tmp_path, corpus, monkeypatch):
    out = tmp_path / "shards"
    pa.prepare_audio("demo", corpus, out, shard_size=3, progress=False)
    everything = set(samples(out / "train"))
    parts = []
    monkeypatch.setenv("WORLD_SIZE", "2")
    for rank in ("0", "1"):
        monkeypatch.setenv("RANK", rank)
        parts.append({s["key"] for s in iter_audio_samples(out / "train", split_by_rank=True)})
    assert parts[0] and parts[1] and not parts[0] & parts[1]
    assert parts[0] | parts[1] == everything


def test_shard_writer_keys_and_abort(tmp_path):
    from musiclm.datamodules.shards import ShardWriter

    with ShardWriter(tmp_path, prefix="tokens", max_count=2) as w:
        with pytest.raises(ValueError, match="without dots"):
            w.write({"__key__": "a.b", "x.txt": "no"})
        w.write({"__key__": "a", "codes.npy": np.zeros((2, 3), np.int16), "json": {"k": 1}})
        with pytest.raises(ValueError, match="duplicate key 'a'"):
            w.write({"__key__": "a", "x.txt": "again"})
    assert [c["file"] for c in w.completed] == ["tokens-000-000000.tar"]
    with pytest.raises(RuntimeError):
        with ShardWriter(tmp_path / "b", prefix="tokens", max_count=5, rank=3) as w2:
            w2.write({"__key__": "z", "x.txt": "partial"})
            raise RuntimeError("killed")
    assert list((tmp_path / "b").iterdir()) == []  # the unfinished shard is discarded


@pytest.mark.slow
def test_sigkilled_run_resumes_to_the_same_samples(tmp_path, corpus):
    """A real `musiclm prepare audio` process killed with SIGKILL mid-run, then rerun."""
    import signal
    import subprocess
    import sys
    import time

    full = tmp_path / "full"
    pa.prepare_audio("demo", corpus, full, shard_size=1, progress=False)
    out = tmp_path / "killed"
    cmd = [
        sys.executable,
        "-c",
        "import sys; from musiclm.cli import main; sys.exit(main())",
        "prepare",
        "audio",
        "--source",
        "demo",
        "--input",
        str(corpus),
        "--out",
        str(out),
        "--shard-size",
        "1",
        "--quiet",
    ]
    proc = subprocess.Popen(cmd)
    deadline = time.time() + 60
    while time.time() < deadline and len(list(out.glob("train/progress/*.json"))) < 3:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = len(list(out.glob("train/progress/*.json")))
    assert 3 <= finished < 20, "the run finished before it could be killed"
    subprocess.run(cmd, check=True)
    for split in ("train", "valid"):
        assert read_manifest(full / split)["shards"] == read_manifest(out / split)["shards"]
        a, b = samples(full / split), samples(out / split)
        assert list(a) == list(b)
        assert all(np.array_equal(a[k]["audio"], b[k]["audio"]) for k in a)


def test_rank_from_lightning_environment(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "NODE_RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    assert pa.rank_from_env() == (0, 1)
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("NODE_RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "2")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert pa.rank_from_env() == (6, 8)
    monkeypatch.setenv("RANK", "5")
    assert pa.rank_from_env() == (5, 8)


def test_rerun_with_other_settings_is_refused(tmp_path, corpus, capsys):
    out = tmp_path / "shards"
    pa.prepare_audio("demo", corpus, out, shard_size=4, progress=False)
    pa.prepare_audio("demo", corpus, out, shard_size=4, progress=False)  # same job: fine
    assert (
        prepare_audio_main(
            [
                "--source",
                "demo",
                "--input",
                str(corpus),
                "--out",
                str(out),
                "--shard-size",
                "5",
                "--quiet",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "audio-000-000000.json" in err and "new --out" in err


def test_rank_finishing_during_another_ranks_manifest_write_is_not_lost(
    tmp_path, corpus, monkeypatch
):
    """Rank 0 reads the progress records, rank 1's last records land, rank 0 renames its
    manifest last: the manifest must still end up complete (no barrier between ranks)."""
    out = tmp_path / "race"
    args = dict(shard_size=4, world_size=2, progress=False)
    pa.prepare_audio("jsonl", corpus, out, rank=1, **args)
    aside = tmp_path / "aside"
    held = {}
    for rec in out.rglob("progress/*-001-*.json"):
        held[rec] = aside / rec.relative_to(out)
        held[rec].parent.mkdir(parents=True, exist_ok=True)
        rec.rename(held[rec])
    real_write = pa.atomic_write_json

    def write_then_rank1_finishes(path, obj):
        real_write(path, obj)
        if path.name == "manifest.json":
            for rec, moved in list(held.items()):
                if rec.parent.parent == path.parent:
                    moved.rename(rec)
                    del held[rec]

    monkeypatch.setattr(pa, "atomic_write_json", write_then_rank1_finishes)
    pa.prepare_audio("jsonl", corpus, out, rank=0, **args)
    manifest = read_manifest(out / "train")
    assert manifest["complete"] and manifest["num_samples"] == 20
