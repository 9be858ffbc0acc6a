"""``clap`` joint embedding: a pretrained CLAP (LAION) through ``transformers``.

``ClapModel.get_audio_features`` / ``get_text_features`` with the model's own feature
extractor and tokenizer, from a local ``save_pretrained`` folder (e.g. a copy of
``laion/larger_clap_music``) or a hub id when online. Audio is taken at the feature
extractor's sampling rate (48 kHz for LAION's models; callers resample to ``sample_rate``).
A clip longer than the extractor's ``max_length_s`` is embedded as the mean of windows, and
no clip is marked "longer", so nothing is cropped at random and a clip's embedding does not
depend on its batch. Frozen and in eval mode; embeddings are L2-normalised
(``projection_dim``: 512 for LAION's models).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from musiclm.tokenizers.base import mean_window_embedding

DEFAULT_MODEL = "laion/larger_clap_music"
_EXTRACTOR_KEYS = (
    "sampling_rate", "feature_size", "hop_length", "max_length_s", "fft_window_size",
    "frequency_min", "frequency_max", "top_db", "truncation", "padding",
)  # fmt: skip


class ClapEmbedding(nn.Module):
    """CLAP's audio and text towers as a joint embedding (``tokenizers.base.JointEmbedding``)."""

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        *,
        window_s: float | None = None,
        max_text_tokens: int | None = None,
    ) -> None:
        """
        Args:
            model: a local folder written by ``save_pretrained`` (model, tokenizer and
                ``preprocessor_config.json``) or a hub id (only when online).
            window_s: window of ``embed_audio_windows`` (default and at most the feature
                extractor's ``max_length_s``, 10 s for LAION's models).
            max_text_tokens: captions are truncated to this many tokens (default: what the
                text tower's positions allow).
        """
        super().__init__()
        self.source = str(model)
        self.model, self.tokenizer, self.feature_extractor = _load(self.source)
        fe, text_cfg = self.feature_extractor, self.model.config.text_config
        self.sample_rate = int(fe.sampling_rate)
        self.embed_dim = int(self.model.config.projection_dim)
        self.max_seconds = float(fe.max_length_s)
        self.window_s = float(window_s if window_s is not None else self.max_seconds)
        if not 0 < self.window_s <= self.max_seconds:
            raise ValueError(
                f"clap: window_s must be > 0 and <= the feature extractor's max_length_s "
                f"({self.max_seconds:g} s), got {window_s!r}"
            )
        limit = min(int(self.tokenizer.model_max_length), text_cfg.max_position_embeddings - 2)
        self.max_text_tokens = int(max_text_tokens or limit)
        if not 0 < self.max_text_tokens <= limit:
            raise ValueError(f"clap: max_text_tokens must be in 1..{limit}, got {max_text_tokens}")
        self.model.requires_grad_(False)
        self._fingerprint: str | None = None
        self.eval()

    def train(self, mode: bool = True) -> ClapEmbedding:
        """Frozen: always in eval mode (no dropout)."""
        return super().train(False)

    @torch.no_grad()
    def embed_text(self, texts: Sequence[str]) -> torch.Tensor:
        """Captions -> unit vectors (B, embed_dim)."""
        if isinstance(texts, str):
            raise TypeError("clap: embed_text takes a list of strings, got one string")
        texts = list(texts)
        if not texts:
            return torch.zeros(0, self.embed_dim, device=self._device())
        batch = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_text_tokens,
            return_tensors="pt",
        )  # fmt: skip
        inputs = {k: batch[k].to(self._device()) for k in ("input_ids", "attention_mask")}
        return F.normalize(_pooled(self.model.get_text_features(**inputs)).float(), dim=-1)

    @torch.no_grad()
    def embed_audio(self, wav: torch.Tensor) -> torch.Tensor:
        """wav (B, T) or (B, 1, T) at ``sample_rate`` -> unit vectors (B, embed_dim); a clip
        longer than ``max_length_s`` is the mean of its windows."""
        wav = _rows(wav)
        if wav.shape[-1] > round(self.max_seconds * self.sample_rate):
            return self.embed_audio_windows(wav)
        rows = list(wav.detach().cpu().double().numpy())
        state = np.random.get_state()  # the extractor draws from numpy's global generator
        try:
            feats = self.feature_extractor(
                rows, sampling_rate=self.sample_rate, return_tensors="pt"
            )["input_features"]
        finally:
            np.random.set_state(state)
        longer = torch.zeros(len(rows), 1, dtype=torch.bool, device=self._device())
        out = self.model.get_audio_features(
            input_features=feats.to(self._device(), torch.float32), is_longer=longer
        )
        return F.normalize(_pooled(out).float(), dim=-1)

    @torch.no_grad()
    def embed_audio_windows(
        self,
        wav: torch.Tensor,
        window_s: float | None = None,
        *,
        hop_s: float = 1.0,
        chunk: int = 16,
    ) -> torch.Tensor:
        """Mean of the embeddings of ``window_s`` windows every ``hop_s``, re-normalised; a
        clip no longer than one window is embedded whole."""
        wav = _rows(wav)
        seconds = window_s or self.window_s
        if seconds > self.max_seconds:
            raise ValueError(f"clap: window_s {seconds} exceeds max_length_s {self.max_seconds}")
        win = int(round(seconds * self.sample_rate))
        hop = max(1, int(round(hop_s * self.sample_rate)))
        return mean_window_embedding(self.embed_audio, wav, win, hop, chunk)

    def fingerprint(self) -> str:
        """``clap:<16 hex>`` over the weights, the feature extractor's settings, the
        tokenizer's vocabulary size and the window."""
        if self._fingerprint is None:
            from musiclm.tokenizers.artifacts import tensor_digest

            fe = self.feature_extractor
            meta = {k: getattr(fe, k, None) for k in _EXTRACTOR_KEYS}
            meta |= {"vocab": len(self.tokenizer), "window_s": self.window_s,
                     "max_text_tokens": self.max_text_tokens}  # fmt: skip
            digest = tensor_digest(dict(self.model.state_dict()), meta)
            self._fingerprint = f"clap:{digest[:16]}"
        return self._fingerprint

    def _device(self) -> torch.device:
        return next(self.model.parameters()).device


