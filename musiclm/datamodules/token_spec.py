"""What token shards hold: ``TokenSpec`` (sizes, rates and fingerprints read from a token
manifest) and ``BeatSpec`` (the resolution of the beat clock, its manifest section).

Plain values only, so a stage stores them in its hyper-parameters and a checkpoint alone
rebuilds its network. How the streams become one LM sequence: ``musiclm.stages.token_layout``;
how the beat clock is tracked in audio: ``musiclm.tokenizers.beats``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class BeatSpec:
    """Resolution of the clock: phase ids per beat and log-spaced tempo bins."""

    phase_bins: int = 16
    tempo_bins: int = 32
    min_bpm: float = 40.0
    max_bpm: float = 240.0

    def __post_init__(self) -> None:
        if self.phase_bins < 2 or self.tempo_bins < 1 or not 0 < self.min_bpm < self.max_bpm:
            raise ValueError(f"invalid beat clock {self}")

    def tempo_bin(self, bpm: float) -> int:
        """Bin of ``bpm`` (clamped into ``min_bpm..max_bpm``)."""
        span = math.log(self.max_bpm / self.min_bpm)
        at = math.log(min(max(bpm, self.min_bpm), self.max_bpm) / self.min_bpm) / span
        return min(self.tempo_bins - 1, int(at * self.tempo_bins))

    def bin_bpm(self, index: int) -> float:
        """Geometric centre of tempo bin ``index``."""
        if not 0 <= index < self.tempo_bins:
            raise ValueError(f"tempo bin {index} not in 0..{self.tempo_bins - 1}")
        return self.min_bpm * (self.max_bpm / self.min_bpm) ** ((index + 0.5) / self.tempo_bins)

    def phase_ids(self, index: np.ndarray) -> np.ndarray:
        """Beats elapsed (float, any shape) -> phase ids ``0..phase_bins-1``."""
        return (np.floor((index % 1.0) * self.phase_bins) % self.phase_bins).astype(np.int64)

    def clock(self, bpm: float, frames: int, frame_rate: float, start: float = 0.0) -> np.ndarray:
        """Phase ids (frames,) of a steady ``bpm`` whose beat ``start`` falls on frame 0."""
        return self.phase_ids(start + np.arange(frames) * bpm / 60.0 / frame_rate)

    def to_manifest(self, frame_rate: float, embedding_dim: int = 0) -> dict[str, Any]:
        """The manifest's ``beats`` section (``embedding_dim``: of ``mulan_embedding.npy``)."""
        out = {**asdict(self), "frame_rate": frame_rate, "tracker": "librosa.beat.beat_track"}
        return out | {"embedding_dim": embedding_dim}


@dataclass(frozen=True)
class TokenSpec:
    """What the token shards hold, read from their manifest (plain values only)."""

    semantic_vocab: int
    semantic_rate: float
    codebook_size: int
    num_quantizers: int
    acoustic_rate: float
    mulan_levels: int = 0
    mulan_codebook: int = 0
    codec_name: str = ""
    codec_fingerprint: str = ""
    semantic_name: str = ""
    semantic_fingerprint: str = ""
    mulan_fingerprint: str = ""
    melody_windows: int = 0
    melody_levels: int = 0
    melody_codebook: int = 0
    melody_hop: float = 0.0  # seconds between melody windows
    melody_fingerprint: str = ""
    beat_phase_bins: int = 0  # beat clock (``musiclm.tokenizers.beats``); 0: none
    tempo_bins: int = 0
    min_bpm: float = 0.0
    max_bpm: float = 0.0
    tempo_input_dim: int = 0  # MuLan embedding size the tempo predictor reads (0: none)

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any], where: str = "manifest.json") -> TokenSpec:
        """Read sizes, rates and fingerprints; a missing key names ``where`` and the key."""

        def get(section: str, key: str) -> Any:
            block = manifest.get(section)
            if not isinstance(block, dict) or key not in block:
                raise ValueError(f"{where}: token manifest has no '{section}.{key}'")
            return block[key]

        if manifest.get("kind") != "tokens":
            raise ValueError(f"{where}: kind is {manifest.get('kind')!r}, expected 'tokens'")
        mulan = manifest.get("mulan") or None
        melody = manifest.get("melody") or None
        beats = manifest.get("beats") or None
        return cls(
            semantic_vocab=int(get("semantic", "vocab_size")),
            semantic_rate=float(get("semantic", "frame_rate")),
            codebook_size=int(get("codec", "codebook_size")),
            num_quantizers=int(get("codec", "num_quantizers")),
            acoustic_rate=float(get("codec", "frame_rate")),
            mulan_levels=int(get("mulan", "num_levels")) if mulan else 0,
            mulan_codebook=int(get("mulan", "codebook_size")) if mulan else 0,
            codec_name=str(manifest["codec"].get("name", "")),
            codec_fingerprint=str(get("codec", "fingerprint")),
            semantic_name=str(manifest["semantic"].get("name", "")),
            semantic_fingerprint=str(get("semantic", "fingerprint")),
            mulan_fingerprint=str(get("mulan", "fingerprint")) if mulan else "",
            melody_windows=int(get("melody", "num_windows")) if melody else 0,
            melody_levels=int(get("melody", "num_levels")) if melody else 0,
            melody_codebook=int(get("melody", "codebook_size")) if melody else 0,
            melody_hop=float(get("melody", "hop_seconds")) if melody else 0.0,
            melody_fingerprint=str(get("melody", "fingerprint")) if melody else "",
            beat_phase_bins=int(get("beats", "phase_bins")) if beats else 0,
            tempo_bins=int(get("beats", "tempo_bins")) if beats else 0,
            min_bpm=float(get("beats", "min_bpm")) if beats else 0.0,
            max_bpm=float(get("beats", "max_bpm")) if beats else 0.0,
            tempo_input_dim=int(beats.get("embedding_dim", 0)) if beats else 0,
        )

    @property
    def beat_spec(self) -> BeatSpec | None:
        """The beat clock of the shards (None without ``prepare tokens --beats``)."""
        if not self.beat_phase_bins:
            return None
        return BeatSpec(self.beat_phase_bins, self.tempo_bins, self.min_bpm, self.max_bpm)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
