"""``scratch`` text encoder: a small transformer trained from scratch, no download needed.

Words are lower-cased and hashed into a fixed vocabulary (CRC32, stable across processes),
so there is no tokenizer file to ship; collisions are rare for caption-sized vocabularies.
"""

from __future__ import annotations

import re
import zlib

import torch
from torch import nn

PAD, CLS = 0, 1
_WORD = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")


def hash_tokens(text: str, vocab_size: int) -> list[int]:
    """Caption -> ids in [2, vocab_size) (0 is padding, 1 a leading CLS)."""
    return [2 + zlib.crc32(w.encode()) % (vocab_size - 2) for w in _WORD.findall(text.lower())]


class ScratchTextEncoder(nn.Module):
    """Hashed-word embeddings + an x-transformers encoder."""

    def __init__(
        self,
        *,
        dim: int = 256,
        depth: int = 2,
        heads: int = 4,
        vocab_size: int = 8192,
        max_length: int = 64,
    ) -> None:
        super().__init__()
        from x_transformers import Encoder, TransformerWrapper

        if vocab_size < 3:
            raise ValueError(f"scratch text encoder: vocab_size must be >= 3, got {vocab_size}")
        self.dim = dim
        self.vocab_size = vocab_size
        self.max_length = max_length
        self.net = TransformerWrapper(
            num_tokens=vocab_size,
            max_seq_len=max_length,
            attn_layers=Encoder(dim=dim, depth=depth, heads=heads),
            return_only_embed=True,
        )

    def forward(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """texts -> (hidden (B, L, dim), mask (B, L) bool)."""
        rows = [[CLS, *hash_tokens(t, self.vocab_size)][: self.max_length] for t in texts]
        length = max(len(r) for r in rows)
        device = next(self.parameters()).device
        ids = torch.full((len(rows), length), PAD, dtype=torch.long, device=device)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row, device=device)
        mask = ids != PAD
        return self.net(ids, mask=mask, return_embeddings=True), mask
