"""Memorization study (MusicLM, section 5.6): does the semantic LM reproduce training data?

For training clips, the semantic LM is prompted with the clip's MuLan tokens plus its first
``T`` seconds of semantic tokens and continued greedily; the continuation is compared with
what really follows in the clip:

* exact match: every continuation token equals the reference token;
* approximate match: the continuation's token histogram is within a threshold of the
  reference's under optimal transport whose ground cost is the Euclidean distance between the
  semantic k-means centroids (exact earth mover's distance, solved as a linear program by
  ``scipy.optimize.linprog``/HiGHS over the two histograms' supports). The threshold is
  calibrated on mismatched pairs (a continuation against another clip's reference): a low
  percentile of their distances, so the approximate-match rate of unrelated pairs is about
  that percentile by construction and is reported beside it.

The generation side is a callable, ``continue_fn(prefix (T,), conditioning, n) -> (n,)``, so
any semantic LM (or a stand-in) plugs in.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from musiclm.stage_names import SEMANTIC

ContinueFn = Callable[[np.ndarray, Any, int], Any]


@dataclass
class MemorizationExample:
    """One training clip: its semantic tokens (F,) and its conditioning streams (``{"mulan":
    (Q_m,), "beat": (F,)}``, each None when the shards lack it)."""

    key: str
    semantic: np.ndarray
    conditioning: Any = None


def centroid_cost(centroids: np.ndarray) -> np.ndarray:
    """Euclidean distances (k, k) between k-means centroids (k, D)."""
    c = np.asarray(centroids, dtype=np.float64)
    if c.ndim != 2:
        raise ValueError(f"centroids must be (k, D), got shape {c.shape}")
    sq = (c**2).sum(1)
    return np.sqrt(np.clip(sq[:, None] + sq[None] - 2 * c @ c.T, 0.0, None))


def token_histogram(tokens: np.ndarray, k: int) -> np.ndarray:
    """Normalised counts (k,) of tokens in [0, k)."""
    t = np.asarray(tokens).reshape(-1)
    if t.size == 0:
        raise ValueError("cannot histogram an empty token sequence")
    if t.min() < 0 or t.max() >= k:
        raise ValueError(f"tokens must lie in [0, {k}), got range [{t.min()}, {t.max()}]")
    return np.bincount(t.astype(np.int64), minlength=k) / t.size


def ot_distance(h1: np.ndarray, h2: np.ndarray, cost: np.ndarray) -> float:
    """Exact optimal-transport cost between histograms h1, h2 (k,) under ``cost`` (k, k)."""
    from scipy.optimize import linprog
    from scipy.sparse import coo_matrix, vstack

    i1, i2 = np.flatnonzero(h1), np.flatnonzero(h2)
    a, b = h1[i1] / h1[i1].sum(), h2[i2] / h2[i2].sum()
    c = cost[np.ix_(i1, i2)]
    n1, n2 = len(i1), len(i2)
    if n1 == 1 or n2 == 1:  # all mass moves from/to one bin: no choice to make
        return float((c * (a[:, None] * b[None])).sum())
    idx = np.arange(n1 * n2)
    rows = coo_matrix((np.ones(n1 * n2), (idx // n2, idx)), shape=(n1, n1 * n2))
    cols = coo_matrix((np.ones(n1 * n2), (idx % n2, idx)), shape=(n2, n1 * n2))
    # one marginal constraint is implied by the others; dropping it keeps the system full rank
    res = linprog(
        c.reshape(-1),
        A_eq=vstack([rows, cols.tocsr()[:-1]]).tocsr(),
        b_eq=np.concatenate([a, b[:-1]]),
        bounds=(0, None),
        method="highs",
    )
    if res.status != 0:
        raise RuntimeError(f"optimal transport LP failed: {res.message}")
    return float(res.fun)


def _as_tokens(x: Any, n: int, where: str) -> np.ndarray:
    a = np.asarray(x.detach().cpu() if hasattr(x, "detach") else x).reshape(-1)
    if a.size != n:
        raise ValueError(f"{where}: continue_fn returned {a.size} tokens, asked for {n}")
    return a.astype(np.int64)


def memorization_study(
    continue_fn: ContinueFn,
    examples: Sequence[MemorizationExample],
    *,
    centroids: np.ndarray,
    frame_rate: float,
    prompt_seconds: Sequence[float] = (0.0, 1.0, 2.0, 5.0, 10.0),
    continuation_seconds: float = 5.0,
    percentile: float = 1.0,
    mismatched_shifts: int = 5,
) -> dict[str, Any]:
    """Exact and approximate match rates of greedy continuations for each prompt length.

    Clips shorter than prompt + continuation are left out for that prompt length (the count
    used is reported). The threshold is the ``percentile`` of mismatched distances pooled
    over prompt lengths, each continuation compared with ``mismatched_shifts`` other clips.
    """
    cost = centroid_cost(centroids)
    k = cost.shape[0]
    n_cont = int(round(continuation_seconds * frame_rate))
    if n_cont < 1:
        raise ValueError("continuation_seconds * frame_rate must give at least one token")
    per_t: list[dict[str, Any]] = []
    mismatched: list[float] = []
    for seconds in prompt_seconds:
        t = int(round(seconds * frame_rate))
        use = [e for e in examples if len(e.semantic) >= t + n_cont]
        if not use:
            per_t.append({"prompt_seconds": seconds, "n": 0})
            continue
        gens, refs = [], []
        for e in use:
            sem = np.asarray(e.semantic).reshape(-1)
            out = continue_fn(sem[:t].copy(), e.conditioning, n_cont)
            gens.append(_as_tokens(out, n_cont, f"clip {e.key!r}, prompt {seconds} s"))
            refs.append(sem[t : t + n_cont])
        hg = [token_histogram(g, k) for g in gens]
        hr = [token_histogram(r, k) for r in refs]
        dist = np.array([ot_distance(a, b, cost) for a, b in zip(hg, hr, strict=True)])
        for s in range(1, min(mismatched_shifts, len(use) - 1) + 1):
            mismatched += [
                ot_distance(hg[i], hr[(i + s) % len(use)], cost) for i in range(len(use))
            ]
        exact = np.array([np.array_equal(g, r) for g, r in zip(gens, refs, strict=True)])
        per_t.append({"prompt_seconds": seconds, "n": len(use), "exact": exact, "dist": dist})
    if not mismatched:
        raise ValueError(
            "memorization study needs at least 2 clips long enough for a prompt plus "
            f"{continuation_seconds} s continuation to calibrate its threshold"
        )
    mis = np.asarray(mismatched)
    threshold = float(np.percentile(mis, percentile))
    rows = []
    for r in per_t:
        if r["n"] == 0:
            rows.append(r)
            continue
        approx = r["dist"] <= threshold
        rows.append(
            {
                "prompt_seconds": r["prompt_seconds"],
                "n": r["n"],
                "exact_match_rate": float(r["exact"].mean()),
                "approximate_match_rate": float(approx.mean()),
                "mean_ot_distance": float(r["dist"].mean()),
            }
        )
    return {
        "continuation_seconds": continuation_seconds,
        "frame_rate": frame_rate,
        "ot_solver": "exact EMD, scipy.optimize.linprog (HiGHS), Euclidean centroid cost",
        "threshold": threshold,
        "threshold_percentile": percentile,
        "mismatched_pairs": int(mis.size),
        "mismatched_match_rate": float((mis <= threshold).mean()),
        "mismatched_mean_ot_distance": float(mis.mean()),
        "by_prompt_length": rows,
    }


def semantic_lm_continue_fn(checkpoint: str, *, device: str = "cpu") -> ContinueFn:
    """Greedy continuation with a trained semantic stage (``musiclm fit`` checkpoint).

    ``conditioning``: the clip's streams, ``{"mulan": (Q_m,), "beat": (F,)}`` as
    ``load_token_examples`` reads them (the beat clock for a stage trained with ``beats``,
    which it follows over the continuation too). The prompt is ``[BOS] + conditioning +
    prefix semantic tokens``, built as generation builds it (``stage_runner.window_prompt``);
    decoding is generation's own (``decode.generate_window``: cached,
    with the stage's positions and frame inputs), argmax at every step.
    """
    import torch

    from musiclm.generation.decode import generate_window
    from musiclm.generation.sampling import SamplingConfig
    from musiclm.generation.stage_runner import window_prompt
    from musiclm.stages.token_lm_stage import load_network

    net, layout = load_network(checkpoint, map_location=device)
    if layout.stage != SEMANTIC:
        raise ValueError(f"{checkpoint} is a {layout.stage} stage checkpoint, not semantic")
    greedy = SamplingConfig(temperature=0.0)

    @torch.no_grad()
    def continue_fn(prefix: np.ndarray, conditioning: Any, n: int) -> np.ndarray:
        cond = dict(conditioning or {})
        sem = torch.as_tensor(np.asarray(prefix, dtype=np.int64), device=device)[None]
        streams: dict[str, torch.Tensor] = {"semantic": sem}
        if layout.uses_mulan:
            if cond.get("mulan") is None:
                raise ValueError(f"{checkpoint} is conditioned on MuLan tokens; the clip has none")
            mulan = np.asarray(cond["mulan"], dtype=np.int64).reshape(1, -1)
            streams["mulan"] = torch.as_tensor(mulan, device=device)
        if layout.beats:
            if cond.get("beat") is None:
                raise ValueError(
                    f"{checkpoint} follows a beat clock; the clip has none (token shards "
                    "from `musiclm prepare tokens --beats`)"
                )
            beat = np.full(sem.shape[1] + n, -1, dtype=np.int64)  # -1: no pulse past its end
            clip = np.asarray(cond["beat"], dtype=np.int64)[: beat.size]
            beat[: clip.size] = clip
            streams["beat"] = torch.as_tensor(beat, device=device)[None]
        prompt = window_prompt(layout, streams, kept=sem)
        out = generate_window(
            net, prompt, n, layout=layout, sampling=greedy, level_offset=sem.shape[1]
        )
        return layout.targets_to_codes(out)[0].cpu().numpy()

    return continue_fn