def _rows(wav: torch.Tensor) -> torch.Tensor:
    if wav.dim() == 3 and wav.shape[1] == 1:
        wav = wav[:, 0]
    if wav.dim() != 2:
        raise ValueError(f"clap: audio must be (B, T) or (B, 1, T), got {tuple(wav.shape)}")
    return wav


def _pooled(out: Any) -> torch.Tensor:
    """The projected embedding: a tensor (transformers 4.x) or ``pooler_output`` (5.x)."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def _load(source: str) -> tuple[Any, Any, Any]:
    """(ClapModel, tokenizer, feature extractor) from a folder or hub id; one clear error."""
    from transformers import AutoFeatureExtractor, AutoTokenizer, ClapModel

    path = Path(source).expanduser()
    local = path.exists() or source.startswith((".", "/", "~")) or source.count("/") > 1
    if local and not path.is_dir():
        raise FileNotFoundError(
            f"clap: no model folder {source}: the CLAP weights are needed (a folder written by "
            f"save_pretrained, e.g. a local copy of {DEFAULT_MODEL})"
        )
    where = str(path) if local else source
    parts = []
    try:
        parts.append(ClapModel.from_pretrained(where))
        parts.append(AutoTokenizer.from_pretrained(where))
        parts.append(AutoFeatureExtractor.from_pretrained(where))
    except (OSError, ValueError) as exc:
        what = ("model weights", "tokenizer", "feature extractor")[len(parts)]
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0") or os.environ.get(
            "TRANSFORMERS_OFFLINE", "0"
        ) not in ("", "0")
        hint = (
            f"a folder written by save_pretrained with model, tokenizer and "
            f"preprocessor_config.json; download one when online, e.g. `hf download "
            f'{DEFAULT_MODEL} --local-dir DIR`, and pass {{"model": "DIR"}}'
        )
        mode = " (offline)" if offline and not local else ""
        raise OSError(
            f"clap: cannot load the CLAP {what} from {where!r}{mode}: the CLAP weights are "
            f"needed: {hint} [{type(exc).__name__}]"
        ) from exc
    model, tokenizer, extractor = parts
    if not hasattr(extractor, "max_length_s"):
        raise ValueError(
            f"clap: {where!r} holds a {type(extractor).__name__}, not CLAP's feature extractor"
        )
    return model.eval(), tokenizer, extractor
