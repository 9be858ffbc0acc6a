"""Generation speed: cached decoding, length scaling, weight-streaming bound, peer, end to end.

    .venv/bin/python benchmarks/bench_generate.py [--quick] [--peer VENV] \
        [--pipeline runs/demo/PIPELINE.yaml]

``VENV`` is the peer's environment (``bash ../shared/peer/install.sh VENV``, the harness beside
the repository); without it, or without ``../shared/peer``, the peer comparison is skipped with
a note. Figures: docs/results.md.

One JSON line per figure, fp32 on the CPU with 2 threads:
- ``decode_tokens_per_s``: d=256, 4 layers, 4 heads, 1024-token vocabulary, 500 tokens from
  [BOS], batch 1 and 8: ours (``TokenLM(..., cache=)``), x-transformers' own cache over the
  same network and no cache (full forward per step); with ``--peer``, audiolm-pytorch 2.4.0's
  cached ``generate`` at the same sizes in the same run (``peer_generate.py``);
- ``position_scaling`` (``--only position``): per-token time at position 2,000 versus 200
  (batch 1) at the peer size, the demo width and the paper size (d=1024, 24 layers; not
  with ``--quick``);
- ``weight_streaming``: bytes of weights per token over the copy bandwidth measured here, as
  a fraction of the measured per-token time at batch 1;
- ``stage_tokens_per_s``: each stage at the demo configs' sizes, batch 1 and 8, cached and not;
- ``real_time_factor``: seconds of audio per second of wall time for ``--pipeline`` (trained
  checkpoints), else a random-weight pipeline at the demo sizes (labelled so).
"""

from __future__ import annotations

import argparse
import dataclasses
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

from musiclm.datamodules.token_spec import MulanSpec, TokenSpec
from musiclm.generation.decode import generate_window
from musiclm.generation.sampling import SamplingConfig
from musiclm.models.kv_cache import weight_bytes
from musiclm.models.token_lm import TokenLM
from musiclm.stages.token_layout import BOS, TokenLayout

# the demo token shards' sizes (offline codec 16 kHz / 50 Hz, 8 x 1024; semantic 25 Hz)
DEMO_SPEC = TokenSpec(
    semantic_vocab=512,
    semantic_rate=25.0,
    codebook_size=1024,
    num_quantizers=8,
    acoustic_rate=50.0,
    streams={"mulan": MulanSpec(levels=12, codebook=256)},
)
DEMO_STAGES = {"semantic": 8.0, "coarse": 4.0, "fine": 2.0}  # crop seconds in conf/demo


def semantic_layout(vocab: int = 1024) -> TokenLayout:
    spec = TokenSpec(
        semantic_vocab=vocab, semantic_rate=25.0, codebook_size=1, num_quantizers=1,
        acoustic_rate=50.0,
    )  # fmt: skip
    return TokenLayout(stage="semantic", spec=spec)


def time_decode(net, layout, batch: int, tokens: int, how: str, prompt=None) -> float:
    """Seconds to sample ``tokens`` per row after ``prompt`` (default [BOS])."""
    if prompt is None:
        prompt = torch.full((batch, 1), BOS, dtype=torch.long)
    sampling = SamplingConfig(temperature=1.0, top_k=103)  # ~audiolm's filter_thres=0.9
    gen = torch.Generator().manual_seed(0)
    if how == "x-transformers":
        return time_xtransformers(net, prompt, tokens, sampling, gen)
    kw = dict(layout=layout, sampling=sampling, generator=gen, use_cache=how == "ours")
    generate_window(net, prompt, 4, **kw)  # warm-up
    start = time.perf_counter()
    generate_window(net, prompt, tokens, **kw)
    return time.perf_counter() - start


