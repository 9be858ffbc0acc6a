"""The k-means head every semantic tokenizer shares: features -> nearest-centroid tokens."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from musiclm.tokenizers.artifacts import config_fingerprint, load_artifact, tensor_digest
from musiclm.tokenizers.kmeans import assign

ARTIFACT_KIND = "semantic-kmeans"


def features_fingerprint(name: str, config: dict[str, Any], weights_digest: str = "") -> str:
    """Identity of a tokenizer's feature extractor (what its k-means must have been fitted on)."""
    return config_fingerprint(name, config, weights_digest or tensor_digest({}))


class KMeansTokens:
    """Optional fitted centroids for a tokenizer; ``tokenize`` errors clearly without them."""

    def __init__(self, name: str, path: str | None, features_fp: str, vocab_size: int) -> None:
        self.name, self.path, self.features_fp = name, path, features_fp
        self.centroids: torch.Tensor | None = None
        self.artifact_fp = "unfitted"
        self.vocab_size = vocab_size
        if path is None:
            return
        tensors, meta = load_artifact(Path(path), kind=ARTIFACT_KIND)
        if meta.get("features_fingerprint") != features_fp:
            raise ValueError(
                f"{name}: k-means {path} was fitted on features {meta.get('features_fingerprint')}"
                f" but this tokenizer's features are {features_fp}; refit it with "
                "`musiclm prepare fit-semantic` and the same --semantic-args"
            )
        self.centroids = tensors["centroids"].float()
        self.artifact_fp = meta["fingerprint"]
        self.vocab_size = int(self.centroids.shape[0])

    def fingerprint(self) -> str:
        return config_fingerprint(self.name, {"features": self.features_fp}, self.artifact_fp)

    def __call__(self, feats: torch.Tensor) -> torch.Tensor:
        """features (B, F, D) -> tokens (B, F) long."""
        if self.centroids is None:
            raise RuntimeError(
                f"{self.name}: tokenize() needs fitted k-means centroids: run `musiclm prepare "
                f"fit-semantic --semantic {self.name} ...` and pass kmeans=PATH"
            )
        b, f, d = feats.shape
        if d != self.centroids.shape[1]:
            raise ValueError(
                f"{self.name}: features have dim {d}, k-means {self.path} has "
                f"{self.centroids.shape[1]}"
            )
        return assign(feats.reshape(b * f, d).float(), self.centroids).reshape(b, f)
