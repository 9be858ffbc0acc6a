"""How much does the semantic LM use its MuLan tokens, and does it count the beat?

    python research/semantic_conditioning.py \
        --checkpoint runs/demo/semantic/checkpoints/last.ckpt --tokens runs/demo/tokens/valid \
        [--kmeans runs/demo/tokenizers/semantic_kmeans.safetensors]

Teacher-forced loss of the semantic LM on crops of held-out token shards with (a) each clip's
own MuLan tokens, (b) another clip's, (c) NULL (the unconditional mode CFG uses). An LM that
takes tempo or instrument from the text pays for (b) and (c); one that predicts everything
from the tokens it has already seen pays almost nothing. With ``--kmeans`` of a
``music-features`` tokenizer with beat features, also the probability mass the LM puts on
tokens whose beat phase is within 1/16 turn of the true next token's (with copying the
previous token's phase as the baseline): can it count the beat. One JSON line per figure.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True, help="semantic stage checkpoint")
    ap.add_argument("--tokens", required=True, help="token shard split folder (held out)")
    ap.add_argument("--kmeans", help="music-features k-means artifact (for the phase figure)")
    ap.add_argument("--seconds", type=float, help="crop length (default: the training crop)")
    ap.add_argument("--clips", type=int, default=64)
    args = ap.parse_args()

    from musiclm.datamodules.shards import iter_token_samples
    from musiclm.evaluation.clips import load_centroids
    from musiclm.stages.token_lm_stage import load_network, target_logits, target_loss
    from musiclm.tokenizers.semantic.music_features import (
        FEATURE_DIM,
        beat_phase,
        phase_distance,
    )

    net, layout = load_network(args.checkpoint)
    if layout.stage != "semantic" or not layout.uses_mulan:
        raise ValueError(f"{args.checkpoint}: need a semantic stage conditioned on MuLan tokens")
    ckpt = torch.load(args.checkpoint, map_location="cpu", weights_only=True, mmap=True)
    seconds = args.seconds or float(ckpt["datamodule_hyper_parameters"]["seconds"])
    n_s = round(seconds * layout.spec.semantic_rate)
    semantic, mulan = [], []
    for s in iter_token_samples(args.tokens):
        if s["semantic"].shape[0] < n_s:
            continue
        semantic.append(s["semantic"][:n_s])
        mulan.append(s["mulan"])
        if len(semantic) >= args.clips:
            break
    if len(semantic) < 2:
        raise ValueError(f"{args.tokens}: need at least 2 clips of {seconds} s")
    own = {"semantic": torch.stack(semantic), "mulan": torch.stack(mulan)}
    seq = layout.sequence(own)
    conditions = {
        "own MuLan tokens": seq.tokens,
        "another clip's": layout.sequence({**own, "mulan": own["mulan"].roll(1, 0)}).tokens,
        "NULL": layout.drop_conditioning(
            seq.tokens, torch.ones(len(semantic), dtype=torch.bool), seq.prefix_len
        ),
    }
    logits = {}
    for name, tokens in conditions.items():
        with torch.inference_mode():
            logits[name] = target_logits(net, layout, tokens, seq.prefix_len)
            loss = target_loss(logits[name], seq.labels, layout)
        print(json.dumps({"figure": "semantic teacher-forced loss", "mulan": name,
                          "value": round(float(loss), 4), "clips": len(semantic),
                          "crop_seconds": seconds}))  # fmt: skip

    if args.kmeans:
        centroids = torch.from_numpy(load_centroids(args.kmeans)).float()
        if centroids.shape[1] != FEATURE_DIM:
            raise ValueError(f"{args.kmeans}: not music-features with beat features")
        phase = beat_phase(centroids)
        labels = seq.labels % centroids.shape[0]  # full crops: no IGNORE padding
        true = phase[labels]  # (B, T)
        near = phase_distance(phase.view(1, 1, -1), true.unsqueeze(-1)) < 1 / 16
        mass = (logits["own MuLan tokens"].softmax(-1) * near).sum(-1)
        previous = phase_distance(phase[labels[:, :-1]], true[:, 1:]) < 1 / 16
        baseline = previous.float().mean()
        for name, value in (("LM", mass.mean()), ("copy the previous phase", baseline)):
            print(json.dumps({"figure": "mass within 1/16 turn of the next beat phase",
                              "predictor": name, "value": round(float(value), 4)}))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
