"""``music-features``: the offline semantic tokenizer: melody, harmony and rhythm per 40 ms.

No downloaded weights. Each 25 Hz frame (hop 640 at 16 kHz) concatenates, with weights that
make pitch content dominate the k-means distance:
- chroma (12, unit norm) from a 2048-point STFT: harmony and the melody's pitch class;
- the strongest pitch in the melody range (MIDI 48-84) as a unit vector on the pitch-class
  circle plus its octave (3): melody contour;
- onset strength (spectral flux of log-mel) at t-2..t+2 (5): where notes start;
- its autocorrelation over the surrounding second at lags of 1..12 frames (12): the local
  rhythm's periodicity (tempo and meter cues);
- the coarse spectral envelope, 8 log-mel bands minus their mean, and the log energy (9);
- the beat: phase within the current beat as a unit vector (2) and the clip's tempo as
  log2(BPM / 120) (1), from librosa's beat tracker on the same onset strength. With it a
  token says where in the beat it sits, so continuing a rhythm is counting rather than
  inferring a period from raw onsets; the coarse LM keeps tempo from real semantic tokens
  better with it (0.31 vs 0.22 within 8 %; docs/decisions/demo-tokenizers.md).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from musiclm.tokenizers.beats import beat_index
from musiclm.tokenizers.codecs.common import check_wav, pad_to_hop
from musiclm.tokenizers.semantic.common import KMeansTokens, features_fingerprint

LAGS = 12
CONTEXT = 2
# chroma 12, melody 3, onset 5, rhythm 12, timbre 9, beat phase 2, tempo 1 (in this order)
FEATURE_DIM = 44
ONSET_COLUMN = 12 + 3 + CONTEXT  # the frame's own onset strength (centre of its window)


def beat_phase(features: torch.Tensor) -> torch.Tensor:
    """Beat phase in turns (0..1) from features or k-means centroids (..., FEATURE_DIM)."""
    return torch.atan2(features[..., -2], features[..., -3]) / (2 * torch.pi) % 1.0


def phase_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Distance in turns (0..0.5) between phases in turns."""
    d = (a - b).abs() % 1.0
    return torch.minimum(d, 1 - d)


def beat_features(onset: np.ndarray, frame_rate: float) -> np.ndarray:
    """onset strength (F,) -> (F, 3): cos and sin of the beat phase, log2(BPM / 120).

    The beat grid is ``beats.beat_index``'s; without a pulse all three are 0."""
    out = np.zeros((len(onset), 3), dtype=np.float32)
    found = beat_index(onset, frame_rate)
    if found is None:
        return out
    index, period = found
    angle = 2 * np.pi * (index % 1.0)
    out[:, 0], out[:, 1] = np.cos(angle), np.sin(angle)
    out[:, 2] = np.log2(60.0 * frame_rate / period / 120.0)
    return out


