"""Tempo from the text: MuLan tokens -> a tempo bin, for the beat clock of generation.

A beat-conditioned semantic LM (``musiclm.tokenizers.beats``) is told its clock, so at
generation something must choose the tempo the text asks for. MuLan's text tokens carry it
linearly (a linear probe on the demo's 4 x 32 tokens: tempo word 0.58 vs chance 0.29,
docs/benchmarks.md, session 5), so a small network on the sum of per-token embeddings is
enough. It trains beside the semantic LM on the same batches (the clip's MuLan *audio*
tokens and its tracked tempo) and is applied to *text* tokens, as the LM itself is.
"""

from __future__ import annotations

import torch
from torch import nn


class TempoPredictor(nn.Module):
    """MuLan tokens (B, Q) -> logits over ``bins`` tempo bins (B, bins)."""

    def __init__(self, *, levels: int, codebook: int, bins: int, dim: int = 64) -> None:
        super().__init__()
        if min(levels, codebook, bins, dim) < 1:
            raise ValueError(f"levels, codebook, bins, dim must be >= 1: {levels, codebook, bins}")
        self.levels, self.codebook = levels, codebook
        self.embed = nn.Embedding(levels * codebook, dim)
        self.head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.GELU())
        self.out = nn.Linear(dim, bins)

    def forward(self, mulan: torch.Tensor) -> torch.Tensor:
        if mulan.dim() != 2 or mulan.shape[1] != self.levels:
            raise ValueError(f"MuLan tokens must be (B, {self.levels}), got {tuple(mulan.shape)}")
        offsets = torch.arange(self.levels, device=mulan.device) * self.codebook
        x = self.embed(mulan.long() + offsets).sum(1)
        return self.out(x + self.head(x))
