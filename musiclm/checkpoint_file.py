"""Reading a checkpoint file a user pointed at: a missing, truncated or foreign file is a
one-line ``FileNotFoundError`` / ``ValueError`` naming it (``musiclm.usage`` turns either into
exit 2), not a ``PytorchStreamReader`` or unpickling traceback."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

# what torch.load raises on a file cut short or not written by torch.save
_UNREADABLE = (RuntimeError, pickle.UnpicklingError, EOFError, zipfile.BadZipFile)


def read_checkpoint(
    path: str | Path,
    *,
    what: str,
    map_location: str | torch.device = "cpu",
    mmap: bool = False,
) -> dict[str, Any]:
    """``torch.load(path, weights_only=True)`` of a Lightning checkpoint; ``what`` names it
    in errors ("mulan", "coarse stage", ...)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except _UNREADABLE as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ValueError(
            f"{path}: not a readable {what} checkpoint (truncated or corrupt: {first})"
        ) from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise ValueError(f"{path}: not a Lightning checkpoint of a {what} (no 'state_dict')")
    return ckpt
