"""``dac``: the Descript Audio Codec (descript-audio-codec) as a codec plugin.

Pretrained 16/24/44 kHz models come from a local weights file (``weights_path``) or, when
online, from the package's own download (``model_type``); an untrained architecture comes from
``config`` (DAC constructor arguments), for tests and for training from scratch.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any

import torch

from musiclm.tokenizers.artifacts import config_fingerprint, module_digest
from musiclm.tokenizers.codecs.common import check_codes, check_wav, fit_length, pad_to_hop

MODEL_TYPES = ("16khz", "24khz", "44khz")


def _load_weights(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """DAC weights file -> (constructor kwargs, state dict), read without unpickling code."""
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"dac: cannot read weights file {path}: {exc}") from exc
    if not isinstance(blob, dict) or "state_dict" not in blob:
        raise ValueError(f"dac: {path} is not a DAC weights file (no 'state_dict' key)")
    kwargs = dict(blob.get("metadata", {}).get("kwargs", {}))
    return kwargs, blob["state_dict"]


class DacCodec:
    """Descript Audio Codec: waveform <-> (B, Q, F) codes; always evaluated in eval mode."""

    def __init__(
        self,
        *,
        weights_path: str | None = None,
        model_type: str | None = None,
        config: dict[str, Any] | None = None,
        num_quantizers: int | None = None,
        chunk_seconds: float = 30.0,
        context_seconds: float = 1.0,
        seed: int = 0,
        device: str = "cpu",
    ) -> None:
        """Exactly one of ``weights_path``, ``model_type`` (download) or ``config`` (untrained).

        ``num_quantizers`` keeps only the first levels of a model with more; ``chunk_seconds``
        bounds the audio encoded at once; each chunk is encoded with ``context_seconds`` of
        the neighbouring audio on both sides and only its own frames are kept, so frames at a
        cut see the same surroundings as in one pass; ``seed`` fixes an untrained model's
        weights.
        """
        from dac.model import DAC

        chosen = [x is not None for x in (weights_path, model_type, config)]
        if sum(chosen) != 1:
            raise ValueError("dac: give exactly one of weights_path, model_type or config")
        if model_type is not None:
            if model_type not in MODEL_TYPES:
                raise ValueError(f"dac: model_type must be one of {MODEL_TYPES}, got {model_type}")
            weights_path = str(self._download(model_type))
        if weights_path is not None:
            path = Path(weights_path)
            if not path.is_file():
                raise FileNotFoundError(f"dac: weights_path {path} does not exist")
            kwargs, state = _load_weights(path)
            allowed = set(inspect.signature(DAC).parameters)
            kwargs = {k: v for k, v in kwargs.items() if k in allowed}
            model = DAC(**kwargs)
            # DAC.load uses strict=False, which would accept a mismatched file in silence.
            missing, unexpected = model.load_state_dict(state, strict=False)
            if missing or unexpected:
                raise ValueError(
                    f"dac: {path} does not match the DAC architecture in its metadata: "
                    f"missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
                )
            self._config: dict[str, Any] = {"weights": path.name, "kwargs": kwargs}
        else:
            with torch.random.fork_rng():
                torch.manual_seed(seed)
                model = DAC(**dict(config or {}))
            self._config = {"kwargs": dict(config or {}), "seed": seed}
        self.model = model.eval().to(device)
        self.device = device
        self.hop = int(model.hop_length)
        self.sample_rate = int(model.sample_rate)
        self.frame_rate = self.sample_rate / self.hop
        total = int(model.n_codebooks)
        if num_quantizers is not None and not 1 <= num_quantizers <= total:
            raise ValueError(f"dac: num_quantizers must be in [1, {total}], got {num_quantizers}")
        self.num_quantizers = num_quantizers or total
        self.codebook_size = int(model.codebook_size)
        self.chunk = max(self.hop, int(chunk_seconds * self.sample_rate) // self.hop * self.hop)
        if context_seconds < 0:
            raise ValueError(f"dac: context_seconds must be >= 0, got {context_seconds}")
        self.context = int(context_seconds * self.sample_rate) // self.hop * self.hop
        self._config["num_quantizers"] = self.num_quantizers
        self._fingerprint = config_fingerprint("dac", self._config, module_digest(self.model))

    @staticmethod
    def _download(model_type: str) -> Path:
        cached = Path.home() / ".cache" / "descript" / "dac"
        found = sorted(cached.glob(f"weights_{model_type}_*.pth")) if cached.is_dir() else []
        if found:
            return found[-1]
        if os.environ.get("HF_HUB_OFFLINE") == "1":
            raise RuntimeError(
                f"dac: no cached {model_type} weights in {cached} and running offline. Download "
                f"weights_{model_type}.pth from github.com/descriptinc/descript-audio-codec "
                "releases and pass weights_path=/path/to/it (or --codec-args "
                '\'{"weights_path": "..."}\')'
            )
        from dac.utils import download

        try:
            return Path(download(model_type=model_type))
        except Exception as exc:
            raise RuntimeError(
                f"dac: downloading the {model_type} weights failed ({exc}); download "
                f"weights_{model_type}.pth from the descript-audio-codec GitHub releases and "
                "pass weights_path=/path/to/it"
            ) from exc

    @torch.inference_mode()
    def encode(self, wav: torch.Tensor) -> torch.Tensor:
        """wav (B, 1, T) at ``sample_rate`` -> codes (B, Q, ceil(T / hop)) long."""
        check_wav(wav, "dac.encode")
        wav = pad_to_hop(wav.to(self.device), self.hop)
        self.model.eval()  # quantizer dropout ignores n_quantizers in train mode
        parts, total = [], wav.shape[-1]
        for start in range(0, total, self.chunk):
            end = min(start + self.chunk, total)
            # hop-aligned context on both sides, then keep the chunk's own frames
            lo, hi = max(0, start - self.context), min(total, end + self.context)
            _, codes, *_ = self.model.encode(wav[..., lo:hi], n_quantizers=self.num_quantizers)
            first = (start - lo) // self.hop
            parts.append(codes[:, : self.num_quantizers, first : first + (end - start) // self.hop])
        return torch.cat(parts, dim=-1).long().cpu()

    @torch.inference_mode()
    def decode(self, codes: torch.Tensor, length: int | None = None) -> torch.Tensor:
        """codes (B, Q', F) -> wav (B, 1, F * hop), or ``length`` samples when given."""
        check_codes(codes, self.num_quantizers, self.codebook_size, "dac.decode")
        z, _, _ = self.model.quantizer.from_codes(codes.to(self.device))
        wav = self.model.decode(z).float().cpu()
        return fit_length(wav, codes.shape[-1] * self.hop if length is None else length)

    def fingerprint(self) -> str:
        return self._fingerprint
