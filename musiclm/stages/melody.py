"""Melody stage: a melody embedding trained with FaceNet's semi-hard triplet loss.

In: batches ``{"audio": (N, T), "label": (N,)}`` where rows with one label play one melody
(``MelodyDataModule``). Out: the triplet loss over every (anchor, positive) pair of the batch,
negatives mined within the batch (gathered from every rank under DDP). Validation: recall@1
of melody retrieval across timbres: each clip of view 0 queries the view-1 clips (another
instrument, tempo and register), and the other way round.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from lightning.pytorch import LightningModule

from musiclm.models.melody import MelodyEmbedder, melody_kwargs, semihard_triplet_loss


def cross_view_recall(emb: torch.Tensor, labels: torch.Tensor, views: torch.Tensor) -> float:
    """Recall@1 of retrieving a query's melody among the clips of the other view, both ways."""
    hits, total = 0, 0
    for q, g in ((0, 1), (1, 0)):
        qs, gs = views == q, views == g
        if not qs.any() or not gs.any():
            continue
        best = (emb[qs] @ emb[gs].T).argmax(dim=1)
        hits += int((labels[gs][best] == labels[qs]).sum())
        total += int(qs.sum())
    return hits / max(total, 1)


class MelodyStage(LightningModule):
    """Trains ``MelodyEmbedder``; the network arguments are its, the rest training knobs."""

    def __init__(
        self,
        *,
        sample_rate: int = 16000,
        embed_dim: int = 192,
        n_fft: int = 2048,
        hop_length: int = 320,
        min_midi: int = 36,
        max_midi: int = 108,
        patch_frames: int = 4,
        dim: int = 256,
        depth: int = 6,
        heads: int = 4,
        dropout: float = 0.0,
        window_s: float = 4.0,
        hop_s: float = 3.0,
        input_s: float = 10.0,
        margin: float = 0.3,
        lr: float = 3e-4,
        weight_decay: float = 0.01,
        warmup_steps: int = 100,
    ) -> None:
        """
        Args:
            sample_rate ... input_s: ``MelodyEmbedder``'s (see ``musiclm.models.melody``).
            margin: triplet margin on Euclidean distances between unit vectors (0..2).
            lr, weight_decay, warmup_steps: AdamW, linear warm-up, cosine decay to 0 when the
                trainer has ``max_steps``.
        """
        super().__init__()
        if margin <= 0:
            raise ValueError(f"melody: margin must be positive, got {margin}")
        self.save_hyperparameters()
        self.melody = MelodyEmbedder(**melody_kwargs(dict(self.hparams)))
        self._val: dict[str, list[torch.Tensor]] = {}

    @property
    def sample_rate(self) -> int:
        return self.melody.sample_rate

    def _gather(self, x: torch.Tensor) -> torch.Tensor:
        if self.trainer is None or self.trainer.world_size == 1:
            return x
        return self.all_gather(x, sync_grads=True).reshape(-1, *x.shape[1:])

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        emb = self.melody(batch["audio"])
        labels = batch["label"]
        if self.trainer is not None and self.trainer.world_size > 1:
            # labels are per-batch group indices: make them unique across ranks before mixing
            labels = labels + self.global_rank * 1_000_000
            emb, labels = self._gather(emb), self.all_gather(labels).reshape(-1)
        loss, stats = semihard_triplet_loss(emb, labels, self.hparams.margin)
        n = emb.shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=n)
        for k, v in stats.items():
            self.log(f"train/{k}", v, batch_size=n)
        return loss

    def on_validation_epoch_start(self) -> None:
        self._val = {"emb": [], "label": [], "view": []}

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._val["emb"].append(self.melody(batch["audio"]).float().cpu())
        self._val["label"].append(batch["label"].cpu())
        self._val["view"].append(batch["view"].cpu())

    def on_validation_epoch_end(self) -> None:
        # every rank holds the same fixed pairs, so no gather is needed
        if not self._val.get("emb"):
            return
        emb, labels, views = (torch.cat(self._val[k]) for k in ("emb", "label", "view"))
        recall = cross_view_recall(emb, labels, views)
        groups = int(labels.unique().numel())
        self.log_dict(
            {"val/recall_at_1": recall, "val/recall_chance": 1.0 / max(groups, 1)},
            sync_dist=True,
        )
        self._val = {}

    def on_test_epoch_start(self) -> None:
        self.on_validation_epoch_start()

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.validation_step(batch, batch_idx)

    def on_test_epoch_end(self) -> None:
        emb, labels, views = (torch.cat(self._val[k]) for k in ("emb", "label", "view"))
        self.log("test/recall_at_1", cross_view_recall(emb, labels, views))
        self._val = {}

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        decay = [p for p in self.parameters() if p.dim() >= 2]
        no_decay = [p for p in self.parameters() if p.dim() < 2]
        opt = torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": hp.weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=hp.lr,
        )
        total = self.trainer.estimated_stepping_batches
        total = max(int(total), 1) if math.isfinite(total) else None
        warmup = max(1, min(hp.warmup_steps, total or hp.warmup_steps))

        def schedule(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            if total is None:
                return 1.0
            return 0.5 * (
                1.0 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup)))
            )

        sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
