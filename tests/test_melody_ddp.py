"""The melody stage under DDP: `musiclm fit` on two CPU processes (gloo) finishes, the ranks
draw different groups, and the triplet loss is computed over the gathered global batch."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
SR = 8000

# a callback `musiclm fit` loads by class path: what each rank trained on and its losses
PROBE = """
import hashlib, json
import lightning as L


class Probe(L.Callback):
    def __init__(self, out: str) -> None:
        self.out, self.batches, self.losses = out, [], []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        digest = hashlib.sha1(batch["audio"].numpy().tobytes()).hexdigest()[:16]
        self.batches.append([digest, list(batch["audio"].shape)])
        self.losses.append(float(outputs["loss"]))

    def on_train_end(self, trainer, module):
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        with open(f"{self.out}/rank{trainer.global_rank}.json", "w") as f:
            json.dump({"batches": self.batches, "losses": self.losses, "step":
                       trainer.global_step, "world": trainer.world_size,
                       "metrics": metrics}, f)
"""


def write_manifest(tmp_path: Path) -> Path:
    """Four melodies x two instruments (train) and two x two (valid), 2 s clips."""
    from musiclm.demo_corpus import render_notes

    tunes = {
        "up": [0, 2, 4, 5, 7, 9, 11, 12],
        "down": [12, 7, 4, 0, 9, 5, 2, 11],
        "leap": [0, 12, 2, 10, 4, 8, 5, 7],
        "trill": [0, 1, 0, 1, 5, 6, 5, 6],
        "arp": [0, 4, 7, 12, 7, 4, 0, 4],
        "fall": [11, 9, 7, 5, 4, 2, 0, 0],
    }
    lines = []
    for n, (name, steps) in enumerate(tunes.items()):
        notes = [(i * 0.5, 0.5, 60 + s) for i, s in enumerate(steps)]
        for ins in ("flute", "organ"):
            path = tmp_path / f"{name}-{ins}.wav"
            y = render_notes(notes, instrument=ins, bpm=120, sample_rate=SR, seconds=2.0, seed=1)
            sf.write(path, y, SR)
            lines.append({"audio": path.name, "melody_id": name, "split": "train" if n < 4
                          else "valid"})  # fmt: skip
    manifest = tmp_path / "melodies.jsonl"
    manifest.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return manifest


def write_config(tmp_path: Path, manifest: Path) -> Path:
    config = {
        "seed_everything": 0,
        "trainer": {
            "default_root_dir": str(tmp_path / "run"),
            "accelerator": "cpu",
            "devices": 2,
            "strategy": {
                "class_path": "lightning.pytorch.strategies.DDPStrategy",
                "init_args": {"process_group_backend": "gloo"},
            },
            "max_steps": 4,
            "log_every_n_steps": 1,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "callbacks": [
                {"class_path": "melody_ddp_probe.Probe", "init_args": {"out": str(tmp_path)}}
            ],  # fmt: skip
        },
        "model": {
            "class_path": "musiclm.stages.melody.MelodyStage",
            "init_args": {
                "sample_rate": SR,
                "n_fft": 1024,
                "hop_length": 160,
                "min_midi": 36,
                "max_midi": 96,
                "patch_frames": 4,
                "dim": 32,
                "depth": 1,
                "heads": 2,
                "embed_dim": 16,
                "window_s": 1.0,
                "hop_s": 1.0,
                "input_s": 2.0,
                "warmup_steps": 1,
            },  # fmt: skip
        },
        "data": {
            "class_path": "musiclm.datamodules.melody.MelodyDataModule",
            "init_args": {
                "manifest": str(manifest),
                "sample_rate": SR,
                "window_seconds": 1.0,
                "groups_per_batch": 2,
                "views_per_group": 2,
                "batches_per_epoch": 3,
                "val_groups": 2,
                "val_batch_size": 4,
            },  # fmt: skip
        },
    }
    path = tmp_path / "melody_ddp.yaml"
    path.write_text(json.dumps(config))  # JSON is YAML
    return path


@pytest.mark.slow
def test_melody_stage_fits_on_two_gloo_processes(tmp_path):
    manifest = write_manifest(tmp_path)
    config = write_config(tmp_path, manifest)
    (tmp_path / "melody_ddp_probe.py").write_text(PROBE)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, "-m", "musiclm.cli", "fit", "--config", str(config)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,  # a hang fails here instead of blocking the suite
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2]
    # one epoch of 3 batches + 1: the same count on both ranks (no hang at the epoch end)
    assert [r["step"] for r in ranks] == [4, 4]
    assert [len(r["batches"]) for r in ranks] == [4, 4]
    assert all(shape == [4, SR] for r in ranks for _, shape in r["batches"])
    # different groups on each rank ...
    assert [d for d, _ in ranks[0]["batches"]] != [d for d, _ in ranks[1]["batches"]]
    # ... but one loss over the gathered batch: the same value on both ranks
    assert ranks[0]["losses"] == pytest.approx(ranks[1]["losses"], rel=1e-5)
    recall = [r["metrics"]["val/recall_at_1"] for r in ranks]
    assert recall[0] == recall[1] and 0.0 <= recall[0] <= 1.0
    assert (tmp_path / "run").is_dir()
