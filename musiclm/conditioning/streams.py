"""The built-in conditioning streams: MuLan tokens, melody windows, the beat clock (with its
tempo predictor), and the upstream semantic tokens and coarse codec levels that the coarse and
fine stages read. Each registers through the ``musiclm.conditioning_streams`` entry points,
like a third-party stream.

The datamodule reads these streams' arrays itself, from what the token manifest declares
(``musiclm.datamodules.tokens``), so their ``read`` adds nothing. At generation the MuLan,
melody and beat streams ``prepare`` the request's codes from the pipeline's conditioners;
the upstream streams read what earlier stages made.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from musiclm.conditioning.melody_tokens import clip_window_tokens, tokens_at
from musiclm.conditioning.request import GenerationRequest
from musiclm.conditioning.stream import RequestWindow
from musiclm.datamodules.token_spec import BeatSpec, MelodySpec, MulanSpec, TokenSpec
from musiclm.datamodules.tokens import Crop
from musiclm.models.tempo import TempoPredictor, tempo_loss


class ManifestStream:
    """A stream whose arrays the datamodule reads from the manifest's declaration."""

    name = ""
    guided = False
    manifest_section: str | None = None
    frames = 0  # prompt frames of an untimed stream (a timed one's follow the window)

    def __init__(self, spec: TokenSpec, *, coarse_levels: int = 4) -> None:
        self.spec = spec

    def check(self, spec: TokenSpec) -> None:
        """Shards without this stream raise; every built-in stream's shards say so here."""

    def read(self, sample: dict, where: str, crop: Crop) -> dict[str, np.ndarray]:
        return {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(levels={self.levels}, codebook={self.codebook})"


class MulanStream(ManifestStream):
    """The MuLan RVQ tokens of the clip (``Q_m`` levels, one frame): the text at generation."""

    name, guided, manifest_section, rate = "mulan", True, "mulan", None

    def __init__(self, spec: TokenSpec, *, coarse_levels: int = 4) -> None:
        super().__init__(spec)
        mulan: MulanSpec | None = spec.streams.get("mulan")  # None: refused by ``check``
        self.levels, self.codebook = (mulan.levels, mulan.codebook) if mulan else (0, 0)
        self.frames = 1

    def check(self, spec: TokenSpec) -> None:
        if "mulan" not in spec.streams:
            raise ValueError(
                "the conditioning names the mulan stream but the token shards carry no MuLan "
                "tokens: run `musiclm prepare tokens ... --mulan CKPT --mulan-rvq RVQ`"
            )

    def codes(self, batch: Mapping[str, Any]) -> torch.Tensor:
        return batch["mulan"].long().unsqueeze(-1)  # (B, Q_m, 1)

    reads: tuple[str, ...] = ()

    def prepare(self, request: GenerationRequest, auxiliary: Any = None) -> dict[str, Any]:
        """The tokens of each distinct prompt text (MuLan's text tower and RVQ)."""
        return {"mulan": request.conditioners.mulan_tokens(request.texts())}

    def window_codes(self, window: RequestWindow) -> dict[str, torch.Tensor]:
        """``(rows, Q_m)``: each row's text at the window's new frames."""
        tokens = window.request.prepared["mulan"]
        return {"mulan": torch.stack([tokens[text] for text in window.texts()])}


class MelodyStream(ManifestStream):
    """Melody tokens: ``W`` windows x ``L`` levels, window-major (MusicLM's appendix); dropped
    with the text for guidance, so guidance strengthens the melody as well as the text."""

    name, guided, manifest_section, rate = "melody", True, "melody", None

    def __init__(self, spec: TokenSpec, *, coarse_levels: int = 4) -> None:
        super().__init__(spec)
        self.melody: MelodySpec | None = spec.streams.get("melody")  # None: refused by ``check``
        m = self.melody
        self.levels, self.codebook, self.frames = (
            (m.levels, m.codebook, m.windows) if m else (0,) * 3
        )

    def check(self, spec: TokenSpec) -> None:
        if "melody" not in spec.streams:
            raise ValueError(
                "the token shards carry no melody tokens: run `musiclm prepare tokens ... "
                "--melody CKPT --melody-rvq RVQ`, or set melody: false"
            )

    def codes(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """Melody tokens ``(B, W * L)`` window-major -> ``(B, L, W)``."""
        if batch.get("melody") is None:
            raise ValueError(
                "was trained with melody conditioning and needs melody tokens: token shards "
                "from `musiclm prepare tokens --melody`, or `musiclm generate --melody CLIP`"
            )
        tokens = batch["melody"].long()
        w, l = self.melody.windows, self.melody.levels
        if tokens.dim() != 2 or tokens.shape[1] != w * l:
            raise ValueError(
                f"expects melody tokens (B, {w} windows x {l} levels), got {tuple(tokens.shape)}"
            )
        return tokens.view(-1, w, l).transpose(1, 2)

    reads = ("melody_audio",)

    def prepare(self, request: GenerationRequest, auxiliary: Any = None) -> dict[str, Any]:
        """Melody window tokens ``(rows, W_T, L)`` of the request's clip fitted to its length
        (looped when shorter, cut when longer)."""
        clip = request.melody_audio
        if clip is None:
            raise ValueError(
                f"{request.where}: the stages were trained with melody conditioning: give a "
                "melody clip (`musiclm generate ... --melody CLIP`)"
            )
        melody = request.conditioners.melody_conditioner
        tokens = clip_window_tokens(melody, clip[0], clip[1], request.seconds)
        return {"melody": tokens.to(request.device).expand(len(request.rows), -1, -1)}

    def window_codes(self, window: RequestWindow) -> dict[str, torch.Tensor]:
        melody, hop = window.request.prepared["melody"], self.melody.hop
        return {"melody": tokens_at(melody, window.start_seconds, hop, self.melody.windows)}


class BeatStream(ManifestStream):
    """The beat clock: one phase id per semantic frame (``musiclm.tokenizers.beats``). Its
    ``auxiliary`` network, the tempo predictor (MuLan embedding -> tempo bin), is trained beside
    the LM and sets the clock's tempo at generation."""

    name, manifest_section = "beat", "beats"

    def __init__(self, spec: TokenSpec, *, coarse_levels: int = 4) -> None:
        super().__init__(spec)
        self.clock: BeatSpec | None = spec.streams.get("beats")  # None: refused by ``check``
        self.levels, self.rate = 1, spec.semantic_rate
        self.codebook = self.clock.phase_bins if self.clock else 0

    def check(self, spec: TokenSpec) -> None:
        if "beats" not in spec.streams:
            raise ValueError(
                "the token shards carry no beat clock: run `musiclm prepare tokens ... --beats`, "
                "or set beats: false"
            )

    def codes(self, batch: Mapping[str, Any]) -> torch.Tensor:
        return batch["beat"].long().unsqueeze(1)  # (B, 1, F_s)

    reads = ("bpm",)

    def prepare(self, request: GenerationRequest, auxiliary: Any = None) -> dict[str, Any]:
        """The clock's phase ids ``(rows, F_s)`` over the request's length (``beat``) and each
        row's tempo (``bpm``): a continued clip's tracked beat, else the request's tempo, else
        the most likely tempo that ``auxiliary`` (the tempo predictor) reads from the MuLan
        text embedding of each row's first prompt."""
        clock = self.clock
        rows, frames = len(request.rows), max(1, round(request.seconds * self.rate))
        tracked = self._tracked(request, frames)
        if tracked is not None:
            ids = torch.from_numpy(clock.phase_ids(tracked[0]))
            return {"beat": ids.expand(rows, -1).to(request.device), "bpm": [tracked[1]] * rows}
        bpms = self._tempos(request, auxiliary)
        ids = np.stack([clock.clock(b, frames, self.rate) for b in bpms])
        return {"beat": torch.from_numpy(ids).to(request.device), "bpm": bpms}

    def _tracked(self, request: GenerationRequest, frames: int) -> tuple[Any, float] | None:
        """The beat tracked in the request's continued clip (None: no clip, or no beat)."""
        if request.continue_audio is None:
            return None
        import torchaudio.functional as AF

        from musiclm.tokenizers.beats import BeatTracker

        wav, rate = request.continue_audio
        sr = request.conditioners.semantic_tokenizer.sample_rate
        wav = AF.resample(wav.reshape(-1).float(), rate, sr).numpy()
        tracker = BeatTracker(self.clock, sample_rate=sr, frame_rate=self.rate)
        return tracker.index(wav, frames)

    def _tempos(self, request: GenerationRequest, predictor: Any) -> list[float]:
        """Each row's tempo: the request's, else the predictor's most likely one."""
        if request.bpm is not None:
            bpms = [float(b) for b in request.bpm]
            if min(bpms) <= 0:
                raise ValueError(f"tempo must be positive, got {min(bpms)} BPM")
            return bpms
        emb = None
        if predictor is not None:
            emb = request.conditioners.text_embeddings(request.first_texts())
        if emb is None:
            raise ValueError(
                f"{request.where}: the semantic stage follows a beat clock but there is no "
                "MuLan to predict its tempo from the text: give a tempo (`musiclm generate "
                "--bpm`)"
            )
        # the most likely tempo: the clock is the rhythm's backbone, not a place for noise
        bins = predictor(emb.to(request.device).float()).argmax(-1).tolist()
        return [self.clock.bin_bpm(b) for b in bins]

    def window_codes(self, window: RequestWindow) -> dict[str, torch.Tensor]:
        return {"beat": window.request.prepared["beat"][:, window.f0 : window.f1]}

    def auxiliary(self) -> TempoPredictor | None:
        """The tempo predictor trained beside the LM (None: shards without MuLan embeddings)."""
        if not self.clock or not self.clock.tempo_input_dim:
            return None
        return TempoPredictor(input_dim=self.clock.tempo_input_dim, bins=self.clock.tempo_bins)

    def auxiliary_loss(
        self, net: TempoPredictor, batch: Mapping[str, Any]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The tempo predictor's loss on a batch and the metrics to log (its bin accuracy);
        0 and none for a batch without tempo labels."""
        logits = net(batch["mulan_embedding"].float())
        target = batch["tempo"].long()
        known = target >= 0
        if not known.any():
            # no label in this batch: a zero that still touches the predictor's parameters,
            # so DDP's gradient reduction finds every one of them used
            return logits.sum() * 0.0, {}
        loss = tempo_loss(logits, target)
        hit = (logits.argmax(-1) == target)[known].float().mean()
        return loss, {"tempo_loss": loss, "tempo_accuracy": hit}


class SemanticStream(ManifestStream):
    """Semantic tokens made by the semantic stage: the coarse stage's timed conditioning."""

    name, manifest_section = "semantic", "semantic"

    def __init__(self, spec: TokenSpec, *, coarse_levels: int = 4) -> None:
        super().__init__(spec)
        self.levels, self.codebook, self.rate = 1, spec.semantic_vocab, spec.semantic_rate

    def codes(self, batch: Mapping[str, Any]) -> torch.Tensor:
        return batch["semantic"].long().unsqueeze(1)  # (B, 1, F_s)

    def window_codes(self, window: RequestWindow) -> dict[str, torch.Tensor]:
        """The semantic tokens under the window's target frames."""
        semantic = window.made["semantic"]
        ratio = self.rate / window.rate
        s0 = math.floor(window.f0 * ratio)
        s1 = min(semantic.shape[1], math.ceil(window.f1 * ratio))
        return {"semantic": semantic[:, s0:s1]}


class CoarseStream(ManifestStream):
    """The first ``coarse_levels`` codec levels made by the coarse stage: the fine stage's
    timed conditioning."""

    name, manifest_section = "coarse", "codec"

    def __init__(self, spec: TokenSpec, *, coarse_levels: int = 4) -> None:
        super().__init__(spec)
        self.levels, self.codebook, self.rate = (
            coarse_levels,
            spec.codebook_size,
            spec.acoustic_rate,
        )

    def codes(self, batch: Mapping[str, Any]) -> torch.Tensor:
        acoustic = batch["acoustic"].long()
        if acoustic.shape[1] < self.levels:
            raise ValueError(
                f"needs codec levels 0..{self.levels - 1}, batch has {acoustic.shape[1]}"
            )
        return acoustic[:, : self.levels]

    def window_codes(self, window: RequestWindow) -> dict[str, torch.Tensor]:
        return {"acoustic": window.made["coarse"][..., window.f0 : window.f1]}
