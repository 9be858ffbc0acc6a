"""``musiclm prepare mulan-rvq`` and ``musiclm prepare melody-rvq``: fit a conditioning RVQ
over a network's audio embeddings of a training shard folder (a MuLan checkpoint or a
joint-embedding plugin; a melody checkpoint), save it and print a JSON summary.

    musiclm prepare mulan-rvq --checkpoint CKPT --audio SHARDS/train --out rvq.safetensors \
        --levels 12 --codebook-size 1024
    musiclm prepare mulan-rvq --joint-embedding clap --joint-embedding-args '{"model": DIR}' ...
    musiclm prepare melody-rvq --checkpoint CKPT --audio SHARDS/train \
        --out melody_rvq.safetensors --levels 24 --codebook-size 512
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

import torch

from musiclm.conditioning.conditioning_rvq import (
    MAX_KEPT_EMBEDDINGS,
    ConditioningRVQ,
    embed_audio_shards,
)
from musiclm.conditioning.melody_tokens import MelodyRVQ, melody_fingerprint
from musiclm.conditioning.melody_tokens import embed_audio_shards as embed_melody_shards
from musiclm.datamodules.shards import read_manifest
from musiclm.models.melody import load_melody
from musiclm.tokenizers import joint
from musiclm.usage import number, run_command


def rvq_job_parser(
    prog: str,
    description: str | None,
    *,
    network: str,
    levels: int,
    codebook_size: int,
    checkpoint_required: bool = True,
) -> argparse.ArgumentParser:
    """The arguments shared by the jobs that fit an RVQ over a network's audio embeddings."""
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument(
        "--checkpoint", required=checkpoint_required, help=f"{network} checkpoint (.ckpt)"
    )
    p.add_argument("--audio", required=True, help="audio shard folder (the training split)")
    p.add_argument("--out", required=True, help="output .safetensors (a .json sidecar beside)")
    p.add_argument("--levels", type=number(int, low=1), default=levels)
    p.add_argument("--codebook-size", type=number(int, low=1), default=codebook_size)
    p.add_argument(
        "--iters", type=number(int, low=1), default=20, help="k-means iterations per level"
    )
    p.add_argument("--batch-size", type=number(int, low=1), default=16)
    p.add_argument("--max-clips", type=number(int, low=1), default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return p


def fit_save_report(
    cls: type[ConditioningRVQ],
    emb: torch.Tensor,
    args: argparse.Namespace,
    meta: dict,
    *,
    count: str,
    keep_embeddings: int = 0,
) -> int:
    """Fit ``cls`` on ``emb`` with the job's arguments, save it and print a JSON summary."""
    rvq = cls.fit(
        emb, levels=args.levels, codebook_size=args.codebook_size, iters=args.iters,
        seed=args.seed, meta=meta, keep_embeddings=keep_embeddings,
    )  # fmt: skip
    rvq.save(args.out)
    errors = rvq.meta["quantization_mse"]
    kept = 0 if rvq.audio_embeddings is None else rvq.audio_embeddings.shape[0]
    print(json.dumps({"out": args.out, count: emb.shape[0], "fingerprint": rvq.fingerprint(),
                      "quantization_mse_by_levels": [round(e, 5) for e in errors],
                      "kept_embeddings": kept}))  # fmt: skip
    return 0


def mulan_main(argv: list[str] | None = None) -> int:
    """``musiclm prepare mulan-rvq``: fit the conditioning RVQ over a training shard folder
    (the audio embeddings of a MuLan checkpoint, or of a joint-embedding plugin)."""
    p = rvq_job_parser(
        "musiclm prepare mulan-rvq", mulan_main.__doc__, network="MulanStage", levels=12,
        codebook_size=1024, checkpoint_required=False,
    )  # fmt: skip
    joint.add_arguments(p, instead_of="--checkpoint")
    args = p.parse_args(argv)
    source = joint.from_arguments(p, args.checkpoint, args, flag="--checkpoint")
    if source is None:
        p.error("give --checkpoint (a MuLan checkpoint) or --joint-embedding NAME")
    return run_command("musiclm prepare mulan-rvq", lambda: _run_mulan(args, source))


def _run_mulan(args: argparse.Namespace, source: str | joint.JointEmbeddingSpec) -> int:

    spec = joint.JointEmbeddingSpec.of(source)
    spec.check()  # an unknown plugin or argument is refused before anything is read
    read_manifest(args.audio)  # a missing or incomplete folder is refused before the load
    mulan = spec.build(args.device)
    emb = embed_audio_shards(
        mulan, args.audio, batch_size=args.batch_size, max_clips=args.max_clips
    )
    meta: dict[str, Any] = {"mulan_fingerprint": mulan.fingerprint()}
    if spec.checkpoint:
        meta["mulan_checkpoint"] = os.path.abspath(spec.checkpoint)
    else:
        meta["joint_embedding"] = spec.to_block()
    meta |= {"audio": os.path.abspath(args.audio), "seed": args.seed}
    # kept for generation's text_neighbours (a prompt read through its nearest training clips)
    return fit_save_report(
        ConditioningRVQ, emb, args, meta, count="clips", keep_embeddings=MAX_KEPT_EMBEDDINGS
    )


def melody_main(argv: list[str] | None = None) -> int:
    """``musiclm prepare melody-rvq``: fit the melody RVQ over a training shard folder."""
    args = rvq_job_parser(
        "musiclm prepare melody-rvq", melody_main.__doc__, network="MelodyStage", levels=24,
        codebook_size=512,
    ).parse_args(argv)  # fmt: skip
    return run_command("musiclm prepare melody-rvq", lambda: _run_melody(args))


def _run_melody(args: argparse.Namespace) -> int:

    read_manifest(args.audio)  # a missing or incomplete folder is refused before the load
    melody = load_melody(args.checkpoint, map_location=args.device)
    emb = embed_melody_shards(
        melody, args.audio, batch_size=args.batch_size, max_clips=args.max_clips
    )
    meta = {
        "melody_fingerprint": melody_fingerprint(melody),
        "melody_checkpoint": os.path.abspath(args.checkpoint),
        "audio": os.path.abspath(args.audio),
        "num_windows": melody.num_windows,
    }
    return fit_save_report(MelodyRVQ, emb, args, meta, count="windows")
