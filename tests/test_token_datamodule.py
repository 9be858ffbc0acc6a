"""TokenDataModule: aligned crops, equal batch counts per rank, step seeding, corrupt samples."""

import io
import json
import tarfile
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from token_shards import write_synthetic_shards

from musiclm.datamodules.tokens import TokenDataModule


class FakeTrainer:
    """What the datamodule reads of a trainer: the batches trained so far."""

    def __init__(self, batches=0):
        progress = SimpleNamespace(total=SimpleNamespace(processed=batches))
        self.fit_loop = SimpleNamespace(epoch_loop=SimpleNamespace(batch_progress=progress))
        self.world_size, self.accumulate_grad_batches = 1, 1


def make(root, **kw):
    args = dict(seconds=2.0, batch_size=3, num_workers=0, batches_per_epoch=4, val_batches=2)
    return TokenDataModule(str(root / "train"), **{**args, **kw})


def batches(dm, step=0):
    dm.trainer = FakeTrainer(step)
    return list(dm.train_dataloader())


@pytest.fixture
def shards(tmp_path):
    # uneven shards, and two clips shorter than the crop
    write_synthetic_shards(tmp_path / "train", sizes=[7, 2, 1], seconds=[4.0] * 8 + [1.0] * 2)
    return tmp_path


def test_crops_are_aligned_across_streams_and_padded(shards):
    dm = make(shards)
    spec = dm.spec
    out = batches(dm)
    assert len(out) == 4
    for batch in out:
        assert batch["semantic"].shape == (3, 10) and batch["acoustic"].shape == (3, 4, 20)
        assert batch["mulan"].shape == (3, 3)
        # synthetic level 0 mirrors the semantic frame covering each acoustic frame
        frames = (torch.arange(20) * spec.semantic_rate / spec.acoustic_rate).long()
        sem = batch["semantic"][:, frames]
        level0 = batch["acoustic"][:, 0]
        real = level0 >= 0
        assert torch.equal(level0[real], sem[real] % spec.codebook_size)
        # padding is consistent: both streams end at the same time
        assert torch.equal(level0 < 0, sem < 0)
    padded = [b for b in out if (b["semantic"] < 0).any()]
    short = [k for b in out for k in b["key"] if k in ("clip00008", "clip00009")]
    assert bool(padded) == bool(short)


def test_every_rank_gets_the_same_count_and_different_samples(shards, monkeypatch):
    seen = {}
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        out = batches(make(shards, batches_per_epoch=5))
        seen[rank] = [k for b in out for k in b["key"]]
        assert len(out) == 5
    assert seen[0] != seen[1]


def test_stream_is_a_function_of_the_step(shards):
    dm = make(shards)
    first = batches(dm, step=0)
    again = batches(dm, step=0)
    assert [b["key"] for b in first] == [b["key"] for b in again]
    for a, b in zip(first, again, strict=True):
        assert torch.equal(a["acoustic"], b["acoustic"])
    # resuming at step 2 continues the same epoch: the last two batches of the pass
    resumed = batches(dm, step=2)
    assert [b["key"] for b in resumed] == [b["key"] for b in first[2:]]
    assert all(
        torch.equal(a["semantic"], b["semantic"]) for a, b in zip(resumed, first[2:], strict=True)
    )
    # the next data epoch is reseeded, not a replay
    second = batches(dm, step=4)
    assert len(second) == 4
    assert [b["semantic"].tolist() for b in second] != [b["semantic"].tolist() for b in first]


def test_workers_give_the_same_count(shards):
    out = batches(make(shards, num_workers=2, batches_per_epoch=3))
    assert len(out) == 3 and all(b["semantic"].shape[0] == 3 for b in out)


def _add(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def test_corrupt_samples_and_tars_are_skipped_and_counted(shards):
    train = shards / "train"
    bad = train / "tokens-000-000099.tar"
    with tarfile.open(bad, "w") as tar:
        _add(tar, "broken.semantic.npy", b"not an npy file")
        _add(tar, "broken.acoustic.npy", b"nope")
        buf = io.BytesIO()
        np.save(buf, np.full(10, 999, dtype=np.int64))  # ids beyond the vocabulary
        _add(tar, "outofrange.semantic.npy", buf.getvalue())
        _add(tar, "outofrange.acoustic.npy", buf.getvalue())
    (train / "tokens-000-000100.tar").write_bytes(b"\x00" * 700)  # truncated garbage
    manifest = json.loads((train / "manifest.json").read_text())
    manifest["shards"] = [
        {"file": bad.name, "num_samples": 2, "seconds": 0},
        {"file": "tokens-000-000100.tar", "num_samples": 1, "seconds": 0},
    ] + manifest["shards"][:1]
    (train / "manifest.json").write_text(json.dumps(manifest))
    out = batches(make(shards, batches_per_epoch=6))
    assert len(out) == 6
    assert sum(int(b["skipped"]) for b in out) >= 2
    keys = {k for b in out for k in b["key"]}
    assert not keys & {"broken", "outofrange"}


def test_validation_is_fixed_and_capped(shards):
    write_synthetic_shards(shards / "val", sizes=[5], seconds=3.0, seed=2)
    dm = make(shards, val_batches=1)
    dm2 = TokenDataModule(str(shards / "train"), str(shards / "val"), seconds=2.0, batch_size=2)
    first = list(dm2.val_dataloader())
    assert len(first) == 3  # 5 samples, batches of 2, the last one partial
    assert [b["key"] for b in first] == [b["key"] for b in dm2.val_dataloader()]
    assert dm.val_dataloader() == []


def test_bad_folders_name_the_problem(shards, tmp_path):
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        TokenDataModule(str(tmp_path / "nowhere"))
    other = write_synthetic_shards(tmp_path / "other", sizes=[2])
    manifest = json.loads((tmp_path / "other" / "manifest.json").read_text())
    manifest["codec"]["fingerprint"] = "another-codec"
    (tmp_path / "other" / "manifest.json").write_text(json.dumps(manifest))
    assert other.codebook_size == 16
    with pytest.raises(ValueError, match="other tokenizers"):
        TokenDataModule(str(shards / "train"), str(tmp_path / "other"))
    manifest["kind"] = "audio"
    (tmp_path / "other" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="expected 'tokens'"):
        TokenDataModule(str(tmp_path / "other"))


def test_iter_token_samples_yields_whole_clips_of_every_shard(tmp_path):
    from musiclm.datamodules.shards import iter_token_samples

    spec = write_synthetic_shards(tmp_path, sizes=[3, 2], seconds=[2.0, 3.0, 4.0, 2.0, 1.0])
    clips = list(iter_token_samples(tmp_path))
    assert len(clips) == 5 and len({c["key"] for c in clips}) == 5
    for clip, seconds in zip(clips, [2.0, 3.0, 4.0, 2.0, 1.0], strict=True):
        assert clip["semantic"].dtype == torch.int64
        assert clip["semantic"].shape == (round(seconds * spec.semantic_rate),)
        frames = round(seconds * spec.acoustic_rate)
        assert clip["acoustic"].shape == (spec.num_quantizers, frames)
        assert clip["mulan"].shape == (spec.streams["mulan"].levels,)
