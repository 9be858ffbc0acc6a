"""What a conditioning stream is: the ``ConditioningStream`` protocol, and how a stage fuses
each of its streams (``Fuse``), parsed from a stage's ``conditioning`` list.

A stream is built for one token spec (``cls(spec, coarse_levels=...)``) and says:

- ``name``, ``levels`` and ``codebook`` (ids per level): its share of the LM's input vocabulary;
  ``frames``: an untimed stream's frames in the prompt (MuLan 1, melody its windows);
- ``rate``: frames per second of a *timed* stream (one on the targets' clock: the beat clock,
  upstream semantic or coarse tokens), ``None`` for an untimed one (MuLan tokens, melody
  windows, a genre), which sits before the timed stream in the prompt;
- ``guided``: whether classifier-free guidance drops it with the text (NULL ids);
- ``manifest_section``: the token manifest's section that declares it and its sizes, read
  back as ``spec.streams[manifest_section]`` (None: none);
- ``check(spec)``: refuse shards that do not carry it, saying how to make them;
- ``codes(batch)``: its raw codes ``(B, L, F)`` in a training batch or a generation window
  (a ``ValueError`` continues the sentence "<stage> stage ...": "expects ...", "needs ...");
- ``read(sample, where, crop)``: its arrays in a shard sample, cropped to the window (the
  datamodule calls it for streams it does not read from the manifest itself);
- ``window_codes(window)``: its batch entries for one generation window.

A stream that makes something once per generation request, before any stage runs (MuLan
tokens of each prompt text, melody windows of the clip, the beat clock at the request's
tempo), also has ``prepare(request, auxiliary)`` (``musiclm.conditioning.request``): the
pipeline asks each stream its stages read, once per request, and its windows read the result
back.

How a stage fuses a stream is config (``Fuse``), so the layout never branches on a stream's
name: ``prefix`` (its ids in the prompt), ``frame_sum`` (also embedded and added to the
input predicting each target: a timed stream's ids of that target's frame, an untimed
stream's ids at every target) and ``aligned`` (a timed stream's prompt ids get rotary
positions on the targets' clock).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from musiclm.datamodules.tokens import Crop

PREFIX, FRAME_SUM, ALIGNED = "prefix", "frame_sum", "aligned"
FUSE_MODES = (PREFIX, FRAME_SUM, ALIGNED)


@dataclass(frozen=True)
class RequestWindow:
    """One generation window, as a stream sees it.

    ``request``: the request's conditioning (``rows``: each row's prompt schedule,
    ``prepared``: what the streams prepared for it by entry name, ``device``); ``made``:
    streams made by the stages before this one (semantic tokens, coarse levels); the window
    covers target frames ``f0 .. f1-1`` at ``rate`` Hz and its new frames begin at
    ``new_seconds``.
    """

    request: Any
    made: Mapping[str, torch.Tensor]
    f0: int
    f1: int
    rate: float
    new_seconds: float

    @property
    def start_seconds(self) -> float:
        return self.f0 / self.rate

    def texts(self) -> list[str]:
        """Each row's prompt text at the window's new frames."""
        t = self.new_seconds
        return [
            next(text for start, text in reversed(rows) if start <= t + 1e-9)
            for rows in self.request.rows
        ]


@runtime_checkable
class ConditioningStream(Protocol):
    """One conditioning stream of a token-LM stage (see the module docstring)."""

    name: str
    levels: int
    codebook: int
    frames: int
    rate: float | None
    guided: bool
    manifest_section: str | None

    def check(self, spec: Any) -> None: ...

    def codes(self, batch: Mapping[str, Any]) -> torch.Tensor: ...

    def read(self, sample: dict, where: str, crop: Crop) -> dict[str, np.ndarray]: ...

    def window_codes(self, window: RequestWindow) -> dict[str, torch.Tensor]: ...


@dataclass(frozen=True)
class Fuse:
    """How one stage uses one stream: ``{stream: NAME, fuse: MODE or [MODES], guided: BOOL}``.

    ``guided``: whether conditioning dropout and classifier-free guidance drop the stream with
    the text (None: the stream's own default, e.g. MuLan yes, the beat clock no). A guided
    timed stream (the semantic stage's beat clock) makes guidance push toward following it,
    as the delay stage's ``guide_semantic`` does for its semantic tokens.
    """

    stream: str
    modes: tuple[str, ...] = (PREFIX,)
    guided: bool | None = None

    def __post_init__(self) -> None:
        unknown = sorted(set(self.modes) - set(FUSE_MODES))
        if unknown:
            raise ValueError(
                f"conditioning stream {self.stream!r}: unknown fuse mode(s) {unknown}; "
                f"modes: {', '.join(FUSE_MODES)}"
            )

    @property
    def frame_sum(self) -> bool:
        return FRAME_SUM in self.modes

    @property
    def aligned(self) -> bool:
        return ALIGNED in self.modes

    @classmethod
    def parse(cls, entry: Any) -> Fuse:
        """A config entry (``"mulan"``, ``{stream: beat, fuse: frame_sum}``, a ``Fuse``)."""
        if isinstance(entry, Fuse):
            return entry
        if isinstance(entry, str):
            return cls(entry)
        if not isinstance(entry, Mapping) or "stream" not in entry:
            raise ValueError(f"conditioning entry {entry!r} is not {{stream: NAME, fuse: MODE}}")
        extra = sorted(set(entry) - {"stream", "fuse", "guided"})
        if extra:
            raise ValueError(f"conditioning entry {dict(entry)} has unknown key(s) {extra}")
        fuse = entry.get("fuse", PREFIX)
        modes = [fuse] if isinstance(fuse, str) else list(fuse)
        # every fused stream is in the prompt: frame sums and aligned positions read it there
        ordered = tuple(m for m in FUSE_MODES if m == PREFIX or m in modes)
        guided = entry.get("guided")
        if guided is not None and not isinstance(guided, bool):
            raise ValueError(f"conditioning entry {dict(entry)}: guided must be true or false")
        out = cls(str(entry["stream"]), ordered, guided)
        if set(modes) - set(FUSE_MODES):
            cls(out.stream, tuple(modes))  # raises naming the unknown mode
        return out

    def to_dict(self) -> dict[str, Any]:
        modes = [m for m in self.modes if m != PREFIX]
        out: dict[str, Any] = {"stream": self.stream, "fuse": modes or PREFIX}
        if self.guided is not None:
            out["guided"] = self.guided
        return out


def parse_conditioning(entries: Sequence[Any]) -> tuple[Fuse, ...]:
    """A stage's ``conditioning`` list -> ``Fuse`` entries (a stream named twice is an error)."""
    out = tuple(Fuse.parse(e) for e in entries)
    names = [f.stream for f in out]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"conditioning names stream(s) {twice} more than once")
    return out
