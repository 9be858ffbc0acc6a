"""MuLan speed on this machine: one JSON line per figure.

    .venv/bin/python benchmarks/bench_mulan.py [--quick] [--steps 5] [--threads N]

Figures: training clips/s of the demo MuLan (CNN over log-mel, frozen MiniLM) with and
without the frozen text tower's caption cache (same run, so the ratio is fair); windowed
audio embedding (the conditioning path) in seconds of audio per second; RVQ tokens/s.
``--quick``: one step, shorter clips, fewer embeddings (a smoke run). Figures: docs/results.md.
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from common import machine  # noqa: E402


def _train_rate(cache_size: int, steps: int, batch: int, seconds: float) -> float:
    from musiclm.models.mulan import contrastive_loss
    from musiclm.stages.mulan import MulanStage

    torch.manual_seed(0)
    stage = MulanStage(
        cnn_channels=(16, 32, 64, 128),
        n_fft=512,
        hop_length=320,
        window_s=seconds,
        text_encoder_args={"cache_size": cache_size},
    )
    opt = torch.optim.AdamW([p for p in stage.parameters() if p.requires_grad], 1e-3)
    wav = torch.randn(batch, int(seconds * 16000))
    captions = [f"a calm folk song on a piano, {60 + i} BPM, in D minor" for i in range(batch)]

    def step() -> None:
        loss = contrastive_loss(
            stage.mulan.embed_audio(wav), stage.mulan.embed_text(captions), stage.logit_scale
        )
        opt.zero_grad()
        loss.backward()
        opt.step()

    step()  # warm-up (fills the cache when there is one, as the first epoch does)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--quick", action="store_true", help="one step, small inputs (a smoke run)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    common = {"machine": machine(), "threads": args.threads, "quick": args.quick}
    if args.quick:
        args.steps = 1
    clip_s, n_emb = (12, 512) if args.quick else (30, 4096)

    cached = _train_rate(4096, args.steps, 32, 4.0)
    uncached = _train_rate(0, args.steps, 32, 4.0)
    print(json.dumps({"figure": "mulan_demo_train_clips_per_s", "cached_text": round(cached, 2),
                      "uncached_text": round(uncached, 2), "ratio": round(cached / uncached, 2),
                      "batch": 32, "crop_s": 4.0, **common}))  # fmt: skip

    from musiclm.models.mulan import MuLan

    model = MuLan(cnn_channels=(16, 32, 64, 128), n_fft=512, hop_length=320).eval()
    wav = torch.randn(4, clip_s * 16000)  # 30 s: 21 windows of 10 s every 1 s
    model.embed_audio_windows(wav[:1, : 11 * 16000])
    start = time.perf_counter()
    model.embed_audio_windows(wav)
    took = time.perf_counter() - start
    print(json.dumps({"figure": "mulan_windowed_embedding_audio_s_per_s",
                      "value": round(4 * clip_s / took, 2), "window_s": 10.0, "hop_s": 1.0,
                      "clip_s": clip_s, **common}))  # fmt: skip

    from musiclm.conditioning.conditioning_rvq import ConditioningRVQ

    emb = torch.nn.functional.normalize(torch.randn(n_emb, 128), dim=-1)
    rvq = ConditioningRVQ.fit(emb, levels=12, codebook_size=256, iters=5)
    start = time.perf_counter()
    rvq.tokens(emb)
    took = time.perf_counter() - start
    print(json.dumps({"figure": "conditioning_rvq_embeddings_per_s", "value": round(n_emb / took),
                      "levels": 12, "codebook_size": 256, **common}))  # fmt: skip


if __name__ == "__main__":
    main()
