"""Melody embedding: a small transformer over pitch-spectrogram frames (MusicLM's appendix: a
ViT over spectral frames, 192-d per 4 s window, semi-hard triplet loss), as plain modules.

The front end maps STFT magnitudes to one bin per semitone (MIDI ``min_midi`` up to
``max_midi``) plus the 12-bin chroma fold of those, so pitch, not timbre, dominates the input;
register and tempo invariance are learned from the training groups (the same notes in other
octaves, instruments and tempi). ``embed_windows`` cuts a clip into ``window_s`` windows every
``hop_s`` (paper: 4 s windows, a set every 3 s over 10 s -> 3 windows).
"""

from __future__ import annotations

import inspect
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from musiclm.checkpoint_file import read_checkpoint


def semitone_filterbank(sample_rate: int, n_fft: int, min_midi: int, max_midi: int) -> torch.Tensor:
    """(max_midi - min_midi, n_fft // 2 + 1): triangles one semitone wide on the log axis,
    each row summing to 1 (an average, so high notes with many bins do not dominate)."""
    freqs = torch.fft.rfftfreq(n_fft, 1.0 / sample_rate).double()
    midi = 69.0 + 12.0 * torch.log2(freqs.clamp_min(1e-3) / 440.0)
    centres = torch.arange(min_midi, max_midi, dtype=torch.float64)
    fb = (1.0 - (midi[None, :] - centres[:, None]).abs()).clamp_min(0.0)
    fb[:, 0] = 0.0  # DC
    empty = (fb.sum(1) == 0).nonzero().flatten().tolist()
    if empty:
        raise ValueError(
            f"melody front end: n_fft={n_fft} at {sample_rate} Hz resolves no STFT bin for MIDI "
            f"{[min_midi + i for i in empty][:5]}; raise n_fft or min_midi"
        )
    return (fb / fb.sum(1, keepdim=True)).float()


class PitchFrontend(nn.Module):
    """Waveform (B, T) -> (B, frames, n_semitones + 12): log-compressed semitone spectrum and
    its chroma fold, scaled per clip so loudness does not matter."""

    def __init__(
        self, sample_rate: int, *, n_fft: int, hop_length: int, min_midi: int, max_midi: int
    ) -> None:
        super().__init__()
        self.n_fft, self.hop_length = n_fft, hop_length
        fb = semitone_filterbank(sample_rate, n_fft, min_midi, max_midi)
        pc = (torch.arange(min_midi, max_midi) % 12)[:, None] == torch.arange(12)[None, :]
        self.register_buffer("fb", fb, persistent=False)
        self.register_buffer("fold", pc.float(), persistent=False)
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        self.out_dim = fb.shape[0] + 12

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        with torch.autocast(wav.device.type, enabled=False):
            spec = torch.stft(
                wav.float(),
                self.n_fft,
                self.hop_length,
                window=self.window,
                center=True,
                return_complex=True,
            ).abs()  # (B, bins, frames)
            semis = torch.einsum("mf,bft->btm", self.fb, spec)
            peak = semis.amax(dim=(1, 2), keepdim=True).clamp_min(1e-6)
            semis = torch.log1p(100.0 * semis / peak) / math.log(101.0)  # 0..1
            chroma = semis @ self.fold
            chroma = chroma / chroma.amax(dim=-1, keepdim=True).clamp_min(1e-3)
        return torch.cat([semis, chroma], dim=-1)


class MelodyEmbedder(nn.Module):
    """Pitch frames -> patches of ``patch_frames`` frames -> transformer encoder (rotary
    positions) -> mean pool -> ``embed_dim`` unit vector per window."""

    def __init__(
        self,
        *,
        sample_rate: int = 16000,
        embed_dim: int = 192,
        n_fft: int = 2048,
        hop_length: int = 320,
        min_midi: int = 36,
        max_midi: int = 108,
        patch_frames: int = 4,
        dim: int = 256,
        depth: int = 6,
        heads: int = 4,
        dropout: float = 0.0,
        window_s: float = 4.0,
        hop_s: float = 3.0,
        input_s: float = 10.0,
    ) -> None:
        super().__init__()
        from x_transformers import Encoder

        if not 0 < hop_s <= window_s <= input_s:
            raise ValueError(
                f"melody: need 0 < hop_s <= window_s <= input_s, got {hop_s}, {window_s}, {input_s}"
            )
        self.sample_rate, self.embed_dim = sample_rate, embed_dim
        self.window_s, self.hop_s, self.input_s = window_s, hop_s, input_s
        self.frontend = PitchFrontend(
            sample_rate, n_fft=n_fft, hop_length=hop_length, min_midi=min_midi, max_midi=max_midi
        )
        self.patch_frames = patch_frames
        self.patch = nn.Linear(self.frontend.out_dim * patch_frames, dim)
        self.encoder = Encoder(
            dim=dim,
            depth=depth,
            heads=heads,
            rotary_pos_emb=True,
            attn_dropout=dropout,
            ff_dropout=dropout,
        )
        self.proj = nn.Linear(dim, embed_dim)

    @property
    def window_samples(self) -> int:
        return int(round(self.window_s * self.sample_rate))

    @property
    def hop_samples(self) -> int:
        return int(round(self.hop_s * self.sample_rate))

    @property
    def num_windows(self) -> int:
        """Windows over ``input_s`` seconds (paper: 3 over 10 s)."""
        return num_windows(
            int(round(self.input_s * self.sample_rate)), self.window_samples, self.hop_samples
        )

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        """wav (B, T) or (B, 1, T), one window each -> unit vectors (B, embed_dim)."""
        if wav.dim() == 3:
            wav = wav.squeeze(1)
        if wav.dim() != 2:
            raise ValueError(f"melody: audio must be (B, T) or (B, 1, T), got {tuple(wav.shape)}")
        frames = self.frontend(wav)  # (B, F, C)
        b, f, c = frames.shape
        pad = (-f) % self.patch_frames
        frames = F.pad(frames, (0, 0, 0, pad))
        patches = frames.reshape(b, -1, self.patch_frames * c)  # (B, F / p, p * C)
        x = self.encoder(self.patch(patches))
        return F.normalize(self.proj(x.mean(dim=1)), dim=-1)

    def embed_windows(self, wav: torch.Tensor, *, chunk: int = 64) -> torch.Tensor:
        """wav (B, T) or (B, 1, T) of ``input_s`` seconds -> (B, num_windows, embed_dim).

        The clip is first fitted to ``input_s`` (see :func:`fit_length`: repeated when shorter,
        cut when longer), so every clip gives the same number of windows.
        """
        if wav.dim() == 3:
            wav = wav.squeeze(1)
        wav = fit_length(wav, int(round(self.input_s * self.sample_rate)))
        windows = wav.unfold(-1, self.window_samples, self.hop_samples)  # (B, W, win)
        b, w, n = windows.shape
        flat = windows.reshape(b * w, n)
        embs = torch.cat([self(flat[i : i + chunk]) for i in range(0, b * w, chunk)])
        return embs.view(b, w, -1)


