"""Next-token sampling: temperature, top-k, top-p, classifier-free guidance.

Guidance follows Ho & Salimans: ``cond + (scale - 1) * (cond - uncond)``, written so that
``scale == 1`` returns the conditional logits bit for bit. The conditional and unconditional
rows go through the network in one batched forward pass (``decode.generate_window`` stacks
them); this module only combines their logits.

A stage whose conditioning list marks a stream ``guided: true`` (the semantic stage's beat
clock) is guided toward it with a scale of its own, composed with the text's as for several
conditions (Liu et al. 2022, Brooks et al. 2023): ``none + stream_cfg_scale * (streams -
none) + cfg_scale * (cond - streams)``, where ``streams`` drops the text only and ``none``
drops the text and those streams. With ``stream_cfg_scale == 1`` this is plain text guidance
against ``streams``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import torch

from musiclm.stage_names import COARSE, DELAY, FINE, SEMANTIC

# the papers' temperatures: MusicLM's semantic 1.0, coarse 0.95, fine 0.4; MusicGen's 1.0
PAPER_TEMPERATURE = {SEMANTIC: 1.0, COARSE: 0.95, FINE: 0.4, DELAY: 1.0}


@dataclass(frozen=True)
class SamplingConfig:
    """How one stage picks its next token.

    Attributes:
        temperature: logits are divided by it; 0 means greedy (argmax).
        top_k: keep only the ``k`` most likely tokens (None or 0: all).
        top_p: keep the smallest set whose probability reaches ``p`` (None or 1.0: all).
        cfg_scale: classifier-free guidance scale (1.0: plain conditional sampling); needs
            a stage trained with conditioning dropout.
        stream_cfg_scale: guidance toward the streams whose conditioning entry says
            ``guided: true`` (1.0: none), composed with ``cfg_scale`` (module docstring).
    """

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    cfg_scale: float = 1.0
    stream_cfg_scale: float = 1.0

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k is not None and self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.cfg_scale < 0:
            raise ValueError(f"cfg_scale must be >= 0, got {self.cfg_scale}")
        if self.stream_cfg_scale < 0:
            raise ValueError(f"stream_cfg_scale must be >= 0, got {self.stream_cfg_scale}")

    @property
    def guided(self) -> bool:
        return self.cfg_scale != 1.0 or self.stream_cfg_scale != 1.0

    @property
    def stream_guided(self) -> bool:
        return self.stream_cfg_scale != 1.0

    def replace(self, **changes: Any) -> SamplingConfig:
        return SamplingConfig(**{**asdict(self), **changes})

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "sampling") -> SamplingConfig:
        """Build from a mapping; an unknown key is an error naming ``where``."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{where}: unknown sampling key(s) {unknown}; known: {sorted(known)}")
        try:
            return cls(**data)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{where}: {err}") from None


def guide(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance; exactly ``cond`` when ``scale == 1``."""
    return cond + (scale - 1.0) * (cond - uncond)


def guide_streams(
    cond: torch.Tensor,
    streams: torch.Tensor,
    none: torch.Tensor,
    scale: float,
    stream_scale: float,
) -> torch.Tensor:
    """Guidance toward the text (``cond`` against ``streams``, the text dropped) and toward
    the guided streams (``streams`` against ``none``, both dropped); exactly ``guide(cond,
    streams, scale)`` when ``stream_scale == 1``."""
    return guide(cond, streams, scale) + (stream_scale - 1.0) * (streams - none)


def filter_logits(
    logits: torch.Tensor, *, top_k: int | None = None, top_p: float | None = None
) -> torch.Tensor:
    """Set logits outside the top-k / nucleus (top-p) set to ``-inf`` (B, V) -> (B, V)."""
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        # drop a token when the tokens ranked above it already reach top_p
        drop_sorted = probs.cumsum(-1) - probs >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample(
    logits: torch.Tensor, config: SamplingConfig, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Draw one token per row from logits (B, V) -> (B,) long."""
    if config.temperature == 0:
        return logits.argmax(-1)
    logits = filter_logits(logits / config.temperature, top_k=config.top_k, top_p=config.top_p)
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
