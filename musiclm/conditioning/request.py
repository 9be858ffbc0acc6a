"""A generation request as its conditioning streams see it: what a stream that makes
request-level codes (``RequestStream``: MuLan tokens of each prompt text, melody windows of
the clip, the beat clock at the request's tempo, a plugin's own) is asked to prepare from
(``GenerationRequest``, with the pipeline's pretrained ``Conditioners``), and what the stages'
windows then read (``Streams``, ``RequestWindow.request``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch

# a schedule: (start second, text) pairs sorted by time; a plain prompt is [(0.0, text)]
Schedule = list[tuple[float, str]]


class Conditioners(Protocol):
    """The pretrained conditioners that a generation owns (the pipeline's), each loaded when
    first asked for and checked against the stages' token shards."""

    def mulan_tokens(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """MuLan tokens ``(Q_m,)`` of each distinct text."""
        ...

    def text_embeddings(self, texts: list[str]) -> torch.Tensor | None:
        """MuLan text embeddings ``(len(texts), D)``; None without a MuLan."""
        ...

    @property
    def melody_conditioner(self) -> Any:
        """Melody network + RVQ (``MelodyConditioner``)."""
        ...

    @property
    def semantic_tokenizer(self) -> Any:
        """The semantic tokenizer (its ``sample_rate`` for tracking a clip's beat)."""
        ...


@dataclass(frozen=True)
class GenerationRequest:
    """A generation request, as its conditioning streams see it before any stage runs.

    ``rows``: each row's prompt schedule ``[(start second, text), ...]``; ``seconds``: the
    output's length (a continued clip's included); ``conditioners``: the pipeline's
    pretrained conditioners; ``where``: the pipeline file, which messages name. The optional
    inputs: ``melody_audio`` and ``continue_audio`` (wav, sample rate) and ``bpm`` (each
    row's tempo).
    """

    rows: list[Schedule]
    seconds: float
    device: Any
    conditioners: Conditioners
    where: str = "generation"
    melody_audio: tuple[torch.Tensor, int] | None = None
    continue_audio: tuple[torch.Tensor, int] | None = None
    bpm: list[float] | None = None

    def texts(self) -> list[str]:
        """Every text of every row, in order (repeats kept)."""
        return [text for row in self.rows for _, text in row]

    def first_texts(self) -> list[str]:
        """Each row's first prompt text."""
        return [row[0][1] for row in self.rows]


@runtime_checkable
class RequestStream(Protocol):
    """A stream that prepares request-level codes once per generation (optional part of a
    stream): ``prepare(request, auxiliary)`` -> entries (by name) that its ``window_codes``
    reads back from ``RequestWindow.request.prepared``. ``auxiliary``: the network the stream
    trained beside the asking stage's LM, loaded from its checkpoint (the beat clock's tempo
    predictor), or None. ``reads``: the request's optional inputs it reads (``melody_audio``,
    ``bpm``); an input that no stream of the stages reads is refused."""

    reads: tuple[str, ...]

    def prepare(self, request: GenerationRequest, auxiliary: Any = None) -> dict[str, Any]: ...


class Streams:
    """The request-level conditioning of one generation, shared by every stage: each row's
    prompt schedule and what the conditioning streams prepared for the request, by entry name
    (``prepared``: MuLan tokens of each text, melody windows, the beat clock and each row's
    tempo, a plugin stream's own), which a stream's ``window_codes`` reads as
    ``RequestWindow.request``. ``mulan`` (text -> tokens ``(Q_m,)``) and ``melody``
    (``(rows, W_T, L)``) may be given directly, as those streams prepare them."""

    def __init__(
        self,
        rows: list[Schedule],
        mulan: dict[str, torch.Tensor] | None = None,
        melody: torch.Tensor | None = None,
        device: Any = "cpu",
        prepared: dict[str, Any] | None = None,
    ) -> None:
        self.rows = rows
        self.device = device
        given = {"mulan": mulan, "melody": melody}
        self.prepared = {k: v for k, v in given.items() if v is not None} | dict(prepared or {})

    def batch_of(self, window: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``window``, or a stand-in that carries the batch size when a stage reads nothing."""
        return window or {"_batch": torch.empty(len(self.rows), 0, device=self.device)}
