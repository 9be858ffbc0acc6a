"""Two CPU processes (DDP on gloo) over uneven token shards: no hang, different samples."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from token_shards import write_synthetic_shards

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import lightning as L
    from musiclm.datamodules.tokens import TokenDataModule
    from musiclm.stages.semantic import SemanticStage

    root, beats = sys.argv[1], sys.argv[2] == "beats"

    class Record(L.Callback):
        def __init__(self):
            self.keys = []

        def on_train_batch_start(self, trainer, module, batch, idx):
            self.keys.append(list(batch["key"]))

        def on_train_end(self, trainer, module):
            with open(f"{root}/rank{trainer.global_rank}.json", "w") as f:
                json.dump({"keys": self.keys, "step": trainer.global_step}, f)

    L.seed_everything(0)
    data = TokenDataModule(f"{root}/train", f"{root}/val", seconds=2.0, batch_size=2,
                           num_workers=0, batches_per_epoch=3, val_batches=2)
    model = SemanticStage(dim=16, depth=1, heads=2, warmup_steps=1, beats=beats,
                          frame_conditioning=beats, aligned_positions=beats)
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_steps=5,
                        default_root_dir=root, callbacks=[Record()], log_every_n_steps=1,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, data)
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("beats", [False, True])
def test_two_process_ddp_on_uneven_shards(tmp_path, beats):
    """Also for the beat-conditioned semantic stage, whose tempo predictor must take part in
    every step's gradient reduction."""
    spec = None
    if beats:
        from generation_helpers import tiny_spec, with_streams

        from musiclm.datamodules.token_spec import BeatSpec

        spec = with_streams(tiny_spec(), beats=BeatSpec(4, 3, 60.0, 240.0, tempo_input_dim=4))
    write_synthetic_shards(tmp_path / "train", sizes=[7, 2, 1], seconds=3.0, spec=spec)
    write_synthetic_shards(tmp_path / "val", sizes=[3], seconds=3.0, seed=1, spec=spec)
    script = tmp_path / "ddp_fit.py"
    script.write_text(SCRIPT)
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path), "beats" if beats else "plain"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,  # a hang fails here instead of blocking the suite
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    # 5 steps = one full data epoch of 3 batches + 2: the same count on both ranks
    assert [r["step"] for r in ranks] == [5, 5]
    assert [len(r["keys"]) for r in ranks] == [5, 5]
    assert ranks[0]["keys"] != ranks[1]["keys"]
