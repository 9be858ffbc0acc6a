"""``hf-ssl``: a self-supervised audio model through ``transformers`` + k-means.

HuBERT, wav2vec2, WavLM, data2vec-audio, MERT (``trust_remote_code`` from a local folder) and
other models taking raw ``input_values``; Wav2Vec2-BERT and others taking ``input_features``
go through the model's own feature extractor. Features are the hidden states of ``layer``
(index into ``hidden_states``: 0 = the embedding output). Audio is expected at the model's
rate (``sample_rate``); callers resample, as ``musiclm prepare tokens`` does.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from musiclm.tokenizers.artifacts import module_digest
from musiclm.tokenizers.codecs.common import check_wav
from musiclm.tokenizers.semantic.common import KMeansTokens, features_fingerprint


class HfSslTokenizer:
    """Hidden states of a transformers audio model, quantised by fitted k-means."""

    def __init__(
        self,
        *,
        pretrained: str | None = None,
        config: dict[str, Any] | None = None,
        layer: int = 6,
        kmeans: str | None = None,
        sample_rate: int | None = None,
        trust_remote_code: bool = False,
        vocab_size: int = 1024,
        seed: int = 0,
        device: str = "cpu",
    ) -> None:
        """Exactly one of ``pretrained`` (local folder or hub id) or ``config`` (a dict with
        ``model_type``, randomly initialised with ``seed``; for tests)."""
        from transformers import AutoConfig, AutoFeatureExtractor, AutoModel

        if (pretrained is None) == (config is None):
            raise ValueError("hf-ssl: give exactly one of pretrained or config")
        self.extractor = None
        if pretrained is not None:
            try:
                model = AutoModel.from_pretrained(pretrained, trust_remote_code=trust_remote_code)
            except OSError as exc:
                raise RuntimeError(
                    f"hf-ssl: cannot load {pretrained!r} ({exc}). Offline, pass a local folder "
                    "with config.json and weights as pretrained=/path"
                ) from exc
            try:
                self.extractor = AutoFeatureExtractor.from_pretrained(
                    pretrained, trust_remote_code=trust_remote_code
                )
            except (OSError, ValueError):
                self.extractor = None
            ident: dict[str, Any] = {"pretrained": str(pretrained)}
        else:
            cfg = dict(config)
            model_type = cfg.pop("model_type", None)
            if model_type is None:
                raise ValueError("hf-ssl: config needs a 'model_type' (e.g. 'hubert')")
            with torch.random.fork_rng():
                torch.manual_seed(seed)
                model = AutoModel.from_config(AutoConfig.for_model(model_type, **cfg))
            ident = {"config": dict(config), "seed": seed}
        self.model = model.eval().to(device)
        self.device = device
        mcfg = model.config
        layers = int(getattr(mcfg, "num_hidden_layers", 0))
        if not -layers - 1 <= layer <= layers:
            raise ValueError(f"hf-ssl: layer {layer} out of range for a {layers}-layer model")
        self.layer = layer
        default_sr = getattr(self.extractor, "sampling_rate", None) or 16000
        self.sample_rate = int(sample_rate or default_sr)
        self.raw = model.main_input_name == "input_values"
        if self.raw:
            strides, kernels = list(mcfg.conv_stride), list(mcfg.conv_kernel)
            self.hop = math.prod(strides)
            # receptive field of the conv front end, so that padding gives ceil(T / hop) frames
            field, jump = 1, 1
            for k, s in zip(kernels, strides, strict=True):
                field += (k - 1) * jump
                jump *= s
            self.field = field
        else:
            if self.extractor is None:
                raise ValueError(f"hf-ssl: {pretrained} takes input_features but has no extractor")
            self.hop = int(getattr(self.extractor, "hop_length", 160)) * int(
                getattr(self.extractor, "stride", 1)
            )
            self.field = self.hop
        self.frame_rate = self.sample_rate / self.hop
        ident.update({"layer": layer, "sample_rate": self.sample_rate})
        fp = features_fingerprint("hf-ssl", ident, module_digest(self.model))
        self._head = KMeansTokens("hf-ssl", kmeans, fp, vocab_size)
        self.vocab_size = self._head.vocab_size

    @property
    def features_fingerprint(self) -> str:
        return self._head.features_fp

    @torch.inference_mode()
    def features(self, wav: torch.Tensor) -> torch.Tensor:
        """wav (B, 1, T) at ``sample_rate`` -> hidden states (B, ceil(T / hop), D)."""
        check_wav(wav, "hf-ssl.features")
        length = wav.shape[-1]
        frames = max(1, math.ceil(length / self.hop))
        if self.raw:
            extra = frames * self.hop + self.field - self.hop - length
            x = F.pad(wav[:, 0].float(), (extra // 2, extra - extra // 2))
            inputs = {"input_values": x.to(self.device)}
        else:
            batch = [w[0].numpy() for w in wav.float().cpu()]
            inputs = self.extractor(batch, sampling_rate=self.sample_rate, return_tensors="pt")
            inputs = {k: v.to(self.device) for k, v in inputs.items()}
        out = self.model(**inputs, output_hidden_states=True)
        hidden = out.hidden_states[self.layer].float().cpu()
        if hidden.shape[1] < frames:  # feature extractors may drop a last partial frame
            hidden = F.pad(hidden, (0, 0, 0, frames - hidden.shape[1]), mode="replicate")
        return hidden[:, :frames]

    def tokenize(self, wav: torch.Tensor) -> torch.Tensor:
        """wav (B, 1, T) -> tokens (B, ceil(T / hop)) long."""
        return self._head(self.features(wav))

    def fingerprint(self) -> str:
        return self._head.fingerprint()
