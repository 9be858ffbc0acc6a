"""Contracts that every codec, semantic tokenizer and text encoder plugin meets.

``runtime_checkable`` protocols check what a plugin's factory returned (see ``build``).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch

from musiclm import registry


@runtime_checkable
class Codec(Protocol):
    """Waveform <-> residual-quantised acoustic tokens."""

    sample_rate: int
    frame_rate: float
    num_quantizers: int
    codebook_size: int

    def encode(self, wav: torch.Tensor) -> torch.Tensor:
        """wav (B, 1, T) float at ``sample_rate`` -> codes (B, Q, F) long."""

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (B, Q', F), Q' <= Q -> wav (B, 1, T') float."""

    def fingerprint(self) -> str:
        """Name, config and a hash of the weights."""


@runtime_checkable
class SemanticTokenizer(Protocol):
    """Waveform -> discrete semantic tokens (k-means over self-supervised features)."""

    sample_rate: int
    frame_rate: float
    vocab_size: int

    def features(self, wav: torch.Tensor) -> torch.Tensor:
        """wav (B, 1, T) -> features (B, F, D)."""

    def tokenize(self, wav: torch.Tensor) -> torch.Tensor:
        """wav (B, 1, T) -> tokens (B, F) long."""

    def fingerprint(self) -> str: ...


@runtime_checkable
class TextEncoder(Protocol):
    """Captions -> token-level hidden states for MuLan's text tower."""

    dim: int

    def __call__(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """texts -> (hidden (B, L, dim), mask (B, L) bool)."""


PROTOCOLS: dict[str, type] = {
    "codecs": Codec,
    "semantic_tokenizers": SemanticTokenizer,
    "text_encoders": TextEncoder,
}


def build(kind: str, name: str, /, **kwargs: Any) -> Any:
    """Create plugin ``name`` of ``kind`` and check that it meets that kind's protocol."""
    obj = registry.create(kind, name, **kwargs)
    proto = PROTOCOLS[kind]
    if not isinstance(obj, proto):
        raise registry.PluginError(
            f"{kind} plugin {name!r} returned {type(obj).__name__}, which does not implement "
            f"{proto.__name__}"
        )
    return obj
