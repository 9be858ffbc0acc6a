"""Retrieval metrics from a similarity matrix whose diagonal holds the matching pairs."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def ranks_of_matches(sim: torch.Tensor) -> torch.Tensor:
    """sim (Q, N), query i matches item i -> 0-based rank of each match (ties rank pessimistic)."""
    if sim.dim() != 2 or sim.shape[0] > sim.shape[1]:
        raise ValueError(f"similarity must be (Q, N) with Q <= N, got {tuple(sim.shape)}")
    target = sim.diagonal().unsqueeze(1)
    others = sim >= target
    return others.sum(dim=1) - 1


def retrieval_metrics(sim: torch.Tensor, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Recall@k and mean reciprocal rank for queries (rows) against items (columns)."""
    ranks = ranks_of_matches(sim.float()).float()
    out = {f"recall@{k}": (ranks < k).float().mean().item() for k in ks}
    out["mrr"] = (1.0 / (ranks + 1.0)).mean().item()
    return out


def bidirectional_metrics(
    text_emb: torch.Tensor, audio_emb: torch.Tensor, ks: Sequence[int] = (1, 5, 10)
) -> dict[str, float]:
    """text->audio and audio->text metrics for paired embeddings (row i of each is one pair)."""
    sim = text_emb.float() @ audio_emb.float().T
    t2a = {f"t2a/{k}": v for k, v in retrieval_metrics(sim, ks).items()}
    a2t = {f"a2t/{k}": v for k, v in retrieval_metrics(sim.T, ks).items()}
    return {**t2a, **a2t}