@torch.inference_mode()
def time_xtransformers(net, prompt, tokens, sampling, gen) -> float:
    """x-transformers' own key/value cache (``TransformerWrapper(..., cache=)``) over the same
    network: what ``TokenLM``'s cached forward is measured against
    (docs/decisions/one-network.md)."""
    from musiclm.generation.sampling import sample

    wrapper = net.net
    start = time.perf_counter()
    hidden, cache = wrapper(prompt, return_embeddings_and_intermediates=True)
    logits = wrapper.to_logits(hidden[:, -1])
    for _ in range(tokens - 1):
        token = sample(logits, sampling, gen)
        hidden, cache = wrapper(token[:, None] + 3, cache=cache, input_not_include_cache=True,
                                return_embeddings_and_intermediates=True)  # fmt: skip
        logits = wrapper.to_logits(hidden[:, -1])
    return time.perf_counter() - start


@torch.inference_mode()
def position_step_seconds(
    net: TokenLM, positions: tuple[int, ...], steps: int, rounds: int = 5
) -> dict[int, float]:
    """Median time of one cached step at each position (batch 1).

    The positions are timed in alternation, ``rounds`` times, each step on its own, and the
    median is kept: on a shared machine a burst of load then hits both positions alike
    instead of whichever happened to run at that moment. Every round rewinds the cache to its
    position, so each step attends over exactly that many keys.
    """
    caches = {}
    for p in positions:
        caches[p] = net.new_cache(1, p + steps + 1)
        net(torch.randint(3, 1000, (1, p)), cache=caches[p])
    token = torch.full((1, 1), 5)
    times: dict[int, list[float]] = {p: [] for p in positions}
    for _ in range(rounds):
        for p in positions:
            cache = caches[p]
            cache.length = p
            net(token, cache=cache)  # warm this cache's pages
            for _ in range(steps):
                start = time.perf_counter()
                net(token, cache=cache)
                times[p].append(time.perf_counter() - start)
    return {p: statistics.median(t) for p, t in times.items()}


