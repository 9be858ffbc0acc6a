"""Reading what ``musiclm evaluate`` scores: generated folders, audio shards, token shards.

A *generated folder* holds ``<name>.wav`` files, each with a ``<name>.json`` sidecar
``{"prompt": str, "attributes": {...}}`` naming what was asked for (the attributes use the
demo corpus' keys: ``instrument``, ``bpm``, ``key``, ``mode``). A wav without a sidecar
counts for FAD only. Reference audio is an audio shard folder (``musiclm prepare audio``,
one split) or a folder in the same convention (``caption`` may stand for ``prompt``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from musiclm.evaluation.memorization import MemorizationExample


@dataclass
class Clip:
    name: str
    audio: np.ndarray  # float32 [T], mono
    sample_rate: int
    text: str | None = None  # the prompt (generated) or caption (real)
    attributes: dict[str, Any] = field(default_factory=dict)


def read_audio(path: str | Path) -> tuple[np.ndarray, int]:
    """Mono float32 audio and its sample rate; unreadable or empty audio names the file."""
    import soundfile as sf

    try:
        audio, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as exc:  # soundfile raises several types for bad files
        raise ValueError(f"cannot read audio {path}: {exc}") from exc
    if audio.shape[0] == 0:
        raise ValueError(f"audio file {path} is empty")
    return audio.mean(axis=1), int(sr)


def _sidecar(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"invalid JSON sidecar {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"sidecar {path} must hold a JSON object")
    attrs = data.get("attributes", {})
    if not isinstance(attrs, dict):
        raise ValueError(f"sidecar {path}: 'attributes' must be an object, got {type(attrs)}")
    return data


def _wav_shortfall(path: Path) -> int:
    """Bytes a WAV's ``data`` chunk declares beyond the end of the file (0 when whole or
    not a WAV): libsndfile reads a truncated WAV without a word, as a shorter clip."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            if f.read(4) != b"RIFF" or f.read(8)[4:] != b"WAVE":
                return 0
            while True:
                head = f.read(8)
                if len(head) < 8:
                    return 0
                length = int.from_bytes(head[4:], "little")
                if head[:4] == b"data":
                    return max(0, length - (size - f.tell()))
                f.seek(length + (length & 1), 1)
    except OSError:
        return 0


def load_folder(
    directory: str | Path,
    *,
    limit: int | None = None,
    skipped: list[dict] | None = None,
    min_seconds: float = 0.1,
) -> tuple[list[Clip], list[str]]:
    """Clips of a folder of wavs with JSON sidecars, sorted by name; also the names that
    have no sidecar.

    Hidden files (a killed writer's temporary ``.name.*.wav``) are not clips. Unreadable,
    truncated (shorter than its header or its sidecar's ``seconds``) and too-short clips are
    appended to ``skipped`` as ``{"item", "reason"}`` instead of scored.
    """
    root = Path(directory)
    if not root.is_dir():
        raise FileNotFoundError(f"no such folder of generated audio: {root}")
    wavs = sorted(
        p
        for p in root.iterdir()
        if p.suffix.lower() in (".wav", ".flac") and not p.name.startswith(".")
    )
    if not wavs:
        raise ValueError(f"{root} holds no .wav or .flac files")
    skipped = [] if skipped is None else skipped
    clips, bare = [], []
    for path in wavs[:limit]:
        side = _sidecar(path.with_suffix(".json"))
        try:
            audio, sr = read_audio(path)
            _check_whole(path, audio, sr, side, min_seconds)
        except ValueError as exc:
            skipped.append({"item": path.name, "reason": str(exc)})
            continue
        if side is None:
            bare.append(path.stem)
            clips.append(Clip(path.stem, audio, sr))
            continue
        text = side.get("prompt", side.get("caption"))
        clips.append(Clip(path.stem, audio, sr, text, dict(side.get("attributes", {}))))
    if not clips:
        reasons = "; ".join(f"{s['item']}: {s['reason']}" for s in skipped[:3])
        raise ValueError(f"{root}: no readable clip ({len(skipped)} skipped: {reasons})")
    return clips, bare


def _check_whole(
    path: Path, audio: np.ndarray, sr: int, side: dict | None, min_seconds: float
) -> None:
    missing = _wav_shortfall(path)
    if missing:
        raise ValueError(f"truncated: {missing} bytes of audio data missing from {path}")
    seconds = len(audio) / sr
    wanted = (side or {}).get("seconds")
    # a decoder may trim a frame or two: only a clip missing a tenth counts as cut short
    if isinstance(wanted, int | float) and seconds < 0.9 * wanted:
        raise ValueError(f"truncated: {seconds:.3f} s of the {wanted:g} s its sidecar states")
    if seconds < min_seconds:
        raise ValueError(f"too short: {seconds:.3f} s < {min_seconds:g} s")


