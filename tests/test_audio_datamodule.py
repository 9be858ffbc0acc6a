import json
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch

from musiclm.datamodules.audio_text import AudioTextDataModule, LogSkippedSamples
from musiclm.datamodules.shards import ShardWriter, atomic_write_json, encode_flac

SR = 8000


def write_split(directory, n, *, shard_size=4, seconds=lambda i: 1.0):
    shards = []
    with ShardWriter(directory, prefix="audio", max_count=shard_size) as w:
        for i in range(n):
            length = int(seconds(i) * SR)
            audio = np.full(length, (i + 1) / (2 * n), dtype=np.float32)  # value = identity
            meta = {"id": f"k{i}", "attributes": {"instrument": "flute"}, "duration_s": seconds(i)}
            w.write(
                {
                    "__key__": f"k{i}",
                    "audio.flac": encode_flac(audio, SR),
                    "caption.txt": f"clip {i}",
                    "json": meta,
                },
                seconds=seconds(i),
            )
    shards = w.completed
    atomic_write_json(
        directory / "manifest.json",
        {
            "schema_version": 1,
            "kind": "audio",
            "sample_rate": SR,
            "num_samples": n,
            "total_seconds": float(n),
            "shards": shards,
            "skipped": [],
            "source": {},
        },
    )
    return directory


@pytest.fixture
def dirs(tmp_path):
    train = write_split(tmp_path / "train", 18, seconds=lambda i: 0.5 if i % 3 == 0 else 1.5)
    valid = write_split(tmp_path / "valid", 7, shard_size=3)
    return train, valid


def make(dirs, **kw):
    args = dict(crop_seconds=1.0, batch_size=4, batches_per_epoch=5, shuffle_buffer=6)
    return AudioTextDataModule(str(dirs[0]), str(dirs[1]), **{**args, **kw})


def test_train_batches(dirs):
    dm = make(dirs)
    assert dm.sample_rate == SR
    batches = list(dm.train_dataloader())
    assert len(batches) == 5
    for b in batches:
        assert b["audio"].shape == (4, SR) and b["audio"].dtype == torch.float32
        assert len(b["caption"]) == 4 and len(b["meta"]) == 4
        for audio, caption, meta in zip(b["audio"], b["caption"], b["meta"], strict=True):
            i = int(meta["id"][1:])
            assert caption == f"clip {i}" and meta["attributes"]["instrument"] == "flute"
            voiced = audio[audio != 0]
            assert torch.allclose(voiced, torch.full_like(voiced, (i + 1) / 36), atol=1e-3)
            if i % 3 == 0:  # 0.5 s clips are zero-padded to the 1 s crop
                assert (audio[SR // 2 + 1 :] == 0).all()


def test_seeded_by_seed_and_global_step(dirs):
    ids = lambda dm: [m["id"] for b in dm.train_dataloader() for m in b["meta"]]  # noqa: E731
    a, b = make(dirs), make(dirs)
    assert ids(a) == ids(b)
    assert ids(make(dirs, seed=1)) != ids(a)

    progress = SimpleNamespace(total=SimpleNamespace(processed=500))  # 500 batches trained
    c = make(dirs)
    c.trainer = SimpleNamespace(
        fit_loop=SimpleNamespace(epoch_loop=SimpleNamespace(batch_progress=progress))
    )
    assert ids(c) != ids(a)  # a resumed run continues with a different stream


def test_ranks_differ_in_train_and_agree_in_validation(dirs, monkeypatch):
    dm = make(dirs)
    train0 = [m["id"] for b in dm.train_dataloader() for m in b["meta"]]
    val0 = [m["id"] for b in dm.val_dataloader() for m in b["meta"]]
    val_audio0 = torch.cat([b["audio"] for b in dm.val_dataloader()])
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    train1 = [m["id"] for b in dm.train_dataloader() for m in b["meta"]]
    val1 = [m["id"] for b in dm.val_dataloader() for m in b["meta"]]
    assert len(train1) == len(train0) == 20 and train1 != train0
    assert val1 == val0 == [f"k{i}" for i in range(7)]  # whole split, fixed order
    assert torch.equal(torch.cat([b["audio"] for b in dm.val_dataloader()]), val_audio0)


def test_validation_uses_centre_crop(tmp_path):
    train = write_split(tmp_path / "t", 4)
    valid = tmp_path / "v"
    with ShardWriter(valid, prefix="audio", max_count=4) as w:
        ramp = np.linspace(0, 0.9, 3 * SR, dtype=np.float32)
        w.write(
            {
                "__key__": "r",
                "audio.flac": encode_flac(ramp, SR),
                "caption.txt": "ramp",
                "json": {"id": "r"},
            }
        )
    atomic_write_json(
        valid / "manifest.json",
        {"schema_version": 1, "kind": "audio", "sample_rate": SR, "shards": w.completed},
    )
    dm = AudioTextDataModule(str(train), str(valid), crop_seconds=1.0, batch_size=2)
    (batch,) = list(dm.val_dataloader())
    assert batch["audio"].shape == (1, SR)
    assert batch["audio"][0, 0].item() == pytest.approx(0.3, abs=1e-3)


def test_workers_give_exact_epoch_length(dirs):
    dm = make(dirs, num_workers=2, batches_per_epoch=6)
    assert len(list(dm.train_dataloader())) == 6


def test_mismatched_rates_and_missing_manifest(tmp_path, dirs):
    with pytest.raises(FileNotFoundError, match="no shard manifest"):
        AudioTextDataModule(str(tmp_path / "nothing"))
    other = tmp_path / "other"
    other.mkdir()
    m = json.loads((dirs[1] / "manifest.json").read_text())
    atomic_write_json(other / "manifest.json", {**m, "sample_rate": 16000})
    with pytest.raises(ValueError, match="16000 Hz"):
        AudioTextDataModule(str(dirs[0]), str(other))


class Tiny(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(1, 1)

    def training_step(self, batch, batch_idx):
        assert set(batch) == {"audio", "caption", "meta"}
        return self.lin(batch["audio"].mean(dim=1, keepdim=True)).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_truncated_shard_is_skipped_with_a_count_in_training(dirs, tmp_path):
    shard = dirs[0] / "audio-000-000002.tar"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2 + 100])
    dm = make(dirs, batches_per_epoch=12, batch_size=2)
    trainer = L.Trainer(
        max_steps=12,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[LogSkippedSamples()],
        default_root_dir=tmp_path,
        limit_val_batches=0,
    )
    with pytest.warns(UserWarning, match="skipping a corrupt"):
        trainer.fit(Tiny(), datamodule=dm)
    assert trainer.global_step == 12
    assert dm.skipped >= 1
    assert trainer.callback_metrics["data/skipped"] >= 1


class Recorder(L.LightningModule):
    """Writes the keys every rank saw (train and validation) to ``out/rank<r>.json``."""

    def __init__(self, out: str):
        super().__init__()
        self.out, self.lin = out, torch.nn.Linear(1, 1)
        self.train_keys, self.val_keys = [], []

    def training_step(self, batch, batch_idx):
        self.train_keys.append([m["id"] for m in batch["meta"]])
        return self.lin(batch["audio"].mean(dim=1, keepdim=True)).pow(2).mean()

    def validation_step(self, batch, batch_idx):
        self.val_keys.append([m["id"] for m in batch["meta"]])

    def on_fit_end(self):
        path = f"{self.out}/rank{self.global_rank}.json"
        with open(path, "w") as f:
            json.dump({"train": self.train_keys, "val": self.val_keys}, f)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.slow
def test_ddp_two_ranks_on_uneven_shards(tmp_path):
    """Two gloo ranks over 5 shards (uneven per rank): same batch count, no hang, different
    training samples, and the whole validation split on each rank in the same order."""
    train = write_split(tmp_path / "train", 18)  # 5 shards: 4+4+4+4+2
    valid = write_split(tmp_path / "valid", 7, shard_size=3)
    dm = AudioTextDataModule(
        str(train),
        str(valid),
        crop_seconds=0.5,
        batch_size=2,
        batches_per_epoch=4,
        shuffle_buffer=4,
    )
    trainer = L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp_spawn",
        max_epochs=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=tmp_path,
    )
    trainer.fit(Recorder(str(tmp_path)), datamodule=dm)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert len(ranks[0]["train"]) == len(ranks[1]["train"]) == 8
    assert ranks[0]["train"] != ranks[1]["train"]
    whole = [[f"k{i}" for i in range(j, min(j + 2, 7))] for j in range(0, 7, 2)]
    assert ranks[0]["val"] == ranks[1]["val"] == whole * 2


