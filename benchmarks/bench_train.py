"""Token-LM training throughput through the real loop: Lightning Trainer + TokenDataModule
reading WebDataset shards + the stage's loss + AdamW, fp32 on the CPU.

Prints one JSON line per figure:
- ``matmul``: fp32 FLOP/s of 2048x2048 products, measured in this run (the MFU denominator);
- ``train``: tokens/s and MFU per configuration (semantic and coarse at the peer's sizes,
  d=256 / 4 layers / 4 heads / 1024-token vocabulary / 512 tokens / batch 8; and the MFU
  goal size d=512 / 8 layers / 8 heads / 1024 tokens);
- ``bare`` (with ``--bare``): bare x-transformers decoders at the semantic sizes, same run;
- ``mfu``: every configuration's model FLOP/s over the higher of the two matmul probes;
- ``peer`` (with ``--peer VENV``): audiolm-pytorch 2.4.0's training step set up as
  ``../shared/peer/bench_peer.py`` (beside the repository) does, in its own environment,
  alternated with runs of ours ``--rounds`` times, compared by median step. Theirs runs with
  its default ``flash_attn=False``: ``flash_attn=True`` also switches off its relative position
  bias, its only position signal, so that model is not the same function (timed once for the record,
  ``peer_flash_no_positions``). Ours counts the whole loop (Lightning, shard reading,
  cropping, logging hooks); theirs is the bare forward/backward/AdamW step. ``--compile``
  trains ours with the stages' ``compile: true`` (its warm-up falls in the untimed steps).

Run: ``python benchmarks/bench_train.py [--quick] [--peer VENV]``, where ``VENV`` is the peer's
environment (``bash ../shared/peer/install.sh VENV``); without it, or without the harness in
``../shared/peer``, the peer comparison is skipped with a note. Figures: docs/results.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import PEER_DIR, REPO, emit, machine, peer_python

PEER_STEP = Path(__file__).with_name("peer_train_step.py")


def peer_train(
    python: Path, which: str, warmup: int, steps: int, threads: int, flash: bool
) -> dict:
    env = {**os.environ, "PYTHONPATH": str(PEER_DIR / "stubs")}
    cmd = [str(python), str(PEER_STEP), which, str(warmup), str(steps), str(threads)]
    cmd.append("1" if flash else "0")
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


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


def bare_decoder(dim: int, depth: int, heads: int, vocab: int, context: int, batch: int,
                 steps: int, warmup: int) -> dict:  # fmt: skip
    """A bare x-transformers decoder of the same size: random tokens, forward, cross entropy,
    backward, AdamW; no Lightning, no data loading (the reference the loop must not lose to).
    ``TokenLM`` is that decoder plus its logits head, nothing more."""
    from musiclm.models.token_lm import TokenLM

    torch.manual_seed(0)
    net = TokenLM(num_tokens=vocab, num_targets=vocab, dim=dim, depth=depth, heads=heads)
    opt = torch.optim.AdamW(net.parameters(), lr=3e-4)
    x = torch.randint(0, vocab, (batch, context + 1))
    times = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        logits = net(x[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, vocab), x[:, 1:].reshape(-1))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    flops_tok = net.flops_per_token(context)
    tok_s = batch * context / statistics.median(times)
    return {"name": f"bare_x_transformers_d{dim}", "dim": dim, "depth": depth, "heads": heads,
            "context": context, "batch": batch, "timed_steps": steps,
            "tokens_per_s_median_step": tok_s, "flops_per_token": flops_tok,
            "model_flops_per_s": tok_s * flops_tok}  # fmt: skip


def run_config(name, stage_cls, spec, seconds, model_kw, *, batch, steps, warmup, workers, root):
    import lightning as L

    from musiclm.datamodules.tokens import TokenDataModule

    sys.path.insert(0, str(REPO / "tests"))  # the test suite's random token shards
    from token_shards import write_synthetic_shards

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
    flops_tok = model.net.flops_per_token(context, model.layout.target_level_count)
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
        "compile": bool(model_kw.get("compile")),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="few steps (smoke test)")
    parser.add_argument(
        "--peer",
        default=os.environ.get("MUSICLM_PEER"),
        help="audiolm-pytorch venv (../shared/peer/install.sh VENV); default $MUSICLM_PEER",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workers", type=int, default=0, help="dataloader workers")
    parser.add_argument("--steps", type=int, default=12, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per run")
    parser.add_argument("--only", default=None, help="comma-separated config names")
    parser.add_argument(
        "--compile", action="store_true", help="train with the stage's `compile: true`"
    )
    parser.add_argument("--rounds", type=int, default=2, help="peer comparison: runs per side")
    parser.add_argument(
        "--bare", action="store_true", help="also time bare decoders at the semantic sizes"
    )
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    from musiclm.callbacks.throughput import matmul_flops
    from musiclm.datamodules.token_spec import TokenSpec
    from musiclm.stages.coarse import CoarseStage
    from musiclm.stages.semantic import SemanticStage

    warmup, steps = (1, 3) if args.quick else (args.warmup, args.steps)
    common = dict(ff_mult=4, dropout=0.0, lr=3e-4, weight_decay=0.01, compile=args.compile)
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
    emit(figure="meta", machine=machine(), threads=args.threads, torch=torch.__version__,
         quick=args.quick, loadavg=os.getloadavg()[0])  # fmt: skip
    peer = peer_python(args.peer)
    peak = matmul_flops("cpu", torch.float32, 2048, seconds=2.0, warmup=3.0)
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
            result["mfu_vs_first_probe"] = result["model_flops_per_s"] / peak
            ours[name] = result
            emit(figure="train", loadavg=os.getloadavg()[0], **result)
    # the semantic configurations' sizes as a bare decoder: (dim, depth, heads, context)
    bare_sizes = {"semantic_d256": (256, 4, 4, 511), "semantic_d512_1024tok": (512, 8, 8, 1023)}
    for name in [n for n in bare_sizes if n in ours] if args.bare else []:
        dim, depth, heads, context = bare_sizes[name]
        bare = bare_decoder(dim, depth, heads, 1024, context, 8, steps=steps, warmup=warmup)
        bare["loop_over_bare"] = (
            ours[name]["tokens_per_s_median_step"] / bare["tokens_per_s_median_step"]
        )
        ours[bare["name"]] = bare
        emit(figure="bare", loadavg=os.getloadavg()[0], **bare)
    peak_after = matmul_flops("cpu", torch.float32, 2048, seconds=2.0)
    emit(figure="matmul_after", dtype="float32", size=2048, flops_per_s=peak_after)
    # against the higher probe: a probe slowed by load or a cold CPU would inflate the MFU
    best = max(peak, peak_after)
    for name, result in ours.items():
        emit(figure="mfu", name=name, model_flops_per_s=result["model_flops_per_s"],
             peak_flops_per_s=best, probes=[peak, peak_after],
             mfu=result["model_flops_per_s"] / best)  # fmt: skip

    if peer is not None:
        # ours and theirs alternate, ``--rounds`` times each, in this one job: load on a shared
        # machine drifts, and alternating spreads it over both sides; the ratio uses the
        # median step of every run (a burst of load moves a median less than a total)
        for ours_key, which in (("semantic_d256", "semantic"), ("coarse_d256", "coarse")):
            if ours_key not in ours:
                continue
            cls, spec, seconds, kw, batch = configs[ours_key]
            mine, theirs = [ours[ours_key]], []
            for r in range(args.rounds):
                # their default, flash_attn=False: the model with positions (T5 relative bias)
                theirs.append(peer_train(peer, which, warmup, steps, args.threads, False))
                if r + 1 < args.rounds:
                    with tempfile.TemporaryDirectory() as tmp:
                        mine.append(run_config(
                            ours_key, cls, spec, seconds, {**common, **kw}, batch=batch,
                            steps=steps, warmup=warmup, workers=args.workers, root=Path(tmp),
                        ))  # fmt: skip
            ours_med = statistics.mean(m["tokens_per_s_median_step"] for m in mine)
            peer_med = statistics.mean(t["tokens_per_s_median_step"] for t in theirs)
            emit(
                figure="peer",
                ours=ours_key,
                compile=args.compile,
                peer=f"audiolm-pytorch 2.4.0 {which}, training step only, flash_attn=False",
                ours_tokens_per_s_median_step=ours_med,
                peer_tokens_per_s_median_step=peer_med,
                ratio=ours_med / peer_med,
                ours_runs=[m["tokens_per_s_median_step"] for m in mine],
                peer_runs=[t["tokens_per_s_median_step"] for t in theirs],
                ratio_of_totals=statistics.mean(m["tokens_per_s"] for m in mine)
                / statistics.mean(t["tokens_per_s"] for t in theirs),
                loadavg=os.getloadavg()[0],
            )
            # flash_attn=True turns their relative position bias off (their transformer then
            # has no position information at all): timed for the record, not compared
            flash = peer_train(peer, which, warmup, steps, args.threads, True)
            emit(figure="peer_flash_no_positions", ours=ours_key, **flash,
                 ratio=ours_med / flash["tokens_per_s_median_step"])  # fmt: skip


if __name__ == "__main__":
    main()
