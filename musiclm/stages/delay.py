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

# what a delay checkpoint's hyper-parameters hold beyond this stage's arguments: the stage's
# name and the cascade's layout arguments that ``DelayStage.__init__`` fixes
CHECKPOINT_EXTRAS = (
    "stage",
    "coarse_levels",
    "fine_levels",
    "fine_sees_mulan",
    "melody",
    "aligned_positions",
    "frame_conditioning",
    "beats",
    "target_noise",
)


class DelayStage(TokenLMStage):
    """M [+ S] -> all codec levels, interleaved by a grouped pattern."""

    stage = DELAY

    def __init__(
        self,
        *,
        levels: int | None = None,
        interleaving: str = "delay",
        semantic: bool = True,
        guide_semantic: bool = False,
        conditioning: list[Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """
        Args:
            levels: codec levels modelled (None: all of the shards' codec levels).
            interleaving: ``delay`` (level ``q`` shifted by ``q`` steps) or ``parallel``
                (every level of a frame at once), from ``musiclm.stages.interleaving``.
            semantic: condition on the semantic tokens too, each input summing the one under
                the frame it predicts (semantic -> acoustic in one stage); false: MuLan only.
            guide_semantic: conditioning dropout and guidance drop the semantic tokens (and
                the beat clock) with the MuLan tokens, so that guidance also pushes toward
                following them.
            conditioning: the streams the stage reads and how it fuses each, e.g. ``[mulan,
                {stream: semantic, fuse: frame_sum}, {stream: beat, fuse: frame_sum}]``
                (``DelayLayout``; the beat clock needs shards from ``prepare tokens --beats``).
                None: MuLan, and the semantic tokens with ``semantic``; a list overrides
                ``semantic``.
            **kwargs: the other arguments of ``TokenLMStage`` but those of the cascade's
                layout: the decoder (``dim``, ``depth``, ``heads``, ``ff_mult``, ``dropout``;
                the defaults 1024, 24, 16 are MusicGen small's too), ``cond_dropout``, the
                optimiser and schedule (``lr``, ``weight_decay``, ``warmup_steps``,
                ``decay_steps``), the expected tokenizers (``codec``, ``semantic_tokenizer``,
                ``mulan``), ``spec`` and ``compile``.
        """
        if levels is not None and levels < 1:
            raise ValueError(f"levels must be >= 1 (or null: every codec level), got {levels}")
        if not get_interleaving(interleaving).grouped:  # an unknown name lists the known ones
            raise ValueError(
                f"interleaving {interleaving!r} puts one token per position; the delay stage "
                "takes a grouped pattern (delay, parallel)"
            )
        if "stage" in kwargs:  # a checkpoint's hyper-parameters (``load_from_checkpoint``)
            kwargs = {k: v for k, v in kwargs.items() if k not in CHECKPOINT_EXTRAS}
        # the cascade's layout arguments (``TokenLayout``) are no delay stage's: given here at
        # ``TokenLMStage``'s defaults, they stay out of this stage's config (LightningCLI reads
        # this call for what ``kwargs`` takes, with the base class's defaults and docs)
        super().__init__(
            coarse_levels=4,
            fine_levels=None,
            fine_sees_mulan=False,
            melody=False,
            aligned_positions=False,
            frame_conditioning=False,
            beats=False,
            conditioning=conditioning,
            target_noise=0.0,
            **kwargs,
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
