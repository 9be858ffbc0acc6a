"""Does the coarse LM use the *timing* of its semantic tokens, or only their content?

    python research/demo_alignment.py --checkpoint runs/demo/coarse/checkpoints/last.ckpt \
        --tokens runs/demo/tokens/valid

Teacher-forced loss of the coarse LM on crops of held-out token shards with (a) the clip's own
semantic tokens, (b) the same clip's semantic tokens shifted by ``--shift`` seconds (right
content, wrong timing), (c) another clip's semantic tokens (wrong content). An LM that aligns
acoustic frames with semantic frames pays for (b) about as much as for (c); one that reads the
semantic tokens as a bag of content pays little for (b). One JSON line per condition.
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
    ap.add_argument("--checkpoint", required=True, help="coarse stage checkpoint")
    ap.add_argument("--tokens", required=True, help="token shard split folder (held out)")
    ap.add_argument("--seconds", type=float, help="crop length (default: the training crop)")
    ap.add_argument("--shift", type=float, default=1.0, help="semantic shift in seconds")
    ap.add_argument("--clips", type=int, default=20)
    args = ap.parse_args()

    from musiclm.datamodules.shards import iter_token_samples
    from musiclm.stages.token_lm_stage import load_network, target_logits, target_loss

    net, layout = load_network(args.checkpoint)
    ckpt = torch.load(args.checkpoint, map_location="cpu", weights_only=True, mmap=True)
    seconds = args.seconds or float(ckpt["datamodule_hyper_parameters"]["seconds"])
    spec = layout.spec
    n_s, n_a = round(seconds * spec.semantic_rate), round(seconds * spec.acoustic_rate)
    shift = round(args.shift * spec.semantic_rate)
    samples = []
    for s in iter_token_samples(args.tokens):
        if s["semantic"].shape[0] < n_s + shift:
            continue
        samples.append(s)
        if len(samples) >= args.clips:
            break
    if len(samples) < 2:
        raise ValueError(f"{args.tokens}: need at least 2 clips of {seconds + args.shift} s")
    batch = {
        "acoustic": torch.stack([s["acoustic"][:, :n_a] for s in samples]),
        "mulan": torch.stack([s["mulan"] for s in samples]),
    }
    own = torch.stack([s["semantic"][:n_s] for s in samples])
    conditions = {
        "own semantic tokens": own,
        f"own, shifted by {args.shift} s": torch.stack(
            [s["semantic"][shift : shift + n_s] for s in samples]
        ),
        "another clip's": own.roll(1, dims=0),
    }
    for name, semantic in conditions.items():
        seq = layout.sequence({**batch, "semantic": semantic})
        with torch.inference_mode():
            logits = target_logits(net, layout, seq.tokens, seq.prefix_len)
            loss = target_loss(logits, seq.labels, layout)
        print(json.dumps({"figure": "coarse teacher-forced loss", "condition": name,
                          "value": round(float(loss), 4), "clips": len(samples),
                          "crop_seconds": seconds}))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
