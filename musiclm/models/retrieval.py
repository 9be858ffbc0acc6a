"""Retrieval metrics from a query x item similarity matrix.

By default query i matches item i only. Pass ``positives`` (Q, N) bool to count every item
that is equally correct (e.g. clips sharing the query's exact caption) as a match: the rank
of a query is then the number of wrong items that score at least as high as its best match.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def match_ranks(sim: torch.Tensor, positives: torch.Tensor | None = None) -> torch.Tensor:
    """0-based rank of each query's best-scoring match (ties with wrong items count against)."""
    if sim.dim() != 2:
        raise ValueError(f"similarity must be (Q, N), got {tuple(sim.shape)}")
    if positives is None:
        if sim.shape[0] > sim.shape[1]:
            raise ValueError(f"without positives need Q <= N, got {tuple(sim.shape)}")
        positives = torch.eye(*sim.shape, dtype=torch.bool, device=sim.device)
    if positives.shape != sim.shape:
        raise ValueError(f"positives {tuple(positives.shape)} != similarity {tuple(sim.shape)}")
    if not positives.any(dim=1).all():
        raise ValueError("every query needs at least one positive item")
    best = sim.masked_fill(~positives, float("-inf")).amax(dim=1, keepdim=True)
    return ((sim >= best) & ~positives).sum(dim=1)


def retrieval_metrics(
    sim: torch.Tensor, ks: Sequence[int] = (1, 5, 10), positives: torch.Tensor | None = None
) -> dict[str, float]:
    """recall@k, mean reciprocal rank, and recall@1 of a random ranking ("chance@1")."""
    ranks = match_ranks(sim.float(), positives).float()
    out = {f"recall@{k}": (ranks < k).float().mean().item() for k in ks}
    out["mrr"] = (1.0 / (ranks + 1.0)).mean().item()
    n_pos = 1.0 if positives is None else positives.sum(dim=1).float()
    out["chance@1"] = (torch.as_tensor(n_pos) / sim.shape[1]).mean().item()
    return out


def same_caption(captions: Sequence[str]) -> torch.Tensor:
    """(N, N) bool: pairs whose captions are identical."""
    ids = {c: i for i, c in enumerate(dict.fromkeys(captions))}
    t = torch.tensor([ids[c] for c in captions])
    return t[:, None] == t[None, :]


def bidirectional_metrics(
    text_emb: torch.Tensor,
    audio_emb: torch.Tensor,
    ks: Sequence[int] = (1, 5, 10),
    captions: Sequence[str] | None = None,
) -> dict[str, float]:
    """text->audio ("t2a/...") and audio->text ("a2t/...") metrics of paired embeddings;
    with ``captions``, clips sharing a caption are all correct answers."""
    sim = text_emb.float() @ audio_emb.float().T
    pos = None if captions is None else same_caption(captions)
    t2a = {f"t2a/{k}": v for k, v in retrieval_metrics(sim, ks, pos).items()}
    a2t = {f"a2t/{k}": v for k, v in retrieval_metrics(sim.T, ks, pos).items()}
    return {**t2a, **a2t}
