"""Corpus adapters: audio + caption + metadata from a folder, a JSONL manifest or MusicCaps.

Listing (:func:`list_entries`) is cheap and never fails on one bad item: an entry that cannot
be used (no caption, bad JSON line, duplicate id) carries an ``error``. Loading
(:func:`load_entry`) decodes, cuts, down-mixes and resamples, and raises :class:`SkipItem`
with a reason for missing, unreadable or too-short audio. :func:`iter_items` chains both and
records every skip with its reason.
"""

from __future__ import annotations

import ast
import csv
import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from math import gcd
from pathlib import Path

import numpy as np

SOURCES = ("demo", "folder", "jsonl", "musiccaps")
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif")
SPLITS = ("train", "valid", "test")
MUSICCAPS_COLUMNS = ("ytid", "start_s", "end_s", "aspect_list", "caption")


class SkipItem(Exception):
    """An item that cannot be used; the message is the reason."""


@dataclass
class Entry:
    """One corpus item before its audio is read."""

    id: str
    name: str  # how reports refer to it: a path or ``file:line``
    caption: str = ""
    path: str | None = None
    split: str | None = None
    start_s: float | None = None
    end_s: float | None = None
    meta: dict = field(default_factory=dict)
    error: str | None = None


@dataclass
class Item:
    """A loaded item: mono float32 audio at ``sample_rate``, caption, metadata."""

    id: str
    audio: np.ndarray
    sample_rate: int
    caption: str
    meta: dict


