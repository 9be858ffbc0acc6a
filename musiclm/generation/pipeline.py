"""Text -> music through the whole hierarchy: MuLan tokens -> semantic -> coarse -> fine -> codec.

Every network is rebuilt from its checkpoint alone (``torch.load(weights_only=True)``); the
codec and semantic tokenizer come from their plugin registries by the names the pipeline file
gives. All rows (prompts x samples x re-ranking candidates) go through each stage as one
batch. Lengths beyond a stage's context use sliding windows (``decode.sliding_generate``);
story mode changes the MuLan tokens per window; ``continue_audio`` tokenizes a clip with the
semantic tokenizer and the codec and continues it. Stages trained with melody tokens need
``melody_audio``: its melody tokens (looped or cut to the output length) follow each window.
A beat-conditioned semantic stage (``beats: true``) follows a steady beat clock at a tempo
its ``TempoPredictor`` reads from the MuLan text embedding of each row's first prompt, or at
``bpm`` when given; a continued clip keeps the beat tracked in it.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import torch

from musiclm.generation.decode import sliding_generate
from musiclm.generation.pipeline_file import (
    PipelineFile,
    PipelineFileError,
    StageEntry,
    load_pipeline_file,
)
from musiclm.generation.sampling import SamplingConfig
from musiclm.models.token_lm import TokenLM
from musiclm.stage_names import COARSE, FINE, SEMANTIC

# a schedule: (start second, text) pairs sorted by time; a plain prompt is [(0.0, text)]
Schedule = list[tuple[float, str]]


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
    def rate(self) -> float:
        """Target frames per second."""
        spec = self.layout.spec
        return spec.semantic_rate if self.name == SEMANTIC else spec.acoustic_rate

    def frames(self, seconds: float) -> int:
        return max(1, round(seconds * self.rate))


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


class Pipeline:
    """The loaded hierarchy; ``generate`` runs it."""

    def __init__(self, spec: PipelineFile, *, device: str | None = None) -> None:
        self.spec = spec
        self.device = device or spec.device
        self.stages = {
            name: load_stage(name, entry, self.device, spec.path)
            for name, entry in spec.stages.items()
        }
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

    @property
    def uses_mulan(self) -> bool:
        return any(s.layout.uses_mulan for s in self.stages.values())

    @cached_property
    def conditioner(self) -> Any:
        """MuLan + RVQ (``MulanConditioner``), checked against the stages' training tokens."""
        from musiclm.conditioning.conditioning_rvq import MulanConditioner

        expected = self.stages[SEMANTIC].layout.spec.mulan_fingerprint
        return self._checked_conditioner("mulan", MulanConditioner, self.spec.mulan, expected)

    @property
    def uses_melody(self) -> bool:
        return any(getattr(s.layout, "melody", False) for s in self.stages.values())

    @cached_property
    def melody_conditioner(self) -> Any:
        """Melody network + RVQ (``MelodyConditioner``), checked against the stages' tokens."""
        from musiclm.conditioning.melody_tokens import MelodyConditioner

        expected = self.stages[SEMANTIC].layout.spec.melody_fingerprint
        return self._checked_conditioner("melody", MelodyConditioner, self.spec.melody, expected)

    def _checked_conditioner(
        self, key: str, cls: Any, files: tuple[str, str] | None, expected: str | None
    ) -> Any:
        """``cls.from_files(checkpoint, rvq)`` for pipeline key ``key``, refusing a conditioner
        whose fingerprint differs from the one the stages' token shards were made with."""
        label = {"mulan": "MuLan", "melody": "melody"}[key]
        if files is None:
            raise PipelineFileError(
                f"{self.spec.path}: the stages are conditioned on {label} tokens; add '{key}: "
                "{checkpoint, rvq}' (or a 'manifest' whose shards name them)"
            )
        cond = cls.from_files(*files, device=self.device)
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
        expected = self.stages[COARSE].layout.spec.codec_fingerprint
        if expected and codec.fingerprint() != expected:
            raise PipelineFileError(
                f"{self.spec.path}: codec {self.spec.codec.name!r} has fingerprint "
                f"{codec.fingerprint()} but the coarse stage was trained on tokens of {expected}"
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
        expected = self.stages[SEMANTIC].layout.spec.semantic_fingerprint
        if expected and tok.fingerprint() != expected:
            raise PipelineFileError(
                f"{self.spec.path}: semantic tokenizer fingerprint {tok.fingerprint()} differs "
                f"from {expected} that the stages were trained on"
            )
        return tok

    def _check_stages_agree(self) -> None:
        sem, coarse = self.stages[SEMANTIC].layout, self.stages[COARSE].layout
        fields_ = ("semantic_vocab", "semantic_rate", "semantic_fingerprint", "mulan_levels")
        pairs = [("semantic", "coarse", sem, coarse, fields_)]
        if FINE in self.stages:
            fine = self.stages[FINE].layout
            acoustic = ("codebook_size", "num_quantizers", "acoustic_rate", "codec_fingerprint")
            pairs.append(("coarse", "fine", coarse, fine, acoustic))
            if fine.coarse_levels != coarse.coarse_levels:
                raise PipelineFileError(
                    f"{self.spec.path}: the fine stage expects {fine.coarse_levels} coarse "
                    f"levels, the coarse stage makes {coarse.coarse_levels}"
                )
        for a, b, la, lb, names in pairs:
            for name in names:
                va, vb = getattr(la.spec, name), getattr(lb.spec, name)
                if va != vb:
                    raise PipelineFileError(
                        f"{self.spec.path}: stages {a} and {b} were trained on different "
                        f"tokens: {name} is {va!r} vs {vb!r}"
                    )

    # --- generation ----------------------------------------------------------------------

    def mulan_tokens(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """Conditioning tokens of each distinct text (empty when no stage uses MuLan)."""
        if not self.uses_mulan:
            return {}
        unique = sorted(set(texts))
        tokens = self.conditioner.text_tokens(unique).to(self.device)
        return dict(zip(unique, tokens, strict=True))

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
        tokens = self.mulan_tokens([text for s in rows for _, text in s])
        timings: dict[str, float] = {}
        existing, prompt_seconds = self._prompt_codes(continue_audio, len(rows))
        total = prompt_seconds + seconds
        melody = self._melody_windows(melody_audio, total, len(rows))

        def mulan_at(t: float) -> torch.Tensor:
            texts = [next(text for start, text in reversed(s) if start <= t + 1e-9) for s in rows]
            return torch.stack([tokens[text] for text in texts])

        def streams(
            layout: Any, t: float, start: float = 0.0, **arrays: torch.Tensor
        ) -> dict[str, torch.Tensor]:
            out = {"mulan": mulan_at(t)} if layout.uses_mulan else {}
            if getattr(layout, "melody", False):
                from musiclm.conditioning.melody_tokens import tokens_at

                spec = layout.spec
                out["melody"] = tokens_at(melody, start, spec.melody_hop, spec.melody_windows)
            out |= arrays
            return out or {"_batch": torch.empty(len(rows), 0, device=self.device)}

        # semantic: M [+ beat clock] -> S
        sem = self.stages[SEMANTIC]
        if isinstance(bpm, list | tuple):
            if len(bpm) != len(schedules):
                raise ValueError(f"{len(bpm)} tempos for {len(schedules)} prompts")
            bpm = [b for b in bpm for _ in range(rerank)]
        beats, bpms = self._beat_clock(
            sem,
            [s[0][1] for s in rows],
            sem.frames(total),
            bpm,
            continue_audio,
        )
        clock = time.perf_counter()
        semantic = self._run(
            sem,
            lambda f0, f1, new: sem.layout.prefix(
                streams(
                    sem.layout,
                    new / sem.rate,
                    f0 / sem.rate,
                    **({} if beats is None else {"beat": beats[:, f0:f1]}),
                )
            ),
            sem.frames(total),
            existing.get("semantic"),
            len(rows),
            gen,
        )[:, 0]
        timings[SEMANTIC] = time.perf_counter() - clock

        # coarse: M + S -> first levels
        coarse = self.stages[COARSE]
        ratio = sem.rate / coarse.rate

        def coarse_prompt(f0: int, f1: int, new: int) -> torch.Tensor:
            s0, s1 = math.floor(f0 * ratio), min(semantic.shape[1], math.ceil(f1 * ratio))
            window = streams(
                coarse.layout, new / coarse.rate, f0 / coarse.rate, semantic=semantic[:, s0:s1]
            )
            return coarse.layout.prefix(window)

        clock = time.perf_counter()
        coarse_codes = self._run(
            coarse, coarse_prompt, coarse.frames(total), existing.get("coarse"), len(rows), gen
        )
        timings[COARSE] = time.perf_counter() - clock
        acoustic = coarse_codes

        # fine: coarse levels -> the rest
        if FINE in self.stages:
            fine = self.stages[FINE]

            def fine_prompt(f0: int, f1: int, new: int) -> torch.Tensor:
                window = streams(fine.layout, new / fine.rate, acoustic=coarse_codes[..., f0:f1])
                return fine.layout.prefix(window)

            clock = time.perf_counter()
            fine_codes = self._run(
                fine, fine_prompt, coarse_codes.shape[-1], existing.get("fine"), len(rows), gen
            )
            timings[FINE] = time.perf_counter() - clock
            acoustic = torch.cat([coarse_codes, fine_codes], dim=1)

        clock = time.perf_counter()
        audio = self.codec.decode(acoustic.cpu())
        audio = audio[..., : round(total * self.codec.sample_rate)]
        timings["codec"] = time.perf_counter() - clock
        codes = {"semantic": semantic.cpu(), "acoustic": acoustic.cpu()}
        scores: list[float | None] = [None] * len(schedules)
        candidate_scores: list[list[float]] = []
        if rerank > 1:
            clock = time.perf_counter()
            audio, codes, candidate_scores = self._rerank(audio, codes, rows, rerank)
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
            codes=codes,
            bpm=bpms[::rerank] if bpms else [None] * len(schedules),
        )

    def _beat_clock(
        self,
        sem: LoadedStage,
        texts: list[str],
        frames: int,
        bpm: float | list[float] | None,
        continue_audio: tuple[torch.Tensor, int] | None,
    ) -> tuple[torch.Tensor | None, list[float]]:
        """Phase ids (rows, frames) of a beat-conditioned semantic stage and each row's BPM
        (``texts``: each row's first prompt); (None, []) for a stage without beats."""
        if not sem.layout.beats:
            if bpm is not None:
                raise ValueError(
                    f"{self.spec.path}: a tempo was given but the semantic stage was not trained "
                    "with a beat clock (beats: true)"
                )
            return None, []
        import numpy as np

        spec = sem.layout.spec.beat_spec
        rows = len(texts)
        if continue_audio is not None:
            import torchaudio.functional as AF

            from musiclm.tokenizers.beats import BeatTracker

            wav, rate = continue_audio
            tok = self.semantic_tokenizer
            wav = AF.resample(wav.reshape(-1).float(), rate, tok.sample_rate).numpy()
            tracker = BeatTracker(spec, sample_rate=tok.sample_rate, frame_rate=sem.rate)
            found = tracker.index(wav, frames)
            if found is not None:
                ids = torch.from_numpy(spec.phase_ids(found[0]))
                return ids.expand(rows, -1).to(self.device), [found[1]] * rows
        if bpm is not None:
            bpms = [float(b) for b in bpm] if isinstance(bpm, list) else [float(bpm)] * rows
            if min(bpms) <= 0:
                raise ValueError(f"tempo must be positive, got {min(bpms)} BPM")
        elif sem.tempo is not None and self.spec.mulan is not None:
            # the most likely tempo: the clock is the rhythm's backbone, not a place for noise
            emb = self.conditioner.embed_text(texts).to(self.device).float()
            bins = sem.tempo(emb).argmax(-1).tolist()
            bpms = [spec.bin_bpm(b) for b in bins]
        else:
            raise ValueError(
                f"{self.spec.path}: the semantic stage follows a beat clock but there is no "
                "MuLan to predict its tempo from the text: give a tempo (`musiclm generate "
                "--bpm`)"
            )
        ids = np.stack([spec.clock(b, frames, sem.rate) for b in bpms])
        return torch.from_numpy(ids).to(self.device), bpms

    def _run(self, stage: LoadedStage, prompt_fn, total: int, existing, batch: int, gen):
        return sliding_generate(
            stage.net,
            layout=stage.layout,
            conditioning=prompt_fn,
            total_frames=total,
            context_frames=stage.frames(stage.context_seconds),
            prefix_frames=stage.frames(stage.prefix_seconds) if stage.prefix_seconds else 0,
            sampling=stage.sampling,
            generator=gen,
            existing=existing,
            batch=batch,
        )

    def _melody_windows(
        self, clip: tuple[torch.Tensor, int] | None, seconds: float, batch: int
    ) -> torch.Tensor | None:
        """Melody window tokens (batch, W_T, L) of the clip fitted to ``seconds``."""
        if not self.uses_melody:
            if clip is not None:
                raise ValueError(
                    f"{self.spec.path}: a melody was given but no stage was trained with "
                    "melody conditioning (melody: true)"
                )
            return None
        if clip is None:
            raise ValueError(
                f"{self.spec.path}: the stages were trained with melody conditioning: give a "
                "melody clip (`musiclm generate ... --melody CLIP`)"
            )
        from musiclm.conditioning.melody_tokens import clip_window_tokens

        tokens = clip_window_tokens(self.melody_conditioner, clip[0], clip[1], seconds)
        return tokens.to(self.device).expand(batch, -1, -1)

    def _prompt_codes(
        self, clip: tuple[torch.Tensor, int] | None, batch: int
    ) -> tuple[dict[str, torch.Tensor], float]:
        """Tokens of an audio prompt, repeated for every row: S (B,1,F), coarse/fine (B,L,F)."""
        if clip is None:
            return {}, 0.0
        import torchaudio.functional as AF

        wav, rate = clip
        wav = wav.reshape(1, 1, -1).float()
        sem, codec = self.semantic_tokenizer, self.codec
        s = sem.tokenize(AF.resample(wav, rate, sem.sample_rate))  # (1, F_s)
        a = codec.encode(AF.resample(wav, rate, codec.sample_rate))  # (1, Q, F_a)
        seconds = wav.shape[-1] / rate
        coarse = self.stages[COARSE]
        n_s = min(s.shape[-1], self.stages[SEMANTIC].frames(seconds))
        n_a = min(a.shape[-1], coarse.frames(seconds))
        levels = coarse.layout.coarse_levels
        out = {
            "semantic": s[:, None, :n_s].expand(batch, -1, -1).to(self.device),
            "coarse": a[:, :levels, :n_a].expand(batch, -1, -1).to(self.device),
        }
        if FINE in self.stages:
            hi = levels + self.stages[FINE].layout.num_fine
            out["fine"] = a[:, levels:hi, :n_a].expand(batch, -1, -1).to(self.device)
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