def num_windows(total: int, window: int, hop: int) -> int:
    """Windows of ``window`` samples every ``hop`` that fit in ``total`` samples."""
    return 1 + max(0, total - window) // hop


def fit_length(wav: torch.Tensor, length: int) -> torch.Tensor:
    """(..., T) -> (..., length): a shorter clip is repeated (looped) until long enough, a longer
    one is cut after ``length`` samples."""
    t = wav.shape[-1]
    if t == 0:
        raise ValueError("melody: empty audio clip")
    if t < length:
        wav = wav.repeat(*([1] * (wav.dim() - 1)), math.ceil(length / t))
    return wav[..., :length]


def melody_kwargs(hparams: dict[str, Any]) -> dict[str, Any]:
    """The subset of a stage's hyper-parameters that ``MelodyEmbedder`` takes."""
    names = set(inspect.signature(MelodyEmbedder.__init__).parameters) - {"self"}
    return {k: v for k, v in hparams.items() if k in names}


def pairwise_distances(emb: torch.Tensor) -> torch.Tensor:
    """Euclidean distances (N, N) between rows (exactly 0 on the diagonal)."""
    sq = (emb.unsqueeze(1) - emb.unsqueeze(0)).pow(2).sum(-1)
    eye = torch.eye(len(emb), dtype=torch.bool, device=emb.device)
    # sqrt has an infinite gradient at 0: keep the diagonal out of it
    return torch.where(eye, torch.zeros_like(sq), sq.clamp_min(1e-12).sqrt())


def semihard_triplet_loss(
    emb: torch.Tensor, labels: torch.Tensor, margin: float
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """FaceNet's semi-hard triplet loss over every (anchor, positive) pair in the batch.

    The negative of a pair is the closest one farther than the positive
    (``d_ap < d_an``); when no negative is that far, the farthest negative. Loss: the mean of
    ``max(d_ap - d_an + margin, 0)``. Also returns the fraction of pairs with a positive loss
    and the mean positive / negative distances.
    """
    if emb.dim() != 2 or labels.shape != emb.shape[:1]:
        raise ValueError(f"triplet loss: need (N, D) and (N,), got {emb.shape}, {labels.shape}")
    d = pairwise_distances(emb)
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=emb.device)
    pos = same & ~eye
    neg = ~same
    if not pos.any() or not neg.any():
        raise ValueError("triplet loss: the batch needs >= 2 labels and >= 2 samples of one")
    a, p = pos.nonzero(as_tuple=True)
    d_ap = d[a, p]  # (P,)
    d_an = d[a]  # (P, N)
    neg_a = neg[a]
    farther = neg_a & (d_an > d_ap[:, None])
    inf = torch.tensor(float("inf"), device=emb.device, dtype=d.dtype)
    semihard = torch.where(farther, d_an, inf).amin(dim=1)
    hardest_far = torch.where(neg_a, d_an, -inf).amax(dim=1)
    chosen = torch.where(farther.any(dim=1), semihard, hardest_far)
    losses = (d_ap - chosen + margin).clamp_min(0.0)
    stats = {
        "active": (losses > 0).float().mean().detach(),
        "d_pos": d_ap.mean().detach(),
        "d_neg": d[neg].mean().detach(),
    }
    return losses.mean(), stats


def load_melody(
    checkpoint_path: str, *, map_location: str | torch.device = "cpu"
) -> MelodyEmbedder:
    """Rebuild ``MelodyEmbedder`` from a ``MelodyStage`` checkpoint (``weights_only``, eval)."""
    ckpt = read_checkpoint(checkpoint_path, what="melody", map_location=map_location)
    if "hyper_parameters" not in ckpt or "state_dict" not in ckpt:
        raise ValueError(
            f"{checkpoint_path}: not a Lightning checkpoint (keys: {sorted(ckpt)[:8]})"
        )
    model = MelodyEmbedder(**melody_kwargs(ckpt["hyper_parameters"]))
    prefix = "melody."
    state = {k[len(prefix) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    if not state:
        raise ValueError(
            f"{checkpoint_path}: no 'melody.*' weights; is it a MelodyStage checkpoint?"
        )
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{checkpoint_path}: weights do not match its hyper-parameters; missing "
            f"{missing[:5]}, unexpected {unexpected[:5]}"
        )
    return model.eval()
