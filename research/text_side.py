"""Where a demo run loses the instrument a prompt names: MuLan's text side, or after it.

    python research/text_side.py RUN [RUN ...] [--clips 400]

For each ``musiclm demo`` run and each prompt set (``prompts.jsonl`` with ``eval``,
``prompts_other.jsonl`` with ``eval_other``), prints one JSON line:

* ``mulan_zero_shot``: the share of prompts whose MuLan text embedding is nearest (cosine) to
  the centroid of its own instrument's training audio embeddings (``--clips`` training clips,
  10 s each, embedded as the tokens were). This is MuLan's reading of the prompt, before any
  token or LM;
* ``generated``: the share of generated clips the run's estimator labels with the prompt's
  instrument (as ``musiclm evaluate`` reports it);
* ``generated_where_mulan_right`` / ``generated_where_mulan_wrong``: the same over the
  prompts MuLan reads right / wrong: what the tokens and LMs keep of what MuLan read.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


def instrument_centroids(run: Path, clips: int) -> tuple[list[str], torch.Tensor, object]:
    """(instrument names, their unit centroids (I, D), the run's MulanConditioner)."""
    import torchaudio

    from musiclm.conditioning.conditioning_rvq import MulanConditioner
    from musiclm.evaluation.clips import load_reference

    cond = MulanConditioner.from_files(
        str(run / "mulan" / "checkpoints" / "last.ckpt"), str(run / "mulan" / "rvq.safetensors")
    )
    refs = [c for c in load_reference(run / "audio" / "train") if c.attributes][:clips]
    n = round(10 * refs[0].sample_rate)
    wav = torch.stack(
        [torch.from_numpy(np.pad(c.audio[:n], (0, max(0, n - c.audio.size)))) for c in refs]
    )[:, None].float()
    wav = torchaudio.functional.resample(wav, refs[0].sample_rate, cond.sample_rate)
    emb = torch.cat([cond.embed_audio(wav[i : i + 50]) for i in range(0, len(wav), 50)])
    labels = np.array([c.attributes["instrument"] for c in refs])
    names = sorted(set(labels))
    cents = [F.normalize(emb[torch.from_numpy(labels == k)].mean(0), dim=0) for k in names]
    return names, torch.stack(cents), cond


def prompt_set(run: Path, prompts: str, evaluation: str, names, cents, cond) -> dict:
    """The figures of one prompt set of ``run`` (see the module docstring)."""
    rows = [json.loads(line) for line in (run / prompts).read_text().splitlines() if line]
    want = [r["attributes"]["instrument"] for r in rows]
    with torch.inference_mode():
        text = F.normalize(cond.embed_text([r["prompt"] for r in rows]), dim=-1)
    read = [names[i] for i in (text @ cents.T).argmax(1).tolist()]
    metrics = json.loads((run / evaluation / "metrics.json").read_text())
    # clip names start with the prompt's index (``000-...``), so sorted names follow the rows
    preds = sorted(metrics["adherence"]["predictions"], key=lambda p: p["name"])
    made = [p["predicted"]["instrument"] for p in preds]
    if len(made) != len(rows):
        raise SystemExit(f"{run}/{evaluation}: {len(made)} predictions for {len(rows)} prompts")
    right = [m == w for m, w in zip(read, want, strict=True)]
    kept = [g == w for g, w in zip(made, want, strict=True)]
    pairs = list(zip(kept, right, strict=True))

    def share(values: list[bool]) -> float | None:
        return round(float(np.mean(values)), 3) if values else None

    return {
        "run": str(run),
        "prompts": prompts,
        "n": len(rows),
        "mulan_zero_shot": share(right),
        "generated": share(kept),
        "generated_where_mulan_right": share([k for k, r in pairs if r]),
        "generated_where_mulan_wrong": share([k for k, r in pairs if not r]),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--clips", type=int, default=400, help="training clips per run")
    args = p.parse_args()
    for run in args.runs:
        names, cents, cond = instrument_centroids(run, args.clips)
        sets = (("prompts.jsonl", "eval"), ("prompts_other.jsonl", "eval_other"))
        for prompts, evaluation in sets:
            if (run / prompts).is_file() and (run / evaluation / "metrics.json").is_file():
                print(json.dumps(prompt_set(run, prompts, evaluation, names, cents, cond)))


if __name__ == "__main__":
    main()
