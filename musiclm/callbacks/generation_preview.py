"""Hear a token-LM stage while it trains: generated tokens of a validation example, decoded.

Every ``every_n_steps`` optimizer steps the stage samples its own target tokens for one
validation example (upstream tokens from the data: MuLan and semantic tokens for coarse, the
coarse levels for fine), and the codec turns them into audio logged to TensorBoard beside the
data's own audio. Coarse previews decode from the coarse levels alone (the codec contract
allows fewer levels); fine previews decode the data's coarse levels plus the generated fine
ones. Semantic tokens have no waveform of their own: that stage logs the agreement of its
tokens with the data's and the token sequences as text.

    callbacks:
      - class_path: musiclm.callbacks.generation_preview.GenerationPreview
        init_args: {every_n_steps: 100, max_seconds: 2.0}

Cheap on a CPU: one example, ``max_seconds`` of tokens, the cached decoder
(``musiclm.generation``), only on global rank 0.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from musiclm.generation.sampling import PAPER_TEMPERATURE, SamplingConfig
from musiclm.generation.stage_runner import sample_example

STREAMS = ("mulan", "beat", "semantic", "acoustic")


class GenerationPreview(Callback):
    """Log generated audio (or tokens, for the semantic stage) of a validation example."""

    def __init__(
        self,
        every_n_steps: int = 500,
        max_seconds: float = 2.0,
        temperature: float | None = None,
        top_k: int | None = None,
        codec: dict[str, Any] | None = None,
        seed: int = 0,
    ) -> None:
        """
        Args:
            every_n_steps: preview when the global step is a multiple of this.
            max_seconds: length of the preview (the example is cropped to it).
            temperature: sampling temperature (None: the paper's value for the stage).
            top_k: optional top-k filtering.
            codec: ``{name, args}`` of the codec plugin; None reads it from the
                datamodule's token manifest.
            seed: sampling seed (the same every time, so previews differ by weights only).
        """
        if every_n_steps < 1 or max_seconds <= 0:
            raise ValueError("every_n_steps must be >= 1 and max_seconds > 0")
        self.every_n_steps, self.max_seconds = every_n_steps, max_seconds
        self.temperature, self.top_k, self.codec_spec, self.seed = temperature, top_k, codec, seed
        self.example: dict[str, torch.Tensor] | None = None
        self.source = ""
        self._codec: Any = None
        self._logged_data = False
        self.disabled = False

    # --- hooks ---------------------------------------------------------------------------

    def on_validation_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, *args: Any
    ) -> None:
        if self.source != "val" and isinstance(batch, dict):
            self.example, self.source = _first_row(batch), "val"
            self._logged_data = False

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, *args: Any
    ) -> None:
        step = trainer.global_step
        if self.disabled or step == 0 or step % self.every_n_steps or not trainer.is_global_zero:
            return
        if self.example is None and isinstance(batch, dict):
            self.example, self.source = _first_row(batch), "train"
        if self.example is not None and getattr(pl_module, "layout", None) is not None:
            try:
                self.preview(trainer, pl_module)
            except Exception as err:  # a preview must never end a training run
                from lightning.pytorch.utilities import rank_zero_warn

                rank_zero_warn(f"GenerationPreview failed and is switched off: {err!r}")
                self.disabled = True

    # --- the preview ---------------------------------------------------------------------

    @torch.inference_mode()
    def preview(self, trainer: Trainer, pl_module: LightningModule) -> dict[str, torch.Tensor]:
        """Generate, decode and log; returns what was logged (audio or tokens)."""
        layout = pl_module.layout
        spec = layout.spec
        example = _crop(self.example, spec, self.max_seconds)
        device = pl_module.device
        example = {k: v.to(device) for k, v in example.items()}
        temperature = self.temperature
        if temperature is None:
            temperature = PAPER_TEMPERATURE[layout.stage]
        sampling = SamplingConfig(temperature=temperature, top_k=self.top_k)
        gen = torch.Generator(device=device).manual_seed(self.seed)
        codes = sample_example(pl_module.net, layout, example, sampling, gen)  # (1, L, F)
        step = trainer.global_step
        writer = _tensorboard(trainer)
        tag = f"preview_{self.source}"
        span = layout.acoustic_span
        if span is None:  # semantic tokens: no waveform of their own
            target = layout.target_codes(example)
            match = (codes == target).float().mean()
            pl_module.log(f"{tag}/semantic_token_match", match)
            if writer is not None:
                text = f"generated: {codes[0, 0].tolist()}\n\ndata: {target[0, 0].tolist()}"
                writer.add_text(f"{tag}/semantic_tokens", text, step)
            return {"tokens": codes}
        lo, hi = span  # the levels below the stage's come from the data
        generated = torch.cat([example["acoustic"][:, :lo], codes], dim=1)
        data_codes = example["acoustic"][:, :hi]
        codec = self.codec(trainer)
        audio = codec.decode(generated.cpu())[0]
        if writer is not None:
            writer.add_audio(f"{tag}/generated", audio.clamp(-1, 1), step, codec.sample_rate)
            if not self._logged_data:
                data_audio = codec.decode(data_codes.cpu())[0].clamp(-1, 1)
                writer.add_audio(f"{tag}/data", data_audio, step, codec.sample_rate)
                self._logged_data = True
        return {"tokens": codes, "audio": audio}

    def codec(self, trainer: Trainer) -> Any:
        """The codec plugin named in config or in the token manifest (built once)."""
        if self._codec is None:
            from musiclm.tokenizers.base import build

            spec = self.codec_spec
            if spec is None:
                manifest = getattr(getattr(trainer, "datamodule", None), "manifest", None) or {}
                spec = manifest.get("codec")
            if not spec or "name" not in spec:
                raise ValueError(
                    "GenerationPreview: no codec given and the datamodule's token manifest names "
                    "none; set init_args.codec: {name, args}"
                )
            self._codec = build("codecs", spec["name"], **(spec.get("args") or {}))
        return self._codec


def _first_row(batch: dict[str, Any]) -> dict[str, torch.Tensor]:
    return {k: batch[k][:1].detach().cpu() for k in STREAMS if torch.is_tensor(batch.get(k))}


def _crop(example: dict[str, torch.Tensor], spec: Any, seconds: float) -> dict[str, torch.Tensor]:
    """At most ``seconds``, and no padding (-1) at the end of any stream."""
    out = dict(example)
    span = seconds
    for key, rate in (("semantic", spec.semantic_rate), ("acoustic", spec.acoustic_rate)):
        if key in out:
            valid = (out[key] >= 0).reshape(-1, out[key].shape[-1]).all(0)
            span = min(span, int(valid.sum()) / rate)
    for key in ("semantic", "beat"):  # the beat clock runs at the semantic rate
        if key in out:
            out[key] = out[key][..., : max(1, round(span * spec.semantic_rate))]
    if "acoustic" in out:
        out["acoustic"] = out["acoustic"][..., : max(1, round(span * spec.acoustic_rate))]
    return out


def _tensorboard(trainer: Trainer) -> Any:
    for logger in trainer.loggers:
        experiment = getattr(logger, "experiment", None)
        if hasattr(experiment, "add_audio"):
            return experiment
    return None
