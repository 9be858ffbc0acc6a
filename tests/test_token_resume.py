"""A run killed mid-training and resumed with ``--ckpt_path last`` ends like an uninterrupted
run: same weights, same logged losses, one TensorBoard run directory."""

import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from token_shards import write_synthetic_shards

from musiclm.datamodules.tokens import TokenDataModule
from musiclm.stages.coarse import CoarseStage

ROOT = Path(__file__).resolve().parents[1]
KILL_AT = 4  # batches per data epoch is 3: the last checkpoint before the kill is at step 3


class KillAtStep(Callback):
    """Dies like a pre-empted job (no clean-up) when ``global_step`` reaches ``step``."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            os._exit(137)


def fit(run: Path, shards: Path, *extra: str) -> subprocess.CompletedProcess:
    args = [
        sys.executable, "-m", "musiclm.cli", "fit",
        "--config", str(ROOT / "conf" / "demo" / "coarse.yaml"),
        "--data.init_args.train_dir", str(shards / "train"),
        "--data.init_args.val_dir", str(shards / "val"),
        "--data.init_args.num_workers", "1",
        "--data.init_args.batches_per_epoch", "3",
        "--data.init_args.batch_size", "2",
        "--data.init_args.val_batches", "1",
        "--model.init_args.dim", "16",
        "--model.init_args.depth", "1",
        "--model.init_args.heads", "2",
        "--model.init_args.cond_dropout", "0.5",
        "--model.init_args.dropout", "0.1",
        "--trainer.max_steps", "6",
        "--trainer.log_every_n_steps", "1",
        "--trainer.enable_progress_bar", "false",
        "--trainer.default_root_dir", str(run),
        *extra,
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'tests'}{os.pathsep}{ROOT}"}
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def losses(run: Path) -> dict[int, float]:
    events = EventAccumulator(str(run / "tensorboard" / "run"))
    events.Reload()
    return {e.step: e.value for e in events.Scalars("train/loss")}


def test_resume_from_a_named_checkpoint_file(tmp_path):
    """``--ckpt_path FILE`` (what a truncated ``last.ckpt``'s error recommends): Lightning
    parses the checkpoint's hyper-parameters, the stage name among them, back into the
    config."""
    shards = tmp_path / "tokens"
    write_synthetic_shards(shards / "train", sizes=[5, 3], seconds=5.0)
    write_synthetic_shards(shards / "val", sizes=[2], seconds=5.0, seed=1)
    first = fit(tmp_path / "run", shards, "--trainer.max_steps", "3")
    assert first.returncode == 0, first.stderr[-3000:]
    (named,) = (tmp_path / "run" / "checkpoints").glob("*step=3.ckpt")
    resumed = fit(tmp_path / "run", shards, "--ckpt_path", str(named))  # on to step 6
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    # Lightning versions the files it would overwrite (``last-v1.ckpt``); ``--ckpt_path last``
    # picks the newest ``last*.ckpt``
    (done,) = (tmp_path / "run" / "checkpoints").glob("*step=6.ckpt")
    last = torch.load(done, weights_only=True)
    assert last["global_step"] == 6 and last["hyper_parameters"]["stage"] == "coarse"


@pytest.mark.slow
def test_killed_and_resumed_run_matches_uninterrupted(tmp_path):
    """Through ``musiclm fit`` in subprocesses, the second one killed (about 1 CPU-minute)."""
    shards = tmp_path / "tokens"
    write_synthetic_shards(shards / "train", sizes=[5, 3], seconds=5.0)
    write_synthetic_shards(shards / "val", sizes=[2], seconds=5.0, seed=1)

    whole = fit(tmp_path / "whole", shards)
    assert whole.returncode == 0, whole.stderr[-3000:]

    killed = fit(
        tmp_path / "resumed",
        shards,
        "--trainer.callbacks+=test_token_resume.KillAtStep",
        f"--trainer.callbacks.step={KILL_AT}",
    )
    assert killed.returncode == 137, killed.stderr[-3000:]
    checkpoints = tmp_path / "resumed" / "checkpoints"
    assert (checkpoints / "last.ckpt").is_file()
    assert torch.load(checkpoints / "last.ckpt", weights_only=True)["global_step"] == 3

    resumed = fit(tmp_path / "resumed", shards, "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    a = torch.load(tmp_path / "whole" / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(checkpoints / "last.ckpt", weights_only=True)
    assert a["global_step"] == b["global_step"] == 6
    for key, value in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][key], value, rtol=1e-5, atol=1e-6, msg=key)

    # one TensorBoard run holds the whole history, with the uninterrupted run's losses
    runs = sorted(p.name for p in (tmp_path / "resumed" / "tensorboard").iterdir())
    assert runs == ["run"]
    la, lb = losses(tmp_path / "whole"), losses(tmp_path / "resumed")
    assert sorted(la) == sorted(lb) == list(range(6))
    for step in la:
        assert lb[step] == pytest.approx(la[step], rel=1e-5, abs=1e-6), step


def _trainer(root: Path, steps: int) -> L.Trainer:
    """The run layout of ``musiclm fit`` (fixed TensorBoard version, checkpoints/last.ckpt)."""
    return L.Trainer(
        max_steps=steps,
        accelerator="cpu",
        default_root_dir=str(root),
        logger=TensorBoardLogger(save_dir=str(root), name="tensorboard", version="run"),
        callbacks=[ModelCheckpoint(dirpath=str(root / "checkpoints"), save_last=True)],
        log_every_n_steps=1,
        enable_progress_bar=False,
        enable_model_summary=False,
    )


def _fit(root: Path, shards: Path, steps: int, ckpt_path: str | None = None) -> None:
    L.seed_everything(0)
    model = CoarseStage(dim=16, depth=1, heads=2, coarse_levels=2, dropout=0.1, cond_dropout=0.5)
    data = TokenDataModule(
        str(shards / "train"), seconds=2.0, batch_size=2, num_workers=0, batches_per_epoch=3
    )
    _trainer(root, steps).fit(model, data, ckpt_path=ckpt_path)


def test_stopped_and_resumed_run_matches_uninterrupted_in_process(tmp_path):
    shards = tmp_path / "tokens"
    write_synthetic_shards(shards / "train", sizes=[5, 3], seconds=5.0)
    _fit(tmp_path / "whole", shards, 6)
    _fit(tmp_path / "resumed", shards, 3)
    _fit(tmp_path / "resumed", shards, 6, ckpt_path="last")
    a = torch.load(tmp_path / "whole" / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", weights_only=True)
    assert a["global_step"] == b["global_step"] == 6
    for key, value in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][key], value, rtol=1e-5, atol=1e-6, msg=key)
    la, lb = losses(tmp_path / "whole"), losses(tmp_path / "resumed")
    assert sorted(la) == sorted(lb) == list(range(6))
    assert all(lb[s] == pytest.approx(la[s], rel=1e-5, abs=1e-6) for s in la)
