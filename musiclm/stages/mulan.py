"""MuLan stage: symmetric contrastive (InfoNCE) training of the music-text embedding.

In: batches {"audio": (B, T) float, "caption": list[str], "meta": list[dict]}.
Out: a loss over the global batch (embeddings gathered from every rank with gradients, so DDP
sees every negative); validation ranks the whole validation split both ways and scores
zero-shot attribute prompts ("played on a {instrument}") where metadata carries attributes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from lightning.pytorch import LightningModule
from torch import nn

from musiclm.models.mulan import (
    FROZEN_KEY,
    MAX_LOGIT_SCALE,
    MuLan,
    contrastive_loss,
    frozen_digest,
    frozen_state_keys,
    gathered_contrastive_loss,
    mulan_kwargs,
    restore_frozen,
)
from musiclm.models.retrieval import bidirectional_metrics

DEFAULT_PROMPTS = {"instrument": "played on a {}"}


def zero_shot_accuracy(
    audio_emb: torch.Tensor, labels: Sequence[str], class_emb: torch.Tensor, classes: list[str]
) -> float:
    """Fraction of clips whose most similar class prompt is their own label."""
    pred = (audio_emb @ class_emb.T).argmax(dim=1).tolist()
    return sum(classes[p] == y for p, y in zip(pred, labels, strict=True)) / max(len(labels), 1)


class MulanStage(LightningModule):
    """Trains ``MuLan``; the network arguments are ``MuLan``'s, the rest are training knobs."""

    def __init__(
        self,
        *,
        sample_rate: int = 16000,
        embed_dim: int = 128,
        n_mels: int = 64,
        n_fft: int = 1024,
        hop_length: int = 160,
        audio_tower: str = "cnn",
        cnn_channels: tuple[int, ...] = (32, 64, 128, 256),
        patch_size: int = 16,
        transformer_dim: int = 256,
        transformer_depth: int = 4,
        transformer_heads: int = 4,
        audio_proj_hidden: int = 0,
        text_encoder: str = "minilm",
        text_encoder_args: dict[str, Any] | None = None,
        text_pooling: str = "mean",
        text_proj_hidden: int = 512,
        window_s: float = 10.0,
        lr: float = 3e-4,
        weight_decay: float = 0.01,
        warmup_steps: int = 100,
        temperature_init: float = 0.07,
        learn_temperature: bool = True,
        zero_shot_prompts: dict[str, str] | None = None,
    ) -> None:
        """
        Args:
            sample_rate ... window_s: ``MuLan``'s architecture (see ``musiclm.models.mulan``).
            lr, weight_decay, warmup_steps: AdamW with linear warm-up then cosine decay.
            temperature_init: initial softmax temperature (CLIP: 0.07).
            learn_temperature: train the temperature (as log logit scale) with the towers.
            zero_shot_prompts: attribute -> prompt template; classes are the attribute's
                values found in the validation metadata (default instrument: "played on a {}").
        """
        super().__init__()
        if sample_rate <= 0 or embed_dim <= 0:
            raise ValueError("mulan: sample_rate and embed_dim must be positive")
        self.save_hyperparameters()
        self.mulan = MuLan(**mulan_kwargs(dict(self.hparams)))
        self.logit_scale = nn.Parameter(
            torch.tensor(math.log(1.0 / temperature_init)), requires_grad=learn_temperature
        )
        self.zero_shot_prompts = (
            dict(DEFAULT_PROMPTS) if zero_shot_prompts is None else zero_shot_prompts
        )
        self._val: dict[str, list] = {}
        self._frozen_digest: str | None = None

    @property
    def sample_rate(self) -> int:
        return self.mulan.sample_rate

    def _gather(self, x: torch.Tensor) -> torch.Tensor:
        if self._trainer is None or self.trainer.world_size == 1:
            return x
        return self.all_gather(x, sync_grads=True).reshape(-1, x.shape[-1])

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        audio_emb = self.mulan.embed_audio(batch["audio"])
        text_emb = self.mulan.embed_text(batch["caption"])
        loss = gathered_contrastive_loss(audio_emb, text_emb, self.logit_scale, self._gather)
        bsz = audio_emb.shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=bsz)
        # pairs the loss saw: every rank's batch (batch x world size), i.e. negatives + 1
        self.log("train/global_batch", float(bsz * self.trainer.world_size), batch_size=bsz)
        temperature = 1.0 / self.logit_scale.detach().clamp(max=MAX_LOGIT_SCALE).exp()
        self.log("train/temperature", temperature, batch_size=bsz)
        return loss

    def on_validation_epoch_start(self) -> None:
        self._val = {"audio": [], "text": [], "meta": [], "caption": []}

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._val["audio"].append(self.mulan.embed_audio(batch["audio"]).float().cpu())
        self._val["text"].append(self.mulan.embed_text(batch["caption"]).float().cpu())
        meta = batch.get("meta") or [{} for _ in batch["caption"]]
        self._val["meta"].extend(meta)
        self._val["caption"].extend(batch["caption"])

    def on_validation_epoch_end(self) -> None:
        # Every rank sees the whole validation split in the same order, so no gather is needed.
        if not self._val.get("audio"):
            return
        audio = torch.cat(self._val["audio"])
        text = torch.cat(self._val["text"])
        # Clips with identical captions are equally right answers (templated corpora repeat).
        captions = self._val["caption"]
        metrics = {
            f"val/{k}": v for k, v in bidirectional_metrics(text, audio, captions=captions).items()
        }
        metrics["val/loss"] = contrastive_loss(audio, text, self.logit_scale.detach().cpu()).item()
        metrics.update(self._zero_shot(audio, self._val["meta"]))
        self.log_dict(metrics, sync_dist=True)
        self._val = {}

    @torch.no_grad()
    def _zero_shot(self, audio: torch.Tensor, metas: list[dict]) -> dict[str, float]:
        out = {}
        for attr, template in self.zero_shot_prompts.items():
            labels = [(m.get("attributes") or {}).get(attr) for m in metas]
            keep = [i for i, y in enumerate(labels) if y is not None]
            if not keep:
                continue
            ys = [str(labels[i]) for i in keep]
            classes = sorted(set(ys))
            class_emb = self.mulan.embed_text([template.format(c) for c in classes])
            acc = zero_shot_accuracy(audio[keep], ys, class_emb.float().cpu(), classes)
            out[f"val/zeroshot/{attr}"] = acc
            out[f"val/zeroshot/{attr}_chance"] = 1.0 / len(classes)
        return out

    # --- checkpoints: the frozen pretrained text encoder is reloaded, not stored -----------

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        keys = frozen_state_keys(self.mulan)
        if not keys:
            return
        if self._frozen_digest is None:  # frozen tensors never change: hash them once
            self._frozen_digest = frozen_digest(self.mulan, keys)
        state = checkpoint["state_dict"]
        for key in keys:
            state.pop("mulan." + key, None)
        checkpoint[FROZEN_KEY] = {
            "path": str(self.mulan.text_encoder.path),
            "digest": self._frozen_digest,
            "keys": keys,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # runs before Lightning loads the state dict (resume and load_from_checkpoint alike)
        record = checkpoint.get(FROZEN_KEY)
        if record:
            mine = {k[6:]: v for k, v in checkpoint["state_dict"].items() if k.startswith("mulan.")}
            full = restore_frozen(self.mulan, mine, record, "mulan checkpoint")
            checkpoint["state_dict"].update({"mulan." + k: v for k, v in full.items()})

    def configure_optimizers(self) -> dict[str, Any]:
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            (no_decay if p.dim() < 2 or name == "logit_scale" else decay).append(p)
        opt = torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": self.hparams.weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=self.hparams.lr,
        )
        total = self.trainer.estimated_stepping_batches
        # An endless loader without max_steps has no horizon: keep the peak rate after warm-up.
        total = max(int(total), 1) if math.isfinite(total) else None
        warmup = max(min(self.hparams.warmup_steps, total or self.hparams.warmup_steps), 1)

        def schedule(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            if total is None:
                return 1.0
            progress = (step - warmup) / max(total - warmup, 1)
            return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
