"""``musiclm prepare audio``: a corpus -> WebDataset audio shards, one folder per split.

Output: ``OUT/<split>/audio-<rank>-<index>.tar`` and ``OUT/<split>/manifest.json``. Each rank
cuts its slice of every split into fixed chunks of ``--shard-size`` entries; chunk ``j``
becomes shard ``j`` (minus skipped items). A finished chunk leaves a small record in
``OUT/<split>/progress/``; a rerun keeps those shards and redoes only the others, so a killed
job resumes with nothing lost or duplicated. The manifest is rewritten from the records by
every rank when it finishes; ``complete`` says whether every rank's chunks are in it and
``missing`` names the chunks' shards still to come (readers refuse an incomplete folder).
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from musiclm.datamodules.corpora import SPLITS, Entry, SkipItem, list_entries, load_entry
from musiclm.datamodules.shards import (
    SCHEMA_VERSION,
    ShardWriter,
    atomic_write_json,
    encode_flac,
    shard_name,
)
from musiclm.folder_lock import folder_lock
from musiclm.usage import check_number

PREFIX = "audio"


def rank_from_env() -> tuple[int, int]:
    """(rank, world size) from torchrun's or Lightning's environment (0, 1 when absent)."""
    env = os.environ
    world = int(env.get("WORLD_SIZE", "1"))
    if "RANK" in env:
        return int(env["RANK"]), world
    local_world = int(env.get("LOCAL_WORLD_SIZE", "1"))
    return int(env.get("NODE_RANK", "0")) * local_world + int(env.get("LOCAL_RANK", "0")), world


def _chunks(entries: list[Entry], size: int) -> list[list[Entry]]:
    return [entries[i : i + size] for i in range(0, len(entries), size)]


def _chunk_key(entries: list[Entry], sample_rate: int, min_seconds: float) -> str:
    """What a chunk's shard depends on: its items and the settings (to spot a changed job)."""
    text = "\n".join(f"{e.id}\t{e.name}" for e in entries) + f"\n{sample_rate}\n{min_seconds}"
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


def _write_chunk(job: tuple[Path, int, int, list[Entry], int, float]) -> dict:
    """Load a chunk's entries and write them as one shard plus its progress record."""
    split_dir, rank, index, entries, sample_rate, min_seconds = job
    skipped, items = [], []
    for e in entries:
        try:
            items.append(load_entry(e, sample_rate=sample_rate, min_seconds=min_seconds))
        except SkipItem as exc:
            skipped.append({"item": e.name, "reason": str(exc)})
    record = {"file": None, "num_samples": 0, "seconds": 0.0, "skipped": skipped}
    if items:
        with ShardWriter(
            split_dir, prefix=PREFIX, max_count=len(items), rank=rank, start_index=index
        ) as w:
            for it in items:
                w.write(
                    {
                        "__key__": it.id,
                        "audio.flac": encode_flac(it.audio, sample_rate),
                        "caption.txt": it.caption,
                        "json": it.meta,
                    },
                    seconds=len(it.audio) / sample_rate,
                )
        record.update(w.completed[0])
    record["entries"] = len(entries)
    record["chunk_key"] = _chunk_key(entries, sample_rate, min_seconds)
    atomic_write_json(_record_path(split_dir, rank, index), record)
    return record


def _record_path(split_dir: Path, rank: int, index: int) -> Path:
    return split_dir / "progress" / shard_name(PREFIX, rank, index).replace(".tar", ".json")


def _chunk_done(split_dir: Path, rank: int, index: int, key: str) -> bool:
    """Whether a previous run finished this chunk; a record of another job is an error."""
    rec = _record_path(split_dir, rank, index)
    if not rec.is_file():
        return False
    try:
        data = json.loads(rec.read_text())
    except json.JSONDecodeError:
        return False
    if data.get("chunk_key") != key:
        raise ValueError(
            f"{rec} was written for other items or settings (corpus, --shard-size, "
            f"--sample-rate, --min-seconds, --world-size): resume with the same command, or "
            f"write to a new --out"
        )
    return data["file"] is None or (split_dir / data["file"]).is_file()


def write_manifest(split_dir: Path, *, sample_rate: int, source: dict, expected: list[str]) -> dict:
    """Rebuild ``manifest.json`` of one split from the progress records of every rank.

    ``expected`` names the shard of every chunk of every rank; those without a record are
    listed as ``missing`` and the manifest is ``complete`` only when none is (readers refuse
    it otherwise). Ranks finish without a barrier, so a rank that read the records just
    before another rank's last one appeared could rename its older manifest over the newer
    one. Rereading the records after the write, and writing again while they changed, closes
    that gap: any record that appears later belongs to a rank whose own write comes after
    this one.
    """
    while True:
        records = sorted((split_dir / "progress").glob(f"{PREFIX}-*.json"))
        have = {rec.name.replace(".json", ".tar") for rec in records}
        missing = [name for name in expected if name not in have]
        manifest = _manifest_from(records, sample_rate=sample_rate, source=source, missing=missing)
        atomic_write_json(split_dir / "manifest.json", manifest)
        if sorted((split_dir / "progress").glob(f"{PREFIX}-*.json")) == records:
            return manifest


