"""Fitted tokenizer artifacts (k-means centroids, codec codebooks): one safetensors file.

Tensors go in the safetensors body; plain-JSON metadata (``kind``, config, how it was fitted)
goes in its header under ``"musiclm"``. Nothing is pickled. The fingerprint is a SHA-256 over
the tensors and the metadata, so refitting or changing the config changes it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from musiclm.datamodules.shards import atomic_file

HEADER_KEY = "musiclm"


def tensor_digest(tensors: dict[str, torch.Tensor], meta: dict[str, Any] | None = None) -> str:
    """SHA-256 (hex) over tensor names, shapes, dtypes, bytes and the JSON metadata."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    if meta is not None:
        h.update(json.dumps(meta, sort_keys=True).encode())
    return h.hexdigest()


def save_artifact(path: str | Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> str:
    """Write ``tensors`` + ``meta`` atomically to ``path``; returns the fingerprint."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = dict(meta)
    meta["fingerprint"] = tensor_digest(tensors, {k: v for k, v in meta.items()})
    header = {HEADER_KEY: json.dumps(meta, sort_keys=True)}
    with atomic_file(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp, header)
    return meta["fingerprint"]


def load_artifact(
    path: str | Path, *, kind: str | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read an artifact written by ``save_artifact``; checks ``kind`` and the fingerprint."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer artifact {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:
        raise ValueError(f"{path}: not a readable safetensors artifact ({exc})") from exc
    if HEADER_KEY not in header:
        raise ValueError(f"{path}: safetensors file has no {HEADER_KEY!r} metadata header")
    meta = json.loads(header[HEADER_KEY])
    if kind is not None and meta.get("kind") != kind:
        raise ValueError(f"{path}: artifact kind is {meta.get('kind')!r}, expected {kind!r}")
    stored = meta.pop("fingerprint", None)
    actual = tensor_digest(tensors, meta)
    if stored != actual:
        raise ValueError(f"{path}: fingerprint {stored} does not match its contents ({actual})")
    meta["fingerprint"] = stored
    return tensors, meta


def config_fingerprint(name: str, config: dict[str, Any], weights_digest: str) -> str:
    """``name:<16 hex>`` over the plugin name, its JSON config and a weights digest."""
    blob = json.dumps({"name": name, "config": config, "weights": weights_digest}, sort_keys=True)
    return f"{name}:{hashlib.sha256(blob.encode()).hexdigest()[:16]}"


def module_digest(module: torch.nn.Module) -> str:
    """SHA-256 over a module's state dict (parameters and buffers)."""
    return tensor_digest(dict(module.state_dict()))
