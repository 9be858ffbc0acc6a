"""The decoder-only token LM shared by the semantic, coarse and fine stages.

One x-transformers ``Decoder`` (rotary positions, SDPA/flash attention, no absolute position
table, so cached decoding works past any training length) over a unified input vocabulary:
every token stream (special tokens, MuLan levels, semantic tokens, each codec level) owns a
disjoint id range, laid out by ``musiclm.stages.token_layout``. The output head covers only
the *target* vocabulary of the stage (e.g. ``Q_c * K`` ids for coarse), because the model is
never asked to predict conditioning tokens.

API used by training and by generation (kept stable):

- ``TokenLM(num_tokens=, num_targets=, dim=, depth=, heads=, ...)``;
- ``model(tokens)`` with tokens ``(B, N)`` long input ids -> logits ``(B, N, num_targets)``;
  position ``i`` predicts the token at ``i + 1``;
- ``model(tokens, start=s)`` -> logits for positions ``s..N-1`` only (saves the head's
  matmul over the conditioning prefix during training);
- ``model(prompt, return_cache=True)`` -> ``(logits, cache)``; then
  ``model(new_tokens, cache=cache, return_cache=True)`` -> ``(logits, cache)``: incremental
  decoding with x-transformers' key/value cache. With a cache, ``tokens`` holds only the
  positions not yet cached (usually one per step) and the logits cover exactly those.
  ``cache_length(cache)`` is the number of positions seen so far; ``trim_cache(cache, keep)``
  keeps the last ``keep`` cached keys/values (sliding windows: keys are cached before the
  rotary rotation and positions keep counting, so relative distances stay right).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from x_transformers import Decoder, TransformerWrapper


class TokenLM(nn.Module):
    """Decoder-only transformer: unified input ids -> logits over the stage's targets."""

    def __init__(
        self,
        *,
        num_tokens: int,
        num_targets: int,
        dim: int = 1024,
        depth: int = 24,
        heads: int = 16,
        ff_mult: int = 4,
        dropout: float = 0.0,
        attn_flash: bool = True,
    ) -> None:
        super().__init__()
        if num_tokens < 1 or num_targets < 1:
            raise ValueError(
                f"num_tokens and num_targets must be >= 1, got {num_tokens}, {num_targets}"
            )
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by heads {heads}")
        self.num_tokens = num_tokens
        self.num_targets = num_targets
        self.dim = dim
        self.depth = depth
        self.heads = heads
        self.ff_mult = ff_mult
        self.net = TransformerWrapper(
            num_tokens=num_tokens,
            logits_dim=num_targets,
            max_seq_len=0,  # no absolute table: rotary only, so the cache works at any length
            use_abs_pos_emb=False,
            attn_layers=Decoder(
                dim=dim,
                depth=depth,
                heads=heads,
                rotary_pos_emb=True,
                attn_flash=attn_flash,
                ff_mult=ff_mult,
                attn_dropout=dropout,
                ff_dropout=dropout,
            ),
        )

    def forward(
        self,
        tokens: torch.Tensor,
        *,
        cache: Any | None = None,
        return_cache: bool = False,
        start: int = 0,
        pos: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        """Logits ``(B, N', num_targets)`` for the positions from ``start`` (or new ones).

        With ``cache``, ``tokens`` holds only the new (not yet cached) positions. ``pos``
        ``(N,)``: rotary positions of the tokens (default ``0..N-1``; see
        ``TokenLayout.positions``); not supported together with ``cache``.
        """
        if tokens.dim() != 2 or tokens.shape[1] < 1:
            raise ValueError(f"tokens must be (batch, length>=1), got shape {tuple(tokens.shape)}")
        if pos is not None:
            if cache is not None or return_cache:
                raise ValueError("custom positions go with a full forward pass (no cache)")
            if pos.shape != (tokens.shape[1],):
                raise ValueError(f"pos must be ({tokens.shape[1]},), got {tuple(pos.shape)}")
        if cache is not None:
            hidden, inter = self.net(
                tokens,
                cache=cache,
                input_not_include_cache=True,
                cache_age=tokens.shape[1],
                return_embeddings_and_intermediates=True,
            )
        elif return_cache:
            hidden, inter = self.net(tokens, return_embeddings_and_intermediates=True)
        else:
            hidden, inter = self.net(tokens, return_embeddings=True, pos=pos), None
        logits = self.net.to_logits(hidden[:, start:] if start else hidden)
        return (logits, inter) if return_cache else logits

    def num_parameters(self, *, exclude_embedding: bool = True) -> int:
        """Parameter count (the input embedding excluded by default, as in FLOP estimates)."""
        total = sum(p.numel() for p in self.parameters())
        if exclude_embedding:
            total -= self.net.token_emb.emb.weight.numel()
        return total

    def flops_per_token(self, context: int) -> float:
        """Training FLOPs per token (forward + backward = 3x forward) at ``context`` length.

        Matmul FLOPs only: 2 per weight (the embedding lookup is not a matmul) plus attention
        scores and values, ``2 * 2 * context * dim`` per layer, counted for the full context
        as the PaLM appendix does (causal attention does about half of that work).
        """
        weights = self.num_parameters(exclude_embedding=True)
        attention = 2 * 2 * self.depth * context * self.dim
        return 3.0 * (2 * weights + attention)


def cache_length(cache: Any) -> int:
    """How many positions an x-transformers cache holds."""
    return int(cache.cache_length)


def trim_cache(cache: Any, keep: int) -> Any:
    """Keep only the last ``keep`` cached positions in place (sliding-window decoding)."""
    for inter in cache.attn_intermediates:
        if inter.cached_kv is not None:
            inter.cached_kv = [t[..., -keep:, :] for t in inter.cached_kv]
    return cache
