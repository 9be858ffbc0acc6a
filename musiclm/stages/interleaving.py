"""How a stage's codec levels are laid out in one token sequence, chosen by name.

A pattern turns codes ``(B, L, F)`` (``L`` levels, ``F`` frames) into one sequence ``(B, N)``
and back, and says which level each sequence position holds. Two families:

- ``flatten`` (one token per LM position, frame by frame: ``f0q0 f0q1 .. f1q0 ..``;
  AudioLM/MusicLM's coarse and fine stages): ``N = F * L``.
- grouped patterns (``grouped = True``: the LM sees and predicts the ``L`` tokens of a *step*
  at one position; MusicGen): the sequence is step-major, ``L`` tokens per step.
  ``parallel``: step ``s`` holds every level of frame ``s`` (``F`` steps). ``delay``: level
  ``q`` is shifted by ``q`` steps, so step ``s`` holds level ``q`` of frame ``s - q``
  (``F + L - 1`` steps); a slot whose frame is before the start or after the end holds
  ``fill`` (the stage's special "no code here" id).

A new pattern is one more class in ``INTERLEAVINGS``.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch


@runtime_checkable
class Interleaving(Protocol):
    """Codes ``(B, L, F)`` <-> one token sequence ``(B, N)``."""

    name: str
    grouped: bool  # the L tokens of a step share one LM position

    def interleave(self, codes: torch.Tensor, fill: int = -1) -> torch.Tensor:
        """``(B, L, F)`` -> ``(B, N)``; slots without a code hold ``fill``."""
        ...

    def deinterleave(self, seq: torch.Tensor, levels: int) -> torch.Tensor:
        """``(B, N)`` -> ``(B, levels, F)``; the inverse of ``interleave``."""
        ...

    def levels(self, n: int, offset: int, levels: int, device: Any = None) -> torch.Tensor:
        """Level of sequence positions ``offset .. offset + n - 1``."""
        ...

    def steps(self, frames: int, levels: int) -> int:
        """Sequence steps (``N / L`` for grouped patterns, ``N`` otherwise) of ``frames``."""
        ...


class Flatten:
    """Frame by frame: every level of frame 0, then every level of frame 1, ..."""

    name = "flatten"
    grouped = False

    def interleave(self, codes: torch.Tensor, fill: int = -1) -> torch.Tensor:
        return codes.transpose(1, 2).reshape(codes.shape[0], -1)

    def deinterleave(self, seq: torch.Tensor, levels: int) -> torch.Tensor:
        if seq.shape[1] % levels:
            raise ValueError(
                f"{seq.shape[1]} tokens is not a whole number of {levels}-level frames"
            )
        return seq.view(seq.shape[0], -1, levels).transpose(1, 2)

    def levels(self, n: int, offset: int, levels: int, device: Any = None) -> torch.Tensor:
        return torch.arange(offset, offset + n, device=device) % levels

    def steps(self, frames: int, levels: int) -> int:
        return frames * levels


class Parallel(Flatten):
    """Every level of frame ``s`` at step ``s``, predicted together (MusicGen's ``parallel``):
    the same order as ``flatten``, but one LM position per frame."""

    name = "parallel"
    grouped = True

    def steps(self, frames: int, levels: int) -> int:
        return frames


class Delay:
    """Level ``q`` shifted by ``q`` steps (MusicGen's ``delay``): step ``s`` holds level ``q``
    of frame ``s - q``, so a step's levels are predicted together, each after the lower
    levels of its own frame were seen one or more steps earlier."""

    name = "delay"
    grouped = True

    def interleave(self, codes: torch.Tensor, fill: int = -1) -> torch.Tensor:
        b, levels, frames = codes.shape
        out = codes.new_full((b, levels, frames + levels - 1), fill)
        for q in range(levels):
            out[:, q, q : q + frames] = codes[:, q]
        return out.transpose(1, 2).reshape(b, -1)  # step-major

    def deinterleave(self, seq: torch.Tensor, levels: int) -> torch.Tensor:
        if seq.shape[1] % levels or seq.shape[1] // levels < levels:
            raise ValueError(
                f"{seq.shape[1]} tokens is not a whole number of >= {levels} {levels}-level steps"
            )
        steps = seq.view(seq.shape[0], -1, levels).transpose(1, 2)  # (B, L, S)
        frames = steps.shape[2] - levels + 1
        return torch.stack([steps[:, q, q : q + frames] for q in range(levels)], dim=1)

    def levels(self, n: int, offset: int, levels: int, device: Any = None) -> torch.Tensor:
        return torch.arange(offset, offset + n, device=device) % levels

    def steps(self, frames: int, levels: int) -> int:
        return frames + levels - 1


INTERLEAVINGS: dict[str, type] = {p.name: p for p in (Flatten, Parallel, Delay)}


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
