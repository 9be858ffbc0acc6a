"""MuLan: a joint music-text embedding (Huang et al., 2022), as plain ``nn.Module``s.

Audio tower over log-mel spectrograms (a small ResNet-style CNN or a transformer over
spectrogram patches, the paper's ResNet-50 / AST variants), text tower = a text-encoder
plugin + pooling + projection; both land on the unit sphere of ``embed_dim`` dimensions.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from itertools import pairwise
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from musiclm.checkpoint_file import read_checkpoint
from musiclm.tokenizers.base import mean_window_embedding

MAX_LOGIT_SCALE = math.log(100.0)  # CLIP's cap: temperature never below 0.01


class LogMel(nn.Module):
    """Waveform (B, T) -> log-mel (B, n_mels, frames), normalised per mel bin (BatchNorm)."""

    def __init__(self, sample_rate: int, n_mels: int, n_fft: int, hop_length: int) -> None:
        super().__init__()
        import torchaudio

        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=sample_rate, n_fft=n_fft, hop_length=hop_length, n_mels=n_mels
        )
        self.norm = nn.BatchNorm1d(n_mels)

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        with torch.autocast(wav.device.type, enabled=False):
            spec = self.mel(wav.float())
        return self.norm(torch.log(spec + 1e-5))


class _ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
        )
        self.skip = nn.Sequential(
            nn.Conv2d(c_in, c_out, 1, stride=2, bias=False), nn.BatchNorm2d(c_out)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.skip(x))


class CNNAudioTower(nn.Module):
    """Residual CNN over the log-mel image; mean+max pooled over time and frequency."""

    def __init__(self, channels: Sequence[int]) -> None:
        super().__init__()
        chans = [1, *channels]
        self.blocks = nn.Sequential(*[_ResBlock(a, b) for a, b in pairwise(chans)])
        self.out_dim = 2 * chans[-1]

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        x = self.blocks(mel.unsqueeze(1))  # (B, C, M', F')
        x = x.mean(dim=2)  # (B, C, F')
        return torch.cat([x.mean(dim=-1), x.amax(dim=-1)], dim=-1)


class PatchTransformerAudioTower(nn.Module):
    """AST-like: square spectrogram patches, learned frequency + sinusoidal time positions."""

    def __init__(self, n_mels: int, *, patch_size: int, dim: int, depth: int, heads: int) -> None:
        super().__init__()
        from x_transformers import Encoder

        if n_mels % patch_size:
            raise ValueError(
                f"mulan: n_mels={n_mels} must be a multiple of patch_size={patch_size}"
            )
        self.patch = nn.Conv2d(1, dim, patch_size, stride=patch_size)
        self.freq_pos = nn.Parameter(torch.randn(n_mels // patch_size, dim) * 0.02)
        self.encoder = Encoder(dim=dim, depth=depth, heads=heads)
        self.dim = self.out_dim = dim

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        x = self.patch(mel.unsqueeze(1))  # (B, dim, Fq, Ft)
        _, _, fq, ft = x.shape
        x = x + self.freq_pos.T[:, :, None] + _sinusoid(ft, self.dim, x.device).T[None, :, None]
        tokens = x.flatten(2).transpose(1, 2)  # (B, Fq*Ft, dim)
        return self.encoder(tokens).mean(dim=1)


def _sinusoid(length: int, dim: int, device: torch.device) -> torch.Tensor:
    pos = torch.arange(length, device=device, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, device=device) * (-math.log(10000.0) / dim))
    out = torch.zeros(length, dim, device=device)
    out[:, 0::2] = torch.sin(pos * freq)
    out[:, 1::2] = torch.cos(pos * freq)
    return out


def _masked_pool(hidden: torch.Tensor, mask: torch.Tensor, how: str) -> torch.Tensor:
    if how == "cls":
        return hidden[:, 0]
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)


def _projection(d_in: int, d_out: int, hidden: int) -> nn.Module:
    if hidden <= 0:
        return nn.Linear(d_in, d_out)
    return nn.Sequential(nn.Linear(d_in, hidden), nn.GELU(), nn.Linear(hidden, d_out))


class MuLan(nn.Module):
    """Audio and text towers projected to one L2-normalised space of ``embed_dim``."""

    def __init__(
        self,
        *,
        sample_rate: int = 16000,
        embed_dim: int = 128,
        n_mels: int = 64,
        n_fft: int = 1024,
        hop_length: int = 160,
        audio_tower: str = "cnn",
        cnn_channels: Sequence[int] = (32, 64, 128, 256),
        patch_size: int = 16,
        transformer_dim: int = 256,
        transformer_depth: int = 4,
        transformer_heads: int = 4,
        audio_proj_hidden: int = 0,
        text_encoder: str = "minilm",
        text_encoder_args: dict[str, Any] | None = None,
        text_pooling: str = "mean",
        text_proj_hidden: int = 512,
        window_s: float = 10.0,
    ) -> None:
        super().__init__()
        from musiclm.tokenizers.base import build

        if text_pooling not in ("mean", "cls"):
            raise ValueError(f"mulan: text_pooling must be 'mean' or 'cls', got {text_pooling!r}")
        self.sample_rate = sample_rate
        self.embed_dim = embed_dim
        self.window_s = window_s
        self.text_pooling = text_pooling
        self.frontend = LogMel(sample_rate, n_mels, n_fft, hop_length)
        if audio_tower == "cnn":
            self.audio_tower: nn.Module = CNNAudioTower(list(cnn_channels))
        elif audio_tower == "transformer":
            self.audio_tower = PatchTransformerAudioTower(
                n_mels,
                patch_size=patch_size,
                dim=transformer_dim,
                depth=transformer_depth,
                heads=transformer_heads,
            )
        else:
            raise ValueError(
                f"mulan: audio_tower must be 'cnn' or 'transformer', got {audio_tower!r}"
            )
        self.audio_proj = _projection(self.audio_tower.out_dim, embed_dim, audio_proj_hidden)
        # An nn.Module attribute, so a trainable plugin's parameters are optimised and saved.
        self.text_encoder = build("text_encoders", text_encoder, **(text_encoder_args or {}))
        self.text_proj = _projection(self.text_encoder.dim, embed_dim, text_proj_hidden)

    @classmethod
    def from_checkpoint(cls, checkpoint: str) -> MuLan:
        """The ``mulan`` joint embedding: a ``MulanStage`` checkpoint, frozen, in eval mode."""
        return load_mulan(checkpoint).requires_grad_(False)

    def fingerprint(self) -> str:
        """``mulan:<16 hex>`` over the weights and buffers."""
        from musiclm.tokenizers.artifacts import module_digest

        return f"mulan:{module_digest(self)[:16]}"

    def embed_audio(self, wav: torch.Tensor) -> torch.Tensor:
        """wav (B, T) or (B, 1, T) at ``sample_rate`` -> unit vectors (B, embed_dim)."""
        if wav.dim() == 3:
            wav = wav.squeeze(1)
        if wav.dim() != 2:
            raise ValueError(f"mulan: audio must be (B, T) or (B, 1, T), got {tuple(wav.shape)}")
        feats = self.audio_tower(self.frontend(wav))
        return F.normalize(self.audio_proj(feats), dim=-1)

    def embed_text(self, texts: Sequence[str]) -> torch.Tensor:
        """Captions -> unit vectors (B, embed_dim)."""
        if isinstance(texts, str):
            raise TypeError("mulan: embed_text takes a list of strings, got one string")
        hidden, mask = self.text_encoder(list(texts))
        return F.normalize(self.text_proj(_masked_pool(hidden, mask, self.text_pooling)), dim=-1)

    @torch.no_grad()
    def embed_audio_windows(
        self,
        wav: torch.Tensor,
        window_s: float | None = None,
        *,
        hop_s: float = 1.0,
        chunk: int = 64,
    ) -> torch.Tensor:
        """Mean of the embeddings of ``window_s`` windows every ``hop_s`` (the paper's 10 s / 1 s),
        re-normalised; a clip shorter than one window is embedded whole."""
        if wav.dim() == 3:
            wav = wav.squeeze(1)
        win = int(round((window_s or self.window_s) * self.sample_rate))
        hop = max(1, int(round(hop_s * self.sample_rate)))
        return mean_window_embedding(self.embed_audio, wav, win, hop, chunk)


def contrastive_loss(
    audio_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor
) -> torch.Tensor:
    """Symmetric InfoNCE over (N, D) unit vectors whose row i is one audio-text pair."""
    logits = logit_scale.clamp(max=MAX_LOGIT_SCALE).exp() * audio_emb @ text_emb.T
    labels = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))


def gathered_contrastive_loss(
    audio_emb: torch.Tensor,
    text_emb: torch.Tensor,
    logit_scale: torch.Tensor,
    gather: Callable[[torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """``contrastive_loss`` over every rank's pairs; ``gather`` maps (B, D) -> (W*B, D) with
    gradients (rank r's rows at r*B..), so each rank holds the loss of the global batch."""
    return contrastive_loss(gather(audio_emb), gather(text_emb), logit_scale)


def mulan_kwargs(hparams: dict[str, Any]) -> dict[str, Any]:
    """The subset of a stage's hyper-parameters that ``MuLan`` takes."""
    names = set(inspect.signature(MuLan.__init__).parameters) - {"self"}
    return {k: v for k, v in hparams.items() if k in names}


FROZEN_KEY = "frozen_text_encoder"


def frozen_state_keys(model: MuLan) -> list[str]:
    """State-dict keys of the pretrained text encoder that training never changes (frozen
    parameters and its buffers): checkpoints leave them out and reload them from its path."""
    inner = getattr(model.text_encoder, "model", None)
    if not isinstance(inner, nn.Module) or not hasattr(model.text_encoder, "path"):
        return []  # an encoder trained from scratch: everything is saved
    trainable = {n for n, p in inner.named_parameters() if p.requires_grad}
    prefix = "text_encoder.model."
    return [prefix + k for k in inner.state_dict() if k not in trainable]


def frozen_digest(model: MuLan, keys: list[str]) -> str:
    """SHA-256 over the frozen tensors (what a checkpoint's reload must reproduce)."""
    from musiclm.tokenizers.artifacts import tensor_digest

    state = model.state_dict()
    return tensor_digest({k: state[k] for k in keys})


def restore_frozen(
    model: MuLan, state: dict[str, torch.Tensor], record: dict[str, Any] | None, where: str
) -> dict[str, torch.Tensor]:
    """``state`` (keys relative to ``model``) with the frozen text-encoder tensors filled in
    from ``model`` (freshly loaded from its path), after checking they are the ones the
    checkpoint was trained with."""
    if not record:
        return state
    keys = list(record["keys"])
    digest = frozen_digest(model, keys) if keys else ""
    if digest != record["digest"]:
        raise ValueError(
            f"{where}: the frozen text encoder loaded from {model.text_encoder.path!r} is not "
            f"the one this checkpoint was trained with (digest {digest[:12]} != "
            f"{record['digest'][:12]}, trained from {record.get('path')!r}); point "
            "text_encoder_args.path at that model"
        )
    own = model.state_dict()
    return {**{k: own[k] for k in keys}, **state}


def load_mulan(checkpoint_path: str, *, map_location: str | torch.device = "cpu") -> MuLan:
    """Rebuild ``MuLan`` from a ``MulanStage`` checkpoint (``weights_only`` load, eval mode)."""
    ckpt = read_checkpoint(checkpoint_path, what="mulan", map_location=map_location)
    if "hyper_parameters" not in ckpt or "state_dict" not in ckpt:
        raise ValueError(
            f"{checkpoint_path}: not a Lightning checkpoint (keys: {sorted(ckpt)[:8]})"
        )
    model = MuLan(**mulan_kwargs(ckpt["hyper_parameters"]))
    state = {k[6:]: v for k, v in ckpt["state_dict"].items() if k.startswith("mulan.")}
    if not state:
        raise ValueError(f"{checkpoint_path}: no 'mulan.*' weights; is it a MulanStage checkpoint?")
    state = restore_frozen(model, state, ckpt.get(FROZEN_KEY), checkpoint_path)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{checkpoint_path}: weights do not match its hyper-parameters; missing "
            f"{missing[:5]}, unexpected {unexpected[:5]}"
        )
    return model.eval()
