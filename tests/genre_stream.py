"""A test-only conditioning stream: one constant genre token per clip.

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
