"""What token shards hold: ``TokenSpec`` (sizes, rates and fingerprints read from a token
manifest), whose ``streams`` map each conditioning stream's manifest section to its spec:
``MulanSpec``, ``MelodySpec``, ``BeatSpec`` (the beat clock) and, for a section no built-in
stream reads (a plugin stream's), ``PluginSpec``.

A dataclass per built-in stream rather than one generic class: the streams read typed, named
sizes (``spec.streams["melody"].hop``) and the beat clock carries its own methods; a plugin's
section is kept as its plain values, since its stream's class is imported only once a stage
names it, after the manifest is read.

Plain values only, so a stage stores them in its hyper-parameters (``to_dict``) and a
checkpoint alone rebuilds its network (``from_dict``, which also reads the flat form of older
checkpoints). How the streams become one LM sequence: ``musiclm.stages.token_layout``; how the
beat clock is tracked in audio: ``musiclm.tokenizers.beats``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np


def _reader(block: Any, section: str, where: str) -> Callable[[str], Any]:
    """``get(key)``: the value of ``section.key``; a missing one names ``where`` and the key."""

    def get(key: str) -> Any:
        if not isinstance(block, dict) or key not in block:
            raise ValueError(f"{where}: token manifest has no '{section}.{key}'")
        return block[key]

    return get


@dataclass(frozen=True)
class MulanSpec:
    """The MuLan RVQ tokens of each clip (manifest section ``mulan``)."""

    levels: int  # RVQ levels
    codebook: int  # ids per level
    fingerprint: str = ""  # of MuLan and its RVQ

    @classmethod
    def from_manifest(cls, block: dict[str, Any], where: str = "manifest.json") -> MulanSpec:
        get = _reader(block, "mulan", where)
        return cls(int(get("num_levels")), int(get("codebook_size")), str(get("fingerprint")))


@dataclass(frozen=True)
class MelodySpec:
    """Melody tokens: ``windows`` windows of ``levels`` RVQ levels per crop (manifest section
    ``melody``)."""

    windows: int
    levels: int
    codebook: int  # ids per level
    hop: float  # seconds between windows
    fingerprint: str = ""  # of the melody network and its RVQ

    @classmethod
    def from_manifest(cls, block: dict[str, Any], where: str = "manifest.json") -> MelodySpec:
        get = _reader(block, "melody", where)
        return cls(
            windows=int(get("num_windows")),
            levels=int(get("num_levels")),
            codebook=int(get("codebook_size")),
            hop=float(get("hop_seconds")),
            fingerprint=str(get("fingerprint")),
        )


@dataclass(frozen=True)
class BeatSpec:
    """Resolution of the beat clock: phase ids per beat and log-spaced tempo bins (manifest
    section ``beats``)."""

    phase_bins: int = 16
    tempo_bins: int = 32
    min_bpm: float = 40.0
    max_bpm: float = 240.0
    tempo_input_dim: int = 0  # MuLan embedding size the tempo predictor reads (0: none)

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

    @classmethod
    def from_manifest(cls, block: dict[str, Any], where: str = "manifest.json") -> BeatSpec:
        get = _reader(block, "beats", where)
        return cls(
            phase_bins=int(get("phase_bins")),
            tempo_bins=int(get("tempo_bins")),
            min_bpm=float(get("min_bpm")),
            max_bpm=float(get("max_bpm")),
            tempo_input_dim=int(block.get("embedding_dim", 0)),
        )

    def to_manifest(self, frame_rate: float) -> dict[str, Any]:
        """The manifest's ``beats`` section (``embedding_dim``: of ``mulan_embedding.npy``)."""
        clock = {k: v for k, v in asdict(self).items() if k != "tempo_input_dim"}
        out = clock | {"frame_rate": frame_rate, "tracker": "librosa.beat.beat_track"}
        return out | {"embedding_dim": self.tempo_input_dim}


@dataclass(frozen=True)
class PluginSpec:
    """A manifest section that no built-in stream reads (a plugin stream's): its values."""

    values: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_manifest(cls, block: dict[str, Any], where: str = "manifest.json") -> PluginSpec:
        return cls(dict(block))


