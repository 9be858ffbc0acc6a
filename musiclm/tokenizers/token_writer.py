"""Writing token shards: one output tar per input shard, its progress record, the manifest.

Used by ``musiclm prepare tokens`` (``musiclm.commands.prepare_tokens``). An output shard is
written under a temporary name and renamed when complete; its record in
``<split>/progress/`` is what marks the input shard done for a resumed run.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import time
from pathlib import Path

import numpy as np
from lightning.pytorch.callbacks import BasePredictionWriter

from musiclm.datamodules.shards import SCHEMA_VERSION, atomic_write_json, encode_npy

PREFIX = "tokens"


def out_name(audio_shard: str) -> str:
    return f"{PREFIX}-{Path(audio_shard).name}"


def record_path(split_out: Path, audio_shard: str) -> Path:
    return split_out / "progress" / (out_name(audio_shard)[: -len(".tar")] + ".json")


def unit_done(split_out: Path, audio_shard: str) -> bool:
    rec = record_path(split_out, audio_shard)
    if not rec.is_file():
        return False
    data = json.loads(rec.read_text())
    return data["file"] is None or (split_out / data["file"]).is_file()


def _small_int(a: np.ndarray, vocab: int) -> np.ndarray:
    return a.astype(np.int16 if vocab <= np.iinfo(np.int16).max else np.int32)


class TokenShardWriter(BasePredictionWriter):
    """Writes one output tar per input shard (temp name, rename) and its progress record."""

    def __init__(self, units: list[tuple[str, str, str]], vocab: dict[str, int]) -> None:
        super().__init__(write_interval="batch")
        self.units, self.vocab = units, vocab
        self.open: dict[int, dict] = {}

    def _start(self, unit: int) -> dict:
        split_out, shard, _ = self.units[unit]
        final = Path(split_out) / out_name(shard)
        tmp = final.with_name(f".{final.name}.tmp")
        tmp.unlink(missing_ok=True)  # left by a killed run; this unit is ours alone
        state = {"final": final, "tmp": tmp, "count": 0, "seconds": 0.0}
        state["tar"] = tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT)
        self.open[unit] = state
        return state

    def write_on_batch_end(
        self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx=0
    ) -> None:
        unit = batch["unit"]
        state = self.open.get(unit) or self._start(unit)
        now = time.time()
        for i, key in enumerate(batch["keys"]):
            meta = dict(batch["metas"][i])
            meta["seconds"] = round(batch["seconds"][i], 4)
            fields = {
                "semantic.npy": encode_npy(_small_int(prediction["semantic"][i], self.vocab["s"])),
                "acoustic.npy": encode_npy(_small_int(prediction["acoustic"][i], self.vocab["a"])),
                "caption.txt": batch["captions"][i].encode("utf-8"),
                "json": json.dumps(meta, ensure_ascii=False).encode("utf-8"),
            }
            if prediction["mulan"]:
                fields["mulan.npy"] = encode_npy(
                    _small_int(prediction["mulan"][i], self.vocab["m"])
                )
            if prediction.get("beat"):
                fields["beat.npy"] = encode_npy(prediction["beat"][i].astype(np.int16))
                fields["tempo.npy"] = encode_npy(prediction["tempo"][i].astype(np.int16))
            if prediction.get("mulan_embedding"):
                emb = prediction["mulan_embedding"][i].astype(np.float16)
                fields["mulan_embedding.npy"] = encode_npy(emb)
            if prediction.get("melody"):
                melody = _small_int(prediction["melody"][i], self.vocab["l"])
                fields["melody.npy"] = encode_npy(melody)
            for field, data in fields.items():
                info = tarfile.TarInfo(f"{key}.{field}")
                info.size, info.mtime, info.mode = len(data), now, 0o644
                state["tar"].addfile(info, io.BytesIO(data))
            state["count"] += 1
            state["seconds"] += batch["seconds"][i]
        if batch["last"]:
            self._finish(unit, batch["skipped"])

    def _finish(self, unit: int, skipped: dict) -> None:
        state = self.open.pop(unit)
        state["tar"].close()
        split_out, shard, _ = self.units[unit]
        name = None
        if state["count"]:
            with open(state["tmp"], "rb+") as f:
                os.fsync(f.fileno())
            os.replace(state["tmp"], state["final"])
            name = state["final"].name
        else:
            state["tmp"].unlink(missing_ok=True)
        record = {
            "file": name,
            "input": Path(shard).name,
            "num_samples": state["count"],
            "seconds": round(state["seconds"], 4),
            "skipped": skipped,
        }
        atomic_write_json(record_path(Path(split_out), shard), record)


def write_manifest(split_out: Path, inputs: list[str], header: dict) -> dict:
    """Build ``manifest.json`` of one split from its progress records."""
    shards, skipped, missing = [], [], []
    for shard in inputs:
        rec = record_path(split_out, shard)
        if not rec.is_file():
            missing.append(Path(shard).name)  # readers name these when they refuse the folder
            continue
        data = json.loads(rec.read_text())
        if data["file"] is not None:
            shards.append({k: data[k] for k in ("file", "num_samples", "seconds")})
        if data["skipped"]["count"]:
            skipped.append({"input": data["input"], **data["skipped"]})
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "kind": "tokens",
        "complete": not missing,
        "missing": missing,
        "num_samples": sum(s["num_samples"] for s in shards),
        "total_seconds": round(sum(s["seconds"] for s in shards), 3),
        "shards": shards,
        "skipped": skipped,
        **header,
    }
    atomic_write_json(split_out / "manifest.json", manifest)
    return manifest
