"""``musiclm prepare fit-semantic``: stream a semantic tokenizer's features over audio shards
and fit its k-means (paper: 1024 clusters), saved as a safetensors artifact.

Frames are never all held: batches of ``--batch-frames`` go to the streaming k-means
(``musiclm.tokenizers.semantic.fit_kmeans.fit_semantic``), and ``--passes`` > 1 re-reads the
shards.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from musiclm.tokenizers.semantic.fit_kmeans import fit_semantic
from musiclm.usage import number, run_command


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="musiclm prepare fit-semantic", description=__doc__)
    p.add_argument("--audio", required=True, help="audio shard folder (a split, or its parent)")
    p.add_argument("--out", required=True, help="artifact path (.safetensors)")
    p.add_argument("--semantic", default="music-features", help="semantic tokenizer plugin")
    p.add_argument("--semantic-args", default="{}", help="JSON kwargs for the tokenizer")
    p.add_argument("--k", type=number(int, low=1), default=1024, help="clusters (vocabulary size)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--iters", type=number(int, low=1), default=10, help="Lloyd steps on the initial buffer"
    )
    p.add_argument(
        "--passes", type=number(int, low=1), default=1, help="mini-batch passes over the shards"
    )
    p.add_argument("--batch-frames", type=number(int, low=1), default=8192)
    p.add_argument("--max-frames", type=number(int, low=1), default=None)
    a = p.parse_args(argv)
    try:
        args = json.loads(a.semantic_args)
    except json.JSONDecodeError as exc:
        p.error(f"--semantic-args is not valid JSON: {exc}")
    if not isinstance(args, dict):
        p.error("--semantic-args must be a JSON object")
    return run_command("musiclm prepare fit-semantic", lambda: _run(a, args))


def _run(a: argparse.Namespace, args: dict) -> int:
    from musiclm import registry
    from musiclm.datamodules.shards import read_manifest

    audio_dir = Path(a.audio)
    if not (audio_dir / "manifest.json").is_file() and (audio_dir / "train").is_dir():
        audio_dir = audio_dir / "train"
    # the plugin, its arguments and the folder are checked before the tokenizer is built
    registry.check_arguments("semantic_tokenizers", a.semantic, **args)
    read_manifest(audio_dir)
    summary = fit_semantic(
        a.semantic,
        args,
        audio_dir,
        a.out,
        k=a.k,
        seed=a.seed,
        iters=a.iters,
        passes=a.passes,
        batch_frames=a.batch_frames,
        max_frames=a.max_frames,
    )
    print(json.dumps(summary))
    return 0
