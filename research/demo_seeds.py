"""Mean and spread over demo runs of other seeds: one markdown table from their metrics.

    python research/demo_seeds.py RUN0 RUN1 RUN2 [--other]

Reads ``RUN/eval/metrics.json`` (``--other``: also ``RUN/eval_other/metrics.json``) of each
``musiclm demo --seed N`` run and prints, per figure, each run's value, the mean and the
sample standard deviation: the musical-structure medians and ratios, attribute adherence with
its binomial p against the prior and the shuffled-prompt p, and MCC.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from scipy.stats import binomtest

STRUCTURE = ("note_motion", "pulse_clarity", "onset_rate", "pitch_range", "pitch_entropy")
ATTRIBUTES = ("instrument", "bpm_within_8pct", "tempo_word")


def figures(metrics: dict) -> dict[str, float]:
    """One run's figures, flat: name -> value."""
    out: dict[str, float] = {}
    summary = metrics["structure"]["summary"]
    for key in STRUCTURE:
        out[f"{key} (generated median)"] = summary[key]["generated_median"]
        out[f"{key} (ratio to real)"] = summary[key]["ratio"]
    out["static clips (share)"] = summary["static_share"]["generated"]
    adherence = metrics["adherence"]
    for key in ATTRIBUTES:
        got = adherence["generated"][key]
        out[f"{key} adherence"] = got["accuracy"]
        k = round(got["accuracy"] * got["n"])
        prior = adherence["chance"][key]["prior"]
        out[f"{key} binomial p"] = binomtest(k, got["n"], prior, alternative="greater").pvalue
        out[f"{key} shuffled-prompt p"] = adherence["shuffled"][key]["p"]
    out["MCC (generated, its prompt)"] = metrics["mcc"]["generated"]["mean"]
    out["MCC (mismatched)"] = metrics["mcc"]["generated_mismatched"]["mean"]
    return out


def table(runs: list[dict[str, float]], names: list[str]) -> str:
    lines = [
        "| figure | " + " | ".join(names) + " | mean | std |",
        "|---|" + "---|" * (len(names) + 2),
    ]
    for key in runs[0]:
        values = [r[key] for r in runs]
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        cells = " | ".join(f"{v:.3g}" for v in values)
        lines.append(f"| {key} | {cells} | {statistics.mean(values):.3g} | {spread:.2g} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="demo run folders")
    ap.add_argument("--other", action="store_true", help="also the other-wording prompts")
    args = ap.parse_args()
    names = [Path(r).name for r in args.runs]
    for folder in ["eval", *(["eval_other"] if args.other else [])]:
        runs = [
            figures(json.loads((Path(r) / folder / "metrics.json").read_text())) for r in args.runs
        ]
        print(f"\n{folder}\n")
        print(table(runs, names))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