StreamSpec = MulanSpec | MelodySpec | BeatSpec | PluginSpec
# the built-in streams' specs by manifest section; any other section is a ``PluginSpec``
STREAM_SPECS: dict[str, type[MulanSpec | MelodySpec | BeatSpec]] = {
    "mulan": MulanSpec,
    "melody": MelodySpec,
    "beats": BeatSpec,
}
CORE_SECTIONS = ("semantic", "codec")  # the targets' tokens, not conditioning streams
# the flat form of checkpoints made before ``streams``: section -> spec field -> flat key; the
# first key is 0 where the shards lack the stream
FLAT_FIELDS = {
    "mulan": {"levels": "mulan_levels", "codebook": "mulan_codebook",
              "fingerprint": "mulan_fingerprint"},
    "melody": {"levels": "melody_levels", "windows": "melody_windows",
               "codebook": "melody_codebook", "hop": "melody_hop",
               "fingerprint": "melody_fingerprint"},
    "beats": {"phase_bins": "beat_phase_bins", "tempo_bins": "tempo_bins", "min_bpm": "min_bpm",
              "max_bpm": "max_bpm", "tempo_input_dim": "tempo_input_dim"},
}  # fmt: skip


@dataclass(frozen=True)
class TokenSpec:
    """What the token shards hold, read from their manifest (plain values only)."""

    semantic_vocab: int
    semantic_rate: float
    codebook_size: int
    num_quantizers: int
    acoustic_rate: float
    codec_name: str = ""
    codec_fingerprint: str = ""
    semantic_name: str = ""
    semantic_fingerprint: str = ""
    streams: dict[str, StreamSpec] = field(default_factory=dict)
    """The conditioning streams the shards carry, by manifest section."""

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any], where: str = "manifest.json") -> TokenSpec:
        """Read sizes, rates and fingerprints; every section besides ``semantic`` and
        ``codec`` is a conditioning stream's. A missing key names ``where`` and the key."""
        if manifest.get("kind") != "tokens":
            raise ValueError(f"{where}: kind is {manifest.get('kind')!r}, expected 'tokens'")
        semantic = _reader(manifest.get("semantic"), "semantic", where)
        codec = _reader(manifest.get("codec"), "codec", where)
        core = dict(
            semantic_vocab=int(semantic("vocab_size")),
            semantic_rate=float(semantic("frame_rate")),
            codebook_size=int(codec("codebook_size")),
            num_quantizers=int(codec("num_quantizers")),
            acoustic_rate=float(codec("frame_rate")),
            codec_name=str(manifest["codec"].get("name", "")),
            codec_fingerprint=str(codec("fingerprint")),
            semantic_name=str(manifest["semantic"].get("name", "")),
            semantic_fingerprint=str(semantic("fingerprint")),
        )
        streams = {
            section: STREAM_SPECS.get(section, PluginSpec).from_manifest(block, where)
            for section, block in manifest.items()
            if isinstance(block, dict) and block and section not in CORE_SECTIONS
        }
        return cls(**core, streams=streams)

    def to_dict(self) -> dict[str, Any]:
        """Plain values, for a stage's hyper-parameters (``from_dict`` reads them back)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TokenSpec:
        """``to_dict``'s values, or the flat form of checkpoints made before ``streams``."""
        if "streams" not in data:
            data = _from_flat(data)
        streams = {
            section: STREAM_SPECS.get(section, PluginSpec)(**values)
            for section, values in data["streams"].items()
        }
        return cls(**{**data, "streams": streams})


def _from_flat(data: Mapping[str, Any]) -> dict[str, Any]:
    """The flat form (one field per stream size, 0 without the stream) -> ``to_dict``'s."""
    flat = {key for keys in FLAT_FIELDS.values() for key in keys.values()}
    out: dict[str, Any] = {k: v for k, v in data.items() if k not in flat}
    out["streams"] = {
        section: {name: data[key] for name, key in keys.items() if key in data}
        for section, keys in FLAT_FIELDS.items()
        if data.get(next(iter(keys.values())))
    }
    return out
