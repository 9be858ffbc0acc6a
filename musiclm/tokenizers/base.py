"""Contracts that every codec, semantic tokenizer, text encoder and joint embedding plugin meets.

``runtime_checkable`` protocols check what a plugin's factory returned (see ``build``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
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


@runtime_checkable
class JointEmbedding(Protocol):
    """MuLan's role: audio and text on one unit sphere of ``embed_dim`` dimensions (our own
    MuLan, or a pretrained CLAP). An ``nn.Module`` in eval mode; embeddings need no grad."""

    sample_rate: int
    embed_dim: int
    window_s: float

    def embed_audio(self, wav: torch.Tensor) -> torch.Tensor:
        """wav (B, T) or (B, 1, T) at ``sample_rate`` -> unit vectors (B, embed_dim)."""

    def embed_audio_windows(
        self, wav: torch.Tensor, window_s: float | None = None, *, hop_s: float = 1.0
    ) -> torch.Tensor:
        """Mean of the embeddings of ``window_s`` windows every ``hop_s``, re-normalised."""

    def embed_text(self, texts: Sequence[str]) -> torch.Tensor:
        """Captions -> unit vectors (B, embed_dim)."""

    def fingerprint(self) -> str:
        """Name and a hash of the weights (what conditioning tokens were made with)."""

    def to(self, device: Any) -> Any: ...

    def parameters(self) -> Iterator[torch.nn.Parameter]: ...


PROTOCOLS: dict[str, type] = {
    "codecs": Codec,
    "semantic_tokenizers": SemanticTokenizer,
    "text_encoders": TextEncoder,
    "joint_embeddings": JointEmbedding,
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


def mean_window_embedding(
    embed: Callable[[torch.Tensor], torch.Tensor],
    wav: torch.Tensor,
    win: int,
    hop: int,
    chunk: int,
) -> torch.Tensor:
    """A joint embedding's ``embed_audio_windows``: the re-normalised mean of ``embed`` over
    windows of ``win`` samples every ``hop`` of ``wav`` (B, T), ``chunk`` windows per call;
    a clip no longer than one window is embedded whole."""
    if wav.shape[-1] <= win:
        return embed(wav)
    windows = wav.unfold(-1, win, hop)  # (B, W, win)
    b, w, _ = windows.shape
    flat = windows.reshape(b * w, win)
    embs = torch.cat([embed(flat[i : i + chunk]) for i in range(0, b * w, chunk)])
    return torch.nn.functional.normalize(embs.view(b, w, -1).mean(dim=1), dim=-1)
