"""Text -> music through the whole hierarchy: MuLan tokens -> semantic -> coarse -> fine -> codec.

Every network is rebuilt from its checkpoint alone (``torch.load(weights_only=True)``); the
codec and semantic tokenizer come from their plugin registries by the names the pipeline file
gives. ``generate`` asks the conditioning streams that the stages read to prepare the
request once (``stage_runner.prepare_streams``: MuLan tokens of each text, melody windows, the
beat clock, a plugin stream's own), handing them the pipeline's pretrained conditioners, then
runs the stages in the pipeline file's order, each reading what earlier ones made
(``stage_runner``: a stage declares the streams it needs and produces and builds its own
prompt). All rows (prompts x samples x re-ranking candidates) go through each
stage as one batch. Lengths beyond a stage's context use sliding windows
(``decode.sliding_generate``); story mode changes the MuLan tokens per window;
``continue_audio`` tokenizes a clip with the semantic tokenizer and the codec and continues
it. Stages trained with melody tokens need ``melody_audio``: its melody tokens (looped or cut
to the output length) follow each window. A beat-conditioned semantic stage (``beats: true``)
follows a steady beat clock at a tempo its ``TempoPredictor`` reads from the MuLan text
embedding of each row's first prompt, or at ``bpm`` when given; a continued clip keeps the
beat tracked in it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import torch

from musiclm.conditioning.request import GenerationRequest, Schedule, Streams
from musiclm.generation.decode import Conditioning
from musiclm.generation.pipeline_file import PipelineFile, PipelineFileError, load_pipeline_file
from musiclm.generation.stage_runner import (
    STREAM_FIELDS,
    UNREAD,
    LoadedStage,
    load_stage,
    prepare_streams,
    request_streams,
    spec_value,
)
from musiclm.stage_names import ACOUSTIC_STAGES, COARSE, SEMANTIC


@dataclass
class Generation:
    """What one call produced: audio rows and what made them."""

    audio: torch.Tensor  # (N, 1, T) at sample_rate
    sample_rate: int
    schedules: list[Schedule]
    seconds: float
    prompt_seconds: float = 0.0
    scores: list[float | None] = field(default_factory=list)
    # with re-ranking, every candidate's MuLan score per output (the first is what sampling
    # without re-ranking would have kept): the selection's gain, measured on the same call
    candidate_scores: list[list[float]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    codes: dict[str, torch.Tensor] = field(default_factory=dict)
    bpm: list[float | None] = field(default_factory=list)  # the beat clock's tempo per output


def row_tempos(bpm: float | list[float] | None, prompts: int, rows: int) -> list[float] | None:
    """Each row's tempo from one for all or one per prompt (None: none given)."""
    if bpm is None:
        return None
    if isinstance(bpm, list | tuple):
        if len(bpm) != prompts:
            raise ValueError(f"{len(bpm)} tempos for {prompts} prompts")
        return [float(b) for b in bpm for _ in range(rows // prompts)]
    return [float(bpm)] * rows


def run_order(stages: list[LoadedStage]) -> list[LoadedStage]:
    """The stages in the pipeline file's order, except that a stage runs after the stages
    whose streams it reads (a file written with sorted keys lists ``coarse`` first)."""
    order: list[LoadedStage] = []
    waiting = list(stages)
    while waiting:
        made = {s.produces for s in order}
        ready = [s for s in waiting if all(n in made for n in s.upstream)]
        stage = ready[0] if ready else waiting[0]  # a missing upstream is reported later
        order.append(stage)
        waiting.remove(stage)
    return order


class Pipeline:
    """The loaded stages, in the order they run; ``generate`` runs them."""

    def __init__(self, spec: PipelineFile, *, device: str | None = None) -> None:
        self.spec = spec
        self.device = device or spec.device
        loaded = [load_stage(name, e, self.device, spec.path) for name, e in spec.stages.items()]
        self.stages = {stage.name: stage for stage in run_order(loaded)}
        self._check_stages_agree()

    @classmethod
    def from_file(cls, path: str, *, device: str | None = None) -> Pipeline:
        return cls(load_pipeline_file(path), device=device)

    def set_sampling(self, stage: str, **changes: Any) -> None:
        """Override sampling settings of one stage (e.g. from the command line)."""
        if stage not in self.stages:
            raise ValueError(f"no stage {stage!r} in {self.spec.path}; stages: {list(self.stages)}")
        loaded = self.stages[stage]
        loaded.sampling = loaded.sampling.replace(**changes)
        if loaded.sampling.guided and loaded.cond_dropout == 0:
            raise ValueError(
                f"cfg_scale for {stage}: that stage was trained without conditioning dropout"
            )

    # --- components ----------------------------------------------------------------------

    def _recorded(self, name: str) -> Any:
        """The first value of ``name`` (``spec_value``, e.g. a fingerprint) that a stage's
        token spec records: every stage of a pipeline reads one token-shard set
        (``_check_stages_agree``)."""
        values = (spec_value(s.layout.spec, name) for s in self.stages.values())
        return next((value for value in values if value), None)

    @property
    def acoustic_stages(self) -> list[LoadedStage]:
        """The stages whose codes, concatenated by level, the codec decodes."""
        return [s for s in self.stages.values() if s.name in ACOUSTIC_STAGES]

    @property
    def uses_mulan(self) -> bool:
        return any(s.layout.uses_mulan for s in self.stages.values())

    @cached_property
    def conditioner(self) -> Any:
        """MuLan + RVQ (``MulanConditioner``), checked against the stages' training tokens."""
        from musiclm.conditioning.conditioning_rvq import MulanConditioner

        expected = self._recorded("mulan.fingerprint")
        return self._checked_conditioner(
            "mulan", MulanConditioner, self.spec.mulan, expected,
            text_neighbours=self.spec.text_neighbours,
        )  # fmt: skip

    @property
    def uses_melody(self) -> bool:
        return any(getattr(s.layout, "melody", False) for s in self.stages.values())

    @cached_property
    def melody_conditioner(self) -> Any:
        """Melody network + RVQ (``MelodyConditioner``), checked against the stages' tokens."""
        from musiclm.conditioning.melody_tokens import MelodyConditioner

        expected = self._recorded("melody.fingerprint")
        return self._checked_conditioner("melody", MelodyConditioner, self.spec.melody, expected)

    def _checked_conditioner(
        self, key: str, cls: Any, files: tuple[str, str] | None, expected: str | None, **kw: Any
    ) -> Any:
        """``cls.from_files(checkpoint, rvq)`` for pipeline key ``key``, refusing a conditioner
        whose fingerprint differs from the one the stages' token shards were made with."""
        label = {"mulan": "MuLan", "melody": "melody"}[key]
        if files is None:
            raise PipelineFileError(
                f"{self.spec.path}: the stages are conditioned on {label} tokens; add '{key}: "
                "{checkpoint, rvq}' (or a 'manifest' whose shards name them)"
            )
        from musiclm.conditioning.conditioning_rvq import MissingEmbeddingsError

        try:
            cond = cls.from_files(*files, device=self.device, **kw)
        except MissingEmbeddingsError as err:
            raise PipelineFileError(f"{self.spec.path}: 'mulan.text_neighbours': {err}") from None
        if expected and cond.fingerprint() != expected:
            raise PipelineFileError(
                f"{self.spec.path}: {label} fingerprint {cond.fingerprint()} differs from "
                f"{expected} that the stages' token shards were made with"
            )
        return cond

    @cached_property
    def codec(self) -> Any:
        from musiclm.tokenizers.base import build

        codec = build("codecs", self.spec.codec.name, **self.spec.codec.args)
        first = self.acoustic_stages[0]
        expected = first.layout.spec.codec_fingerprint
        if expected and codec.fingerprint() != expected:
            raise PipelineFileError(
                f"{self.spec.path}: codec {self.spec.codec.name!r} has fingerprint "
                f"{codec.fingerprint()} but the {first.name} stage was trained on tokens of "
                f"{expected}"
            )
        return codec

    @cached_property
    def semantic_tokenizer(self) -> Any:
        from musiclm.tokenizers.base import build

        if self.spec.semantic_tokenizer is None:
            raise PipelineFileError(
                f"{self.spec.path}: --continue needs 'semantic_tokenizer: {{name, args}}'"
            )
        tok = build("semantic_tokenizers", self.spec.semantic_tokenizer.name,
                    **self.spec.semantic_tokenizer.args)  # fmt: skip
        expected = self._recorded("semantic_fingerprint")
        if expected and tok.fingerprint() != expected:
            raise PipelineFileError(
                f"{self.spec.path}: semantic tokenizer fingerprint {tok.fingerprint()} differs "
                f"from {expected} that the stages were trained on"
            )
        return tok

    def _check_stages_agree(self) -> None:
        """Each stage reads streams that other stages of the file make, from the same tokens."""
        made = {stage.produces: stage for stage in self.stages.values()}
        for stage in self.stages.values():
            for stream in stage.upstream:
                if stream not in made:
                    raise PipelineFileError(
                        f"{self.spec.path}: missing key 'stages.{stream}': the {stage.name} "
                        f"stage ({self.spec.stages[stage.name].checkpoint}) reads {stream} tokens"
                    )
                self._check_agree(made[stream], stage, stream)

    def _check_agree(self, a: LoadedStage, b: LoadedStage, stream: str) -> None:
        """Stage ``b`` reads ``a``'s ``stream``: both were trained on the same tokens."""
        for name in STREAM_FIELDS[stream]:
            va, vb = spec_value(a.layout.spec, name), spec_value(b.layout.spec, name)
            if va != vb:
                raise PipelineFileError(
                    f"{self.spec.path}: stages {a.name} and {b.name} were trained on different "
                    f"tokens: {name} is {va!r} vs {vb!r}"
                )
        made = a.layout.coarse_levels
        if stream == COARSE and b.layout.coarse_levels != made:
            raise PipelineFileError(
                f"{self.spec.path}: the {b.name} stage expects {b.layout.coarse_levels} coarse "
                f"levels, the {a.name} stage makes {made}"
            )

    # --- what the conditioning streams ask for (``conditioning.request.Conditioners``) -----

    def mulan_tokens(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """Conditioning tokens of each distinct text (empty when no stage uses MuLan)."""
        if not self.uses_mulan:
            return {}
        unique = sorted(set(texts))
        tokens = self.conditioner.text_tokens(unique).to(self.device)
        return dict(zip(unique, tokens, strict=True))

    def text_embeddings(self, texts: list[str]) -> torch.Tensor | None:
        """MuLan text embeddings ``(len(texts), D)`` on the device; None when the pipeline
        file names no MuLan."""
        if self.spec.mulan is None:
            return None
        return self.conditioner.embed_text(texts).to(self.device).float()

    # --- generation ----------------------------------------------------------------------

    @torch.inference_mode()
    def generate(
        self,
        schedules: list[Schedule],
        *,
        seconds: float,
        seed: int = 0,
        rerank: int = 1,
        continue_audio: tuple[torch.Tensor, int] | None = None,
        melody_audio: tuple[torch.Tensor, int] | None = None,
        bpm: float | list[float] | None = None,
    ) -> Generation:
        """One output per schedule (a prompt is ``[(0.0, text)]``; a story has several).

        ``rerank > 1`` samples that many candidates per output and keeps the one whose MuLan
        audio embedding is closest to its text's. ``continue_audio`` = (wav (1, T) or (T,),
        sample rate): the clip is tokenized and continued by ``seconds``. ``melody_audio`` =
        (wav, sample rate): the melody to follow (stages trained with melody need it); looped
        when shorter than the output, cut when longer. ``bpm``: the tempo of a beat-conditioned
        semantic stage's clock, one for all or one per schedule (default: predicted from each
        prompt's MuLan text embedding; a continued clip's own beat takes precedence).
        """
        if seconds <= 0 or rerank < 1 or not schedules:
            raise ValueError("need seconds > 0, rerank >= 1 and at least one prompt")
        if rerank > 1 and self.spec.mulan is None:
            raise ValueError(
                f"re-ranking scores candidates with MuLan: add 'mulan: {{checkpoint, rvq}}' to "
                f"{self.spec.path}"
            )
        schedules = [sorted(s) for s in schedules]
        rows = [s for s in schedules for _ in range(rerank)]
        gen = torch.Generator(device=self.device).manual_seed(seed)
        existing, prompt_seconds = self._prompt_codes(continue_audio, len(rows))
        total = prompt_seconds + seconds
        streams, codes, bpms = self._request(
            schedules, rows, total, melody_audio, bpm, continue_audio
        )
        timings: dict[str, float] = {}
        for name, stage in self.stages.items():  # in the pipeline file's order
            clock = time.perf_counter()
            codes[stage.produces] = stage.run(streams, codes, total, existing.get(name), gen)
            timings[name] = time.perf_counter() - clock
        acoustic = torch.cat([codes[s.produces] for s in self.acoustic_stages], dim=1)
        clock = time.perf_counter()
        audio = self.codec.decode(acoustic.cpu())
        audio = audio[..., : round(total * self.codec.sample_rate)]
        timings["codec"] = time.perf_counter() - clock
        out = {"acoustic": acoustic.cpu()}
        if SEMANTIC in codes:
            out["semantic"] = codes[SEMANTIC].cpu()
        scores: list[float | None] = [None] * len(schedules)
        candidate_scores: list[list[float]] = []
        if rerank > 1:
            clock = time.perf_counter()
            audio, out, candidate_scores = self._rerank(audio, out, rows, rerank)
            scores = [max(c) for c in candidate_scores]
            timings["rerank"] = time.perf_counter() - clock
        return Generation(
            audio=audio,
            sample_rate=self.codec.sample_rate,
            schedules=schedules,
            seconds=total,
            prompt_seconds=prompt_seconds,
            scores=scores,
            candidate_scores=candidate_scores,
            timings=timings,
            codes=out,
            bpm=bpms[::rerank] if bpms else [None] * len(schedules),
        )

    def _request(
        self,
        schedules: list[Schedule],
        rows: list[Schedule],
        seconds: float,
        melody_audio: tuple[torch.Tensor, int] | None,
        bpm: float | list[float] | None,
        continue_audio: tuple[torch.Tensor, int] | None,
    ) -> tuple[Streams, dict[str, torch.Tensor], list[float]]:
        """The request's conditioning, prepared once for every stage by the streams the stages
        read (``prepare_streams``), the codes made so far (none: the stages make them) and
        each row's tempo (empty without a beat clock)."""
        request = self._generation_request(
            rows,
            seconds,
            melody_audio=melody_audio,
            continue_audio=continue_audio,
            bpm=row_tempos(bpm, len(schedules), len(rows)),
        )
        streams = prepare_streams(self.stages.values(), request)
        return streams, {}, streams.prepared.get("bpm", [])

    def _generation_request(
        self, rows: list[Schedule], seconds: float, **inputs: Any
    ) -> GenerationRequest:
        """A ``GenerationRequest`` whose conditioners are this pipeline's."""
        return GenerationRequest(rows, seconds, self.device, self, str(self.spec.path), **inputs)

    def _beat_clock(
        self,
        sem: LoadedStage | None,
        texts: list[str],
        seconds: float,
        bpm: float | list[float] | None,
        continue_audio: tuple[torch.Tensor, int] | None,
    ) -> tuple[torch.Tensor | None, list[float]]:
        """Phase ids (rows, frames) of a beat-conditioned semantic stage and each row's BPM
        (``texts``: each row's first prompt); (None, []) for a stage without beats. What
        ``generate`` prepares, for diagnostics that run the semantic stage by hand."""
        clocks = [(s, aux) for s, aux in request_streams([sem] if sem else []) if "bpm" in s.reads]
        if not clocks:
            if bpm is not None:
                raise ValueError(f"{self.spec.path}: {UNREAD['bpm']}")
            return None, []
        rows = [[(0.0, text)] for text in texts]
        tempos = row_tempos(bpm, len(rows), len(rows))
        request = self._generation_request(rows, seconds, continue_audio=continue_audio, bpm=tempos)
        stream, tempo_net = clocks[0]
        made = stream.prepare(request, tempo_net)
        return made["beat"], made["bpm"]

    def _run(
        self,
        stage: LoadedStage,
        prompt_fn: Conditioning,
        total: int,
        existing: torch.Tensor | None,
        batch: int,
        gen: torch.Generator,
    ) -> torch.Tensor:
        """``total`` frames of ``stage`` after ``existing`` with a prompt function of one's own
        (diagnostics that swap a stage's conditioning)."""
        return stage.sample(prompt_fn, total, existing, batch, gen)

    def _prompt_codes(
        self, clip: tuple[torch.Tensor, int] | None, batch: int
    ) -> tuple[dict[str, torch.Tensor], float]:
        """Tokens of an audio prompt, repeated for every row: S (B,1,F), coarse/fine (B,L,F)."""
        if clip is None:
            return {}, 0.0
        import torchaudio.functional as AF

        wav, rate = clip
        wav = wav.reshape(1, 1, -1).float()
        codec = self.codec
        made = {"acoustic": codec.encode(AF.resample(wav, rate, codec.sample_rate))}  # (1, Q, F)
        if SEMANTIC in self.stages:
            sem = self.semantic_tokenizer
            made[SEMANTIC] = sem.tokenize(AF.resample(wav, rate, sem.sample_rate))  # (1, F_s)
        seconds = wav.shape[-1] / rate
        out = {}
        for name, stage in self.stages.items():
            codes = stage.kind.prompt_codes(stage, made, seconds)  # (1, L, F)
            out[name] = codes.expand(batch, -1, -1).to(self.device)
        return out, seconds

    def _rerank(self, audio, codes, rows: list[Schedule], n: int):
        """Keep, of each ``n`` consecutive candidates, the one MuLan scores highest; return the
        kept audio and codes and every candidate's score, ``n`` per output."""
        import torchaudio.functional as AF

        cond = self.conditioner
        texts = sorted({text for s in rows for _, text in s})
        text_emb = dict(zip(texts, cond.embed_text(texts), strict=True))
        wav = AF.resample(audio, self.codec.sample_rate, cond.sample_rate)
        audio_emb = cond.embed_audio(wav)
        target = torch.stack([torch.stack([text_emb[text] for _, text in s]).mean(0) for s in rows])
        score = torch.nn.functional.cosine_similarity(audio_emb.cpu(), target.cpu(), dim=-1)
        best = score.view(-1, n).argmax(-1) + torch.arange(0, len(rows), n)
        picked = {k: v[best] for k, v in codes.items()}
        return audio[best], picked, score.view(-1, n).tolist()
