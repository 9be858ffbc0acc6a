"""Token-LM training throughput through the real loop: Lightning Trainer + TokenDataModule
reading WebDataset shards + the stage's loss + AdamW, fp32 on the CPU.

Prints one JSON line per figure:
- ``matmul``: fp32 FLOP/s of 2048x2048 products, measured in this run (the MFU denominator);
- ``train``: tokens/s and MFU per configuration (semantic and coarse at the peer's sizes,
  d=256 / 4 layers / 4 heads / 1024-token vocabulary / 512 tokens / batch 8; and the MFU
  goal size d=512 / 8 layers / 8 heads / 1024 tokens);
- ``peer`` (with ``--peer VENV``): audiolm-pytorch 2.4.0's training step set up as
  ``/work/shared/peer/bench_peer.py`` does, in its own environment, run between two runs of
  ours in the same job (the CPU is shared: bracketing evens out load drift), and the ratio.
  Ours counts the whole loop (Lightning, shard reading, cropping, logging hooks); theirs is
  the bare forward/backward/AdamW step.

Run: ``python benchmarks/bench_train.py [--quick] [--peer /root/.cache/musiclm-peer]``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import torch

PEER_DIR = Path("/work/shared/peer")

PEER_STEP = Path(__file__).with_name("peer_train_step.py")


def peer_train(venv: str, which: str, warmup: int, steps: int, threads: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(PEER_DIR / "stubs")}
    cmd = [f"{venv}/bin/python", str(PEER_STEP), which, str(warmup), str(steps), str(threads)]
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def emit(**fields) -> None:
    print(json.dumps(fields), flush=True)


class StepTimer:
    """Wall time of every training step, batch fetch included (end of step to end of step)."""

    def __new__(cls):
        import lightning as L

        class _Timer(L.Callback):
            def __init__(self) -> None:
                self.ends: list[float] = []
                self.tokens: list[int] = []

            def on_train_batch_end(self, trainer, module, *args) -> None:
                self.ends.append(time.perf_counter())
                self.tokens.append(module.last_batch_tokens)

        return _Timer()


def run_config(name, stage_cls, spec, seconds, model_kw, *, batch, steps, warmup, workers, root):
    import lightning as L

    from musiclm.datamodules.tokens import TokenDataModule, write_synthetic_shards

    shards = root / name
    write_synthetic_shards(shards, sizes=[16, 16], seconds=seconds + 1.0, spec=spec)
    data = TokenDataModule(
        str(shards),
        seconds=seconds,
        batch_size=batch,
        num_workers=workers,
        batches_per_epoch=warmup + steps + 1,
        shuffle_buffer=32,
    )
    model = stage_cls(**model_kw, warmup_steps=10, spec=spec.to_dict())
    timer = StepTimer()
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=warmup + steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=50,
        callbacks=[timer],
        default_root_dir=str(root / f"run-{name}"),
    )
    trainer.fit(model, data)
    ends, tokens = timer.ends[warmup - 1 :], timer.tokens[warmup:]
    steps_s = [b - a for a, b in zip(ends, ends[1:], strict=False)]
    total = ends[-1] - ends[0]
    context = model.last_context
    flops_tok = model.net.flops_per_token(context)
    return {
        "name": name,
        "stage": model.stage,
        "dim": model_kw["dim"],
        "depth": model_kw["depth"],
        "heads": model_kw["heads"],
        "vocab_in": model.layout.num_tokens,
        "vocab_out": model.layout.num_targets,
        "context": context,
        "batch": batch,
        "timed_steps": len(steps_s),
        "tokens_per_s": sum(tokens) / total,
        "tokens_per_s_median_step": tokens[-1] / statistics.median(steps_s),
        "median_step_s": statistics.median(steps_s),
        "flops_per_token": flops_tok,
        "model_flops_per_s": sum(tokens) * flops_tok / total,
        "num_workers": workers,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="few steps (smoke test)")
    parser.add_argument("--peer", default=None, help="audiolm-pytorch venv: run its benchmark too")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workers", type=int, default=0, help="dataloader workers")
    parser.add_argument("--steps", type=int, default=12, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per run")
    parser.add_argument("--only", default=None, help="comma-separated config names")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    from musiclm.callbacks.throughput import matmul_flops
    from musiclm.stages.coarse import CoarseStage
    from musiclm.stages.semantic import SemanticStage
    from musiclm.stages.token_layout import TokenSpec

    warmup, steps = (1, 3) if args.quick else (args.warmup, args.steps)
    common = dict(ff_mult=4, dropout=0.0, lr=3e-4, weight_decay=0.01)
    # semantic: BOS + 511 semantic frames = 512 tokens; coarse: BOS + 128 S + 128 x 4 levels
    sem_spec = TokenSpec(1024, 50.0, 1024, 4, 50.0, codec_name="bench", semantic_name="bench")
    coarse_spec = TokenSpec(1024, 25.0, 1024, 4, 25.0, codec_name="bench", semantic_name="bench")
    configs = {
        "semantic_d256": (SemanticStage, sem_spec, 10.22, dict(dim=256, depth=4, heads=4), 8),
        "coarse_d256": (
            CoarseStage,
            coarse_spec,
            5.12,
            dict(dim=256, depth=4, heads=4, coarse_levels=4),
            8,
        ),
        "semantic_d512_1024tok": (
            SemanticStage,
            TokenSpec(1024, 100.0, 1024, 4, 100.0),
            10.23,
            dict(dim=512, depth=8, heads=8),
            8,
        ),
    }
    chosen = args.only.split(",") if args.only else list(configs)
    peak = matmul_flops("cpu", torch.float32, 2048, seconds=2.0)
    emit(figure="matmul", dtype="float32", size=2048, flops_per_s=peak, threads=args.threads)
    ours = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in chosen:
            cls, spec, seconds, kw, batch = configs[name]
            result = run_config(
                name,
                cls,
                spec,
                seconds,
                {**common, **kw},
                batch=batch,
                steps=steps,
                warmup=warmup,
                workers=args.workers,
                root=Path(tmp),
            )
            result["mfu"] = result["model_flops_per_s"] / peak
            ours[name] = result
            emit(figure="train", loadavg=os.getloadavg()[0], **result)
    peak_after = matmul_flops("cpu", torch.float32, 2048, seconds=2.0)
    emit(figure="matmul_after", dtype="float32", size=2048, flops_per_s=peak_after)

    if args.peer:
        # their training step, same sizes, right after ours (same load), then ours again
        for ours_key, which in (("semantic_d256", "semantic"), ("coarse_d256", "coarse")):
            if ours_key not in ours:
                continue
            theirs = peer_train(args.peer, which, warmup, steps, args.threads)
            cls, spec, seconds, kw, batch = configs[ours_key]
            with tempfile.TemporaryDirectory() as tmp:
                again = run_config(
                    ours_key, cls, spec, seconds, {**common, **kw}, batch=batch, steps=steps,
                    warmup=warmup, workers=args.workers, root=Path(tmp),
                )  # fmt: skip
            mine = (ours[ours_key]["tokens_per_s"] + again["tokens_per_s"]) / 2
            emit(
                figure="peer",
                ours=ours_key,
                peer=f"audiolm-pytorch 2.4.0 {which} (flash_attn=False), training step only",
                ours_tokens_per_s=mine,
                ours_runs=[ours[ours_key]["tokens_per_s"], again["tokens_per_s"]],
                peer_tokens_per_s=theirs["tokens_per_s"],
                peer_tokens_per_s_median_step=theirs["tokens_per_s_median_step"],
                ratio=mine / theirs["tokens_per_s"],
                loadavg=os.getloadavg()[0],
            )


if __name__ == "__main__":
    main()