def _manifest_from(
    records: list[Path], *, sample_rate: int, source: dict, missing: list[str]
) -> dict:
    shards, skipped = [], []
    for rec in records:
        data = json.loads(rec.read_text())
        skipped += data["skipped"]
        if data["file"]:
            shards.append({k: data[k] for k in ("file", "num_samples", "seconds")})
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "kind": "audio",
        "sample_rate": sample_rate,
        "num_samples": sum(s["num_samples"] for s in shards),
        "total_seconds": round(sum(s["seconds"] for s in shards), 3),
        "shards": shards,
        "skipped": skipped,
        "complete": not missing,
        "missing": missing,
        "source": source,
    }
    return manifest


def _plan(
    entries: list[Entry],
    out: Path,
    rank: int,
    world_size: int,
    shard_size: int,
    sample_rate: int,
    min_seconds: float,
) -> tuple[list[tuple], dict[str, list[str]]]:
    """This rank's chunks still to write, and the shard name of every chunk of every rank
    by split (what a complete manifest holds)."""
    by_split = {s: [e for e in entries if e.split == s] for s in SPLITS}
    jobs, expected = [], {}
    for split, items in by_split.items():
        if not items:
            continue
        split_dir = out / split
        (split_dir / "progress").mkdir(parents=True, exist_ok=True)
        for stale in split_dir.glob(f".{PREFIX}-{rank:03d}-*.tmp"):
            stale.unlink()  # a killed run's unfinished shard
        expected[split] = [
            shard_name(PREFIX, r, i)
            for r in range(world_size)
            for i in range(len(_chunks(items[r::world_size], shard_size)))
        ]
        for index, chunk in enumerate(_chunks(items[rank::world_size], shard_size)):
            key = _chunk_key(chunk, sample_rate, min_seconds)
            if not _chunk_done(split_dir, rank, index, key):
                jobs.append((split_dir, rank, index, chunk, sample_rate, min_seconds))
    return jobs, expected


def prepare_audio(
    source: str,
    input: str | Path,
    out: str | Path,
    *,
    sample_rate: int = 16000,
    audio_dir: str | Path | None = None,
    min_seconds: float = 1.0,
    shard_size: int = 64,
    workers: int = 1,
    rank: int = 0,
    world_size: int = 1,
    valid_fraction: float = 0.05,
    test_fraction: float = 0.05,
    captions: bool = True,
    progress: bool = True,
) -> dict[str, dict]:
    """Write this rank's shards of every split and return the manifests by split.

    ``captions=False`` keeps items without a caption (an audio-only corpus)."""
    from tqdm import tqdm

    if not 0 <= rank < world_size:
        raise ValueError(f"--rank {rank} must be in [0, --world-size {world_size})")
    check_number("--shard-size", shard_size, low=1)
    check_number("--sample-rate", sample_rate, low=1)
    check_number("--min-seconds", min_seconds, low=0)
    check_number("--workers", workers, low=1)
    check_number("--valid-fraction", valid_fraction, low=0, high=1)
    check_number("--test-fraction", test_fraction, low=0, high=1)
    if valid_fraction + test_fraction >= 1:
        # every item without a split would land in valid or test: no training data
        raise ValueError(
            f"--valid-fraction {valid_fraction:g} + --test-fraction {test_fraction:g} must be "
            "below 1, or nothing is left for the train split"
        )
    out = Path(out)
    # one process per rank: a second `prepare audio` of the same rank into OUT is refused
    with folder_lock(out, slot=f"rank{rank}"):
        entries = list_entries(
            source,
            input,
            audio_dir=audio_dir,
            valid_fraction=valid_fraction,
            test_fraction=test_fraction,
            captions=captions,
        )
        source_info = {
            "kind": source,
            "input": str(input),
            "audio_dir": audio_dir and str(audio_dir),
        }
        source_info |= {
            "min_seconds": min_seconds,
            "shard_size": shard_size,
            "world_size": world_size,
        }
        jobs, expected = _plan(entries, out, rank, world_size, shard_size, sample_rate, min_seconds)
        todo = sum(len(j[3]) for j in jobs)
        bar = tqdm(
            total=todo, desc=f"prepare audio (rank {rank})", unit="item", disable=not progress
        )
        if workers > 1 and len(jobs) > 1:
            with ProcessPoolExecutor(workers) as pool:
                for job, _ in zip(jobs, pool.map(_write_chunk, jobs), strict=True):
                    bar.update(len(job[3]))
        else:
            for job in jobs:
                _write_chunk(job)
                bar.update(len(job[3]))
        bar.close()
        return {
            split: write_manifest(
                out / split, sample_rate=sample_rate, source=source_info, expected=expected[split]
            )
            for split in expected
        }
