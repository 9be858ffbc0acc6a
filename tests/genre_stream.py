"""Test-only conditioning streams: one constant genre token per clip, and one key (its
``tonality``) per clip, sized by the token manifest's own ``tonality`` section.

In training the genre is a deterministic function of the sample's key; at generation each
prompt text's genre (its first genre word) is read once per request (``prepare``, as MuLan's
text tower reads each text) and each window takes its rows' texts' genres. It registers
itself in this process, so no package file names it: the stage's ``conditioning`` list does.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from musiclm.conditioning.registry import register_stream
from musiclm.conditioning.request import GenerationRequest
from musiclm.conditioning.stream import RequestWindow
from musiclm.datamodules.tokens import Crop

GENRES = ("rock", "jazz", "folk", "techno")


def genre_of_key(key: str) -> int:
    """``clip00005`` -> 5 % 4 = 1."""
    return int(key.removeprefix("clip")) % len(GENRES)


def genre_of_text(text: str) -> int:
    return next((i for i, g in enumerate(GENRES) if g in text.split()), 0)


@register_stream("genre")
class GenreStream:
    """One untimed token of ``len(GENRES)`` ids, dropped with the text for guidance."""

    name = "genre"
    levels, codebook, frames = 1, len(GENRES), 1
    rate = None
    guided = True
    manifest_section = None

    def __init__(self, spec: Any, *, coarse_levels: int = 4) -> None:
        self.spec = spec

    def check(self, spec: Any) -> None:
        """Every sample has a key: any shards carry this stream."""

    def codes(self, batch: Mapping[str, Any]) -> torch.Tensor:
        return batch["genre"].long().view(-1, 1, 1)  # (B, 1 level, 1 frame)

    def read(self, sample: dict, where: str, crop: Crop) -> dict[str, np.ndarray]:
        return {"genre": np.array(genre_of_key(sample["__key__"]), dtype=np.int64)}

    reads: tuple[str, ...] = ()  # none of the request's optional inputs

    def prepare(self, request: GenerationRequest, auxiliary: Any = None) -> dict[str, Any]:
        return {"genre": {text: genre_of_text(text) for text in request.texts()}}

    def window_codes(self, window: RequestWindow) -> dict[str, torch.Tensor]:
        genre = window.request.prepared["genre"]
        genres = [genre[text] for text in window.texts()]
        return {"genre": torch.tensor(genres, device=window.request.device)}


@register_stream("tonality")
class TonalityStream(GenreStream):
    """One constant key token per clip, of as many keys as the manifest's own ``tonality``
    section declares (``num_keys``): a plugin stream's sizes come from its own section, which
    no package file names."""

    name, guided, manifest_section = "tonality", False, "tonality"

    def __init__(self, spec: Any, *, coarse_levels: int = 4) -> None:
        self.spec = spec
        self.codebook = (
            int(spec.streams["tonality"].values["num_keys"]) if "tonality" in spec.streams else 0
        )

    def check(self, spec: Any) -> None:
        if "tonality" not in spec.streams:
            raise ValueError("the token shards' manifest has no 'tonality' section")

    def codes(self, batch: Mapping[str, Any]) -> torch.Tensor:
        return batch["tonality"].long().view(-1, 1, 1)  # (B, 1 level, 1 frame)

    def read(self, sample: dict, where: str, crop: Crop) -> dict[str, np.ndarray]:
        key = int(sample["__key__"].removeprefix("clip")) % self.codebook
        return {"tonality": np.array(key, dtype=np.int64)}

    def prepare(self, request: GenerationRequest, auxiliary: Any = None) -> dict[str, Any]:
        return {"tonality": {text: len(text) % self.codebook for text in request.texts()}}

    def window_codes(self, window: RequestWindow) -> dict[str, torch.Tensor]:
        keys = window.request.prepared["tonality"]
        rows = [keys[text] for text in window.texts()]
        return {"tonality": torch.tensor(rows, device=window.request.device)}