def copy_bandwidth(megabytes: int = 512) -> float:
    """Bytes/s of a large tensor copy (read + write), best of 5."""
    a = torch.ones(megabytes * 2**20 // 4)
    b = torch.empty_like(a)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        b.copy_(a)
        best = min(best, time.perf_counter() - start)
    return 2 * a.numel() * 4 / best


def peer_sized_model() -> tuple[TokenLM, TokenLayout]:
    torch.manual_seed(0)
    layout = semantic_layout()
    net = TokenLM(num_tokens=layout.num_tokens, num_targets=layout.num_targets, dim=256,
                  depth=4, heads=4).eval()  # fmt: skip
    return net, layout


def ours_cached(args) -> dict[int, float]:
    """Our cached tokens/s at batch 1 and 8 (the figure compared with the peer)."""
    net, layout = peer_sized_model()
    out = {}
    for batch in (1, 8):
        out[batch] = batch * args.tokens / time_decode(net, layout, batch, args.tokens, "ours")
        emit(figure="decode_tokens_per_s", who="musiclm", path="ours", batch=batch, cached=True,
             tokens=args.tokens, tokens_per_s=out[batch])  # fmt: skip
    return out


def bench_model(args) -> None:
    net, layout = peer_sized_model()
    n = args.tokens
    for batch in (1, 8):
        for how, tokens in (("ours", n), ("x-transformers", n), ("no-cache", args.uncached)):
            seconds = time_decode(net, layout, batch, tokens, how)
            emit(figure="decode_tokens_per_s", who="musiclm", path=how, batch=batch,
                 cached=how != "no-cache", tokens=tokens, tokens_per_s=batch * tokens / seconds,
                 seconds=seconds)  # fmt: skip
    per_token = time_decode(net, layout, 1, n, "ours") / n
    bandwidth = copy_bandwidth()
    weights = weight_bytes(net.new_cache(1, 1))
    bound = weights / bandwidth
    emit(figure="weight_streaming", batch=1, weight_bytes=weights,
         copy_bandwidth_gb_s=bandwidth / 1e9, bound_ms=bound * 1e3, measured_ms=per_token * 1e3,
         fraction_of_bound=bound / per_token)  # fmt: skip


# (dim, depth, heads): the peer comparison's size, the demo stages' width and the paper's
POSITION_SIZES = {"d256_peer": (256, 4, 4), "d128_demo": (128, 4, 4), "d1024_paper": (1024, 24, 16)}


def bench_position(args) -> None:
    """Per-token time at position 2,000 vs 200 (batch 1) for each size in POSITION_SIZES.

    A step reads every weight once plus the cached keys and values so far; how the two
    compare decides the ratio, so ``bytes_ratio`` (what a memory-bound step would show) is
    printed beside the measured one.
    """
    layout = semantic_layout()
    for name, (dim, depth, heads) in POSITION_SIZES.items():
        if args.quick and dim >= 1024:
            continue
        torch.manual_seed(0)
        net = TokenLM(num_tokens=layout.num_tokens, num_targets=layout.num_targets, dim=dim,
                      depth=depth, heads=heads).eval()  # fmt: skip
        steps = args.position_steps if dim < 1024 else max(2, args.position_steps // 8)
        at = position_step_seconds(net, (200, 2000), steps)
        kv = [depth * 2 * dim * 4 * p for p in (200, 2000)]
        weights = weight_bytes(net.new_cache(1, 1))
        emit(figure="position_scaling", size=name, dim=dim, depth=depth, heads=heads, batch=1,
             ms_at_200=at[200] * 1e3, ms_at_2000=at[2000] * 1e3, ratio=at[2000] / at[200],
             bytes_ratio=(weights + kv[1]) / (weights + kv[0]), kv_bytes_at_2000=kv[1],
             weight_bytes=weights, steps_per_round=steps)  # fmt: skip
        del net


def bench_peer(args, python: Path) -> dict[int, float]:
    env = {**os.environ, "PYTHONPATH": str(PEER_DIR / "stubs")}
    script = str(REPO / "benchmarks" / "peer_generate.py")
    cmd = [str(python), script, "--tokens", str(args.tokens), "--threads", str(args.threads)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    for line in lines:
        print(line, flush=True)
    if out.returncode or not lines:
        emit(figure="decode_tokens_per_s", who="audiolm-pytorch 2.4.0",
             error=out.stderr.strip().splitlines()[-1:] or "no output")  # fmt: skip
    return {r["batch"]: r["tokens_per_s"] for r in map(json.loads, lines)}


def demo_stage_modules(spec: TokenSpec) -> dict:
    from musiclm.stages.coarse import CoarseStage
    from musiclm.stages.fine import FineStage
    from musiclm.stages.semantic import SemanticStage

    common = dict(dim=128, depth=4, heads=4, coarse_levels=2, spec=spec.to_dict())
    torch.manual_seed(0)
    return {
        "semantic": SemanticStage(**common, cond_dropout=0.1).eval(),
        "coarse": CoarseStage(**common, cond_dropout=0.1).eval(),
        "fine": FineStage(**common).eval(),
    }


def bench_stages(args) -> None:
    for name, module in demo_stage_modules(DEMO_SPEC).items():
        layout = module.layout
        rate = DEMO_SPEC.semantic_rate if name == "semantic" else DEMO_SPEC.acoustic_rate
        n = min(args.tokens, int(DEMO_STAGES[name] * rate) * layout.target_level_count)
        for batch in (1, 8):
            g = torch.Generator().manual_seed(0)
            n_s, n_a = int(DEMO_STAGES[name] * 25), int(DEMO_STAGES[name] * 50)
            streams = {
                "mulan": torch.randint(0, 256, (batch, 12), generator=g),
                "semantic": torch.randint(0, 512, (batch, n_s), generator=g),
                "acoustic": torch.randint(0, 1024, (batch, 8, n_a), generator=g),
            }
            prompt = layout.prefix(streams)
            for how, tokens in (("ours", n), ("no-cache", min(n, args.uncached))):
                seconds = time_decode(module.net, layout, batch, tokens, how, prompt)
                emit(figure="stage_tokens_per_s", stage=name, sizes="demo (d=128, 4 layers)",
                     batch=batch, cached=how == "ours", prompt=prompt.shape[1], tokens=tokens,
                     tokens_per_s=batch * tokens / seconds)  # fmt: skip


def bench_pipeline(args) -> None:
    from musiclm.generation.pipeline import Pipeline

    label = "trained demo checkpoints"
    with tempfile.TemporaryDirectory() as tmp:
        path = args.pipeline
        if not path or not Path(path).is_file():
            path, label = random_pipeline(Path(tmp)), "RANDOM weights at demo sizes"
        pipe = Pipeline.from_file(str(path))
        prompt = [[(0.0, "a calm piano melody")]]
        pipe.generate(prompt, seconds=1.0, seed=0)  # warm-up (codec first call)
        for batch in (1, 4):
            start = time.perf_counter()
            out = pipe.generate(prompt * batch, seconds=args.seconds, seed=0)
            wall = time.perf_counter() - start
            emit(figure="real_time_factor", pipeline=label, batch=batch, seconds=args.seconds,
                 wall_s=wall, rtf=batch * args.seconds / wall,
                 stage_s={k: round(v, 3) for k, v in out.timings.items()})  # fmt: skip


def random_pipeline(tmp: Path) -> Path:
    """Demo-sized random stage checkpoints, no MuLan, an untrained 16 kHz / 50 Hz DAC."""
    import yaml

    spec = dataclasses.replace(DEMO_SPEC, streams={})
    stages = {}
    for name, module in demo_stage_modules(spec).items():
        module.hparams["cond_dropout"] = 0.0
        ckpt = {
            "hyper_parameters": dict(module.hparams),
            "datamodule_hyper_parameters": {"seconds": DEMO_STAGES[name]},
            "state_dict": module.state_dict(),
        }
        torch.save(ckpt, tmp / f"{name}.ckpt")
        stages[name] = {"checkpoint": f"{name}.ckpt"}
    codec = {
        "sample_rate": 16000, "encoder_dim": 16, "encoder_rates": [2, 4, 5, 8],
        "decoder_dim": 256, "decoder_rates": [8, 5, 4, 2], "n_codebooks": 8,
        "codebook_size": 1024, "codebook_dim": 8,
    }  # fmt: skip
    data = {"codec": {"name": "dac", "args": {"config": codec}}, "stages": stages}
    (tmp / "PIPELINE.yaml").write_text(yaml.safe_dump(data))
    return tmp / "PIPELINE.yaml"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer tokens (a smoke run)")
    p.add_argument(
        "--peer",
        default=os.environ.get("MUSICLM_PEER"),
        help="audiolm-pytorch venv (../shared/peer/install.sh); default $MUSICLM_PEER",
    )
    p.add_argument("--pipeline", default=str(REPO / "runs/demo/PIPELINE.yaml"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--only", default="peer,model,position,stages,pipeline")
    args = p.parse_args()
    args.tokens, args.uncached = (50, 20) if args.quick else (500, 200)
    args.position_steps = 10 if args.quick else 40
    args.seconds = 2.0 if args.quick else 10.0
    torch.set_num_threads(args.threads)
    emit(figure="meta", machine=machine(), threads=args.threads, torch=torch.__version__,
         loadavg=os.getloadavg(), python=sys.version.split()[0], quick=args.quick)  # fmt: skip
    only = set(args.only.split(","))
    peer = peer_python(args.peer) if "peer" in only else None
    if peer is not None:
        # ours before and after theirs: the machine is shared, load drifts during the run
        before = ours_cached(args)
        theirs = bench_peer(args, peer)
        after = ours_cached(args)
        for batch, peer in theirs.items():
            mean = (before[batch] + after[batch]) / 2
            emit(figure="vs_peer", batch=batch, ours_tokens_per_s=mean, peer_tokens_per_s=peer,
                 ratio=mean / peer, ours_runs=[before[batch], after[batch]])  # fmt: skip
    if "model" in only:
        bench_model(args)
    if "position" in only:
        bench_position(args)
    if "stages" in only:
        bench_stages(args)
    if "pipeline" in only:
        bench_pipeline(args)
    emit(figure="meta_end", loadavg=os.getloadavg())


if __name__ == "__main__":
    main()
