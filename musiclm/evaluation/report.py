"""Evaluation output: ``metrics.json`` (machine-readable) and ``metrics.md`` (tables)."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _fmt(x: Any, digits: int = 3) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return "–" if not math.isfinite(x) else f"{x:.{digits}f}"
    return str(x)


def _mean_sem(d: dict | None) -> str:
    if not d:
        return "–"
    sem = d.get("sem")
    if sem is None or not math.isfinite(sem):
        return _fmt(d["mean"])
    return f"{d['mean']:.3f} ± {sem:.3f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines + [""]


def markdown(metrics: dict[str, Any]) -> str:
    """The metrics as markdown tables, one section per metric family present."""
    lines = ["# Evaluation", ""]
    inputs = metrics.get("inputs", {})
    if inputs:
        lines += [f"- {k}: {_fmt(v)}" for k, v in inputs.items()] + [""]
    for key, section in SECTIONS:
        if metrics.get(key):
            lines += section(metrics[key])
    for note in metrics.get("notes", []):
        lines.append(f"- {note}")
    return "\n".join(lines).rstrip() + "\n"


def _adherence_section(adh: dict[str, Any]) -> list[str]:
    lines = [
        "## Attribute adherence",
        "",
        "Estimators fitted on real training clips only "
        f"({adh.get('num_train_clips', '?')} clips); tempo correct within 8 % "
        "(octave-aware: also at 2x, 1/2x, 3x, 1/3x). Chance: a guess drawn from the "
        "training labels (prior), the best constant training label (majority), and the "
        "generated clips scored against other prompts (shuffled; p: permutation test).",
        "",
    ]
    gen, real, chance = adh.get("generated", {}), adh.get("real", {}), adh.get("chance", {})
    shuffled = adh.get("shuffled", {})
    names = list(dict.fromkeys([*gen, *real, *chance]))
    rows = [
        [
            n,
            _fmt(gen.get(n, {}).get("accuracy")),
            _fmt(real.get(n, {}).get("accuracy")),
            _fmt(chance.get(n, {}).get("prior")),
            _fmt(chance.get(n, {}).get("majority")),
            _fmt(shuffled.get(n, {}).get("accuracy")),
            _fmt(shuffled.get(n, {}).get("p"), 4),
            f"{gen.get(n, {}).get('n', 0)} / {real.get(n, {}).get('n', 0)}",
        ]
        for n in names
    ]
    header = ["attribute", "generated", "real held-out", "chance (prior)", "majority"]
    return lines + _table([*header, "shuffled", "p", "n gen / real"], rows)


def _mcc_section(mcc: dict[str, Any]) -> list[str]:
    lines = ["## MuLan cycle consistency", "", "Cosine of MuLan text and audio embeddings.", ""]
    rows = []
    for key, label in [
        ("generated", "generated audio, its prompt"),
        ("generated_mismatched", "generated audio, other prompts"),
        ("real", "real held-out audio, its caption"),
        ("real_mismatched", "real held-out audio, other captions"),
    ]:
        if key in mcc:
            rows.append([label, _mean_sem(mcc[key]), str(mcc[key]["n"])])
    lines += _table(["pairs", "MCC (mean ± s.e.m.)", "n"], rows)
    for key in ("generated_pairwise_win_rate", "real_pairwise_win_rate"):
        if key in mcc:
            lines.append(f"- {key.replace('_', ' ')}: {_fmt(mcc[key]['mean'])}")
    return lines + [""]


def _fad_section(fad: dict[str, Any]) -> list[str]:
    row = [
        fad["embedding"],
        _fmt(fad["generated_vs_reference"]),
        _fmt(fad.get("reference_halves")),
        f"{fad['frames_generated']} / {fad['frames_reference']}",
        str(fad["dim"]),
    ]
    header = ["embedding", "FAD generated vs real", "FAD real half vs half", "frames", "dim"]
    return ["## Fréchet audio distance", "", *_table(header, [row])]


def _memorization_section(mem: dict[str, Any]) -> list[str]:
    lines = [
        "## Memorization",
        "",
        f"Greedy semantic continuations of {mem['continuation_seconds']} s; approximate "
        f"match: OT distance of token histograms <= {_fmt(mem['threshold'])} (the "
        f"{mem['threshold_percentile']}th percentile of {mem['mismatched_pairs']} "
        f"mismatched pairs, whose match rate is {_fmt(mem['mismatched_match_rate'])}).",
        "",
    ]
    rows = [
        [
            _fmt(r["prompt_seconds"]),
            str(r["n"]),
            _fmt(r.get("exact_match_rate")),
            _fmt(r.get("approximate_match_rate")),
            _fmt(r.get("mean_ot_distance")),
        ]
        for r in mem["by_prompt_length"]
    ]
    return lines + _table(["prompt (s)", "n", "exact", "approximate", "mean OT distance"], rows)


def _structure_section(structure: dict[str, Any]) -> list[str]:
    from musiclm.evaluation.structure import METRICS

    summary = structure.get("summary", {})
    lines = [
        "## Musical structure",
        "",
        "Per-clip estimators on the audio alone (librosa at 22.05 kHz): note motion (pitch-class "
        "change between 0.25 s windows 1 s apart), pulse clarity (onset autocorrelation at "
        "40-240 BPM), onsets per second, pitch range (semitones) and pitch-class entropy (bits) "
        "of the pitched frames, key clarity. Medians; ratio = generated / real; Wasserstein and "
        "Kolmogorov-Smirnov distances between the two distributions.",
        "",
    ]
    rows = []
    for name in METRICS:
        r = summary.get(name) or {}
        rows.append(
            [
                name.replace("_", " "),
                _fmt(r.get("generated_median")),
                _fmt(r.get("real_median")),
                _fmt(r.get("ratio"), 2),
                _fmt(r.get("wasserstein")),
                _fmt(r.get("ks"), 2),
                f"{r.get('n_generated', 0)} / {r.get('n_real', 0)}",
            ]
        )
    static = summary.get("static_share") or {}
    rows.append(
        ["static clips (share)", _fmt(static.get("generated")), _fmt(static.get("real")),
         "", "", "", ""]
    )  # fmt: skip
    lines += _table(
        ["metric", "generated", "real held-out", "ratio", "Wasserstein", "KS", "n gen / real"],
        rows,
    )
    if structure.get("plot"):
        lines += [f"![structure distributions]({structure['plot']})", ""]
    return lines


def write_report(out: str | Path, metrics: dict[str, Any]) -> tuple[Path, Path]:
    """Write ``out/metrics.json`` and ``out/metrics.md`` atomically; return both paths."""
    from musiclm.datamodules.shards import atomic_write_json, atomic_write_text

    out = Path(out)
    json_path, md_path = out / "metrics.json", out / "metrics.md"
    atomic_write_json(json_path, _jsonable(metrics))
    atomic_write_text(md_path, markdown(metrics))
    return json_path, md_path


def _jsonable(x: Any) -> Any:
    """NaN/inf -> None (strict JSON), numpy scalars -> Python."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if hasattr(x, "item") and callable(x.item):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


# metrics.json key -> its section of metrics.md, in the order they appear
SECTIONS: list[tuple[str, Callable[[dict[str, Any]], list[str]]]] = [
    ("structure", _structure_section),
    ("adherence", _adherence_section),
    ("mcc", _mcc_section),
    ("fad", _fad_section),
    ("memorization", _memorization_section),
]
