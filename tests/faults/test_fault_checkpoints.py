"""A truncated last.ckpt is refused naming the intact checkpoint beside it; checkpoint
retention is bounded by default."""

import os
import time
from pathlib import Path

import torch
from token_shards import write_synthetic_shards

from musiclm.cli import main
from musiclm.lightning_cli import KEEP_CHECKPOINTS, default_checkpointing

ROOT = Path(__file__).resolve().parents[2]


def test_default_checkpointing_keeps_last_and_a_few_recent(tmp_path):
    cb = default_checkpointing(str(tmp_path))
    assert cb.save_last and cb.save_top_k == KEEP_CHECKPOINTS > 0
    assert (cb.monitor, cb.mode) == ("step", "max")  # the most recent, not the best of none


def test_truncated_last_ckpt_names_the_newest_intact_one(tmp_path, capsys):
    write_synthetic_shards(tmp_path / "train", sizes=[2])
    ckpts = tmp_path / "run" / "checkpoints"
    ckpts.mkdir(parents=True)
    for i, name in enumerate(["epoch=0-step=3.ckpt", "epoch=1-step=6.ckpt"]):
        torch.save({"step": i}, ckpts / name)
        os.utime(ckpts / name, (time.time() + i, time.time() + i))
    whole = (ckpts / "epoch=1-step=6.ckpt").read_bytes()
    (ckpts / "last.ckpt").write_bytes(whole[: len(whole) // 2])  # killed mid-copy
    status = main(
        [
            "fit", "--config", str(ROOT / "conf" / "demo" / "coarse.yaml"),
            "--data.init_args.train_dir", str(tmp_path / "train"),
            "--data.init_args.val_dir", "null",
            "--data.init_args.num_workers", "0",
            "--model.init_args.dim", "16", "--model.init_args.depth", "1",
            "--model.init_args.heads", "2",
            "--trainer.default_root_dir", str(tmp_path / "run"),
            "--ckpt_path", "last",
        ]
    )  # fmt: skip
    assert status == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("musiclm fit: error: checkpoint ") and "last.ckpt is truncated" in err
    assert f"--ckpt_path {ckpts / 'epoch=1-step=6.ckpt'}" in err
