"""``PIPELINE.yaml``: every checkpoint and artifact that text -> music needs, and how to sample.

    # musiclm generate "calm piano" --pipeline PIPELINE.yaml --seconds 10
    manifest: tokens/train/manifest.json   # optional: codec, semantic tokenizer, MuLan from it
    mulan: {checkpoint: mulan.ckpt, rvq: rvq.safetensors}  # needed when stages use M
    # text_neighbours: 8 in the mulan block reads a prompt through its 8 nearest training clips
    # or a joint-embedding plugin: mulan: {name: clap, args: {model: clap/}, rvq: rvq.safetensors}
    melody: {checkpoint: melody.ckpt, rvq: melody_rvq.safetensors}  # stages with melody: true
    codec: {name: stft-rvq, args: {codebooks: codec.safetensors}}
    semantic_tokenizer: {name: music-features, args: {kmeans: km.safetensors}}  # --continue
    stages:
      semantic: {checkpoint: semantic.ckpt, temperature: 1.0, context_seconds: 30,
                 prefix_seconds: 15}   # stream_cfg_scale: toward its guided beat clock
      coarse: {checkpoint: coarse.ckpt, temperature: 0.95, top_k: null, top_p: null,
               cfg_scale: 3.0}
      fine: {checkpoint: fine.ckpt, temperature: 0.4}   # optional: else coarse levels only
    device: cpu

The stages are MusicLM's cascade (``semantic``, ``coarse``, optional ``fine``) or ``semantic``
and ``delay`` (one LM over every codec level; ``delay`` alone when it was trained without
semantic tokens). They run in the order listed, except that a stage runs after the stages
whose tokens it reads.

Relative paths (checkpoints, artifacts, and string plugin arguments naming an existing file)
are resolved against the folder holding the pipeline file. ``context_seconds`` defaults to
the crop length the stage was trained on (from its checkpoint), ``prefix_seconds`` to half of
it (the paper's 15 s prefix for 30 s windows). Every problem names the file and the key.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from musiclm.datamodules.shards import atomic_write_text
from musiclm.generation.sampling import PAPER_TEMPERATURE, SamplingConfig
from musiclm.stage_names import ACOUSTIC_STAGES, REQUIRES, STAGE_NAMES
from musiclm.tokenizers.joint import JointEmbeddingSpec

TOP_KEYS = {"manifest", "mulan", "melody", "codec", "semantic_tokenizer", "stages", "device"}
STAGE_KEYS = {"checkpoint", "context_seconds", "prefix_seconds"}
SAMPLING_KEYS = {"temperature", "top_k", "top_p", "cfg_scale", "stream_cfg_scale"}


class PipelineFileError(ValueError):
    """A pipeline file is missing a key or holds a wrong value."""


@dataclass(frozen=True)
class PluginSpec:
    """A plugin by registry name and constructor arguments."""

    name: str
    args: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StageEntry:
    checkpoint: str
    sampling: SamplingConfig
    context_seconds: float | None = None
    prefix_seconds: float | None = None


@dataclass(frozen=True)
class PipelineFile:
    """A validated pipeline file with absolute paths."""

    path: str
    codec: PluginSpec
    stages: dict[str, StageEntry]
    # (MuLan checkpoint, rvq), or (joint-embedding plugin, rvq) from a {name, args, rvq} block
    mulan: tuple[str | JointEmbeddingSpec, str] | None = None
    semantic_tokenizer: PluginSpec | None = None
    device: str = "cpu"
    melody: tuple[str, str] | None = None  # (checkpoint, rvq) of the melody conditioner
    # quantise a prompt's MuLan tokens from the mean of its k nearest training audio
    # embeddings (0: from the text embedding, as MusicLM does)
    text_neighbours: int = 0


def load_pipeline_file(path: str | os.PathLike) -> PipelineFile:
    """Read and validate ``path``; errors name the file and the key."""
    path = Path(path)
    if not path.is_file():
        raise PipelineFileError(f"pipeline file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise PipelineFileError(f"{path}: not valid YAML ({err})") from None
    return parse_pipeline(data, where=str(path), root=path.parent)


def parse_pipeline(data: Any, *, where: str, root: Path) -> PipelineFile:
    """Validate a loaded mapping (``where`` names it in errors; paths resolve under ``root``)."""
    _mapping(data, where, "the top level")
    _known(data, TOP_KEYS, where, "")
    manifest = {}
    if data.get("manifest") is not None:
        mpath = _file(data["manifest"], root, where, "manifest")
        try:
            manifest = json.loads(Path(mpath).read_text())
        except json.JSONDecodeError as err:
            raise PipelineFileError(f"{where}: manifest {mpath} is not JSON ({err})") from None
        root_m = Path(mpath).parent
    codec = _plugin(data.get("codec"), root, where, "codec")
    if codec is None and manifest.get("codec"):
        codec = _plugin(manifest["codec"], root_m, f"{where} (via manifest)", "codec")
    if codec is None:
        raise PipelineFileError(f"{where}: missing key 'codec' (a {{name, args}} mapping)")
    semantic = _plugin(data.get("semantic_tokenizer"), root, where, "semantic_tokenizer")
    if semantic is None and manifest.get("semantic"):
        semantic = _plugin(manifest["semantic"], root_m, f"{where} (via manifest)", "semantic")
    mulan_block = data.get("mulan") or None
    mulan_root = root
    if mulan_block is None and manifest.get("mulan"):
        mulan_block, mulan_root = manifest["mulan"], root_m
    mulan = None
    if mulan_block is not None:
        _mapping(mulan_block, where, "mulan")
        if "name" in mulan_block:
            plugin = _plugin(mulan_block, mulan_root, where, "mulan")
            embedding: str | JointEmbeddingSpec = JointEmbeddingSpec(plugin.name, plugin.args)
        else:
            ckpt = _require(mulan_block, "checkpoint", where, "mulan")
            embedding = _file(ckpt, mulan_root, where, "mulan")
        mulan = (
            embedding,
            _file(_require(mulan_block, "rvq", where, "mulan"), mulan_root, where, "mulan.rvq"),
        )
    text_neighbours = (data.get("mulan") or {}).get("text_neighbours", 0)
    if (
        isinstance(text_neighbours, bool)
        or not isinstance(text_neighbours, int)
        or text_neighbours < 0
    ):
        raise PipelineFileError(
            f"{where}: 'mulan.text_neighbours' must be an integer >= 0, got {text_neighbours!r}"
        )
    melody_block, melody_root = data.get("melody") or None, root
    if melody_block is None and manifest.get("melody"):
        melody_block, melody_root = manifest["melody"], root_m
    melody = None
    if melody_block is not None:
        _mapping(melody_block, where, "melody")
        ckpt = _require(melody_block, "checkpoint", where, "melody")
        rvq = _require(melody_block, "rvq", where, "melody")
        melody = (
            _file(ckpt, melody_root, where, "melody.checkpoint"),
            _file(rvq, melody_root, where, "melody.rvq"),
        )
    stages_block = _require(data, "stages", where, "")
    _mapping(stages_block, where, "stages")
    _known(stages_block, set(STAGE_NAMES), where, "stages")
    stages = {name: _stage(block, name, root, where) for name, block in stages_block.items()}
    _check_stage_order(list(stages), where)
    device = data.get("device") or "cpu"
    if not isinstance(device, str):
        raise PipelineFileError(f"{where}: 'device' must be a string, got {device!r}")
    return PipelineFile(
        path=where,
        codec=codec,
        stages=stages,
        mulan=mulan,
        semantic_tokenizer=semantic,
        device=device,
        melody=melody,
        text_neighbours=text_neighbours,
    )


def write_pipeline_file(path: str | os.PathLike, data: dict[str, Any]) -> Path:
    """Validate ``data`` then write it as YAML atomically (for ``musiclm demo``)."""
    path = Path(path)
    parse_pipeline(data, where=str(path), root=path.parent)
    text = f'# musiclm generate "a prompt" --pipeline {path.name} --seconds 10\n'
    text += yaml.safe_dump(data, sort_keys=False)
    atomic_write_text(path, text)
    return path


# --- helpers --------------------------------------------------------------------------------


def _check_stage_order(names: list[str], where: str) -> None:
    """Each stage's required upstream stage is there, and one of them makes codec tokens
    (the run order follows what each loaded stage reads: ``Pipeline``)."""
    for name in names:
        for needed in REQUIRES[name]:
            if needed not in names:
                raise PipelineFileError(
                    f"{where}: missing key 'stages.{needed}' (the {name} stage reads its tokens)"
                )
    if not any(name in ACOUSTIC_STAGES for name in names):
        raise PipelineFileError(
            f"{where}: missing key 'stages.coarse' (or 'stages.delay'): no stage makes codec tokens"
        )


def _stage(block: Any, name: str, root: Path, where: str) -> StageEntry:
    key = f"stages.{name}"
    _mapping(block, where, key)
    _known(block, STAGE_KEYS | SAMPLING_KEYS, where, key)
    checkpoint = _file(_require(block, "checkpoint", where, key), root, where, f"{key}.checkpoint")
    sampling = {"temperature": PAPER_TEMPERATURE[name]}
    sampling |= {k: block[k] for k in SAMPLING_KEYS if block.get(k) is not None}
    seconds = {}
    for k in ("context_seconds", "prefix_seconds"):
        value = block.get(k)
        if value is not None and (not isinstance(value, int | float) or value < 0):
            raise PipelineFileError(f"{where}: '{key}.{k}' must be a number >= 0, got {value!r}")
        seconds[k] = None if value is None else float(value)
    try:
        config = SamplingConfig.from_dict(sampling, where=f"{where}: {key}")
    except ValueError as err:
        raise PipelineFileError(str(err)) from None
    return StageEntry(checkpoint=checkpoint, sampling=config, **seconds)


def _plugin(block: Any, root: Path, where: str, key: str) -> PluginSpec | None:
    if block is None:
        return None
    _mapping(block, where, key)
    name = _require(block, "name", where, key)
    args = block.get("args") or {}
    _mapping(args, where, f"{key}.args")
    return PluginSpec(name=str(name), args={k: _maybe_path(v, root) for k, v in args.items()})


def _maybe_path(value: Any, root: Path) -> Any:
    """A relative string naming an existing file under ``root`` becomes that file's path."""
    if isinstance(value, str) and value and not os.path.isabs(value):
        candidate = root / value
        if candidate.exists():
            return str(candidate)
    return value


def _file(value: Any, root: Path, where: str, key: str) -> str:
    if not isinstance(value, str) or not value:
        raise PipelineFileError(f"{where}: '{key}' must be a file path, got {value!r}")
    path = Path(value) if os.path.isabs(value) else root / value
    if not path.exists():
        raise PipelineFileError(f"{where}: '{key}' names {path}, which does not exist")
    return str(path)


def _require(block: dict, key: str, where: str, parent: str) -> Any:
    if key not in block or block[key] is None:
        full = f"{parent}.{key}" if parent else key
        raise PipelineFileError(f"{where}: missing key '{full}'")
    return block[key]


def _mapping(value: Any, where: str, key: str) -> None:
    if not isinstance(value, dict):
        raise PipelineFileError(f"{where}: '{key}' must be a mapping, got {type(value).__name__}")


def _known(block: dict, known: set[str], where: str, parent: str) -> None:
    unknown = sorted(set(block) - known)
    if unknown:
        at = f" under '{parent}'" if parent else ""
        raise PipelineFileError(
            f"{where}: unknown key(s) {unknown}{at}; known keys: {sorted(known)}"
        )
