"""Streaming k-means (and residual k-means) over batches of frames.

``fit_kmeans`` never holds more than an initialisation buffer plus one batch: it seeds with
k-means++ and a few Lloyd steps on the first ``init_frames`` frames of the stream, then refines
with mini-batch updates (per-centroid learning rate 1/count, Sculley 2010) over the whole
stream, ``passes`` times when the stream can be iterated again. Every random choice comes from
one seeded ``torch.Generator``, so a seed and a stream give the same centroids.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import torch

Batches = Iterable[torch.Tensor] | Callable[[], Iterable[torch.Tensor]]


def assign(x: torch.Tensor, centroids: torch.Tensor, *, chunk: int = 16384) -> torch.Tensor:
    """Index of the nearest centroid for each row of ``x`` (N, D) -> (N,) long."""
    if x.ndim != 2 or centroids.ndim != 2 or x.shape[1] != centroids.shape[1]:
        raise ValueError(
            f"assign: expected x (N, D) and centroids (K, D) with one D, got "
            f"{tuple(x.shape)} and {tuple(centroids.shape)}"
        )
    c = centroids.to(x.dtype)
    c_sq = (c * c).sum(1)
    out = []
    for part in x.split(chunk):
        # |x - c|^2 = |x|^2 - 2 x.c + |c|^2; |x|^2 is constant per row.
        out.append((c_sq[None, :] - 2.0 * part @ c.T).argmin(1))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


def _kmeans_pp(x: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    # Seeding on a random subsample of 2 k points with their Gram matrix precomputed: each of
    # the k sequential steps is then one vector op instead of a pass over the whole buffer.
    if x.shape[0] > 2 * k:
        x = x[torch.randperm(x.shape[0], generator=gen)[: 2 * k]]
    n = x.shape[0]
    sq = (x * x).sum(1)
    gram = x @ x.T
    chosen = [int(torch.randint(n, (1,), generator=gen))]
    dist = (sq + sq[chosen[0]] - 2 * gram[chosen[0]]).clamp_min(0)
    for _ in range(1, k):
        total = dist.sum()
        if total <= 0:  # fewer distinct points than k: duplicate at random
            idx = int(torch.randint(n, (1,), generator=gen))
        else:
            idx = int(torch.multinomial(dist / total, 1, generator=gen))
        chosen.append(idx)
        dist = torch.minimum(dist, (sq + sq[idx] - 2 * gram[idx]).clamp_min(0))
    return x[chosen].clone()


def _lloyd(x: torch.Tensor, c: torch.Tensor, iters: int, gen: torch.Generator) -> torch.Tensor:
    k = c.shape[0]
    for _ in range(iters):
        labels = assign(x, c)
        counts = torch.bincount(labels, minlength=k).to(x.dtype)
        sums = torch.zeros_like(c).index_add_(0, labels, x)
        empty = counts == 0
        c = torch.where(empty[:, None], c, sums / counts.clamp_min(1)[:, None])
        if empty.any():  # re-seed empty clusters on random points so none stays dead
            pick = torch.randint(x.shape[0], (int(empty.sum()),), generator=gen)
            c[empty] = x[pick]
    return c


def _stream(batches: Batches) -> Iterator[torch.Tensor]:
    source = batches() if callable(batches) else batches
    for b in source:
        b = torch.as_tensor(b)
        if b.ndim != 2:
            raise ValueError(f"fit_kmeans: each batch must be (N, D), got {tuple(b.shape)}")
        if b.shape[0]:
            yield b.float()


def fit_kmeans(
    batches: Batches,
    k: int,
    *,
    seed: int = 0,
    iters: int = 10,
    passes: int = 1,
    init_frames: int | None = None,
) -> torch.Tensor:
    """Fit ``k`` centroids (k, D) over a stream of (N, D) batches.

    ``batches`` is an iterable, or a callable returning a fresh one (needed for ``passes`` > 1).
    ``iters`` Lloyd steps run on the first ``init_frames`` frames (default ``max(16 k, 8192)``)
    before the mini-batch pass(es) over the whole stream.
    """
    if k < 1:
        raise ValueError(f"fit_kmeans: k must be >= 1, got {k}")
    if passes > 1 and not callable(batches) and iter(batches) is batches:
        raise ValueError("fit_kmeans: passes > 1 needs a callable that returns a new iterator")
    gen = torch.Generator().manual_seed(seed)
    init_frames = init_frames or max(16 * k, 8192)

    stream = _stream(batches)
    buffer: list[torch.Tensor] = []
    held = 0
    rest: list[torch.Tensor] = []
    for b in stream:
        take = min(b.shape[0], init_frames - held)
        buffer.append(b[:take])
        held += take
        if take < b.shape[0]:
            rest.append(b[take:])
            break
    if held == 0:
        raise ValueError("fit_kmeans: the stream held no frames")
    x0 = torch.cat(buffer)
    if held < k:
        raise ValueError(f"fit_kmeans: {held} frames are fewer than k={k} clusters")
    c = _lloyd(x0, _kmeans_pp(x0, k, gen), iters, gen)
    counts = torch.bincount(assign(x0, c), minlength=k).to(c.dtype)
    del x0, buffer

    def updates(source: Iterable[torch.Tensor]) -> None:
        nonlocal c, counts
        for b in source:
            labels = assign(b, c)
            n = torch.bincount(labels, minlength=k).to(c.dtype)
            sums = torch.zeros_like(c).index_add_(0, labels, b)
            counts = counts + n
            hit = n > 0
            # per-centroid rate n / count: the running mean of all points it has taken
            rate = (n / counts.clamp_min(1))[:, None]
            means = sums / n.clamp_min(1)[:, None]
            c = torch.where(hit[:, None], c + rate * (means - c), c)

    updates(rest)
    updates(stream)
    for _ in range(passes - 1):
        updates(_stream(batches))
    return c


def fit_residual_kmeans(
    x: torch.Tensor,
    levels: int,
    k: int,
    *,
    seed: int = 0,
    iters: int = 10,
    batch: int = 8192,
) -> torch.Tensor:
    """Residual k-means over in-memory frames (N, D) -> codebooks (levels, k, D).

    Level ``l`` clusters what levels ``< l`` left unexplained, so any prefix of levels is a
    coarser reconstruction.
    """
    residual = x.float().clone()
    books = []
    for level in range(levels):
        c = fit_kmeans(
            lambda r=residual: r.split(batch), k, seed=seed + level, iters=iters, passes=1
        )
        residual -= c[assign(residual, c)]
        books.append(c)
    return torch.stack(books)


def residual_encode(x: torch.Tensor, books: torch.Tensor) -> torch.Tensor:
    """Frames (N, D) -> codes (N, levels) long under residual codebooks (levels, k, D)."""
    residual = x.float().clone()
    codes = []
    for c in books:
        idx = assign(residual, c)
        residual -= c[idx]
        codes.append(idx)
    return torch.stack(codes, 1)


def residual_decode(codes: torch.Tensor, books: torch.Tensor) -> torch.Tensor:
    """Codes (N, L') with L' <= levels -> frames (N, D): the sum of the first L' levels."""
    if codes.shape[1] > books.shape[0]:
        raise ValueError(f"residual_decode: {codes.shape[1]} levels > {books.shape[0]} fitted")
    out = torch.zeros(codes.shape[0], books.shape[2], dtype=books.dtype)
    for level in range(codes.shape[1]):
        out += books[level][codes[:, level]]
    return out
