"""Files the demo writes between commands: PIPELINE.yaml, the held-out prompts, sidecars."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from musiclm.datamodules.shards import atomic_write_json, atomic_write_text
from musiclm.demo.paths import DemoPaths
from musiclm.stage_names import LM_STAGES

# Paper's sampling temperatures per stage (semantic 1.0, coarse 0.95, fine 0.4).
TEMPERATURES = {"semantic": 1.0, "coarse": 0.95, "fine": 0.4}


def pipeline_dict(p: DemoPaths) -> dict[str, Any]:
    """PIPELINE.yaml content; paths relative to the run folder, so the folder can move."""

    def rel(x: Path) -> str:
        return os.path.relpath(x, p.out)

    return {
        "mulan": {"checkpoint": rel(p.last_ckpt("mulan")), "rvq": rel(p.rvq)},
        "semantic_tokenizer": {"name": "music-features", "args": {"kmeans": rel(p.kmeans)}},
        "codec": {"name": "stft-rvq", "args": {"codebooks": rel(p.codec)}},
        "stages": {
            stage: {"checkpoint": rel(p.last_ckpt(stage)), "temperature": TEMPERATURES[stage]}
            for stage in LM_STAGES
        },
    }


def write_pipeline(
    p: DemoPaths, *, cfg_scale: float = 1.0, temperatures: dict[str, float] | None = None
) -> Path:
    """Write PIPELINE.yaml naming every checkpoint and artifact of the run (validated by the
    generation package's own schema, so a missing file fails here, naming the key)."""
    from musiclm.generation.pipeline_file import write_pipeline_file

    data = pipeline_dict(p)
    for stage, value in (temperatures or {}).items():
        data["stages"][stage]["temperature"] = value
    if cfg_scale != 1.0:  # stages trained with conditioning dropout take guidance
        for stage in ("semantic", "coarse"):
            data["stages"][stage]["cfg_scale"] = cfg_scale
    return write_pipeline_file(p.pipeline, data)


def held_out_rows(
    p: DemoPaths, n: int, splits: tuple[str, ...] = ("test", "valid")
) -> list[dict[str, Any]]:
    """Up to ``n`` held-out rows of the corpus manifest (caption + attributes): the test
    split first, then the validation split (the LMs never train on it), for enough prompts
    that one clip is not 5 % of an accuracy."""
    manifest = p.corpus / "manifest.jsonl"
    rows = []
    for i, line in enumerate(manifest.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{manifest}:{i}: invalid JSON ({exc})") from exc
        if row.get("split") in splits:
            rows.append(row)
    if not any(r["split"] == "test" for r in rows):
        raise ValueError(f"{manifest}: no clip in the test split to prompt with")
    rows.sort(key=lambda r: splits.index(r["split"]))  # stable: manifest order within a split
    return rows[:n]


def write_prompts(p: DemoPaths, n: int) -> list[dict[str, Any]]:
    """``prompts.jsonl``: {"id", "prompt", "attributes"} per held-out clip (``--prompts``)."""
    rows = held_out_rows(p, n)
    meta = "".join(
        json.dumps({"id": r["id"], "prompt": r["caption"].strip(), "attributes": r["attributes"]})
        + "\n"
        for r in rows
    )
    atomic_write_text(p.prompts, meta)
    return rows


def write_other_prompts(p: DemoPaths, per_instrument: int, seed: int = 0) -> list[dict]:
    """``prompts_other.jsonl``: held-out clips' attributes in words the captions never use
    (``demo_corpus.paraphrases``), ``per_instrument`` of each instrument."""
    from musiclm.demo_corpus.paraphrases import other_wording_rows

    rows = other_wording_rows(held_out_rows(p, 10**9), per_instrument=per_instrument, seed=seed)
    atomic_write_text(p.prompts_other, "".join(json.dumps(r) + "\n" for r in rows))
    return rows


def attach_attributes(p: DemoPaths, *, other: bool = False) -> int:
    """Give each generated sidecar its prompt's attributes (for adherence) and the id of the
    real clip whose caption it was (for the report's spectrograms); return the count.
    ``other``: the clips of the other-wording prompts."""
    meta_path = p.prompts_other if other else p.prompts
    generated = p.generated_other if other else p.generated
    by_prompt = {}
    for line in meta_path.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        by_prompt.setdefault(row["prompt"], row)
    done = 0
    for side in sorted(generated.glob("*.json")):
        data = json.loads(side.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or "prompt" not in data:
            continue
        row = by_prompt.get(str(data["prompt"]).strip())
        if row is None:
            raise ValueError(f"{side}: prompt {data['prompt']!r} is not one of {meta_path}")
        if data.get("attributes") != row["attributes"] or data.get("reference") != row["id"]:
            data["attributes"], data["reference"] = row["attributes"], row["id"]
            atomic_write_json(side, data)
        done += 1
    return done


def missing_generated(p: DemoPaths, *, other: bool = False) -> list[str]:
    """What generation still owes: every prompt needs a wav with a sidecar."""
    meta_path = p.prompts_other if other else p.prompts
    generated = p.generated_other if other else p.generated
    if not meta_path.is_file():
        return [str(meta_path)]
    wanted = len(meta_path.read_text(encoding="utf-8").splitlines())
    wavs = [w for w in generated.glob("*.wav") if w.with_suffix(".json").is_file()]
    if len(wavs) < wanted:
        return [f"{wanted - len(wavs)} generated wav(s) with sidecars in {generated}"]
    return []
