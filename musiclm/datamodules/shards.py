"""WebDataset shard helpers shared by audio and token shards.

A shard folder holds ``<prefix>-<rank:03d>-<index:06d>.tar`` files and a ``manifest.json``.
Every tar is written under a temporary name and renamed when complete, so a folder never holds
a half-written shard under a final name. Arrays are stored as ``.npy`` (read back with
``allow_pickle=False``), audio as 16-bit FLAC, captions as text, metadata as JSON.

Reading skips corrupt tars and samples instead of failing: ``iter_audio_samples`` takes an
optional :class:`SkipCounter` which records how many were skipped and why.
"""

from __future__ import annotations

import io
import json
import os
import re
import tarfile
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

SCHEMA_VERSION = 1
SHARD_FILE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def file_mode() -> int:
    """The mode a plain ``open`` would give a new file under the current umask."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


@contextmanager
def atomic_file(path: str | Path, *, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a hidden temporary path beside ``path`` to write; on success it is fsynced,
    given the umask's mode (``mkstemp`` makes it 0600) and renamed onto ``path``, so a
    reader sees the old file or the whole new one. On an error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_stale_temps(folder: str | Path, stems: list[str]) -> int:
    """Remove the temporaries :func:`atomic_file` left in ``folder`` for outputs named
    ``<stem>.<ext>`` (a writer killed mid-write leaves ``.<stem>.<ext>.<random><suffix>``).
    Call it only while holding the folder's lock, so no live writer owns them. Returns how
    many were removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    prefixes = tuple(f".{stem}." for stem in stems)
    removed = 0
    for entry in folder.iterdir():
        if entry.name.startswith(prefixes) and entry.is_file():
            entry.unlink(missing_ok=True)
            removed += 1
    return removed


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` through :func:`atomic_file`."""
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as JSON to ``path`` through :func:`atomic_file`."""
    atomic_write_text(path, json.dumps(obj, indent=1, ensure_ascii=False) + "\n")


class IncompleteShards(ValueError):
    """A shard folder whose writer has not finished on every rank (``complete: false``)."""


def read_manifest(directory: str | Path, *, allow_incomplete: bool = False) -> dict:
    """Read ``directory/manifest.json``; a missing or malformed manifest raises naming the path.

    A manifest whose writer has not finished (``complete: false``: a multi-rank ``prepare``
    with a rank still running or killed) raises :class:`IncompleteShards` naming what is
    missing, so no later step trains or measures on part of the data unawares; only a
    writer's own progress report passes ``allow_incomplete``.
    """
    path = Path(directory) / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"no shard manifest at {path}: is {directory} a shard folder written by "
            "`musiclm prepare audio` or `musiclm prepare tokens` (one folder per split)?"
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"invalid JSON in shard manifest {path}: {exc}") from exc
    if not isinstance(manifest, dict):
        raise ValueError(f"shard manifest {path} must hold a JSON object")
    for key in ("schema_version", "shards"):
        if key not in manifest:
            raise ValueError(f"shard manifest {path} lacks the key {key!r}")
    if manifest["schema_version"] != SCHEMA_VERSION:
        raise ValueError(
            f"shard manifest {path} has schema_version {manifest['schema_version']!r}; "
            f"this musiclm reads version {SCHEMA_VERSION}"
        )
    if not isinstance(manifest["shards"], list) or not all(
        isinstance(s, dict) and "file" in s for s in manifest["shards"]
    ):
        raise ValueError(f"shard manifest {path}: 'shards' must be a list of {{'file': ...}}")
    for entry in manifest["shards"]:
        # WebDataset opens a ``pipe:CMD`` URL through a shell: only plain names in the folder
        name = entry["file"]
        if not isinstance(name, str) or not SHARD_FILE.fullmatch(name) or ".." in name:
            raise ValueError(
                f"shard manifest {path}: shard entry {name!r} is not a plain file name inside "
                "the folder (letters, digits, '.', '_', '-'; no path, URL or 'pipe:')"
            )
    if not allow_incomplete:
        check_complete(directory, manifest)
    return manifest


def check_complete(directory: str | Path, manifest: dict) -> None:
    """Raise :class:`IncompleteShards` unless ``manifest`` says its folder is complete.

    A manifest without the key (written by hand or by ``write_synthetic_shards``) counts as
    complete; ``missing`` (what the writer had not finished) is named when it is recorded."""
    complete = manifest.get("complete", True)
    if complete is True:
        return
    path = Path(directory) / "manifest.json"
    if complete is not False:
        raise ValueError(f"shard manifest {path}: 'complete' must be true or false")
    missing = manifest.get("missing")
    if isinstance(missing, list) and missing:
        shown = ", ".join(map(str, missing[:3]))
        shown += f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        what = f"{len(missing)} {'part' if len(missing) == 1 else 'parts'} missing ({shown})"
    else:
        what = "what is missing is not recorded"
    kind = manifest.get("kind")
    writer = f"`musiclm prepare {kind}`" if kind in ("audio", "tokens") else "the"
    raise IncompleteShards(
        f"shard folder {directory} is incomplete: {path.name} says complete=false, {what}; "
        f"{writer} run that writes it has not finished on every rank: rerun the same command "
        "(every rank) to finish it"
    )


def check_shards_exist(directory: str | Path, manifest: dict) -> None:
    """Raise ``FileNotFoundError`` naming the folder and the shards its manifest lists but
    that are not there (a stream over them would only skip)."""
    missing = [s["file"] for s in manifest["shards"] if not (Path(directory) / s["file"]).is_file()]
    if missing:
        shown = ", ".join(missing[:3]) + (
            f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        )
        raise FileNotFoundError(
            f"{directory}: {len(missing)} of {len(manifest['shards'])} shards listed in "
            f"manifest.json are missing ({shown})"
        )


def shard_paths(directory: str | Path, manifest: dict | None = None) -> list[str]:
    """Paths of the shards a manifest lists, in order."""
    manifest = read_manifest(directory) if manifest is None else manifest
    return [str(Path(directory) / s["file"]) for s in manifest["shards"]]


# ----------------------------------------------------------------------------- encoding


def encode_npy(arr: np.ndarray) -> bytes:
    """``.npy`` bytes of an array (object arrays refused: they would need pickle)."""
    arr = np.asarray(arr)
    if arr.dtype == object:
        raise TypeError("encode_npy: object arrays need pickle and are refused")
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def decode_npy(data: bytes) -> np.ndarray:
    """Array from ``.npy`` bytes, never unpickling."""
    return np.load(io.BytesIO(data), allow_pickle=False)


def encode_flac(audio: np.ndarray, sample_rate: int) -> bytes:
    """Mono 16-bit FLAC bytes of float audio in [-1, 1] (values outside are clipped)."""
    import soundfile as sf

    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim != 1:
        raise ValueError(f"encode_flac: expected mono audio [T], got shape {audio.shape}")
    buf = io.BytesIO()
    sf.write(buf, np.clip(audio, -1.0, 1.0), int(sample_rate), format="FLAC", subtype="PCM_16")
    return buf.getvalue()


def decode_flac(data: bytes) -> tuple[np.ndarray, int]:
    """(float32 audio [T] (channels averaged), sample rate) from FLAC bytes."""
    import soundfile as sf

    audio, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    return audio.mean(axis=1).astype(np.float32, copy=False), int(sr)


def _encode_value(name: str, value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, np.ndarray):
        return encode_npy(value)
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False).encode("utf-8")
    raise TypeError(f"ShardWriter: cannot encode field {name!r} of type {type(value).__name__}")


# ----------------------------------------------------------------------------- writing


def shard_name(prefix: str, rank: int, index: int) -> str:
    """File name of shard ``index`` written by ``rank``."""
    return f"{prefix}-{rank:03d}-{index:06d}.tar"


class ShardWriter:
    """Write samples into ``prefix-<rank>-<index>.tar`` shards of ``max_count`` samples each.

    ``write({"__key__": "id", "audio.flac": bytes, "caption.txt": str, "json": dict,
    "codes.npy": ndarray})``: values are bytes, str, arrays (``.npy``) or dicts/lists (JSON).
    A shard is written to a temporary name and renamed once it holds ``max_count`` samples (or
    when the writer closes normally); leaving the ``with`` block by an exception discards the
    unfinished shard. ``completed`` lists ``{"file", "num_samples", "seconds"}`` of every
    shard this writer finished.
    """

    def __init__(
        self,
        directory: str | Path,
        *,
        prefix: str,
        max_count: int = 64,
        rank: int = 0,
        start_index: int = 0,
    ) -> None:
        if max_count < 1:
            raise ValueError(f"ShardWriter: max_count must be >= 1, got {max_count}")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.prefix, self.max_count, self.rank = prefix, max_count, rank
        self.index = start_index
        self.completed: list[dict] = []
        self._tar: tarfile.TarFile | None = None
        self._tmp: Path | None = None
        self._count = 0
        self._seconds = 0.0
        self._keys: set[str] = set()

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def _open(self) -> None:
        name = shard_name(self.prefix, self.rank, self.index)
        self._tmp = self.directory / f".{name}.{os.getpid()}.tmp"
        self._tar = tarfile.open(self._tmp, "w", format=tarfile.USTAR_FORMAT)
        self._count, self._seconds, self._keys = 0, 0.0, set()

    def write(self, sample: dict[str, Any], *, seconds: float = 0.0) -> None:
        """Add one sample; ``seconds`` (its audio duration) is summed into the shard entry."""
        key = sample.get("__key__")
        if not isinstance(key, str) or not key or "." in key or "/" in key:
            raise ValueError(
                f"ShardWriter: sample key must be a non-empty str without dots or "
                f"slashes, got {key!r}"
            )
        if self._tar is None:
            self._open()
        if key in self._keys:
            raise ValueError(f"ShardWriter: duplicate key {key!r} in one shard")
        for field, value in sample.items():
            if field.startswith("__"):
                continue
            data = _encode_value(field, value)
            info = tarfile.TarInfo(f"{key}.{field}")
            info.size, info.mode = len(data), 0o644  # mtime 0: reproducible tars
            self._tar.addfile(info, io.BytesIO(data))
        self._keys.add(key)
        self._count += 1
        self._seconds += float(seconds)
        if self._count >= self.max_count:
            self._finish()

    def _finish(self) -> None:
        assert self._tar is not None and self._tmp is not None
        self._tar.close()
        with open(self._tmp, "rb+") as f:
            os.fsync(f.fileno())
        name = shard_name(self.prefix, self.rank, self.index)
        os.replace(self._tmp, self.directory / name)
        self.completed.append(
            {"file": name, "num_samples": self._count, "seconds": round(self._seconds, 4)}
        )
        self._tar, self._tmp = None, None
        self.index += 1

    def close(self) -> None:
        """Finish the current partial shard (if any samples are in it)."""
        if self._tar is not None:
            if self._count:
                self._finish()
            else:
                self.abort()

    def abort(self) -> None:
        """Discard the unfinished shard."""
        if self._tar is not None:
            self._tar.close()
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)
        self._tar, self._tmp = None, None


# ----------------------------------------------------------------------------- reading


class StreamStarved(ValueError):
    """A stream skipped too many samples in a row to feed training (the message says why)."""


class SkipCounter:
    """A WebDataset exception handler that warns, counts and keeps going.

    Pass ``counter.handler`` as ``handler=``; ``count`` is the number of skipped tars/samples,
    ``by_reason`` their count per reason (the error type and its message up to the sample's
    name) and ``reasons`` the first ``keep`` messages. WebDataset reports a truncated tar
    twice (the broken member, then the tar stream itself); the repeat is counted once.

    Resampled shards never run dry, so a stream with no valid sample would skip forever:
    with ``limit``, more than ``limit`` skips without a good sample between them (``ok``
    marks one) raise :class:`StreamStarved` naming ``where`` and the counts by reason.
    """

    def __init__(
        self, keep: int = 100, warn: bool = True, *, limit: int | None = None, where: str = ""
    ) -> None:
        self.count = 0
        self.consecutive = 0
        self.reasons: list[str] = []
        self.by_reason: dict[str, int] = {}
        self.keep, self.warn, self.limit, self.where = keep, warn, limit, where
        self._last: tuple[str, str, str] = ("", "", "")  # type, message head, full message

    def ok(self, sample: Any) -> Any:
        """Mark a good sample (ends a run of skips); returns it, for use as a map stage."""
        self.consecutive = 0
        return sample

    def handler(self, exn: BaseException) -> bool:
        head = str(exn.args[0]).split(" @ ")[0] if exn.args else ""
        url = str(exn.args[-1]) if len(exn.args) > 1 else ""
        message = f"{type(exn).__name__}: {exn}"
        last_type, last_head, last_message = self._last
        self._last = (type(exn).__name__, head, message)
        if (type(exn).__name__, head) == (last_type, last_head) and url and url in last_message:
            return True
        self.count += 1
        self.consecutive += 1
        reason = _reason(exn)
        self.by_reason[reason] = self.by_reason.get(reason, 0) + 1
        if len(self.reasons) < self.keep:
            self.reasons.append(message)
        if self.warn:
            warnings.warn(f"skipping a corrupt shard or sample: {message}", stacklevel=2)
        if self.limit is not None and self.consecutive > self.limit:
            counts = "; ".join(f"{n} x {r}" for r, n in sorted(self.by_reason.items()))
            raise StreamStarved(
                f"{self.where or 'shard stream'}: {self.consecutive} samples in a row could "
                f"not be read, no valid sample to train on (skipped by reason: {counts})"
            )
        return True

    __call__ = handler


def _reason(exn: BaseException) -> str:
    """A skip's reason without the sample that had it: ``sample 'k' in URL: why`` -> why."""
    text = str(exn.args[0]) if exn.args else str(exn)
    text = re.sub(r"^sample '[^']*' in \S+:? ?", "", text)
    text = text.split(" @ ")[0]
    return f"{type(exn).__name__}: {text[:160]}"


def decode_audio_sample(sample: dict) -> dict:
    """Decode a raw WebDataset audio sample into ``{"key", "audio", "sample_rate", "caption",
    "meta"}``; a sample lacking a field raises naming it and its shard."""
    where = f"sample {sample.get('__key__')!r} in {sample.get('__url__')}"
    for field in ("audio.flac", "caption.txt", "json"):
        if field not in sample:
            raise ValueError(f"{where} lacks {field!r} (has {sorted(sample)})")
    audio, sr = decode_flac(sample["audio.flac"])
    if audio.size == 0:
        raise ValueError(f"{where}: empty audio")
    meta = json.loads(sample["json"].decode("utf-8"))
    return {
        "key": sample["__key__"],
        "audio": audio,
        "sample_rate": sr,
        "caption": sample["caption.txt"].decode("utf-8"),
        "meta": meta,
    }


def _rank_info() -> tuple[int, int]:
    import webdataset as wds

    rank, world, worker, workers = wds.utils.pytorch_worker_info()
    return rank * workers + worker, world * workers


def iter_audio_samples(
    directory: str | Path,
    *,
    split_by_rank: bool = False,
    skips: SkipCounter | None = None,
) -> Iterator[dict]:
    """Yield every decoded sample of an audio shard folder, shard by shard in manifest order.

    Each item is ``{"key", "audio": float32 [T], "sample_rate", "caption", "meta"}``. With
    ``split_by_rank`` each (distributed rank, dataloader worker) pair takes every n-th shard.
    Corrupt tars and samples are skipped; pass ``skips`` to learn how many and why.
    """
    import webdataset as wds

    skips = SkipCounter() if skips is None else skips
    urls = shard_paths(directory)
    if split_by_rank:
        me, n = _rank_info()
        urls = urls[me::n]
    if not urls:
        return
    pipeline = wds.DataPipeline(
        wds.SimpleShardList(urls),
        wds.tarfile_to_samples(handler=skips.handler),
        wds.map(decode_audio_sample, handler=skips.handler),
    )
    yield from pipeline


def iter_token_samples(directory: str | Path) -> Iterator[dict]:
    """Yield every token sample of a token shard folder in manifest order, as whole clips:
    ``{"key", <stream>: int64 tensor}`` for each ``<stream>.npy`` it holds (``semantic``
    (F_s,), ``acoustic`` (Q, F_a), ``mulan`` (Q_m,), ``melody``). For analyses that need
    uncropped clips; training reads crops through ``TokenDataModule``."""
    import torch
    import webdataset as wds

    urls = shard_paths(directory)
    for sample in wds.DataPipeline(wds.SimpleShardList(urls), wds.tarfile_to_samples()):
        out: dict[str, Any] = {"key": sample["__key__"]}
        for field, data in sample.items():
            if field.endswith(".npy"):
                out[field.removesuffix(".npy")] = torch.from_numpy(decode_npy(data).astype("int64"))
        yield out
