"""What do the MuLan conditioning tokens know about a clip? Linear probes, one JSON line each.

    python research/conditioning_probe.py --run runs/demo [--rvq 4x32 --rvq 1x128]

The semantic LM can only take tempo and instrument from the text if its MuLan tokens carry
them. Each probe is fitted on the training clips' MuLan *audio* tokens (what the LMs are
trained on) and scored on the test clips' *text* tokens of their captions (what generation
gives them) and on their audio tokens: logistic regression on the one-hot tokens for the
tempo word and the instrument, ridge regression of log BPM for "tempo within 8 %". The
run's own RVQ is probed, each ``--rvq LxK`` refitted on the training audio embeddings, and
the continuous embeddings as the ceiling. Chance: a label drawn from the training labels.
An LM is additive over its conditioning tokens' embeddings, so a linear probe is the fair
question, not a lookup of the whole token tuple (most test tuples never occur in training).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def one_hot(tokens: np.ndarray, size: int) -> np.ndarray:
    """(N, L) codes -> (N, L * size) indicators, level by level."""
    n, levels = tokens.shape
    out = np.zeros((n, levels * size), dtype=np.float32)
    for level in range(levels):
        out[np.arange(n), level * size + tokens[:, level]] = 1.0
    return out


def probe(x_train, y_train: dict, x_eval, y_eval: dict) -> dict[str, float]:
    """Accuracy of each probe fitted on (x_train, y_train) and scored on (x_eval, y_eval)."""
    from sklearn.linear_model import LogisticRegression, Ridge

    from musiclm.evaluation.attributes import bpm_correct

    out = {}
    for name in ("tempo_word", "instrument"):
        clf = LogisticRegression(max_iter=2000).fit(x_train, y_train[name])
        out[name] = float((clf.predict(x_eval) == y_eval[name]).mean())
    reg = Ridge(alpha=1.0).fit(x_train, np.log2(y_train["bpm"]))
    pred = 2.0 ** reg.predict(x_eval)
    hits = [bpm_correct(p, t) for p, t in zip(pred, y_eval["bpm"], strict=True)]
    out["bpm_within_8pct"] = float(np.mean(hits))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default="runs/demo", help="a demo run folder (MuLan, RVQ, audio)")
    ap.add_argument("--rvq", action="append", default=[], help="LxK RVQ to refit and probe")
    ap.add_argument("--seconds", type=float, default=10.0, help="audio embedded per clip")
    args = ap.parse_args()

    import torchaudio

    from musiclm.conditioning.conditioning_rvq import ConditioningRVQ, MulanConditioner
    from musiclm.evaluation.attributes import chance_levels, tempo_word
    from musiclm.evaluation.clips import load_reference

    run = Path(args.run)
    cond = MulanConditioner.from_files(
        str(run / "mulan/checkpoints/last.ckpt"), str(run / "mulan/rvq.safetensors")
    )

    def split(name: str):
        clips = [c for c in load_reference(run / "audio" / name) if c.attributes]
        if not clips:
            raise ValueError(f"{run / 'audio' / name}: no clips with attributes")
        n = round(args.seconds * clips[0].sample_rate)
        wav = torch.stack(
            [torch.from_numpy(np.pad(c.audio[:n], (0, max(0, n - c.audio.size)))) for c in clips]
        )[:, None].float()
        wav = torchaudio.functional.resample(wav, clips[0].sample_rate, cond.sample_rate)
        with torch.inference_mode():
            audio = torch.cat([cond.embed_audio(wav[i : i + 50]) for i in range(0, len(wav), 50)])
            text = cond.embed_text([c.text for c in clips])
        bpm = np.array([float(c.attributes["bpm"]) for c in clips])
        labels = {
            "bpm": bpm,
            "tempo_word": np.array([tempo_word(b) for b in bpm]),
            "instrument": np.array([c.attributes["instrument"] for c in clips]),
        }
        return audio, text, labels, [c.attributes for c in clips]

    a_tr, _, y_tr, attrs_tr = split("train")
    a_te, t_te, y_te, attrs_te = split("test")
    levels = chance_levels(attrs_tr, attrs_te)  # the evaluation's own label-only baseline
    chance = {k: levels[k]["prior"] for k in ("tempo_word", "instrument", "bpm_within_8pct")}
    print(json.dumps({"figure": "chance", **chance, "train": len(a_tr), "test": len(a_te)}))
    print(json.dumps({
        "figure": "continuous embeddings",
        "text": probe(a_tr.numpy(), y_tr, t_te.numpy(), y_te),
        "audio": probe(a_tr.numpy(), y_tr, a_te.numpy(), y_te),
    }), flush=True)  # fmt: skip
    rvqs = [("run", cond.rvq)]
    for shape in args.rvq:
        levels, size = (int(v) for v in shape.lower().split("x"))
        rvqs.append((shape, ConditioningRVQ.fit(a_tr, levels=levels, codebook_size=size)))
    for name, rvq in rvqs:
        k = rvq.codebook_size
        train = one_hot(rvq.tokens(a_tr).numpy(), k)
        print(json.dumps({
            "figure": "one-hot tokens", "rvq": name,
            "shape": f"{rvq.num_levels}x{k}",
            "text": probe(train, y_tr, one_hot(rvq.tokens(t_te).numpy(), k), y_te),
            "audio": probe(train, y_tr, one_hot(rvq.tokens(a_te).numpy(), k), y_te),
        }), flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
