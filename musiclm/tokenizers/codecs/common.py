"""Checks and padding shared by the codec plugins."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def check_wav(wav: torch.Tensor, where: str) -> torch.Tensor:
    """Accept (B, 1, T) float audio; raise naming ``where`` otherwise."""
    if wav.ndim != 3 or wav.shape[1] != 1:
        raise ValueError(f"{where}: expected mono audio (B, 1, T), got {tuple(wav.shape)}")
    if not wav.is_floating_point():
        raise ValueError(f"{where}: expected float audio, got {wav.dtype}")
    return wav


def check_codes(codes: torch.Tensor, num_quantizers: int, codebook_size: int, where: str) -> None:
    """Accept (B, Q', F) integer codes with 1 <= Q' <= num_quantizers, in range."""
    if codes.ndim != 3:
        raise ValueError(f"{where}: expected codes (B, Q, F), got {tuple(codes.shape)}")
    if codes.is_floating_point():
        raise ValueError(f"{where}: expected integer codes, got {codes.dtype}")
    if not 1 <= codes.shape[1] <= num_quantizers:
        raise ValueError(
            f"{where}: codes have {codes.shape[1]} levels; this codec has {num_quantizers}"
        )
    if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= codebook_size):
        raise ValueError(
            f"{where}: codes must lie in [0, {codebook_size}), got "
            f"[{int(codes.min())}, {int(codes.max())}]"
        )


def pad_to_hop(wav: torch.Tensor, hop: int) -> torch.Tensor:
    """Right-pad the last axis with zeros to a multiple of ``hop`` (at least one hop)."""
    length = wav.shape[-1]
    target = max(hop, -(-length // hop) * hop)
    return F.pad(wav, (0, target - length))


def fit_length(wav: torch.Tensor, length: int) -> torch.Tensor:
    """Trim or zero-pad the last axis to exactly ``length`` samples."""
    if wav.shape[-1] >= length:
        return wav[..., :length]
    return F.pad(wav, (0, length - wav.shape[-1]))