def clean_id(text: str) -> str:
    """A WebDataset-safe key: letters, digits, ``_`` and ``-`` only (no dots)."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_") or "item"


def split_for(group: str, valid_fraction: float, test_fraction: float) -> str:
    """A stable split for items without one, from a hash of ``group`` (e.g. the piece id)."""
    u = int(hashlib.sha1(group.encode("utf-8")).hexdigest()[:12], 16) / 16**12
    return (
        "valid" if u < valid_fraction else "test" if u < valid_fraction + test_fraction else "train"
    )


def _unique(entries: list[Entry]) -> list[Entry]:
    seen: set[str] = set()
    for e in entries:
        if e.id in seen and e.error is None:
            e.error = f"duplicate id {e.id!r}"
        seen.add(e.id)
    return entries


def _folder_entries(root: Path, captions: bool = True) -> list[Entry]:
    if not root.is_dir():
        raise FileNotFoundError(f"--input {root}: not a folder (source 'folder')")
    entries = []
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS)
    for p in files:
        rel = p.relative_to(root)
        e = Entry(id=clean_id(str(rel.with_suffix(""))), name=str(rel), path=str(p))
        e.meta = {"path": str(rel)}
        txt, js = p.with_suffix(".txt"), p.with_suffix(".json")
        try:
            if js.is_file():
                side = json.loads(js.read_text(encoding="utf-8"))
                if not isinstance(side, dict) or not isinstance(side.get("caption", ""), str):
                    raise ValueError("sidecar JSON needs a string 'caption'")
                if captions and "caption" not in side:
                    raise ValueError("sidecar JSON needs a string 'caption'")
                e.caption = side.pop("caption", "").strip()
                e.split = side.pop("split", None)
                e.meta.update(side)
            elif txt.is_file():
                e.caption = txt.read_text(encoding="utf-8").strip()
            elif captions:
                e.error = f"no caption sidecar ({txt.name} or {js.name})"
        except (ValueError, UnicodeDecodeError) as exc:
            e.error = f"bad caption sidecar: {exc}"
        if e.error is None and not e.caption and captions:
            e.error = "empty caption"
        entries.append(e)
    return entries


def _jsonl_entries(manifest: Path, captions: bool = True) -> list[Entry]:
    if not manifest.is_file():
        raise FileNotFoundError(f"--input {manifest}: no such JSONL manifest")
    entries = []
    try:
        lines = manifest.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise ValueError(f"--input {manifest}: not UTF-8 text ({exc})") from None
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{manifest.name}:{n}"
        try:
            row = json.loads(line)
            if not isinstance(row, dict):
                raise ValueError("not a JSON object")
            audio = row.pop("audio")
            caption = row.pop("caption") if captions else row.pop("caption", "")
            if not isinstance(audio, str) or not isinstance(caption, str):
                raise ValueError("'audio' and 'caption' must be strings")
            # a caption of blanks would become a training pair with no text
            caption = caption.strip()
            if not audio.strip() or (captions and not caption):
                raise ValueError("'audio' and 'caption' must not be empty")
        except (ValueError, KeyError) as exc:
            entries.append(Entry(id=clean_id(f"line{n}"), name=where, error=f"bad line: {exc}"))
            continue
        path = Path(audio) if Path(audio).is_absolute() else manifest.parent / audio
        e = Entry(
            id=clean_id(str(row.pop("id", Path(audio).stem))),
            name=where,
            caption=caption,
            path=str(path),
            split=row.pop("split", None),
            meta={"path": audio, **row},
        )
        entries.append(e)
    return entries


def _musiccaps_entries(csv_path: Path, audio_dir: Path | None) -> list[Entry]:
    if audio_dir is None:
        raise ValueError("source 'musiccaps' needs --audio-dir: the folder of <ytid>.<ext> files")
    if not csv_path.is_file():
        raise FileNotFoundError(f"--input {csv_path}: no such MusicCaps CSV")
    if not audio_dir.is_dir():
        raise FileNotFoundError(f"--audio-dir {audio_dir}: not a folder")
    available = {p.stem: p for p in sorted(audio_dir.iterdir()) if p.suffix in AUDIO_EXTENSIONS}
    entries = []
    with csv_path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        try:
            fieldnames = reader.fieldnames or []
            missing = [c for c in MUSICCAPS_COLUMNS if c not in fieldnames]
            if missing:
                raise ValueError(f"{csv_path}: MusicCaps CSV lacks columns {missing}")
            for n, row in enumerate(reader, start=2):
                entries.append(_musiccaps_entry(row, f"{csv_path.name}:{n}", audio_dir, available))
        except (csv.Error, UnicodeDecodeError) as exc:
            raise ValueError(f"{csv_path}:{reader.line_num}: unreadable CSV ({exc})") from None
    return entries


def _musiccaps_time(row: dict, column: str) -> float:
    value = float(row[column])
    if value != value or value in (float("inf"), float("-inf")) or value < 0:
        raise ValueError(f"{column}={row[column]!r} is not a finite time >= 0")
    return value


def _musiccaps_entry(row: dict, where: str, audio_dir: Path, available: dict) -> Entry:
    """One MusicCaps row; a malformed row is an entry with an ``error`` (a counted skip)."""
    ytid = row.get("ytid") or ""
    e = Entry(id=clean_id(ytid), name=f"{where} ({ytid})", caption=(row["caption"] or "").strip())
    # csv.DictReader fills the columns a short row lacks with None
    absent = [c for c in MUSICCAPS_COLUMNS if row.get(c) is None]
    if absent:
        e.error = f"bad row: no value for {', '.join(absent)}"
        return e
    try:
        e.start_s, e.end_s = _musiccaps_time(row, "start_s"), _musiccaps_time(row, "end_s")
        if e.end_s <= e.start_s:
            raise ValueError(f"end_s={e.end_s:g} is not after start_s={e.start_s:g}")
        aspects = ast.literal_eval(row["aspect_list"]) if row["aspect_list"] else []
        if not isinstance(aspects, list):
            raise ValueError("aspect_list is not a list")
    except (ValueError, SyntaxError, MemoryError, RecursionError) as exc:
        e.error = f"bad row: {exc}"
        return e
    e.meta = {
        "ytid": ytid,
        "start_s": e.start_s,
        "end_s": e.end_s,
        "aspect_list": [str(a) for a in aspects],
    }
    for extra in ("audioset_positive_labels", "author_id", "is_balanced_subset"):
        if row.get(extra) is not None:
            e.meta[extra] = row[extra]
    if row.get("is_audioset_eval") is not None:
        e.meta["is_audioset_eval"] = row["is_audioset_eval"].strip().lower() == "true"
    if not ytid:
        e.error = "bad row: empty ytid"
    elif ytid in available:
        e.path = str(available[ytid])
    else:
        e.error = f"audio missing: no {ytid}.<ext> in {audio_dir}"
    if not e.caption and e.error is None:
        e.error = "empty caption"
    return e


def list_entries(
    source: str,
    input: str | Path,
    *,
    audio_dir: str | Path | None = None,
    valid_fraction: float = 0.05,
    test_fraction: float = 0.05,
    captions: bool = True,
) -> list[Entry]:
    """All entries of a corpus, each with a split (its own, or a stable hash-based one).

    ``captions=False`` keeps folder and JSONL items without a caption (caption ``""``): audio
    for every stage but MuLan, whose text side then comes from a pretrained joint embedding.
    """
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; choose one of {', '.join(SOURCES)}")
    input = Path(input)
    if source == "folder":
        entries = _folder_entries(input, captions)
    elif source in ("jsonl", "demo"):
        entries = _jsonl_entries(input, captions)
    else:
        entries = _musiccaps_entries(input, Path(audio_dir) if audio_dir else None)
    for e in entries:
        e.meta["source"] = source
        if e.split is not None and e.split not in SPLITS and e.error is None:
            e.error = f"split {e.split!r} is not one of {SPLITS}"
        if e.split not in SPLITS:
            # group by piece when known so one piece never lands in two splits
            attributes = e.meta.get("attributes")
            piece = attributes.get("piece") if isinstance(attributes, dict) else None
            group = str(piece if piece is not None else e.id)
            e.split = split_for(group, valid_fraction, test_fraction)
    return _unique(entries)


def _resample(audio: np.ndarray, sr: int, target: int) -> np.ndarray:
    if sr == target:
        return audio
    from scipy.signal import resample_poly

    g = gcd(sr, target)
    return resample_poly(audio, target // g, sr // g).astype(np.float32)


def load_entry(entry: Entry, *, sample_rate: int, min_seconds: float = 1.0) -> Item:
    """Read, cut, down-mix and resample one entry; :class:`SkipItem` says why it cannot."""
    import soundfile as sf

    if entry.error:
        raise SkipItem(entry.error)
    if entry.path is None or not Path(entry.path).is_file():
        raise SkipItem(f"audio missing: {entry.path}")
    for name in ("start_s", "end_s"):
        value = getattr(entry, name)
        if value is not None and not (np.isfinite(value) and value >= 0):
            raise SkipItem(f"bad {name}: {value!r}")
    try:
        with sf.SoundFile(entry.path) as f:
            sr = f.samplerate
            start = int(round((entry.start_s or 0.0) * sr))
            stop = None if entry.end_s is None else int(round(entry.end_s * sr))
            if start:
                f.seek(min(start, f.frames))
            frames = -1 if stop is None else max(0, stop - start)
            audio = f.read(frames, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError, ValueError) as exc:
        raise SkipItem(f"unreadable audio {entry.path}: {exc}") from None
    audio = audio.mean(axis=1)
    if not np.isfinite(audio).all():
        raise SkipItem(f"non-finite samples in {entry.path}")
    seconds = len(audio) / sr
    if seconds < min_seconds:
        raise SkipItem(f"too short: {seconds:.2f} s < {min_seconds} s")
    audio = np.clip(_resample(audio, sr, sample_rate), -1.0, 1.0).astype(np.float32)
    meta = {
        "id": entry.id,
        **entry.meta,
        "split": entry.split,
        "duration_s": round(len(audio) / sample_rate, 4),
    }
    return Item(entry.id, audio, sample_rate, entry.caption, meta)


def iter_items(
    source: str,
    input: str | Path,
    *,
    sample_rate: int,
    audio_dir: str | Path | None = None,
    min_seconds: float = 1.0,
    skipped: list[dict] | None = None,
) -> Iterator[Item]:
    """Every usable item of a corpus; unusable ones are appended to ``skipped`` as
    ``{"item", "reason"}`` instead of raising."""
    skipped = [] if skipped is None else skipped
    for entry in list_entries(source, input, audio_dir=audio_dir):
        try:
            yield load_entry(entry, sample_rate=sample_rate, min_seconds=min_seconds)
        except SkipItem as exc:
            skipped.append({"item": entry.name, "reason": str(exc)})
