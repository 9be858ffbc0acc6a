"""How a stage's codec levels are laid out in one token sequence, chosen by name.

A pattern turns codes ``(B, L, F)`` (``L`` levels, ``F`` frames) into one sequence ``(B, N)``
and back, and says which level each sequence position holds. ``flatten`` (frame by frame:
``f0q0 f0q1 .. f1q0 ..``, AudioLM/MusicLM) is the only one today; another pattern (e.g.
MusicGen's ``delay``) is one more class in ``INTERLEAVINGS``.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch


@runtime_checkable
class Interleaving(Protocol):
    """Codes ``(B, L, F)`` <-> one token sequence ``(B, N)``."""

    name: str

    def interleave(self, codes: torch.Tensor) -> torch.Tensor:
        """``(B, L, F)`` -> ``(B, N)``."""
        ...

    def deinterleave(self, seq: torch.Tensor, levels: int) -> torch.Tensor:
        """``(B, N)`` -> ``(B, levels, F)``; the inverse of ``interleave``."""
        ...

    def levels(self, n: int, offset: int, levels: int, device: Any = None) -> torch.Tensor:
        """Level of sequence positions ``offset .. offset + n - 1``."""
        ...


class Flatten:
    """Frame by frame: every level of frame 0, then every level of frame 1, ..."""

    name = "flatten"

    def interleave(self, codes: torch.Tensor) -> torch.Tensor:
        return codes.transpose(1, 2).reshape(codes.shape[0], -1)

    def deinterleave(self, seq: torch.Tensor, levels: int) -> torch.Tensor:
        if seq.shape[1] % levels:
            raise ValueError(
                f"{seq.shape[1]} tokens is not a whole number of {levels}-level frames"
            )
        return seq.view(seq.shape[0], -1, levels).transpose(1, 2)

    def levels(self, n: int, offset: int, levels: int, device: Any = None) -> torch.Tensor:
        return torch.arange(offset, offset + n, device=device) % levels


INTERLEAVINGS: dict[str, type] = {Flatten.name: Flatten}


def get_interleaving(name: str) -> Interleaving:
    """The pattern registered as ``name``; an unknown name lists the known ones."""
    if name not in INTERLEAVINGS:
        raise ValueError(
            f"unknown interleaving {name!r}; available: {', '.join(sorted(INTERLEAVINGS))}"
        )
    pattern = INTERLEAVINGS[name]()
    if not isinstance(pattern, Interleaving):
        raise TypeError(f"interleaving {name!r} does not implement the Interleaving protocol")
    return pattern
