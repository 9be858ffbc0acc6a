"""How a token batch becomes the delay stage's sequence: one LM position per step, all codec
levels of a step summed at its input and predicted together (MusicGen).

| positions      | input ids, summed per position (``C`` columns, ``-1``: nothing)          |
|----------------|--------------------------------------------------------------------------|
| prefix ``P``   | ``[BOS]``, then the MuLan tokens M (one per position)                    |
| steps ``S``    | the ``Q`` codec levels of the step (level ``q`` of frame ``s - q`` with  |
|                | the ``delay`` pattern; a special id where that frame does not exist)     |
| + every input  | with ``semantic``: the semantic token under the frame whose level 0 it   |
|                | predicts (frame-aligned, like the coarse stage's ``frame_conditioning``) |
|                | and with ``beat``: the beat clock's phase id under that frame            |

Column 0 is the position's token (``TokenLM``'s ``tokens``), the other columns its
``frame_ids``: the one token LM, its one forward and its cached pass serve this stage too.
The output head has ``Q * K`` ids: ``Q`` heads of ``K``, so input ``P - 1 + s`` gives the
logits of every level of step ``s``. Labels ``(B, S, Q)`` are ``IGNORE`` at special slots
and padding. A crop (or a generation window) starts the pattern afresh, so training and
decoding see the same sequences.

Input vocabulary: ``PAD, BOS, NULL``, the conditioning streams in list order (the MuLan
levels, the semantic vocabulary, the beat phases), then ``K + 1`` ids per codec level (its
codes and its special id).

The conditioning is the cascade's ``conditioning`` list vocabulary
(``musiclm.conditioning.stream``), as far as this stage can fuse a stream: ``mulan`` as
``prefix``, ``semantic`` and ``beat`` as ``frame_sum`` on the targets' clock (summed at each
step, not in the prompt; the beat clock tells the stage where the beats fall, which the
semantic tokens alone convey only loosely: docs/decisions/delay-stage.md). Without a list it
follows from the ``semantic`` switch and the shards (MuLan when they carry it), so older
configs and checkpoints rebuild the same vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, NamedTuple

import torch

from musiclm.conditioning.registry import build_stream
from musiclm.conditioning.stream import (
    FRAME_SUM,
    PREFIX,
    ConditioningStream,
    Fuse,
    parse_conditioning,
)
from musiclm.datamodules.token_spec import TokenSpec
from musiclm.stage_names import DELAY
from musiclm.stages.interleaving import Interleaving, get_interleaving
from musiclm.stages.token_layout import BOS, IGNORE, NULL, NUM_SPECIAL, PAD


class DelaySequence(NamedTuple):
    ids: torch.Tensor  # (B, P + S, C) input ids summed per position, -1: nothing
    labels: torch.Tensor  # (B, S, Q) target codes, IGNORE at special slots and padding
    prefix_len: int  # P: input P - 1 + s predicts step s


class DelayPrompt(NamedTuple):
    """What a delay window starts from: ``[BOS] + M`` ids, its semantic tokens and its beat
    clock phases, one per step."""

    prefix: torch.Tensor  # (B, P)
    semantic: torch.Tensor | None  # (B, S) the semantic token of each step, or None
    beat: torch.Tensor | None = None  # (B, S) the beat phase id of each step, or None


# how this stage fuses each stream it can read: MuLan tokens in the prompt, the semantic
# tokens and the beat clock summed at each step's input (on the targets' clock, not in the
# prompt)
DELAY_FUSES = {
    "mulan": Fuse("mulan"),
    "semantic": Fuse("semantic", (FRAME_SUM,)),
    "beat": Fuse("beat", (FRAME_SUM,)),
}
# the streams summed at each step, in the order of their input columns after the levels
STEP_STREAMS = ("semantic", "beat")


@dataclass(frozen=True)
class DelayLayout:
    """The delay stage's sequence layout over a ``TokenSpec``.

    ``conditioning``: ``mulan`` (fuse ``prefix``), ``semantic`` and ``beat`` (fuse
    ``frame_sum``); None: MuLan when the shards carry it, semantic with ``semantic`` (a
    read-only view of the list when one is given).
    """

    spec: TokenSpec
    levels: int | None = None  # codec levels modelled (None: all of the codec's)
    interleaving: str = "delay"  # a grouped pattern: ``delay`` or ``parallel``
    semantic: bool | None = None  # condition on the semantic tokens (None: true without a list)
    guide_semantic: bool = False  # guidance drops the semantic tokens with the MuLan tokens
    stage: str = DELAY
    conditioning: tuple[Fuse, ...] | None = None  # None: from ``semantic`` and the shards

    def __post_init__(self) -> None:
        if not get_interleaving(self.interleaving).grouped:
            raise ValueError(
                f"interleaving {self.interleaving!r} puts one token per position; the delay "
                "stage needs a grouped pattern (delay, parallel)"
            )
        q = self.spec.num_quantizers
        if not 1 <= self.num_levels <= q:
            raise ValueError(f"levels={self.levels} not in 1..{q} codec levels")
        fuses = self._fuses_of(self.conditioning)
        if self.conditioning is not None:
            object.__setattr__(self, "conditioning", fuses)
        reads_semantic = any(f.stream == "semantic" for f in fuses)
        if self.semantic is not None and self.semantic != reads_semantic:
            raise ValueError(
                f"delay stage: semantic={self.semantic} disagrees with its conditioning list; "
                "set the list only"
            )
        object.__setattr__(self, "semantic", reads_semantic)
        if self.semantic and not self.spec.semantic_vocab:
            raise ValueError("semantic: true but the token shards carry no semantic tokens")
        streams = tuple(build_stream(f.stream, self.spec) for f in fuses)
        for stream in streams:
            try:
                stream.check(self.spec)
            except ValueError as exc:
                raise ValueError(f"delay stage: {exc}") from None
        object.__setattr__(self, "_fuses", fuses)
        object.__setattr__(self, "_cond", streams)

    def _fuses_of(self, entries: Any) -> tuple[Fuse, ...]:
        """The stage's ``Fuse`` entries: the given list checked against what this stage can
        fuse, or the one that ``semantic`` and the shards describe."""
        if entries is None:
            names = ["mulan"] * ("mulan" in self.spec.streams)
            names += ["semantic"] * (self.semantic is not False)
            return tuple(DELAY_FUSES[n] for n in names)
        out = []
        for fuse in parse_conditioning(entries):
            want = DELAY_FUSES.get(fuse.stream)
            # a parsed entry always has ``prefix``: ``fuse: frame_sum`` reads as (prefix, frame_sum)
            if want is None or set(fuse.modes) - {PREFIX} != set(want.modes) - {PREFIX}:
                raise ValueError(
                    f"delay stage conditioning {fuse.to_dict()}: the delay stage fuses "
                    "{stream: mulan, fuse: prefix}, {stream: semantic, fuse: frame_sum} and "
                    "{stream: beat, fuse: frame_sum}"
                )
            if fuse.stream == "mulan" and fuse.guided is False:
                raise ValueError(
                    "delay stage conditioning {stream: mulan, guided: false}: guidance always "
                    "drops the MuLan tokens; leave guided out"
                )
            out.append(replace(want, guided=fuse.guided))
        return tuple(out)

    # --- what the stage reads and makes ---------------------------------------------------

    melody = False  # read by generation's request streams, as for the cascade's layouts

    @property
    def beats(self) -> bool:
        """Whether each step also sums the beat clock's phase id."""
        return any(s.name == "beat" for s in self._cond)

    @property
    def pattern(self) -> Interleaving:
        return get_interleaving(self.interleaving)

    @property
    def num_levels(self) -> int:
        return self.levels if self.levels is not None else self.spec.num_quantizers

    @property
    def fuses(self) -> tuple[Fuse, ...]:
        """How the stage fuses each conditioning stream, in vocabulary order."""
        return self._fuses

    @property
    def conditioning_streams(self) -> tuple[ConditioningStream, ...]:
        return self._cond

    @property
    def uses_mulan(self) -> bool:
        return any(s.name == "mulan" for s in self._cond)

    @property
    def target_rate(self) -> float:
        return self.spec.acoustic_rate

    @property
    def target_level_count(self) -> int:
        return self.num_levels

    @property
    def target_level_size(self) -> int:
        return self.spec.codebook_size

    @property
    def acoustic_span(self) -> tuple[int, int]:
        """Codec levels ``0 .. Q - 1``: the stage makes every level it models."""
        return 0, self.num_levels

    @property
    def num_targets(self) -> int:
        return self.num_levels * self.spec.codebook_size

    @property
    def special(self) -> int:
        """The code of a slot whose frame is before the start or after the end."""
        return self.spec.codebook_size

    # --- vocabulary -----------------------------------------------------------------------

    def offsets(self) -> dict[str, int]:
        """First input id of each conditioning stream, then of the codec levels (``acoustic``)."""
        out, at = {}, NUM_SPECIAL
        for stream in self._cond:
            out[stream.name] = at
            at += stream.levels * stream.codebook
        return out | {"acoustic": at}

    @property
    def mulan_offset(self) -> int:
        return self.offsets().get("mulan", NUM_SPECIAL)

    @property
    def semantic_offset(self) -> int:
        offsets = self.offsets()
        return offsets.get("semantic", offsets["acoustic"])

    @property
    def acoustic_offset(self) -> int:
        return self.offsets()["acoustic"]

    @property
    def num_tokens(self) -> int:
        return self.acoustic_offset + self.num_levels * (self.spec.codebook_size + 1)

    @property
    def step_streams(self) -> tuple[str, ...]:
        """The streams summed at each step (``semantic``, ``beat``), in column order."""
        names = {s.name for s in self._cond}
        return tuple(n for n in STEP_STREAMS if n in names)

    @property
    def columns(self) -> int:
        """Ids summed at each input: the ``Q`` levels, then one per step stream."""
        return self.num_levels + len(self.step_streams)

    def column(self, stream: str) -> int:
        """The input column of a step stream."""
        return self.num_levels + self.step_streams.index(stream)

    # --- streams -> ids -------------------------------------------------------------------

    def prefix(self, streams: dict[str, torch.Tensor]) -> torch.Tensor:
        """``[BOS] + M`` input ids ``(B, P)``."""
        parts = []
        if self.uses_mulan:
            mulan = streams["mulan"].long()
            levels = torch.arange(mulan.shape[1], device=mulan.device)
            codebook = self.spec.streams["mulan"].codebook
            parts.append(mulan + self.mulan_offset + levels * codebook)
        like = parts[0] if parts else next(v for v in streams.values() if torch.is_tensor(v))
        bos = torch.full((like.shape[0], 1), BOS, dtype=torch.long, device=like.device)
        return torch.cat([bos, *parts], dim=1)

    def target_codes(self, streams: dict[str, torch.Tensor]) -> torch.Tensor:
        """Codes ``(B, Q, F)`` of the modelled levels in a sample's arrays."""
        acoustic = streams["acoustic"].long()
        if acoustic.shape[1] < self.num_levels:
            raise ValueError(
                f"delay stage models {self.num_levels} codec levels, batch has {acoustic.shape[1]}"
            )
        return acoustic[:, : self.num_levels]

    def step_ids(self, steps: torch.Tensor) -> torch.Tensor:
        """Step codes ``(B, S, Q)`` (``special`` allowed, ``-1`` padding) -> input ids."""
        size = self.spec.codebook_size + 1
        levels = torch.arange(steps.shape[-1], device=steps.device)
        return torch.where(steps < 0, -1, steps + self.acoustic_offset + levels * size)

    def steps(self, codes: torch.Tensor, fill: int) -> torch.Tensor:
        """Codes ``(B, Q, F)`` -> step-major ``(B, S, Q)`` through the pattern."""
        seq = self.pattern.interleave(codes, fill=fill)
        return seq.view(codes.shape[0], -1, codes.shape[1])

    def step_semantic(self, semantic: torch.Tensor, steps: int, first: int = 0) -> torch.Tensor:
        """``(B, steps)``: for step ``s``, the semantic token (or beat phase: the clock runs
        at the semantic rate) under frame ``first + s`` (the frame whose level 0 the step
        holds; the last token past the end of ``semantic``, whose frame 0 lies under codec
        frame 0)."""
        ratio = self.spec.semantic_rate / self.spec.acoustic_rate
        frames = torch.arange(first, first + steps, device=semantic.device, dtype=torch.float64)
        at = torch.floor(frames * ratio).long().clamp_max(semantic.shape[1] - 1)
        return semantic.long()[:, at]

    def inputs(
        self,
        prefix: torch.Tensor,
        semantic: torch.Tensor | None,
        steps: int,
        beat: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Input ids ``(B, P + steps, C)`` with the prefix and the step streams' columns (from
        ``step_semantic``) filled and every step slot empty (``-1``)."""
        b, p = prefix.shape
        ids = prefix.new_full((b, p + steps, self.columns), -1)
        ids[:, :p, 0] = prefix
        offsets = self.offsets()
        for name, values in zip(STEP_STREAMS, (semantic, beat), strict=True):
            if name not in self.step_streams:
                continue
            if values is None:
                raise ValueError(f"the delay stage is conditioned on the {name} stream; none given")
            # input P - 1 + s predicts step s: it carries the stream's id of step s (-1: none,
            # e.g. a clip whose beat was not found)
            tokens = values[:, :steps].long()
            ids[:, p - 1 : p - 1 + steps, self.column(name)] = torch.where(
                tokens < 0, -1, tokens + offsets[name]
            )
        return ids

    def sequence(self, streams: dict[str, torch.Tensor]) -> DelaySequence:
        """Whole training sequence and the labels of every step."""
        codes = self.target_codes(streams)  # (B, Q, F), -1 padding
        prefix = self.prefix(streams)
        steps = self.steps(codes, fill=self.special)  # (B, S, Q)
        semantic, beat = self._step_streams(streams, steps.shape[1])
        ids = self.inputs(prefix, semantic, steps.shape[1], beat)
        step_ids = self.step_ids(steps)
        step_ids[..., 0] = torch.where(step_ids[..., 0] < 0, PAD, step_ids[..., 0])
        ids[:, prefix.shape[1] :, : self.num_levels] = step_ids
        labels = self.steps(codes, fill=IGNORE)
        labels = torch.where(labels < 0, IGNORE, labels)
        return DelaySequence(ids, labels, prefix.shape[1])

    def drop_conditioning(self, ids: torch.Tensor, drop: torch.Tensor) -> torch.Tensor:
        """MuLan ids of rows ``drop`` -> NULL (a copy), for classifier-free guidance; the
        step streams (semantic tokens, beat clock) stay, as the coarse stage keeps its
        semantic prefix, unless guided (their entry's ``guided``, else ``guide_semantic``):
        then they go too, so that guidance pushes toward following them."""
        if not self.uses_mulan:
            return ids
        out = ids.clone()
        span = slice(1, 1 + self.spec.streams["mulan"].levels)
        out[:, span, 0] = torch.where(drop.view(-1, 1), NULL, ids[:, span, 0])
        for fuse in self._fuses:
            guided = self.guide_semantic if fuse.guided is None else fuse.guided
            if fuse.stream in STEP_STREAMS and guided:
                col = self.column(fuse.stream)
                out[..., col] = torch.where(drop.view(-1, 1), -1, ids[..., col])
        return out

    def prompt(self, streams: dict[str, torch.Tensor], steps: int) -> DelayPrompt:
        """The start of a window of ``steps`` steps from a crop's streams (semantic tokens
        and beat clock on their own grid, from the crop's first frame, as in training)."""
        return DelayPrompt(self.prefix(streams), *self._step_streams(streams, steps))

    def _step_streams(
        self, streams: dict[str, torch.Tensor], steps: int
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """A crop's semantic tokens and beat phases, one per step (None: not read)."""
        out = []
        for name in STEP_STREAMS:
            values = streams.get(name) if name in self.step_streams else None
            out.append(None if values is None else self.step_semantic(values, steps))
        return out[0], out[1]

    @classmethod
    def from_hparams(cls, spec: TokenSpec, hp: Any) -> DelayLayout:
        """The layout a delay stage's hyper-parameters (or a checkpoint's) describe: their
        ``conditioning`` list, or without one their ``semantic`` switch."""
        listed = hp.get("conditioning")
        return cls(
            spec=spec,
            levels=hp.get("levels"),
            interleaving=hp.get("interleaving", "delay"),
            semantic=hp.get("semantic", True) if listed is None else None,
            guide_semantic=hp.get("guide_semantic", False),
            conditioning=listed,
        )

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["spec"] = self.spec.to_dict()
        if self.conditioning is not None:
            out["conditioning"] = [f.to_dict() for f in self.conditioning]
        return out


def delay_logits(net: Any, layout: DelayLayout, ids: torch.Tensor, prefix_len: int) -> torch.Tensor:
    """Teacher-forced logits ``(B, S, Q, K)`` of every step of a whole sequence ``ids``
    ``(B, P + S, C)``: input ``P - 1 + s`` predicts step ``s``, the last input nothing."""
    inputs = ids[:, :-1]
    extra = inputs[..., 1:] if inputs.shape[-1] > 1 else None
    logits = net(inputs[..., 0], start=prefix_len - 1, frame_ids=extra)
    b, s, _ = logits.shape
    return logits.view(b, s, layout.num_levels, layout.spec.codebook_size)
