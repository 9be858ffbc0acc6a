"""Files a run writes between commands: PIPELINE.yaml, the held-out prompts, sidecars.

Each is also a command line (``musiclm pipeline write-yaml | prompts | other-prompts |
attach-attributes``, in :mod:`musiclm.demo.tools`), so a run's printed commands rebuild the
same folder by hand.
"""

from __future__ import annotations

import json
import os
import tarfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from musiclm.datamodules.shards import atomic_write_json, atomic_write_text, shard_paths
from musiclm.demo.paths import DemoPaths
from musiclm.demo.settings import ACOUSTIC
from musiclm.stage_names import SEMANTIC

# Papers' sampling temperatures per stage: MusicLM's semantic 1.0, coarse 0.95, fine 0.4;
# MusicGen samples its delay-pattern LM at 1.0.
TEMPERATURES = {"semantic": 1.0, "coarse": 0.95, "fine": 0.4, "delay": 1.0}
# stages trained with conditioning dropout, which take guidance
GUIDED = ("semantic", "coarse", "delay")
HELD_OUT_SPLITS = ("test", "valid")


def pipeline_dict(
    p: DemoPaths,
    joint: dict[str, Any] | None = None,
    *,
    melody: bool = False,
    semantic_run: str = "semantic",
    acoustic: str = "cascade",
) -> dict[str, Any]:
    """PIPELINE.yaml content; paths relative to the run folder, so the folder can move.

    ``joint``: a pretrained joint embedding ``{name, args}`` in place of the run's MuLan;
    ``melody``: name the melody conditioner; ``semantic_run``: the semantic LM's run folder;
    ``acoustic``: ``cascade`` (coarse + fine) or ``delay``."""

    def rel(x: Path) -> str:
        return os.path.relpath(x, p.out)

    mulan = dict(joint) if joint else {"checkpoint": rel(p.last_ckpt("mulan"))}
    if acoustic not in ACOUSTIC:
        raise ValueError(f"acoustic stages {acoustic!r}: not one of {sorted(ACOUSTIC)}")
    stages = (SEMANTIC, *ACOUSTIC[acoustic])
    runs = {stage: semantic_run if stage == SEMANTIC else stage for stage in stages}
    out: dict[str, Any] = {
        "mulan": {**mulan, "rvq": rel(p.rvq)},
        "semantic_tokenizer": {"name": "music-features", "args": {"kmeans": rel(p.kmeans)}},
        "codec": {"name": "stft-rvq", "args": {"codebooks": rel(p.codec)}},
        "stages": {
            stage: {"checkpoint": rel(p.last_ckpt(runs[stage])), "temperature": TEMPERATURES[stage]}
            for stage in stages
        },
    }
    if melody:
        out["melody"] = {"checkpoint": rel(p.last_ckpt("melody")), "rvq": rel(p.melody_rvq)}
    return out


def write_pipeline(
    p: DemoPaths,
    *,
    cfg_scale: float | Mapping[str, float] = 1.0,
    stream_cfg_scale: Mapping[str, float] | None = None,
    temperatures: dict[str, float] | None = None,
    joint: dict[str, Any] | None = None,
    melody: bool = False,
    semantic_run: str = "semantic",
    acoustic: str = "cascade",
    out: Path | None = None,
    text_neighbours: int = 0,
) -> Path:
    """Write PIPELINE.yaml naming every checkpoint and artifact of the run (validated by the
    generation package's own schema, so a missing file fails here, naming the key).

    ``cfg_scale``: classifier-free guidance of every guided stage the run has, or by stage
    (``{"semantic": 2.0, "delay": 3.0}``); 1 leaves a stage unguided. ``stream_cfg_scale``: by
    stage, guidance toward the streams its conditioning entries guide (the beat clock).
    ``text_neighbours``: read each prompt's MuLan tokens through its k nearest training clips
    (``mulan.text_neighbours``; 0 leaves it out)."""
    from musiclm.generation.pipeline_file import write_pipeline_file

    data = pipeline_dict(p, joint, melody=melody, semantic_run=semantic_run, acoustic=acoustic)
    stages = data["stages"]
    for stage, value in (temperatures or {}).items():
        if stage not in stages:
            raise ValueError(f"temperature for stage {stage!r}: the run has {sorted(stages)}")
        stages[stage]["temperature"] = value
    if isinstance(cfg_scale, Mapping):
        scales = dict(cfg_scale)
        for stage in scales:
            if stage not in stages or stage not in GUIDED:
                guided = sorted(set(stages) & set(GUIDED))
                raise ValueError(
                    f"cfg_scale for stage {stage!r}: the run's guided stages are {guided}"
                )
    else:
        scales = {stage: cfg_scale for stage in GUIDED if stage in stages}
    for stage, scale in scales.items():
        if scale != 1.0:
            stages[stage]["cfg_scale"] = scale
    for stage, scale in (stream_cfg_scale or {}).items():
        if stage not in stages:
            raise ValueError(f"stream_cfg_scale for stage {stage!r}: the run has {sorted(stages)}")
        stages[stage]["stream_cfg_scale"] = scale
    if text_neighbours:
        data["mulan"]["text_neighbours"] = text_neighbours
    return write_pipeline_file(out or p.pipeline, data)