class MusicFeatureTokenizer:
    """Hand-built music features + k-means (see module docstring)."""

    def __init__(
        self,
        *,
        kmeans: str | None = None,
        sample_rate: int = 16000,
        hop: int = 640,
        n_fft: int = 2048,
        weights: dict[str, float] | None = None,
        vocab_size: int = 512,
    ) -> None:
        """``kmeans``: artifact from ``musiclm prepare fit-semantic`` (needed by ``tokenize``);
        ``weights``: per-group scale (chroma, melody, onset, rhythm, timbre, beat, tempo)."""
        import librosa

        self.sample_rate, self.hop, self.n_fft = sample_rate, hop, n_fft
        self.frame_rate = sample_rate / hop
        self.weights = {
            "chroma": 2.0, "melody": 1.0, "onset": 1.0, "rhythm": 1.0, "timbre": 0.5,
            "beat": 2.0, "tempo": 1.0,
        }  # fmt: skip
        self.weights.update(weights or {})
        self.window = torch.hann_window(n_fft)
        self.chroma_fb = torch.tensor(
            librosa.filters.chroma(sr=sample_rate, n_fft=n_fft, tuning=0.0), dtype=torch.float32
        )
        self.mel_fb = torch.tensor(
            librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=40), dtype=torch.float32
        )
        freqs = torch.fft.rfftfreq(n_fft, 1.0 / sample_rate)
        midi = 69 + 12 * torch.log2(freqs.clamp_min(1.0) / 440.0)
        self.melody_bins = ((midi >= 48) & (midi <= 84)).nonzero().squeeze(1)
        self.bin_midi = midi
        config: dict[str, Any] = {"sr": sample_rate, "hop": hop, "n_fft": n_fft, "w": self.weights}
        self._head = KMeansTokens(
            "music-features", kmeans, features_fingerprint("music-features", config), vocab_size
        )
        self.vocab_size = self._head.vocab_size

    @property
    def features_fingerprint(self) -> str:
        return self._head.features_fp

    @torch.inference_mode()
    def features(self, wav: torch.Tensor) -> torch.Tensor:
        """wav (B, 1, T) -> features (B, ceil(T / hop), FEATURE_DIM)."""
        check_wav(wav, "music-features.features")
        x = pad_to_hop(wav.float().cpu(), self.hop)[:, 0]
        frames = x.shape[-1] // self.hop
        spec = torch.stft(x, self.n_fft, self.hop, window=self.window, return_complex=True)
        power = spec.abs().pow(2)[..., :frames]  # (B, K, F)
        w = self.weights

        chroma = torch.log1p(100 * (self.chroma_fb @ power))
        chroma = F.normalize(chroma, dim=1)

        mag = power[:, self.melody_bins].sqrt()
        top = self.bin_midi[self.melody_bins][mag.argmax(1)]  # (B, F) MIDI of the peak
        angle = 2 * torch.pi * (top % 12) / 12
        voiced = (mag.amax(1) > 1e-3).float()
        melody = torch.stack(
            [angle.cos() * voiced, angle.sin() * voiced, (top - 66) / 18 * voiced], 1
        )

        logmel = torch.log(self.mel_fb @ power + 1e-6)  # (B, 40, F)
        flux = F.relu(logmel.diff(dim=-1, prepend=logmel[..., :1])).mean(1)  # (B, F)
        onset = torch.log1p(flux)
        ctx = F.pad(onset, (CONTEXT, CONTEXT)).unfold(-1, 2 * CONTEXT + 1, 1)  # (B, F, 5)

        half = int(self.frame_rate // 2)
        win = F.pad(onset, (half, half))
        win = win.unfold(-1, 2 * half + 1, 1)  # (B, F, W)
        win = win - win.mean(-1, keepdim=True)
        energy = (win * win).sum(-1).clamp_min(1e-6)
        rhythm = torch.stack(
            [(win[..., :-lag] * win[..., lag:]).sum(-1) / energy for lag in range(1, LAGS + 1)],
            -1,
        )

        bands = F.avg_pool1d(logmel.transpose(1, 2), 5).transpose(1, 2)  # (B, 8, F)
        loud = bands.mean(1, keepdim=True)
        timbre = torch.cat([bands - loud, loud / 10], 1)
        beat = torch.from_numpy(
            np.stack([beat_features(o, self.frame_rate) for o in onset.double().numpy()])
        )

        return torch.cat(
            [
                w["chroma"] * chroma.transpose(1, 2),
                w["melody"] * melody.transpose(1, 2),
                w["onset"] * ctx,
                w["rhythm"] * rhythm,
                w["timbre"] * 0.2 * timbre.transpose(1, 2),
                w["beat"] * beat[..., :2],
                w["tempo"] * beat[..., 2:],
            ],
            -1,
        )

    def tokenize(self, wav: torch.Tensor) -> torch.Tensor:
        """wav (B, 1, T) -> tokens (B, ceil(T / hop)) long."""
        return self._head(self.features(wav))

    def fingerprint(self) -> str:
        return self._head.fingerprint()