def test_resumed_fit_does_not_replay_the_stream(dirs, tmp_path):
    def fit(max_steps, ckpt=None):
        model = Recorder(str(tmp_path))
        trainer = L.Trainer(
            max_steps=max_steps,
            accelerator="cpu",
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            limit_val_batches=0,
            default_root_dir=tmp_path,
        )
        trainer.fit(model, datamodule=make(dirs, batches_per_epoch=10), ckpt_path=ckpt)
        return trainer, model.train_keys

    trainer, first = fit(2)
    trainer.save_checkpoint(tmp_path / "step2.ckpt")
    _, again = fit(2)
    assert again == first  # same seed, same step: the same stream
    _, resumed = fit(4, ckpt=str(tmp_path / "step2.ckpt"))
    assert len(resumed) == 2 and resumed != first


def test_sample_at_another_rate_is_skipped_and_counted(tmp_path):
    valid = tmp_path / "v"
    with ShardWriter(valid, prefix="audio", max_count=8) as w:
        for i in range(4):
            rate = 16000 if i == 2 else SR
            audio = np.full(rate, 0.1, dtype=np.float32)
            w.write(
                {
                    "__key__": f"k{i}",
                    "audio.flac": encode_flac(audio, rate),
                    "caption.txt": "c",
                    "json": {"id": f"k{i}"},
                }
            )
    atomic_write_json(
        valid / "manifest.json",
        {"schema_version": 1, "kind": "audio", "sample_rate": SR, "shards": w.completed},
    )
    dm = AudioTextDataModule(str(valid), str(valid), crop_seconds=0.5, batch_size=2)
    keys = []
    with pytest.warns(UserWarning, match="16000 Hz"):
        for batch in dm.val_dataloader():
            batch = dm.on_before_batch_transfer(batch, 0)
            keys += [m["id"] for m in batch["meta"]]
    assert keys == ["k0", "k1", "k3"] and dm.skipped == 1