def held_out_rows(
    p: DemoPaths, n: int, splits: tuple[str, ...] = HELD_OUT_SPLITS
) -> list[dict[str, Any]]:
    """Up to ``n`` held-out rows of the demo corpus manifest (caption + attributes): the test
    split first, then the validation split (the LMs never train on it), for enough prompts
    that one clip is not 5 % of an accuracy."""
    return manifest_rows(p.corpus / "manifest.jsonl", n, splits)


def manifest_rows(
    manifest: Path, n: int, splits: tuple[str, ...] = HELD_OUT_SPLITS
) -> list[dict[str, Any]]:
    """Up to ``n`` rows of a JSONL corpus manifest in ``splits`` (in that order)."""
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


def shard_rows(
    audio: Path, n: int, splits: tuple[str, ...] = HELD_OUT_SPLITS
) -> list[dict[str, Any]]:
    """Up to ``n`` captioned clips of audio shard folders ``audio/<split>`` (test first, in
    shard order): what ``prepare audio`` kept of any corpus, without decoding the audio."""
    rows: list[dict[str, Any]] = []
    for split in splits:
        if not (audio / split / "manifest.json").is_file():
            continue
        for url in shard_paths(audio / split):
            rows += _tar_rows(Path(url), split)
    rows = [r for r in rows if r["caption"].strip()]
    if not any(r["split"] == "test" for r in rows):
        raise ValueError(f"{audio}/test: no captioned clip in the test split to prompt with")
    return rows[:n]


def _tar_rows(tar_path: Path, split: str) -> list[dict[str, Any]]:
    """Caption and metadata of each sample of one audio shard, in the shard's order."""
    samples: dict[str, dict[str, Any]] = {}
    with tarfile.open(tar_path) as tar:
        for member in tar:
            key, _, field = member.name.partition(".")
            if field not in ("caption.txt", "json"):
                continue
            data = tar.extractfile(member).read().decode("utf-8")  # type: ignore[union-attr]
            row = samples.setdefault(key, {"id": key, "caption": "", "split": split})
            if field == "json":
                row["attributes"] = json.loads(data).get("attributes") or {}
            else:
                row["caption"] = data
    return [{"attributes": {}, **r} for r in samples.values()]


def held_out(source: Path, n: int) -> list[dict[str, Any]]:
    """Held-out rows from a JSONL corpus manifest (the demo's) or an audio shard folder."""
    if source.is_dir():
        return shard_rows(source, n)
    if not source.is_file():
        raise FileNotFoundError(f"--held-out {source}: no such manifest or shard folder")
    return manifest_rows(source, n)


def write_prompts_file(
    held: list[dict[str, Any]], out: Path, extra: list[str] | None = None
) -> list[dict[str, Any]]:
    """``out``: {"id", "prompt", "attributes"} per held-out row (what ``generate --prompts``
    reads and ``attach_attributes`` matches); ``extra`` prompts without a clip follow."""
    rows = [
        {"id": r["id"], "prompt": r["caption"].strip(), "attributes": r["attributes"]} for r in held
    ]
    rows += [{"id": f"prompt{i}", "prompt": t, "attributes": {}} for i, t in enumerate(extra or [])]
    atomic_write_text(out, "".join(json.dumps(r) + "\n" for r in rows))
    return rows


def write_prompts(p: DemoPaths, n: int) -> list[dict[str, Any]]:
    """``prompts.jsonl``: {"id", "prompt", "attributes"} per held-out clip (``--prompts``)."""
    rows = held_out_rows(p, n)
    write_prompts_file(rows, p.prompts)
    return rows


def write_other_prompts_file(
    held: list[dict[str, Any]], out: Path, per_instrument: int, seed: int = 0
) -> list[dict]:
    """``out``: held-out clips' attributes in words the captions never use
    (``demo_corpus.paraphrases``), ``per_instrument`` of each instrument."""
    from musiclm.demo_corpus.paraphrases import other_wording_rows

    rows = other_wording_rows(held, per_instrument=per_instrument, seed=seed)
    atomic_write_text(out, "".join(json.dumps(r) + "\n" for r in rows))
    return rows


def write_other_prompts(p: DemoPaths, per_instrument: int, seed: int = 0) -> list[dict]:
    """``prompts_other.jsonl`` of the demo corpus (see :func:`write_other_prompts_file`)."""
    return write_other_prompts_file(held_out_rows(p, 10**9), p.prompts_other, per_instrument, seed)


def attach_attributes(p: DemoPaths, *, other: bool = False) -> int:
    """:func:`attach_attributes_to` the demo's clips (``other``: the other-wording ones)."""
    if other:
        return attach_attributes_to(p.prompts_other, p.generated_other)
    return attach_attributes_to(p.prompts, p.generated)


def attach_attributes_to(meta_path: Path, generated: Path) -> int:
    """Give each generated sidecar its prompt's attributes (for adherence) and the id of the
    real clip whose caption it was (for the report's spectrograms); return the count."""
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
