"""The delay stage (MusicGen): MuLan tokens [+ semantic tokens] -> every codec level, one LM
position per 50 Hz step instead of one per token, beside the coarse + fine cascade and over
the same token shards.

What goes in: a token batch (``TokenDataModule``: M, S and every codec level of a crop).
What comes out: the cross entropy of the ``Q`` per-level heads over every step
(``DelayLayout``). Everything else (the network, optimiser, schedule, conditioning dropout,
checkpoints that load with ``weights_only``) is ``TokenLMStage``'s.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from musiclm.datamodules.token_spec import TokenSpec
from musiclm.stage_names import DELAY
from musiclm.stages.delay_layout import DelayLayout, DelaySequence, delay_logits
from musiclm.stages.interleaving import get_interleaving
from musiclm.stages.token_layout import IGNORE
from musiclm.stages.token_lm_stage import TokenLMStage


class DelayStage(TokenLMStage):
    """M [+ S] -> all codec levels, interleaved by a grouped pattern."""

    stage = DELAY

    def __init__(
        self,
        *,
        dim: int = 1024,
        depth: int = 24,
        heads: int = 16,
        ff_mult: int = 4,
        dropout: float = 0.0,
        levels: int | None = None,
        interleaving: str = "delay",
        semantic: bool = True,
        guide_semantic: bool = False,
        cond_dropout: float = 0.0,
        lr: float = 3e-4,
        weight_decay: float = 0.01,
        warmup_steps: int = 1000,
        decay_steps: int = 0,
        codec: str | None = None,
        semantic_tokenizer: str | None = None,
        mulan: str | None = None,
        spec: dict[str, Any] | None = None,
        compile: bool = False,
    ) -> None:
        """
        Args:
            dim, depth, heads, ff_mult, dropout: the decoder (MusicGen small: 1024, 24, 16).
            levels: codec levels modelled (None: all of the shards' codec levels).
            interleaving: ``delay`` (level ``q`` shifted by ``q`` steps) or ``parallel``
                (every level of a frame at once), from ``musiclm.stages.interleaving``.
            semantic: condition on the semantic tokens too, each input summing the one under
                the frame it predicts (semantic -> acoustic in one stage); false: MuLan only.
            guide_semantic: conditioning dropout and guidance drop the semantic tokens with
                the MuLan tokens, so that guidance also pushes toward following them.
            cond_dropout: probability of replacing a sample's MuLan tokens by NULL in
                training, for classifier-free guidance at sampling.
            lr, weight_decay, warmup_steps, decay_steps: as for the other token stages.
            codec, semantic_tokenizer, mulan: expected name or fingerprint of what made the
                shards (None: accept any).
            spec: resolved manifest values (filled in at setup; set in checkpoints).
            compile: wrap the network with ``torch.compile``.
        """
        if levels is not None and levels < 1:
            raise ValueError(f"levels must be >= 1 (or null: every codec level), got {levels}")
        if not get_interleaving(interleaving).grouped:  # an unknown name lists the known ones
            raise ValueError(
                f"interleaving {interleaving!r} puts one token per position; the delay stage "
                "takes a grouped pattern (delay, parallel)"
            )
        super().__init__(
            dim=dim,
            depth=depth,
            heads=heads,
            ff_mult=ff_mult,
            dropout=dropout,
            cond_dropout=cond_dropout,
            lr=lr,
            weight_decay=weight_decay,
            warmup_steps=warmup_steps,
            decay_steps=decay_steps,
            codec=codec,
            semantic_tokenizer=semantic_tokenizer,
            mulan=mulan,
            spec=spec,
            compile=compile,
        )

    def _layout(self, spec: TokenSpec) -> DelayLayout:
        return DelayLayout.from_hparams(spec, self.hparams)

    def _loss(self, batch: dict[str, Any], *, train: bool) -> tuple[torch.Tensor, Any, Any]:
        assert self.layout is not None
        seq: DelaySequence = self.layout.sequence(batch)
        ids = seq.ids
        if train and self.hparams.cond_dropout > 0:
            drop = torch.rand(ids.shape[0], device=ids.device) < self.hparams.cond_dropout
            ids = self.layout.drop_conditioning(ids, drop)
        logits = delay_logits(self._forward, self.layout, ids, seq.prefix_len)  # (B, S, Q, K)
        loss = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), seq.labels.reshape(-1), ignore_index=IGNORE
        )
        self.last_batch_tokens = ids.shape[0] * (ids.shape[1] - 1)
        self.last_context = ids.shape[1] - 1
        return loss, logits, seq

    def _level_accuracy(self, logits: torch.Tensor, seq: Any) -> dict[str, torch.Tensor]:
        """Next-step accuracy of each codec level's head (special slots and padding left out)."""
        pred = logits.detach().argmax(-1)  # (B, S, Q)
        valid = seq.labels != IGNORE
        hit = (pred == seq.labels) & valid
        per_level = hit.sum((0, 1)) / valid.sum((0, 1)).clamp_min(1)
        return {f"accuracy_level{q}": value for q, value in enumerate(per_level)}

    def flops_per_batch(self) -> float:
        """Model FLOPs of the last training batch: every position uses the whole head."""
        if self.net is None or not self.last_batch_tokens:
            return 0.0
        return self.net.flops_per_token(self.last_context, 1) * self.last_batch_tokens
