import pytest
import torch

from musiclm.tokenizers.artifacts import load_artifact, save_artifact
from musiclm.tokenizers.kmeans import (
    assign,
    fit_kmeans,
    fit_residual_kmeans,
    residual_decode,
    residual_encode,
)


def blobs(n_per: int, centers: torch.Tensor, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = centers.repeat_interleave(n_per, 0)
    x = x + 0.05 * torch.randn(x.shape, generator=g)
    return x[torch.randperm(x.shape[0], generator=g)]


CENTERS = torch.tensor([[0.0, 0.0], [5.0, 0.0], [0.0, 5.0], [5.0, 5.0], [-5.0, 2.0]])


def test_recovers_separated_clusters_from_a_stream():
    x = blobs(400, CENTERS, seed=0)
    c = fit_kmeans(lambda: x.split(256), 5, seed=0, iters=5, init_frames=300, passes=2)
    # every true centre has a fitted centroid within the noise scale
    d = torch.cdist(CENTERS, c).min(1).values
    assert (d < 0.1).all(), d


def test_deterministic_for_a_seed_and_seed_matters():
    x = torch.randn(3000, 8, generator=torch.Generator().manual_seed(1))
    a = fit_kmeans(x.split(500), 16, seed=7, iters=3)
    b = fit_kmeans(x.split(500), 16, seed=7, iters=3)
    c = fit_kmeans(x.split(500), 16, seed=8, iters=3)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_streams_beyond_the_init_buffer():
    # the buffer holds the first 200 frames (all near one centre); the far cluster arrives later
    near = blobs(200, CENTERS[:1], seed=0)
    far = blobs(2000, CENTERS[3:4], seed=1)
    c = fit_kmeans(iter([near, far[:1000], far[1000:]]), 2, seed=0, init_frames=200)
    assert torch.cdist(CENTERS[3:4], c).min() < 1.0  # a centroid was pulled over


def test_assign_and_errors():
    c = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    assert assign(torch.tensor([[0.9, 0.8], [0.1, -0.2]]), c).tolist() == [1, 0]
    with pytest.raises(ValueError, match="one D"):
        assign(torch.zeros(3, 3), c)
    with pytest.raises(ValueError, match="fewer than k"):
        fit_kmeans([torch.zeros(3, 2)], 5)
    with pytest.raises(ValueError, match="no frames"):
        fit_kmeans([], 2)


def test_residual_levels_refine():
    x = torch.randn(2000, 6, generator=torch.Generator().manual_seed(2))
    books = fit_residual_kmeans(x, 3, 8, seed=0, iters=5)
    codes = residual_encode(x, books)
    assert codes.shape == (2000, 3)
    errors = [((residual_decode(codes[:, :q], books) - x) ** 2).mean() for q in (1, 2, 3)]
    assert errors[0] > errors[1] > errors[2]


def test_artifact_roundtrip_fingerprint_and_tamper(tmp_path):
    path = tmp_path / "a.safetensors"
    fp = save_artifact(path, {"c": torch.arange(6.0).reshape(2, 3)}, {"kind": "x", "k": 2})
    tensors, meta = load_artifact(path, kind="x")
    assert meta["fingerprint"] == fp and meta["k"] == 2
    assert torch.equal(tensors["c"], torch.arange(6.0).reshape(2, 3))
    fp2 = save_artifact(tmp_path / "b.safetensors", {"c": torch.ones(2, 3)}, {"kind": "x", "k": 2})
    assert fp2 != fp
    with pytest.raises(ValueError, match="kind"):
        load_artifact(path, kind="y")
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # flip bits in the tensor payload
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="does not match"):
        load_artifact(path)