def load_reference(
    path: str | Path, *, limit: int | None = None, skipped: list[dict] | None = None
) -> list[Clip]:
    """Real clips from an audio shard folder (with ``manifest.json``) or a sidecar folder;
    unreadable ones are appended to ``skipped`` as ``{"item", "reason"}``."""
    root = Path(path)
    skipped = [] if skipped is None else skipped
    if not (root / "manifest.json").is_file():
        return load_folder(root, limit=limit, skipped=skipped)[0]
    from musiclm.datamodules.shards import SkipCounter, iter_audio_samples

    skips = SkipCounter(warn=False)
    clips = []
    for s in iter_audio_samples(root, skips=skips):
        attrs = s["meta"].get("attributes") or {}
        clips.append(Clip(s["key"], s["audio"], s["sample_rate"], s["caption"], dict(attrs)))
        if limit is not None and len(clips) >= limit:
            break
    skipped += [{"item": str(root), "reason": reason} for reason in skips.reasons]
    if not clips:
        raise ValueError(f"no readable clips in audio shards {root} ({skips.count} skipped)")
    return clips


def reference_fingerprint(path: str | Path) -> dict[str, Any]:
    """What a reference folder holds, to tell whether something fitted on it is stale:
    ``{"path", "kind", "clips", "fingerprint"}``. For audio shards the fingerprint covers
    the manifest's shard list (files, counts, seconds); for a folder of clips, every visible
    file's name, size and modification time."""
    root = Path(path)
    if (root / "manifest.json").is_file():
        from musiclm.datamodules.shards import read_manifest

        manifest = read_manifest(root)
        listed: Any = {"shards": manifest["shards"], "num_samples": manifest.get("num_samples")}
        kind, clips = "shards", int(manifest.get("num_samples") or 0)
    elif root.is_dir():
        files = sorted(p for p in root.iterdir() if p.is_file() and not p.name.startswith("."))
        listed = [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files]
        kind = "folder"
        clips = sum(p.suffix.lower() in (".wav", ".flac") for p in files)
    else:
        raise FileNotFoundError(f"no such reference folder: {root}")
    digest = hashlib.sha1(json.dumps(listed, sort_keys=True).encode("utf-8")).hexdigest()
    return {"path": str(root.resolve()), "kind": kind, "clips": clips, "fingerprint": digest[:16]}


def load_token_examples(
    directory: str | Path, *, limit: int | None = None
) -> list[MemorizationExample]:
    """Semantic tokens and conditioning (MuLan tokens, beat clock) of a token shard folder
    (``musiclm prepare tokens``)."""
    import webdataset as wds

    from musiclm.datamodules.shards import SkipCounter, decode_npy, shard_paths

    skips = SkipCounter(warn=False)
    urls = shard_paths(directory)
    pipeline = wds.DataPipeline(
        wds.SimpleShardList(urls), wds.tarfile_to_samples(handler=skips.handler)
    )
    out = []
    for sample in pipeline:
        if "semantic.npy" not in sample:
            raise ValueError(
                f"sample {sample.get('__key__')!r} in {sample.get('__url__')} has no semantic.npy"
            )
        cond = {
            name: decode_npy(sample[f"{name}.npy"]) if f"{name}.npy" in sample else None
            for name in ("mulan", "beat")
        }
        semantic = decode_npy(sample["semantic.npy"]).astype(np.int64)
        out.append(MemorizationExample(sample["__key__"], semantic, cond))
        if limit is not None and len(out) >= limit:
            break
    if not out:
        raise ValueError(f"no readable samples in token shards {directory}")
    return out


def load_centroids(path: str | Path) -> np.ndarray:
    """Semantic k-means centroids (k, D) from a safetensors artifact: the tensor named
    ``centroids``, else its only 2-D tensor."""
    from safetensors.numpy import load_file

    try:
        tensors = load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types
        raise ValueError(f"cannot read centroids from {path}: {exc}") from exc
    if "centroids" in tensors:
        return tensors["centroids"].astype(np.float64)
    two_d = [v for v in tensors.values() if v.ndim == 2]
    if len(two_d) != 1:
        raise ValueError(
            f"{path}: expected a 'centroids' tensor or exactly one 2-D tensor, "
            f"has {sorted(tensors)}"
        )
    return two_d[0].astype(np.float64)


def write_generated(
    directory: str | Path,
    name: str,
    audio: np.ndarray,
    sample_rate: int,
    *,
    prompt: str,
    attributes: dict[str, Any] | None = None,
) -> Path:
    """Write ``<name>.wav`` and its ``<name>.json`` sidecar (each via a temporary file) in
    the convention ``musiclm evaluate --generated`` reads; returns the wav path."""

    import soundfile as sf

    from musiclm.datamodules.shards import atomic_file, atomic_write_json

    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"generated clip name must be a plain file stem, got {name!r}")
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    wav = np.asarray(audio, dtype=np.float32).reshape(-1)
    atomic_write_json(root / f"{name}.json", {"prompt": prompt, "attributes": attributes or {}})
    with atomic_file(root / f"{name}.wav", suffix=".wav") as tmp:
        sf.write(tmp, np.clip(wav, -1.0, 1.0), int(sample_rate), subtype="PCM_16")
    return root / f"{name}.wav"
