"""Melody tokens: residual k-means over melody embeddings (MusicLM's appendix: 24 x 512, one
set of tokens per 4 s window every 3 s over a 10 s input).

``MelodyRVQ`` is the conditioning RVQ (``musiclm.conditioning.conditioning_rvq``) fitted on the
per-window melody embeddings of the training set, saved as its own artifact kind
(``melody_rvq``). ``MelodyConditioner`` pairs a ``MelodyStage`` checkpoint with it: a clip is
fitted to ``input_s`` seconds (looped when shorter, cut when longer), embedded per window and
quantised; tokens are window-major (``w0l0 w0l1 .. w1l0 ..``).

    musiclm prepare melody-rvq --checkpoint CKPT --audio SHARDS/train --out melody_rvq.safetensors \
        --levels 24 --codebook-size 512
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from musiclm.conditioning.conditioning_rvq import ConditioningRVQ, RVQConditioner

KIND = "melody_rvq"


class MelodyRVQ(ConditioningRVQ):
    """The conditioning RVQ over melody-window embeddings (its own artifact kind)."""

    kind = KIND


def melody_fingerprint(model: torch.nn.Module) -> str:
    """``melody:<16 hex>`` over a melody network's weights."""
    from musiclm.tokenizers.artifacts import module_digest

    return f"melody:{module_digest(model)[:16]}"


class MelodyConditioner(RVQConditioner):
    """A melody checkpoint plus its RVQ: audio -> melody tokens ``(B, num_windows * levels)``."""

    kind, network = "melody", "melody network"

    def __init__(self, melody: torch.nn.Module, rvq: MelodyRVQ) -> None:
        super().__init__(melody, rvq, melody_fingerprint(melody))

    @classmethod
    def from_files(cls, ckpt: str, rvq: str, *, device: str = "cpu") -> MelodyConditioner:
        """Load a ``MelodyStage`` checkpoint and a ``melody_rvq`` artifact."""
        from musiclm.models.melody import load_melody

        return cls(load_melody(ckpt, map_location=device), MelodyRVQ.load(rvq))

    @property
    def melody(self) -> torch.nn.Module:
        """The melody network."""
        return self.net

    @property
    def sample_rate(self) -> int:
        return self.net.sample_rate

    @property
    def input_seconds(self) -> float:
        return self.net.input_s

    @property
    def num_windows(self) -> int:
        return self.net.num_windows

    @property
    def num_tokens(self) -> int:
        """Tokens per clip: ``num_windows * num_levels``."""
        return self.num_windows * self.num_levels

    @torch.no_grad()
    def embed(self, wav: torch.Tensor) -> torch.Tensor:
        """wav (B, 1, T) or (B, T) at ``sample_rate`` -> (B, num_windows, D)."""
        return self.net.embed_windows(wav.to(self._device()))

    def tokens(self, wav: torch.Tensor) -> torch.Tensor:
        """wav (B, 1, T) at ``sample_rate`` (any length: looped or cut to ``input_seconds``)
        -> melody tokens (B, num_windows * num_levels) long, window-major."""
        emb = self.embed(wav)
        b, w, d = emb.shape
        return self.rvq.tokens(emb.reshape(b * w, d)).view(b, w * self.num_levels).to(wav.device)

    @torch.no_grad()
    def window_tokens(self, wav: torch.Tensor) -> torch.Tensor:
        """Tokens of every window of a whole clip: wav (B, 1, T) -> (B, W_T, num_levels), a
        window every ``hop_s`` seconds (token shards store these; a crop picks its windows).
        A clip shorter than ``input_seconds`` is looped to that length first."""
        from musiclm.models.melody import fit_length

        net = self.net
        if wav.dim() == 3:
            wav = wav.squeeze(1)
        length = max(wav.shape[-1], int(round(net.input_s * net.sample_rate)))
        wav = fit_length(wav.to(self._device()), length)
        windows = wav.unfold(-1, net.window_samples, net.hop_samples)  # (B, W_T, win)
        b, w, n = windows.shape
        flat = windows.reshape(b * w, n)
        emb = torch.cat([net(flat[i : i + 64]) for i in range(0, b * w, 64)])
        return self.rvq.tokens(emb).view(b, w, self.num_levels)

    @property
    def hop_seconds(self) -> float:
        return self.net.hop_s


def clip_window_tokens(
    conditioner: MelodyConditioner, wav: torch.Tensor, rate: int, seconds: float
) -> torch.Tensor:
    """Melody tokens of every window of a clip fitted to ``seconds``: (T,) or (1, T) audio at
    ``rate`` is resampled, looped when shorter than ``seconds`` and cut when longer, then
    tokenized -> (1, W_T, levels) (generation follows it window by window)."""
    import torchaudio.functional as AF

    from musiclm.models.melody import fit_length

    wav = wav.reshape(1, -1).float()
    if wav.shape[-1] == 0:
        raise ValueError("melody clip is empty")
    wav = AF.resample(wav, rate, conditioner.sample_rate)
    wav = fit_length(wav, max(1, int(round(seconds * conditioner.sample_rate))))
    return conditioner.window_tokens(wav[:, None, :])


def tokens_at(window_tokens: torch.Tensor, start: float, hop: float, windows: int) -> torch.Tensor:
    """The ``windows`` melody windows from ``start`` seconds of (B, W_T, L) window tokens,
    flattened window-major (B, windows * L); ``-1`` (padding) past the clip's last window."""
    first = int(round(start / hop))
    b, total, levels = window_tokens.shape
    out = torch.full((b, windows, levels), -1, dtype=torch.long, device=window_tokens.device)
    part = window_tokens[:, first : first + windows]
    out[:, : part.shape[1]] = part
    return out.reshape(b, windows * levels)


def _clips(directory: str, sample_rate: int, max_clips: int | None) -> Iterator[torch.Tensor]:
    """Every clip of an audio shard folder as (T,) float at ``sample_rate``."""
    import torchaudio

    from musiclm.datamodules.shards import iter_audio_samples

    for n, sample in enumerate(iter_audio_samples(directory)):
        if max_clips is not None and n >= max_clips:
            return
        wav = torch.from_numpy(sample["audio"]).float()
        if sample["sample_rate"] != sample_rate:
            wav = torchaudio.functional.resample(wav, sample["sample_rate"], sample_rate)
        yield wav


@torch.no_grad()
def embed_audio_shards(
    melody: torch.nn.Module, directory: str, *, batch_size: int = 16, max_clips: int | None = None
) -> torch.Tensor:
    """Per-window melody embeddings (N * num_windows, D) of every clip in a shard folder."""
    from musiclm.models.melody import fit_length

    length = int(round(melody.input_s * melody.sample_rate))
    device = next(melody.parameters()).device
    out, pending = [], []
    for wav in _clips(directory, melody.sample_rate, max_clips):
        pending.append(fit_length(wav, length))
        if len(pending) == batch_size:
            out.append(melody.embed_windows(torch.stack(pending).to(device)).flatten(0, 1).cpu())
            pending = []
    if pending:
        out.append(melody.embed_windows(torch.stack(pending).to(device)).flatten(0, 1).cpu())
    if not out:
        raise ValueError(f"no audio clips found in {directory}")
    return torch.cat(out)
