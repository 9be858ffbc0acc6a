"""One loaded LM stage and how it runs inside a generation.

Each stage kind (semantic, coarse, fine, delay) is a small ``StageKind``: which upstream
streams it needs (made by earlier stages), which stream it produces, how many frames it
makes, the streams of a window of its target frames (each of the layout's conditioning
streams makes its own: ``ConditioningStream.window_codes``), its codes of a clip to continue,
and how it samples (``decode.sliding_generate`` for the flattened token stages,
``delay_decode.sliding_delay_generate`` for the delay stage). ``LoadedStage`` adds the
network, layout and sampling settings and builds the stage's prompt function
``conditioning(f0, f1, new)`` from the request's ``Streams``, which ``prepare_streams``
builds once per request by asking every stream the stages read (``RequestStream.prepare``).
``Pipeline.generate``, the preview callback (``sample_example``) and the memorization study
all build prompts here (``window_prompt`` for the token stages, ``DelayLayout.prefix`` and
``step_semantic`` for the delay stage).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from musiclm.conditioning.request import GenerationRequest, RequestStream, Streams
from musiclm.conditioning.stream import PREFIX, RequestWindow
from musiclm.datamodules.token_spec import TokenSpec
from musiclm.generation.decode import (
    Conditioning,
    generate_window,
    sliding_generate,
    targets_to_codes,
)
from musiclm.generation.delay_decode import generate_delay_window, sliding_delay_generate
from musiclm.generation.pipeline_file import PipelineFileError, StageEntry
from musiclm.generation.sampling import SamplingConfig
from musiclm.models.token_lm import TokenLM
from musiclm.stage_names import COARSE, DELAY, FINE, SEMANTIC
from musiclm.stages.delay_layout import DelayPrompt

Codes = dict[str, torch.Tensor]  # stream name -> codes made so far (beat, semantic, coarse, ..)


# what to say when a request's optional input finds no stream of the stages to read it
UNREAD = {
    "melody_audio": "a melody was given but no stage was trained with melody conditioning "
    "(melody: true)",
    "bpm": "a tempo was given but the semantic stage was not trained with a beat clock "
    "(beats: true)",
}


def request_streams(stages: Iterable[LoadedStage]) -> list[tuple[RequestStream, Any]]:
    """The streams of ``stages`` that prepare request-level codes, each once (for the first
    stage, in run order, that reads it), with the auxiliary network that stage loaded for it
    (the beat clock's tempo predictor)."""
    out: list[tuple[RequestStream, Any]] = []
    seen: set[str] = set()
    for stage in stages:
        for stream in stage.layout.conditioning_streams:
            if stream.name in seen or not isinstance(stream, RequestStream):
                continue
            seen.add(stream.name)
            out.append((stream, stage.tempo if hasattr(stream, "auxiliary") else None))
    return out


def prepare_streams(stages: Iterable[LoadedStage], request: GenerationRequest) -> Streams:
    """The request's ``Streams``: what each stream the stages read prepares for it. An
    optional input of the request that none of them reads is refused."""
    streams = request_streams(stages)
    read = {name for stream, _ in streams for name in stream.reads}
    for name, message in UNREAD.items():
        if getattr(request, name) is not None and name not in read:
            raise ValueError(f"{request.where}: {message}")
    prepared: dict[str, Any] = {}
    for stream, auxiliary in streams:
        prepared |= stream.prepare(request, auxiliary)
    return Streams(request.rows, device=request.device, prepared=prepared)


def window_prompt(
    layout: Any, streams: dict[str, torch.Tensor], kept: torch.Tensor | None = None
) -> torch.Tensor:
    """``[BOS] + conditioning`` input ids ``(B, P)`` of one window from its streams, followed
    by the input ids of ``kept`` target codes (``(B, F)`` or ``(B, L, F)``) when given."""
    prefix = layout.prefix(streams)
    if kept is None:
        return prefix
    return torch.cat([prefix, layout.target_to_input(layout.codes_to_targets(kept))], dim=1)


# the token-shard fields two stages must agree on when one reads the other's stream
# (``spec_value`` names)
STREAM_FIELDS = {
    SEMANTIC: ("semantic_vocab", "semantic_rate", "semantic_fingerprint", "mulan.levels"),
    COARSE: ("codebook_size", "num_quantizers", "acoustic_rate", "codec_fingerprint"),
}


def spec_value(spec: TokenSpec, name: str) -> Any:
    """``spec``'s field ``name``, or ``section.field`` of one of its conditioning streams (None
    where the shards lack that stream)."""
    section, _, field = name.rpartition(".")
    return getattr(spec.streams.get(section) if section else spec, field, None)


def _windows(stage: LoadedStage) -> dict[str, Any]:
    """A stage's sliding windows (context and kept prefix, in its frames) and sampling, from
    its pipeline-file entry: the same for every kind of stage."""
    return {
        "context_frames": stage.frames(stage.context_seconds),
        "prefix_frames": stage.frames(stage.prefix_seconds) if stage.prefix_seconds else 0,
        "sampling": stage.sampling,
    }


class StageKind(Protocol):
    """What one kind of stage reads, makes and how it samples."""

    produces: str

    def upstream(self, layout: Any) -> tuple[str, ...]:
        """Streams of earlier stages this stage reads."""
        ...

    def output(self, sampled: torch.Tensor) -> torch.Tensor:
        """Sampled codes ``(rows, L, F)`` -> this stage's stream."""
        ...

    def frames(self, stage: LoadedStage, codes: Codes, seconds: float) -> int:
        """Target frames to make for an output of ``seconds``."""
        ...

    def window(
        self, stage: LoadedStage, streams: Streams, codes: Codes, f0: int, f1: int, new: int
    ) -> Codes:
        """The streams the stage reads for target frames ``f0 .. f1 - 1`` whose new frames
        begin at frame ``new``."""
        ...

    def prompt(self, layout: Any, window: Codes) -> Any:
        """What the stage's decoder starts a window from (``[BOS] + conditioning`` ids for
        the token stages), given the window's streams."""
        ...

    def sample_example(
        self,
        net: TokenLM,
        layout: Any,
        example: Codes,
        sampling: SamplingConfig,
        generator: torch.Generator,
    ) -> torch.Tensor:
        """Codes ``(B, L, F)`` sampled in one window for a data example's conditioning, as
        many frames as its own target codes (the training preview)."""
        ...

    def prompt_codes(self, stage: LoadedStage, clip: Codes, seconds: float) -> torch.Tensor:
        """This stage's codes ``(1, L, F)`` of a clip to continue (``clip``: its semantic
        tokens ``(1, F_s)`` and codec codes ``(1, Q, F_a)``)."""
        ...

    def sample(
        self,
        stage: LoadedStage,
        conditioning: Conditioning,
        total: int,
        existing: torch.Tensor | None,
        batch: int,
        generator: torch.Generator,
    ) -> torch.Tensor:
        """``total`` target frames ``(batch, L, total)`` after ``existing`` ones."""
        ...


class TokenStageKind:
    """A stage whose target levels are flattened into one token per LM position."""

    produces = ""
    needs: tuple[str, ...] = ()

    def upstream(self, layout: Any) -> tuple[str, ...]:
        return self.needs

    def output(self, sampled: torch.Tensor) -> torch.Tensor:
        return sampled

    def frames(self, stage: LoadedStage, codes: Codes, seconds: float) -> int:
        return stage.frames(seconds)

    def window(
        self, stage: LoadedStage, streams: Streams, codes: Codes, f0: int, f1: int, new: int
    ) -> Codes:
        request = RequestWindow(streams, codes, f0, f1, stage.rate, new / stage.rate)
        out: Codes = {}
        for stream in stage.layout.conditioning_streams:
            out |= stream.window_codes(request)
        return streams.batch_of(out)

    def prompt(self, layout: Any, window: Codes) -> torch.Tensor:
        return window_prompt(layout, window)

    def sample_example(
        self,
        net: TokenLM,
        layout: Any,
        example: Codes,
        sampling: SamplingConfig,
        generator: torch.Generator,
    ) -> torch.Tensor:
        target = layout.target_codes(example)  # (B, L, F)
        new = generate_window(
            net,
            window_prompt(layout, example),
            target.shape[1] * target.shape[2],
            layout=layout,
            sampling=sampling,
            generator=generator,
        )
        return targets_to_codes(layout, new)

    def prompt_codes(self, stage: LoadedStage, clip: Codes, seconds: float) -> torch.Tensor:
        codes = stage.layout.target_codes(clip)
        return codes[..., : min(codes.shape[-1], stage.frames(seconds))]

    def sample(
        self,
        stage: LoadedStage,
        conditioning: Conditioning,
        total: int,
        existing: torch.Tensor | None,
        batch: int,
        generator: torch.Generator,
    ) -> torch.Tensor:
        """``total`` target frames ``(batch, L, total)`` after ``existing`` ones."""
        return sliding_generate(
            stage.net,
            layout=stage.layout,
            conditioning=conditioning,
            total_frames=total,
            **_windows(stage),
            generator=generator,
            existing=existing,
            batch=batch,
        )


class SemanticKind(TokenStageKind):
    """M [+ melody] [+ beat clock] -> semantic tokens."""

    produces = SEMANTIC

    def output(self, sampled: torch.Tensor) -> torch.Tensor:
        return sampled[:, 0]  # (rows, F): one token per frame


class CoarseKind(TokenStageKind):
    """M [+ melody] + semantic tokens -> the first codec levels."""

    needs = (SEMANTIC,)
    produces = COARSE


class FineKind(TokenStageKind):
    """Coarse codec levels (+ M if asked) -> the remaining levels."""

    needs = (COARSE,)
    produces = FINE

    def frames(self, stage: LoadedStage, codes: Codes, seconds: float) -> int:
        return codes[COARSE].shape[-1]


class DelayKind:
    """M [+ semantic tokens] -> every codec level, a step's levels at once (MusicGen)."""

    produces = DELAY

    def upstream(self, layout: Any) -> tuple[str, ...]:
        return (SEMANTIC,) if layout.semantic else ()

    def output(self, sampled: torch.Tensor) -> torch.Tensor:
        return sampled

    def frames(self, stage: LoadedStage, codes: Codes, seconds: float) -> int:
        return stage.frames(seconds)

    def window(
        self, stage: LoadedStage, streams: Streams, codes: Codes, f0: int, f1: int, new: int
    ) -> Codes:
        layout = stage.layout
        request = RequestWindow(streams, codes, f0, f1, stage.rate, new / stage.rate)
        out: Codes = {}
        for fuse, stream in zip(layout.fuses, layout.conditioning_streams, strict=True):
            if PREFIX in fuse.modes:  # the MuLan tokens; the step streams are summed per step
                out |= stream.window_codes(request)
        steps = layout.pattern.steps(f1 - f0, layout.num_levels)
        if layout.semantic:
            out["step_semantic"] = layout.step_semantic(codes[SEMANTIC], steps, f0)
        if layout.beats:  # the request's clock, on the semantic frames like the tokens
            out["step_beat"] = layout.step_semantic(streams.prepared["beat"], steps, f0)
        return streams.batch_of(out)

    def prompt(self, layout: Any, window: Codes) -> DelayPrompt:
        return DelayPrompt(
            layout.prefix(window), window.get("step_semantic"), window.get("step_beat")
        )

    def sample_example(
        self,
        net: TokenLM,
        layout: Any,
        example: Codes,
        sampling: SamplingConfig,
        generator: torch.Generator,
    ) -> torch.Tensor:
        frames = layout.target_codes(example).shape[-1]
        prompt = layout.prompt(example, layout.pattern.steps(frames, layout.num_levels))
        return generate_delay_window(
            net, layout, prompt, frames, sampling=sampling, generator=generator
        )

    prompt_codes = TokenStageKind.prompt_codes  # the first frames of the clip's codes

    def sample(
        self,
        stage: LoadedStage,
        conditioning: Any,
        total: int,
        existing: torch.Tensor | None,
        batch: int,
        generator: torch.Generator,
    ) -> torch.Tensor:
        return sliding_delay_generate(
            stage.net,
            layout=stage.layout,
            conditioning=conditioning,
            total_frames=total,
            **_windows(stage),
            generator=generator,
            existing=existing,
            batch=batch,
        )


STAGE_KINDS: dict[str, StageKind] = {
    SEMANTIC: SemanticKind(),
    COARSE: CoarseKind(),
    FINE: FineKind(),
    DELAY: DelayKind(),
}


@dataclass
class LoadedStage:
    """One LM stage ready to sample."""

    name: str
    net: TokenLM
    layout: Any
    sampling: SamplingConfig
    context_seconds: float
    prefix_seconds: float
    cond_dropout: float
    tempo: Any = None  # TempoPredictor of a beat-conditioned semantic stage

    @property
    def kind(self) -> StageKind:
        return STAGE_KINDS[self.name]

    @property
    def upstream(self) -> tuple[str, ...]:
        """Streams of earlier stages this stage reads."""
        return self.kind.upstream(self.layout)

    @property
    def needs(self) -> tuple[str, ...]:
        """Every stream this stage reads: its conditioning streams (the request's: mulan,
        melody, beat, ...) and the upstream ones."""
        own = [s.name for s in self.layout.conditioning_streams]
        return tuple(dict.fromkeys([*own, *self.upstream]))

    @property
    def produces(self) -> str:
        return self.kind.produces

    @property
    def rate(self) -> float:
        """Target frames per second."""
        return self.layout.target_rate

    def frames(self, seconds: float) -> int:
        return max(1, round(seconds * self.rate))

    def conditioning(self, streams: Streams, codes: Codes) -> Conditioning:
        """The prompt function ``(f0, f1, new) -> [BOS] + conditioning`` of this stage."""
        kind = self.kind

        def prompt(f0: int, f1: int, new: int) -> torch.Tensor:
            return kind.prompt(self.layout, kind.window(self, streams, codes, f0, f1, new))

        return prompt

    def sample(
        self,
        conditioning: Conditioning,
        total: int,
        existing: torch.Tensor | None,
        batch: int,
        generator: torch.Generator,
    ) -> torch.Tensor:
        """``total`` target frames ``(batch, L, total)`` after ``existing`` ones."""
        return self.kind.sample(self, conditioning, total, existing, batch, generator)

    def run(
        self,
        streams: Streams,
        codes: Codes,
        seconds: float,
        existing: torch.Tensor | None,
        generator: torch.Generator,
    ) -> torch.Tensor:
        """This stage's stream for an output of ``seconds``, reading ``codes`` made before:
        ``(rows, F)`` semantic tokens or ``(rows, L, F)`` codec levels."""
        kind = self.kind
        missing = [n for n in self.upstream if n not in codes]
        if missing:
            raise ValueError(f"the {self.name} stage needs {missing} made by an earlier stage")
        total = kind.frames(self, codes, seconds)
        conditioning = self.conditioning(streams, codes)
        out = self.sample(conditioning, total, existing, len(streams.rows), generator)
        return kind.output(out)


def sample_example(
    net: TokenLM, layout: Any, example: Codes, sampling: SamplingConfig, generator: torch.Generator
) -> torch.Tensor:
    """Codes ``(B, L, F)`` that the stage of ``layout`` samples for a data example's
    conditioning (its own target's length, one window), as generation's stage code does."""
    return STAGE_KINDS[layout.stage].sample_example(net, layout, example, sampling, generator)


def load_stage(name: str, entry: StageEntry, device: str, where: str) -> LoadedStage:
    """A stage checkpoint -> network, layout and its window lengths (weights_only load)."""
    from musiclm.stages.token_lm_stage import load_network, load_tempo

    net, layout = load_network(entry.checkpoint, map_location=device)
    if layout.stage != name:
        raise PipelineFileError(
            f"{where}: 'stages.{name}.checkpoint' ({entry.checkpoint}) is a {layout.stage} "
            "stage checkpoint"
        )
    ckpt = torch.load(entry.checkpoint, map_location="cpu", weights_only=True, mmap=True)
    hp = ckpt.get("hyper_parameters") or {}
    data_hp = ckpt.get("datamodule_hyper_parameters") or {}
    context = entry.context_seconds or data_hp.get("seconds")
    if not context:
        raise PipelineFileError(
            f"{where}: {entry.checkpoint} does not say what crop length it was trained on; "
            f"set 'stages.{name}.context_seconds'"
        )
    prefix = entry.prefix_seconds if entry.prefix_seconds is not None else context / 2
    cond_dropout = float(hp.get("cond_dropout") or 0.0)
    if entry.sampling.guided and cond_dropout == 0:
        raise PipelineFileError(
            f"{where}: 'stages.{name}.cfg_scale' is {entry.sampling.cfg_scale} but "
            f"{entry.checkpoint} was trained without conditioning dropout (cond_dropout=0), "
            "so it has no unconditional mode to guide against; use cfg_scale 1"
        )
    if entry.sampling.stream_guided and not getattr(layout, "guided_streams", ()):
        raise PipelineFileError(
            f"{where}: 'stages.{name}.stream_cfg_scale' is {entry.sampling.stream_cfg_scale} "
            f"but no conditioning entry of {entry.checkpoint} says guided: true; use 1"
        )
    tempo = load_tempo(entry.checkpoint, layout)
    stage = LoadedStage(
        name,
        net,
        layout,
        entry.sampling,
        float(context),
        prefix,
        cond_dropout,
        None if tempo is None else tempo.to(device),
    )
    if stage.frames(prefix) >= stage.frames(context):
        raise PipelineFileError(
            f"{where}: stages.{name}: prefix_seconds={prefix} must be shorter than "
            f"context_seconds={context}"
        )
    return stage
