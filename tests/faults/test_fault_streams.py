"""Training streams follow the batches trained: MuLan's stream draws new samples every epoch
with worker processes, a token-LM resume with gradient accumulation continues exactly, and
a resume with other loader settings says what changes."""

import json
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import ModelCheckpoint
from token_shards import write_synthetic_shards

from musiclm.datamodules.audio_text import AudioTextDataModule
from musiclm.datamodules.shards import ShardWriter, atomic_write_json, encode_flac
from musiclm.datamodules.tokens import TokenDataModule
from musiclm.stages.coarse import CoarseStage

SR = 8000


def _trained(batches: int) -> SimpleNamespace:
    progress = SimpleNamespace(total=SimpleNamespace(processed=batches))
    loop = SimpleNamespace(epoch_loop=SimpleNamespace(batch_progress=progress))
    return SimpleNamespace(fit_loop=loop)


@pytest.fixture
def audio_shards(tmp_path) -> Path:
    with ShardWriter(tmp_path, prefix="audio", max_count=4) as w:
        for i in range(12):
            tone = np.full(SR, (i + 1) / 24, dtype=np.float32)
            sample = {"caption.txt": f"clip {i}", "json": {"id": f"c{i}"}}
            w.write({"__key__": f"c{i}", "audio.flac": encode_flac(tone, SR), **sample})
    manifest = {"schema_version": 1, "kind": "audio", "sample_rate": SR, "shards": w.completed}
    atomic_write_json(tmp_path / "manifest.json", manifest)
    return tmp_path


def test_mulan_stream_with_workers_differs_from_epoch_to_epoch(audio_shards):
    dm = AudioTextDataModule(
        str(audio_shards), crop_seconds=0.5, batch_size=4, num_workers=1, batches_per_epoch=2,
        shuffle_buffer=4,
    )  # fmt: skip
    loader = dm.train_dataloader()  # built once, as Lightning does; fresh workers every pass
    epochs = []
    for batches in (0, 2, 4):  # the start of data epochs 0, 1 and 2
        dm.trainer = _trained(batches)
        epochs.append([m["id"] for b in loader for m in b["meta"]])
    assert all(len(ids) == 8 for ids in epochs)
    assert epochs[0][:4] != epochs[1][:4] != epochs[2][:4]  # first batches differ
    dm.trainer = _trained(2)  # the same position draws the same stream (resumable)
    assert [m["id"] for b in loader for m in b["meta"]] == epochs[1]


class KeysPerEpoch(Callback):
    def __init__(self) -> None:
        self.keys: dict[int, list[str]] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.keys.setdefault(trainer.current_epoch, []).append(",".join(batch["key"]))


def _fit(root: Path, shards: Path, epochs: int, *, ckpt_path=None, batch_size=2, **trainer_kw):
    L.seed_everything(0)
    model = CoarseStage(dim=16, depth=1, heads=2, coarse_levels=2)
    data = TokenDataModule(
        str(shards), seconds=2.0, batch_size=batch_size, num_workers=0, batches_per_epoch=3
    )
    keys = KeysPerEpoch()
    trainer = L.Trainer(
        max_epochs=epochs, accelerator="cpu", default_root_dir=str(root), logger=False,
        callbacks=[keys, ModelCheckpoint(dirpath=str(root / "ckpt"), save_last=True)],
        enable_progress_bar=False, enable_model_summary=False, **trainer_kw,
    )  # fmt: skip
    trainer.fit(model, data, ckpt_path=ckpt_path)
    return keys.keys, trainer


def test_resume_with_accumulation_continues_the_stream_exactly(tmp_path):
    shards = tmp_path / "tokens"
    write_synthetic_shards(shards, sizes=[5, 3], seconds=5.0)
    # 3 batches per epoch, accumulating 2: each epoch ends with a step on one batch
    whole, trainer = _fit(tmp_path / "whole", shards, 2, accumulate_grad_batches=2)
    assert trainer.global_step == 4 and len(whole[1]) == 3
    _fit(tmp_path / "cut", shards, 1, accumulate_grad_batches=2)
    resumed, _ = _fit(
        tmp_path / "cut", shards, 2, ckpt_path=str(tmp_path / "cut" / "ckpt" / "last.ckpt"),
        accumulate_grad_batches=2,
    )  # fmt: skip
    assert resumed == {1: whole[1]}  # the whole second epoch, the same batches
    a = torch.load(tmp_path / "whole" / "ckpt" / "last.ckpt", weights_only=True)
    b = torch.load(tmp_path / "cut" / "ckpt" / "last.ckpt", weights_only=True)
    for key, value in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][key], value, msg=key)


def test_resume_with_another_batch_size_warns_what_changes(tmp_path):
    shards = tmp_path / "tokens"
    write_synthetic_shards(shards, sizes=[5, 3], seconds=5.0)
    _fit(tmp_path / "run", shards, 1)
    ckpt = tmp_path / "run" / "ckpt" / "last.ckpt"
    saved = torch.load(ckpt, weights_only=True)["TokenDataModule"]["loader_settings"]
    assert saved["batch_size"] == 2 and saved["world_size"] == 1
    with pytest.warns(UserWarning, match="batch_size 2 -> 3") as record:
        _fit(tmp_path / "run", shards, 2, ckpt_path=str(ckpt), batch_size=3)
    message = next(str(w.message) for w in record if "batch_size 2 -> 3" in str(w.message))
    assert f"resuming on {shards}" in message
    assert "global batch per optimizer step is 3 samples (was 2)" in message
    assert json.dumps(saved)  # plain values: checkpoints load with weights_only
