"""``stft-rvq``: residual k-means over compressed STFT magnitude frames, decoded by Griffin-Lim.

The offline default codec: no downloaded weights, fitted on the user's own audio shards in
minutes on a CPU (``musiclm prepare fit-codec``). Each 20 ms frame's magnitude spectrum,
compressed by a power law (so harmonic peaks, not the noise floor, dominate the distance), is
quantised by ``L`` residual codebooks; decoding sums the first ``L' <= L`` codebook entries and
recovers a phase with Griffin-Lim (deterministic start), so coarse levels alone give audio.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from musiclm.tokenizers.artifacts import config_fingerprint, load_artifact
from musiclm.tokenizers.codecs.common import check_codes, check_wav, fit_length, pad_to_hop
from musiclm.tokenizers.kmeans import residual_decode, residual_encode

ARTIFACT_KIND = "stft-rvq"


class SpectralFrames:
    """Waveform <-> compressed magnitude frames (B, F, n_fft/2+1), one frame per hop."""

    def __init__(
        self, *, sample_rate: int, n_fft: int, hop: int, power: float, griffin_lim_iters: int
    ) -> None:
        self.sample_rate, self.n_fft, self.hop = sample_rate, n_fft, hop
        self.power, self.iters = power, griffin_lim_iters
        self.window = torch.hann_window(n_fft)

    def analyse(self, wav: torch.Tensor) -> torch.Tensor:
        """(B, 1, T) -> (B, ceil(T / hop), D) compressed magnitudes."""
        wav = pad_to_hop(wav, self.hop)[:, 0]
        spec = torch.stft(
            wav, self.n_fft, self.hop, window=self.window, center=True, return_complex=True
        )
        frames = wav.shape[-1] // self.hop
        return spec.abs()[..., :frames].pow(self.power).transpose(1, 2)

    def synthesise(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, F, D) compressed magnitudes -> (B, 1, F * hop) audio via Griffin-Lim."""
        from torchaudio.transforms import GriffinLim

        mag = frames.clamp_min(0).pow(1.0 / self.power).transpose(1, 2)
        # one extra frame so istft covers F * hop samples with center=True
        mag = torch.cat([mag, mag[..., -1:]], dim=-1)
        gl = GriffinLim(
            n_fft=self.n_fft,
            hop_length=self.hop,
            win_length=self.n_fft,
            power=1.0,
            n_iter=self.iters,
            rand_init=False,
            length=frames.shape[1] * self.hop,
        )
        return gl(mag)[:, None]


class StftRvqCodec:
    """Residual k-means codec over STFT magnitude frames (see module docstring)."""

    def __init__(
        self,
        *,
        codebooks: str,
        num_quantizers: int | None = None,
        griffin_lim_iters: int = 48,
    ) -> None:
        """``codebooks``: artifact from ``musiclm prepare fit-codec``; ``num_quantizers`` keeps
        only the first levels; ``griffin_lim_iters`` trades decode time for phase quality."""
        tensors, meta = load_artifact(Path(codebooks), kind=ARTIFACT_KIND)
        if "codebooks" not in tensors:
            raise ValueError(f"stft-rvq: {codebooks} holds no 'codebooks' tensor")
        books = tensors["codebooks"].float()  # (L, K, D)
        total = books.shape[0]
        if num_quantizers is not None and not 1 <= num_quantizers <= total:
            raise ValueError(
                f"stft-rvq: num_quantizers must be in [1, {total}], got {num_quantizers}"
            )
        self.num_quantizers = num_quantizers or total
        self.books = books[: self.num_quantizers]
        self.codebook_size = int(books.shape[1])
        self.sample_rate = int(meta["sample_rate"])
        self.hop = int(meta["hop"])
        self.frame_rate = self.sample_rate / self.hop
        self.frames = SpectralFrames(
            sample_rate=self.sample_rate,
            n_fft=int(meta["n_fft"]),
            hop=self.hop,
            power=float(meta["power"]),
            griffin_lim_iters=griffin_lim_iters,
        )
        if books.shape[2] != self.frames.n_fft // 2 + 1:
            raise ValueError(f"stft-rvq: {codebooks}: codebook dim {books.shape[2]} != n_fft/2+1")
        config: dict[str, Any] = {
            "num_quantizers": self.num_quantizers,
            "griffin_lim_iters": griffin_lim_iters,
        }
        self._fingerprint = config_fingerprint("stft-rvq", config, meta["fingerprint"])

    @torch.inference_mode()
    def encode(self, wav: torch.Tensor) -> torch.Tensor:
        """wav (B, 1, T) -> codes (B, Q, ceil(T / hop)) long."""
        check_wav(wav, "stft-rvq.encode")
        frames = self.frames.analyse(wav.float().cpu())  # (B, F, D)
        b, f, d = frames.shape
        codes = residual_encode(frames.reshape(b * f, d), self.books)  # (B*F, Q)
        return codes.reshape(b, f, -1).transpose(1, 2).contiguous()

    @torch.inference_mode()
    def decode(self, codes: torch.Tensor, length: int | None = None) -> torch.Tensor:
        """codes (B, Q', F) -> wav (B, 1, F * hop), or ``length`` samples when given."""
        check_codes(codes, self.num_quantizers, self.codebook_size, "stft-rvq.decode")
        b, q, f = codes.shape
        flat = codes.transpose(1, 2).reshape(b * f, q).cpu()
        frames = residual_decode(flat, self.books).reshape(b, f, -1)
        wav = self.frames.synthesise(frames)
        return fit_length(wav, f * self.hop if length is None else length)

    def fingerprint(self) -> str:
        return self._fingerprint
