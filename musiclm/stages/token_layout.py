"""How token streams become one LM sequence for each stage, and back.

Every stage trains the same ``TokenLM`` on ``[BOS] + conditioning prefix + targets``:

| stage    | conditioning prefix                         | targets                          |
|----------|---------------------------------------------|----------------------------------|
| semantic | MuLan tokens M (``Q_m``) [+ melody] [+ B]   | semantic tokens S (``F_s``)      |
| coarse   | M [+ melody], then S (``F_s``)              | codec levels ``0..Q_c-1``        |
| fine     | coarse levels (``F_a * Q_c``); M if asked   | codec levels ``Q_c..Q_c+Q_f-1``  |

Acoustic levels are interleaved by the layout's named pattern (``musiclm.stages.interleaving``;
default ``flatten``: frame by frame, ``f0q0 f0q1 .. f1q0 ..``). The conditioning is the
stage's ``conditioning`` list: stream objects by name (``musiclm.conditioning``: MuLan tokens,
melody windows, the beat clock, upstream semantic / coarse tokens, or a plugin's stream) and
how each is fused (``prefix``, ``frame_sum``, ``aligned``); building a sequence never
branches on a conditioning stream's name. Untimed streams (M, melody) come first in the
prompt, then at most one timed stream (B, S or coarse levels) on its own clock. Older
configs and checkpoints give switches instead (``melody``, ``beats``,
``frame_conditioning``, ``aligned_positions``, ``fine_sees_mulan``), translated by
``musiclm.conditioning.legacy``; there M is left out when the shards carry none.

Ids: one unified *input* vocabulary where each stream level owns a disjoint range
(``PAD=0, BOS=1, NULL=2`` first, then the streams in list order, the target stream last),
and a smaller *target* vocabulary (``level * K + code``) that the output head covers.

API used by training and generation (kept stable):

- ``TokenSpec.from_manifest(manifest)`` (``musiclm.datamodules.token_spec``): sizes, rates,
  fingerprints from a token manifest;
- ``TokenLayout(stage=, spec=, coarse_levels=, fine_levels=, conditioning=)``;
  ``num_tokens`` / ``num_targets`` size the network;
- ``layout.sequence(streams)`` -> ``LMSequence(tokens, labels, prefix_len)`` from raw
  streams ``{"mulan": (B, Q_m), "semantic": (B, F_s), "acoustic": (B, Q, F_a)}``
  (``-1`` marks padding: input PAD, label ``IGNORE``);
- ``layout.prefix(streams)``: ``[BOS] + conditioning`` ids only (the generation prompt);
- ``layout.drop_conditioning(tokens, drop)``: ids of the guided streams (MuLan, melody) of
  rows ``drop`` -> NULL (CFG);
- ``layout.positions(prefix_len, length)``: rotary positions (one clock for the timed
  conditioning and the targets with ``aligned_positions``);
- ``layout.frame_ids(tokens, cond_len)``: the ids of the ``frame_sum`` streams at each
  target's own frame (an untimed stream's at every target), to be embedded and added to the
  input that predicts it (``(B, N, C)``, ``-1`` elsewhere; None without such a stream);
- ``layout.target_levels(n, offset)``: level of each target position;
- ``layout.allowed_targets(n, offset)``: bool ``(n, num_targets)``, which ids each target
  position may take (sampling masks the rest);
- ``layout.target_to_input(ids)``: sampled target ids -> input ids to feed back;
- ``layout.targets_to_codes(ids)``: flat target ids -> raw codes ``(B, F_s)`` or
  ``(B, Q_t, F)``; ``layout.codes_to_targets(codes)`` is the inverse.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import torch

from musiclm.conditioning.legacy import legacy_conditioning
from musiclm.conditioning.registry import build_stream
from musiclm.conditioning.stream import ConditioningStream, Fuse, parse_conditioning
from musiclm.datamodules.token_spec import TokenSpec
from musiclm.stage_names import COARSE, FINE, LM_STAGES, SEMANTIC
from musiclm.stages.interleaving import Flatten, Interleaving, get_interleaving

PAD, BOS, NULL = 0, 1, 2
NUM_SPECIAL = 3
IGNORE = -100
_FRAME_MAJOR = Flatten()


class LMSequence(NamedTuple):
    tokens: torch.Tensor  # (B, N) input ids, BOS + prefix + targets
    labels: torch.Tensor  # (B, T) target ids of the last T positions, IGNORE at padding
    prefix_len: int  # P = N - T; logits of positions P-1 .. N-2 predict the labels


@dataclass(frozen=True)
class TokenLayout:
    """One stage's sequence layout over a ``TokenSpec``.

    ``conditioning`` lists the streams the stage reads and how it fuses each
    (``musiclm.conditioning.stream.Fuse``), untimed streams first, at most one timed stream
    last. Without it the list follows from the switches of older configs and checkpoints
    (``fine_sees_mulan``, ``melody``, ``beats``, ``frame_conditioning``,
    ``aligned_positions``); with it those switches are read-only views of the list.
    """

    stage: Literal["semantic", "coarse", "fine"]
    spec: TokenSpec
    coarse_levels: int = 4
    fine_levels: int | None = None  # None: every codec level above the coarse ones
    fine_sees_mulan: bool = False  # AudioLM/MusicLM: the fine stage sees coarse tokens only
    melody: bool = False  # melody tokens beside M (semantic and coarse stages)
    aligned_positions: bool = False  # rotary positions on one clock for S/coarse and targets
    frame_conditioning: bool = False  # each target's input also embeds its frame's S/coarse
    # (semantic stage: its beat clock id with ``beats``, else the MuLan tokens)
    beats: bool = False  # semantic stage: conditioned on the beat clock B
    interleaving: str = "flatten"  # how levels share the sequence (``stages.interleaving``)
    conditioning: tuple[Fuse, ...] | None = None  # None: from the switches above

    def __post_init__(self) -> None:
        if get_interleaving(self.interleaving).grouped:  # an unknown name lists the known ones
            raise ValueError(
                f"interleaving {self.interleaving!r} predicts a step's levels together: it is "
                "the delay stage's, not a one-token-per-position stage's"
            )
        if self.stage not in LM_STAGES:
            raise ValueError(f"unknown stage {self.stage!r}; stages: {', '.join(LM_STAGES)}")
        if self.conditioning is None:
            fuses = legacy_conditioning(
                self.stage,
                self.spec,
                fine_sees_mulan=self.fine_sees_mulan,
                melody=self.melody,
                beats=self.beats,
                frame_conditioning=self.frame_conditioning,
                aligned_positions=self.aligned_positions,
            )
        else:
            fuses = parse_conditioning(self.conditioning)
            object.__setattr__(self, "conditioning", fuses)
        q = self.spec.num_quantizers
        if self.stage != SEMANTIC and not 1 <= self.coarse_levels <= q:
            raise ValueError(f"coarse_levels={self.coarse_levels} not in 1..{q} codec levels")
        if self.stage == FINE and not 1 <= self.num_fine <= q - self.coarse_levels:
            raise ValueError(
                f"fine stage needs 1..{q - self.coarse_levels} levels above coarse_levels="
                f"{self.coarse_levels} (codec has {q}), got {self.num_fine}"
            )
        streams = tuple(
            build_stream(f.stream, self.spec, coarse_levels=self.coarse_levels) for f in fuses
        )
        object.__setattr__(self, "_fuses", fuses)
        object.__setattr__(self, "_cond", streams)
        self._check_conditioning()

    def _check_conditioning(self) -> None:
        fuses, streams = self._fuses, self._cond
        for stream in streams:
            if stream.name == self.target_stream:
                raise ValueError(f"{self.stage} stage cannot be conditioned on its own targets")
            try:
                stream.check(self.spec)
            except ValueError as exc:
                raise ValueError(f"{self.stage} stage: {exc}") from None
        timed = [i for i, s in enumerate(streams) if s.rate is not None]
        if len(timed) > 1 or (timed and timed[0] != len(streams) - 1):
            raise ValueError(
                f"{self.stage} stage conditioning {[s.name for s in streams]}: at most one timed "
                "stream, listed after the untimed ones"
            )
        for fuse, stream in zip(fuses, streams, strict=True):
            if fuse.aligned and stream.rate is None:
                raise ValueError(f"fuse 'aligned' is for a timed stream; {stream.name} has no time")
        if self.conditioning is None:
            return
        derived = {
            "fine_sees_mulan": self.stage == FINE and self.uses_mulan,
            "melody": any(s.name == "melody" for s in streams),
            "beats": any(s.name == "beat" for s in streams),
            "frame_conditioning": any(f.frame_sum for f in fuses),
            "aligned_positions": any(f.aligned for f in fuses),
        }
        for key, value in derived.items():
            if getattr(self, key) not in (False, value):
                raise ValueError(
                    f"{self.stage} stage: {key}={getattr(self, key)} disagrees with its "
                    "conditioning list; set the list only"
                )
            object.__setattr__(self, key, value)

    @property
    def fuses(self) -> tuple[Fuse, ...]:
        """How the stage fuses each conditioning stream, in vocabulary and prompt order."""
        return self._fuses

    @property
    def conditioning_streams(self) -> tuple[ConditioningStream, ...]:
        return self._cond

    @property
    def pattern(self) -> Interleaving:
        """The interleaving of codec levels (and of other multi-level streams) in the sequence."""
        return get_interleaving(self.interleaving)

    # --- vocabulary ---------------------------------------------------------------------

    @property
    def num_fine(self) -> int:
        if self.fine_levels is not None:
            return self.fine_levels
        return self.spec.num_quantizers - self.coarse_levels

    @property
    def uses_mulan(self) -> bool:
        return any(s.name == "mulan" for s in self._cond)

    def streams(self) -> list[tuple[str, int, int]]:
        """``(name, levels, size per level)`` of the input streams, target stream last."""
        out = [(s.name, s.levels, s.codebook) for s in self._cond]
        return [*out, (self.target_stream, self.target_level_count, self.target_level_size)]

    def offsets(self) -> dict[str, int]:
        """First input id of each stream."""
        out, at = {}, NUM_SPECIAL
        for name, levels, size in self.streams():
            out[name] = at
            at += levels * size
        return out

    @property
    def target_stream(self) -> str:
        return {"semantic": "semantic", "coarse": "coarse", "fine": "fine"}[self.stage]

    @property
    def target_level_count(self) -> int:
        """Levels interleaved in the target stream (1 for semantic)."""
        return {"semantic": 1, "coarse": self.coarse_levels, "fine": self.num_fine}[self.stage]

    @property
    def acoustic_span(self) -> tuple[int, int] | None:
        """Codec levels ``lo .. hi - 1`` this stage makes (None: semantic tokens)."""
        if self.stage == SEMANTIC:
            return None
        lo = 0 if self.stage == COARSE else self.coarse_levels
        return lo, lo + self.target_level_count

    @property
    def target_level_size(self) -> int:
        return self.spec.semantic_vocab if self.stage == SEMANTIC else self.spec.codebook_size

    @property
    def num_targets(self) -> int:
        return self.target_level_count * self.target_level_size

    @property
    def num_tokens(self) -> int:
        return NUM_SPECIAL + sum(levels * size for _, levels, size in self.streams())

    # --- raw streams -> ids -------------------------------------------------------------

    def _levels_to_ids(self, codes: torch.Tensor, name: str) -> torch.Tensor:
        """Raw codes ``(B, L, F)`` of stream ``name`` -> flat input ids ``(B, F * L)``."""
        size = dict((n, s) for n, _, s in self.streams())[name]
        levels = torch.arange(codes.shape[1], device=codes.device).view(1, -1, 1)
        ids = codes + self.offsets()[name] + levels * size
        ids = torch.where(codes < 0, PAD, ids)
        # the target stream follows the layout's pattern; conditioning streams are frame-major
        pattern = self.pattern if name == self.target_stream else _FRAME_MAJOR
        return pattern.interleave(ids)  # (B, N)

    def _stream(self, streams: dict[str, torch.Tensor], name: str) -> torch.Tensor:
        """Raw codes ``(B, L, F)`` of stream ``name`` picked out of the sample's arrays."""
        cond = {c.name: c for c in self._cond}
        try:
            if name in cond:
                return cond[name].codes(streams)
            if name == SEMANTIC:
                return streams["semantic"].long().unsqueeze(1)  # (B, 1, F_s)
            acoustic = streams["acoustic"].long()
        except KeyError as err:
            raise KeyError(
                f"{self.stage} stage needs stream {err.args[0]!r} in the batch"
            ) from None
        except ValueError as exc:  # a stream's message goes on from its stage's name
            raise ValueError(f"{self.stage} stage {exc}") from None
        lo, hi = self.acoustic_span or (0, 0)
        if acoustic.shape[1] < hi:
            raise ValueError(
                f"{self.stage} stage needs codec levels {lo}..{hi - 1}, batch has "
                f"{acoustic.shape[1]}"
            )
        return acoustic[:, lo:hi]

    def target_codes(self, streams: dict[str, torch.Tensor]) -> torch.Tensor:
        """Raw codes ``(B, L, F)`` of the target stream in a sample's arrays."""
        return self._stream(streams, self.target_stream)

    def prefix(self, streams: dict[str, torch.Tensor]) -> torch.Tensor:
        """``[BOS] + conditioning`` input ids ``(B, P)``: the prompt of a generation."""
        parts = [
            self._levels_to_ids(self._stream(streams, n), n) for n, _, _ in self.streams()[:-1]
        ]
        like = parts[0] if parts else _first_tensor(streams)
        bos = torch.full((like.shape[0], 1), BOS, dtype=torch.long, device=like.device)
        return torch.cat([bos, *parts], dim=1)

    def sequence(self, streams: dict[str, torch.Tensor]) -> LMSequence:
        """Whole training sequence and the labels of its target positions."""
        prefix = self.prefix(streams)
        codes = self.target_codes(streams)  # (B, L, F)
        tokens = torch.cat([prefix, self._levels_to_ids(codes, self.target_stream)], dim=1)
        return LMSequence(tokens, self.codes_to_targets(codes), prefix.shape[1])

    def drop_conditioning(
        self,
        tokens: torch.Tensor,
        drop: torch.Tensor,
        cond_len: int | None = None,
        *,
        text_only: bool = False,
    ) -> torch.Tensor:
        """Replace the ids of the guided streams (MuLan tokens, and melody, which is dropped
        with the text so that classifier-free guidance strengthens it too; any stream whose
        entry says ``guided: true``) of rows where ``drop`` is true by NULL (a copy).

        ``text_only``: drop the streams guided by default (the text's) but keep those that
        only their entry guides (``guided_streams``), for guidance composed of the two.
        ``cond_len``: length of ``[BOS] + conditioning`` in ``tokens``, needed where a timed
        stream (the beat clock) is dropped: its ids fill the prompt up to there.
        """
        spans = self._untimed_spans()
        guided = [
            spans.get(s.name)
            for f, s in zip(self._fuses, self._cond, strict=True)
            if (s.guided if f.guided is None else f.guided)
            and not (text_only and s.name in self.guided_streams)
        ]
        if not guided:
            return tokens
        out = tokens.clone()
        for span in guided:
            if span is None:  # the timed stream
                if cond_len is None:
                    raise ValueError(
                        f"{self.stage} stage guides its timed stream: drop_conditioning needs "
                        "the prompt's cond_len"
                    )
                span = slice(self.untimed_len, cond_len)
            out[:, span] = torch.where(drop.view(-1, 1), NULL, tokens[:, span])
        return out

    @property
    def guided_streams(self) -> tuple[str, ...]:
        """Streams that guidance drops only because their entry says ``guided: true`` (the
        beat clock): ``SamplingConfig.stream_cfg_scale`` guides toward them."""
        pairs = zip(self._fuses, self._cond, strict=True)
        return tuple(s.name for f, s in pairs if f.guided and not s.guided)

    # --- timed conditioning -------------------------------------------------------------

    def _untimed_spans(self) -> dict[str, slice]:
        """Prompt positions of each untimed stream (after BOS, in list order)."""
        out, at = {}, 1
        for stream in self._cond:
            if stream.rate is None:
                out[stream.name] = slice(at, at + stream.levels * stream.frames)
                at += stream.levels * stream.frames
        return out

    @property
    def untimed_len(self) -> int:
        """Tokens before the timed conditioning: BOS and the untimed streams (MuLan, melody)."""
        return 1 + sum(s.levels * s.frames for s in self._cond if s.rate is None)

    @property
    def target_rate(self) -> float:
        """Frames per second of the target stream."""
        return self.spec.semantic_rate if self.stage == SEMANTIC else self.spec.acoustic_rate

    def _timed(self) -> tuple[int, float] | None:
        """``(levels, frame rate)`` of the timed conditioning stream (the beat clock, semantic
        tokens for coarse, coarse levels for fine; None without one)."""
        for stream in self._cond:
            if stream.rate is not None:
                return stream.levels, stream.rate
        return None

    def frame_ids(self, tokens: torch.Tensor, cond_len: int) -> torch.Tensor | None:
        """Ids ``(B, N, C)`` to embed and add to the inputs of ``tokens`` (B, N), from the
        streams fused with ``frame_sum``: at the input that predicts target ``j`` (position
        ``cond_len - 1 + j``), a timed stream's tokens of target ``j``'s own frame (semantic
        token for coarse, coarse levels for fine, the beat clock), an untimed stream's tokens
        (e.g. the semantic stage's MuLan tokens); ``-1`` at the other positions and for
        padding. None without such a stream.

        ``cond_len``: length of ``[BOS] + conditioning`` (without any targets kept in a
        prompt). SoundStorm conditions this way (semantic and acoustic embeddings of a
        frame summed): each prediction reads its moment's conditioning directly instead of
        finding it by attention, which a small model on little data fails to learn.
        """
        summed = [s for f, s in zip(self._fuses, self._cond, strict=True) if f.frame_sum]
        if not summed:
            return None
        spans = self._untimed_spans()
        parts = [
            self._timed_frame_ids(tokens, cond_len)
            if stream.rate is not None
            else self._untimed_frame_ids(tokens, cond_len, spans[stream.name])
            for stream in summed
        ]
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)

    def _untimed_frame_ids(self, tokens: torch.Tensor, cond_len: int, span: slice) -> torch.Tensor:
        # the stream reaches every step directly, not only through attention to the prefix
        # (at demo scale the LM then overfits the tokens; docs/decisions/frame-conditioning.md)
        b, n = tokens.shape
        first = cond_len - 1  # the input predicting target 0
        c = span.stop - span.start
        out = torch.full((b, n, c), -1, dtype=torch.long, device=tokens.device)
        if n > first:
            out[:, first:] = tokens[:, None, span]
        return out

    def _timed_frame_ids(self, tokens: torch.Tensor, cond_len: int) -> torch.Tensor:
        b, n = tokens.shape
        first = cond_len - 1
        cond_levels, cond_rate = self._timed() or (0, 0.0)
        n_frames = (cond_len - self.untimed_len) // cond_levels
        if n_frames < 1:
            raise ValueError(
                f"{self.stage} prompt of {cond_len} tokens holds no timed conditioning after "
                f"its {self.untimed_len} untimed tokens"
            )
        out = torch.full((b, n, cond_levels), -1, dtype=torch.long, device=tokens.device)
        if n <= first:
            return out
        j = torch.arange(n - first, device=tokens.device)
        frame = j // self.target_level_count
        cond_frame = torch.floor(frame * (cond_rate / self.target_rate)).long()
        cond_frame = cond_frame.clamp_max(n_frames - 1)
        at = self.untimed_len + cond_frame.view(-1, 1) * cond_levels
        at = at + torch.arange(cond_levels, device=tokens.device)  # (n - first, C)
        ids = tokens[:, at]  # (B, n - first, C)
        out[:, first:] = torch.where(ids == PAD, -1, ids)
        return out

    # --- rotary positions ---------------------------------------------------------------

    def positions(self, prefix_len: int, length: int, device: Any = None) -> torch.Tensor:
        """Rotary position of each of the first ``length`` tokens of a sequence whose
        ``[BOS] + conditioning`` prefix has ``prefix_len`` tokens.

        Without ``aligned_positions``: ``0..length-1``. With it, the timed conditioning
        stream (semantic tokens for coarse, coarse levels for fine) is placed on the targets'
        clock: the token of time ``t`` gets the position of the first target token of time
        ``t``, so a target and the conditioning of its own moment are always at the same
        small distance, wherever the frame lies in the window (as a prefix, their distance
        would grow with the frame). BOS, MuLan and melody tokens, which have no time, come
        just before. Positions may repeat and need not follow the sequence order: attention
        stays causal by sequence order, rotary only sees the distances.
        """
        timed = self._timed()
        if not self.aligned_positions or timed is None:
            return torch.arange(length, device=device)
        cond_levels, cond_rate = timed
        untimed = self.untimed_len
        n_cond = prefix_len - untimed
        if n_cond < 0:
            raise ValueError(
                f"{self.stage} prefix of {prefix_len} tokens is shorter than its {untimed} "
                "untimed tokens"
            )
        levels = self.target_level_count
        ratio = self.target_rate / cond_rate  # target frames per conditioning frame
        i = torch.arange(n_cond, device=device)
        frame, level = i // cond_levels, i % cond_levels
        cond = untimed + torch.round(frame * ratio).long() * levels + level * levels // cond_levels
        targets = untimed + torch.arange(max(0, length - prefix_len), device=device)
        return torch.cat([torch.arange(untimed, device=device), cond, targets])[:length]

    # --- target ids <-> codes -----------------------------------------------------------

    def target_levels(self, n: int, offset: int = 0, device: Any = None) -> torch.Tensor:
        """Level (0-based within the target stream) of target positions ``offset..offset+n``."""
        return self.pattern.levels(n, offset, self.target_level_count, device)

    def allowed_targets(self, n: int, offset: int = 0, device: Any = None) -> torch.Tensor:
        """``(n, num_targets)`` bool: the ids each target position may take."""
        level = self.target_levels(n, offset, device).view(-1, 1)
        ids = torch.arange(self.num_targets, device=device).view(1, -1)
        return (ids // self.target_level_size) == level

    def target_to_input(self, ids: torch.Tensor) -> torch.Tensor:
        """Target ids (as sampled from the logits) -> input ids to append to the sequence."""
        return ids + self.offsets()[self.target_stream]

    def codes_to_targets(self, codes: torch.Tensor) -> torch.Tensor:
        """Raw codes ``(B, F)`` (semantic) or ``(B, L, F)`` -> flat target ids ``(B, F*L)``."""
        if codes.dim() == 2:
            codes = codes.unsqueeze(1)
        levels = torch.arange(codes.shape[1], device=codes.device).view(1, -1, 1)
        ids = torch.where(codes < 0, IGNORE, codes + levels * self.target_level_size)
        return self.pattern.interleave(ids)

    def targets_to_codes(self, ids: torch.Tensor) -> torch.Tensor:
        """Flat target ids ``(B, T)`` -> ``(B, F_s)`` semantic or ``(B, L, F)`` codec codes.

        ``T`` must be whole frames (a multiple of the target level count).
        """
        levels = self.target_level_count
        if ids.shape[1] % levels:
            raise ValueError(
                f"{ids.shape[1]} target tokens is not a whole number of {levels}-level frames"
            )
        codes = ids % self.target_level_size
        if self.stage == SEMANTIC:
            return codes
        return self.pattern.deinterleave(codes, levels)

    def to_dict(self) -> dict[str, Any]:
        """Plain values (for checkpoint hyper-parameters)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["spec"] = self.spec.to_dict()
        if self.conditioning is not None:
            out["conditioning"] = [f.to_dict() for f in self.conditioning]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TokenLayout:
        return cls(**{**data, "spec": TokenSpec.from_dict(data["spec"])})


def _first_tensor(streams: dict[str, torch.Tensor]) -> torch.Tensor:
    for value in streams.values():
        if isinstance(value, torch.Tensor):
            return value
    raise ValueError(f"no token tensor in the batch (keys: {sorted(streams)})")
