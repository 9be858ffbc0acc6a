"""Generation speed of the delay stage against the coarse + fine cascade, in one run.

    .venv/bin/python benchmarks/bench_delay.py [--quick]

Both acoustic designs turn the same semantic tokens and MuLan tokens into every codec level
of ``--seconds`` of 50 Hz audio (8 levels of 1,024: coarse 4 + fine 4, as in the paper),
through generation's own stage code (``stage_runner``: ``LoadedStage.run``, the samplers
``Pipeline.generate`` uses, sliding windows at the demo configs' crops: coarse and delay 4 s,
fine 2 s, half of each kept). Networks are random, at equal width and depth for all three
(``--dim``, ``--depth``; d=128 x 4 layers is the demo's). fp32, ``--threads`` (2), temperature 1.0
with top-k 250, no guidance. The designs alternate ``--repeats`` times and the median counts.

One JSON line per figure: ``real_time_factor`` (seconds of audio made per second of wall
time, every row counted) of ``delay`` and ``coarse+fine`` at batch 1 and 8, and their ratio
(acceptance: >= 3).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from common import emit, machine

from musiclm.datamodules.token_spec import MulanSpec, TokenSpec
from musiclm.generation.sampling import SamplingConfig
from musiclm.generation.stage_runner import LoadedStage, Streams
from musiclm.models.token_lm import TokenLM
from musiclm.stages.delay_layout import DelayLayout
from musiclm.stages.token_layout import TokenLayout

SPEC = TokenSpec(
    semantic_vocab=512,
    semantic_rate=25.0,
    codebook_size=1024,
    num_quantizers=8,
    acoustic_rate=50.0,
    streams={"mulan": MulanSpec(levels=12, codebook=256)},
)
CONTEXT = {"coarse": 4.0, "fine": 2.0, "delay": 4.0}  # crop seconds of conf/demo/*.yaml
SAMPLING = SamplingConfig(temperature=1.0, top_k=250)


def stage(name: str, layout, dim: int, depth: int, heads: int) -> LoadedStage:
    torch.manual_seed(0)
    net = TokenLM(
        num_tokens=layout.num_tokens, num_targets=layout.num_targets, dim=dim, depth=depth,
        heads=heads,
    ).eval()  # fmt: skip
    context = CONTEXT[name]
    return LoadedStage(name, net, layout, SAMPLING, context, context / 2, 0.0)


def designs(dim: int, depth: int, heads: int) -> dict[str, list[LoadedStage]]:
    coarse = TokenLayout(stage="coarse", spec=SPEC, coarse_levels=4)
    fine = TokenLayout(stage="fine", spec=SPEC, coarse_levels=4)
    delay = DelayLayout(spec=SPEC)
    return {
        "coarse+fine": [
            stage("coarse", coarse, dim, depth, heads),
            stage("fine", fine, dim, depth, heads),
        ],
        "delay": [stage("delay", delay, dim, depth, heads)],
    }


def run(stages: list[LoadedStage], batch: int, seconds: float) -> float:
    """Wall seconds to make every codec level of ``seconds`` for ``batch`` rows."""
    g = torch.Generator().manual_seed(0)
    rows = [[(0.0, "x")]] * batch
    streams = Streams(rows, {"x": torch.arange(SPEC.streams["mulan"].levels) % 7}, None, "cpu")
    semantic = torch.randint(0, SPEC.semantic_vocab, (batch, round(seconds * 25)), generator=g)
    codes = {"semantic": semantic}
    start = time.perf_counter()
    for s in stages:
        codes[s.produces] = s.run(streams, codes, seconds, None, g)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2 s of audio, 1 repeat")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--threads", type=int, default=2, help="torch threads (1 on a machine other jobs load)"
    )
    args = ap.parse_args()
    seconds, repeats = (2.0, 1) if args.quick else (args.seconds, args.repeats)
    torch.set_num_threads(args.threads)
    built = designs(args.dim, args.depth, args.heads)
    where = machine()
    for batch in (1, 8):
        for stages in built.values():
            run(stages, batch, 0.5)  # warm-up
        times: dict[str, list[float]] = {name: [] for name in built}
        for _ in range(repeats):
            for name, stages in built.items():
                times[name].append(run(stages, batch, seconds))
        rtf = {name: batch * seconds / statistics.median(t) for name, t in times.items()}
        for name, value in rtf.items():
            emit(
                figure="real_time_factor", design=name, batch=batch, seconds=seconds,
                dim=args.dim, depth=args.depth, levels=SPEC.num_quantizers, threads=args.threads,
                audio_seconds_per_wall_second=round(value, 3),
                wall_s=[round(t, 3) for t in times[name]], machine=where,
            )  # fmt: skip
        emit(
            figure="delay_speedup", batch=batch, seconds=seconds, dim=args.dim,
            depth=args.depth, ratio=round(rtf["delay"] / rtf["coarse+fine"], 2),
            threads=args.threads, acceptance=">= 3", machine=where,
        )  # fmt: skip


if __name__ == "__main__":
    main()
