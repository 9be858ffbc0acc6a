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
- ``model(tokens, start=s, levels=L)`` -> logits ``(B, N - s, num_targets // L)``: the
  positions from ``s`` cycle through ``L`` target levels (frame-major codec levels, each
  owning ``num_targets // L`` consecutive ids) and each gets logits over its own level's ids
  only (a quarter of the head's work for 4 coarse levels; training's loss is over these);
- ``frame_ids`` ``(B, N, C)`` input ids (``-1``: none) whose embeddings are added to each
  position's token embedding (frame-aligned conditioning, see ``TokenLayout``);
- ``cache = model.new_cache(batch, capacity)``; then ``model(tokens, cache=cache, pos=,
  frame_ids=)`` appends ``tokens`` (the positions not yet cached: the prompt, then usually
  one per step) and returns the logits of exactly those positions: incremental decoding
  (``musiclm.models.kv_cache``), equal to the full pass's logits at those positions.
"""

from __future__ import annotations

import torch
from torch import nn
from x_transformers import Decoder, TransformerWrapper

from musiclm.models.kv_cache import KVCache, cached_forward, new_cache


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
        cache: KVCache | None = None,
        start: int = 0,
        pos: torch.Tensor | None = None,
        frame_ids: torch.Tensor | None = None,
        levels: int = 1,
    ) -> torch.Tensor:
        """Logits ``(B, N', num_targets // levels)`` for the positions from ``start``.

        ``pos`` ``(N,)``: rotary positions of the tokens (default ``0..N-1``, or the next
        free slots of ``cache``; see ``TokenLayout.positions``); ``frame_ids`` ``(B, N, C)``:
        ids whose embeddings are added to the positions' inputs; ``levels``: per-level logits
        (module docstring). With ``cache`` (``new_cache``), ``tokens`` are appended to it and
        every one of them gets logits (``start`` and ``levels`` go with a full pass).
        """
        if tokens.dim() != 2 or tokens.shape[1] < 1:
            raise ValueError(f"tokens must be (batch, length>=1), got shape {tuple(tokens.shape)}")
        n = tokens.shape[1]
        if pos is not None and pos.shape != (n,):
            raise ValueError(f"pos must be ({n},), got {tuple(pos.shape)}")
        if frame_ids is not None and (frame_ids.dim() != 3 or frame_ids.shape[:2] != tokens.shape):
            raise ValueError(
                f"frame_ids must be ({tokens.shape[0]}, {n}, C), got {tuple(frame_ids.shape)}"
            )
        extra = None if frame_ids is None else self.frame_embedding(frame_ids)
        if cache is not None:
            if start or levels != 1:
                raise ValueError("start and levels go with a full forward pass (no cache)")
            return cached_forward(cache, tokens, pos, extra)
        if levels < 1 or self.num_targets % levels or (n - start) % levels:
            raise ValueError(
                f"levels={levels} must divide num_targets={self.num_targets} and the "
                f"{n - start} positions from start={start}"
            )
        hidden = self.net(tokens, return_embeddings=True, pos=pos, sum_embeds=extra)
        hidden = hidden[:, start:] if start else hidden
        if levels == 1:
            return self.net.to_logits(hidden)
        b, t, d = hidden.shape
        weight = self.net.to_logits.weight.view(levels, -1, d)  # (L, K, D)
        return torch.einsum(
            "bfld,lkd->bflk", hidden.view(b, t // levels, levels, d), weight
        ).reshape(b, t, -1)

    def new_cache(self, batch: int, capacity: int) -> KVCache:
        """An empty key/value cache for ``batch`` rows and up to ``capacity`` positions."""
        return new_cache(self, batch, capacity)

    def frame_embedding(self, frame_ids: torch.Tensor) -> torch.Tensor:
        """``(B, N, C)`` ids (``-1``: none) -> the sum of their token embeddings ``(B, N, D)``."""
        return summed_embedding(self.net.token_emb.emb.weight, frame_ids)

    def num_parameters(self, *, exclude_embedding: bool = True) -> int:
        """Parameter count (the input embedding excluded by default, as in FLOP estimates)."""
        total = sum(p.numel() for p in self.parameters())
        if exclude_embedding:
            total -= self.net.token_emb.emb.weight.numel()
        return total

    def flops_per_token(self, context: int, levels: int = 1) -> float:
        """Training FLOPs per token (forward + backward = 3x forward) at ``context`` length.

        Matmul FLOPs only: 2 per weight (the embedding lookup is not a matmul) plus attention
        scores and values, ``2 * 2 * context * dim`` per layer, counted for the full context
        as the PaLM appendix does (causal attention does about half of that work). With
        per-level logits (``levels``) a position uses ``1 / levels`` of the output head.
        """
        head = self.net.to_logits.weight.numel()
        weights = self.num_parameters(exclude_embedding=True) - head + head // levels
        attention = 2 * 2 * self.depth * context * self.dim
        return 3.0 * (2 * weights + attention)


def summed_embedding(weight: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Sum over the last axis of the embeddings of ``ids`` (``-1``: contributes nothing)."""
    emb = torch.nn.functional.embedding(ids.clamp_min(0), weight)
    return (emb * (ids >= 0).unsqueeze(-1).to(emb.dtype)).sum(-2)
