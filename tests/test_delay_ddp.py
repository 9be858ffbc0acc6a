"""`musiclm fit --config conf/demo/delay.yaml` on two CPU processes (DDP on gloo) over uneven
token shards with the beat clock the demo's delay stage reads: no hang, and a checkpoint that
loads with ``weights_only``."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from generation_helpers import tiny_spec, with_streams
from token_shards import write_synthetic_shards

from musiclm.datamodules.token_spec import BeatSpec
from musiclm.stages.delay_layout import DelayLayout
from musiclm.stages.token_lm_stage import load_network

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_demo_delay_config_fits_on_two_gloo_processes(tmp_path):
    # the clock and the MuLan embeddings its tempo predictor reads, as `prepare tokens --beats`
    spec = with_streams(tiny_spec(), beats=BeatSpec(4, 3, 60.0, 240.0, tempo_input_dim=4))
    write_synthetic_shards(tmp_path / "train", sizes=[7, 2, 1], seconds=3.0, spec=spec)
    write_synthetic_shards(tmp_path / "val", sizes=[3], seconds=3.0, seed=1, spec=spec)
    overrides = {
        "trainer.devices": 2, "trainer.strategy": "ddp", "trainer.max_steps": 5,
        "trainer.default_root_dir": tmp_path / "run", "trainer.log_every_n_steps": 1,
        "model.init_args.dim": 16, "model.init_args.depth": 1, "model.init_args.heads": 2,
        "model.init_args.warmup_steps": 1, "model.init_args.decay_steps": 4,
        "data.init_args.train_dir": tmp_path / "train", "data.init_args.val_dir": tmp_path / "val",
        "data.init_args.seconds": 2.0, "data.init_args.batch_size": 2,
        "data.init_args.num_workers": 0, "data.init_args.batches_per_epoch": 3,
        "data.init_args.val_batches": 1, "data.init_args.shuffle_buffer": 4,
    }  # fmt: skip
    argv = [sys.executable, "-m", "musiclm.cli", "fit", "--config", "conf/demo/delay.yaml"]
    argv += [f"--{key}={value}" for key, value in overrides.items()]
    proc = subprocess.run(
        argv,
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,  # a hang fails here instead of blocking the suite
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    last = next((tmp_path / "run").rglob("last.ckpt"))
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 5 and ckpt["hyper_parameters"]["stage"] == "delay"
    net, layout = load_network(str(last))
    assert isinstance(layout, DelayLayout) and layout.num_levels == 4 and layout.semantic
    assert layout.beats
    assert net.num_targets == 4 * layout.spec.codebook_size
