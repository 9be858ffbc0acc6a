"""``encodec-hf``: Meta's EnCodec through ``transformers`` (``EncodecModel``) as a codec plugin.

A second, independent codec family beside DAC: a local folder or hub id (``pretrained``,
e.g. ``facebook/encodec_24khz``), or a randomly initialised model from an ``EncodecConfig``
dict (``config``), for tests.
"""

from __future__ import annotations

from typing import Any

import torch

from musiclm.tokenizers.artifacts import config_fingerprint, module_digest
from musiclm.tokenizers.codecs.common import check_codes, check_wav, fit_length, pad_to_hop


class HfEncodecCodec:
    """EnCodec (transformers): waveform <-> (B, Q, F) codes at the model's largest bandwidth."""

    def __init__(
        self,
        *,
        pretrained: str | None = None,
        config: dict[str, Any] | None = None,
        bandwidth: float | None = None,
        seed: int = 0,
        device: str = "cpu",
    ) -> None:
        """Exactly one of ``pretrained`` (path or hub id) or ``config`` (random init).

        ``bandwidth`` (kbps, one of the model's ``target_bandwidths``) sets how many levels are
        kept; default the largest. ``seed`` fixes a randomly initialised model's weights.
        """
        from transformers import EncodecConfig, EncodecModel

        if (pretrained is None) == (config is None):
            raise ValueError("encodec-hf: give exactly one of pretrained or config")
        if pretrained is not None:
            try:
                model = EncodecModel.from_pretrained(pretrained)
            except OSError as exc:
                raise RuntimeError(
                    f"encodec-hf: cannot load {pretrained!r} ({exc}). Offline, pass a local "
                    "folder holding config.json and the weights as pretrained=/path"
                ) from exc
            self._config: dict[str, Any] = {"pretrained": str(pretrained)}
        else:
            cfg = EncodecConfig(**config)
            if cfg.chunk_length_s is not None or cfg.normalize:
                raise ValueError(
                    "encodec-hf: chunked or normalised EnCodec configs are not supported"
                )
            with torch.random.fork_rng():
                torch.manual_seed(seed)
                model = EncodecModel(cfg)
                # EnCodec's codebooks start at zero (training seeds them by k-means), which
                # would make every level decode alike; an untrained model gets random entries.
                for layer in model.quantizer.layers:
                    layer.codebook.embed.normal_()
                    layer.codebook.embed_avg.copy_(layer.codebook.embed)
            self._config = {"config": dict(config), "seed": seed}
        cfg = model.config
        bandwidths = list(cfg.target_bandwidths)
        self.bandwidth = float(bandwidths[-1] if bandwidth is None else bandwidth)
        if self.bandwidth not in bandwidths:
            raise ValueError(f"encodec-hf: bandwidth must be one of {bandwidths}, got {bandwidth}")
        self.model = model.eval().to(device)
        self.device = device
        self.hop = int(cfg.hop_length)
        self.sample_rate = int(cfg.sampling_rate)
        self.frame_rate = self.sample_rate / self.hop
        self.num_quantizers = int(model.quantizer.get_num_quantizers_for_bandwidth(self.bandwidth))
        self.codebook_size = int(cfg.codebook_size)
        self._config["bandwidth"] = self.bandwidth
        self._fingerprint = config_fingerprint(
            "encodec-hf", self._config, module_digest(self.model)
        )

    @torch.inference_mode()
    def encode(self, wav: torch.Tensor) -> torch.Tensor:
        """wav (B, 1, T) at ``sample_rate`` -> codes (B, Q, ceil(T / hop)) long."""
        check_wav(wav, "encodec-hf.encode")
        wav = pad_to_hop(wav.to(self.device), self.hop)
        out = self.model.encode(wav, bandwidth=self.bandwidth, return_dict=True)
        codes = out.audio_codes  # (chunks=1, B, Q, F)
        return codes[0].long().cpu()

    @torch.inference_mode()
    def decode(self, codes: torch.Tensor, length: int | None = None) -> torch.Tensor:
        """codes (B, Q', F) -> wav (B, 1, F * hop), or ``length`` samples when given."""
        check_codes(codes, self.num_quantizers, self.codebook_size, "encodec-hf.decode")
        out = self.model.decode(codes[None].to(self.device), [None], return_dict=True)
        wav = out.audio_values.float().cpu()
        return fit_length(wav, codes.shape[-1] * self.hop if length is None else length)

    def fingerprint(self) -> str:
        return self._fingerprint
