"""``musiclm prepare <job>``: the data-preparation jobs, each in the module that owns it."""

from __future__ import annotations

import importlib
import sys

# job -> (module with main(argv) -> int, one-line help)
JOBS: dict[str, tuple[str, str]] = {
    "audio": ("musiclm.datamodules.prepare_audio", "corpus -> WebDataset audio shards"),
    "fit-codec": ("musiclm.tokenizers.fit_codec", "fit the offline codec on audio shards"),
    "fit-semantic": (
        "musiclm.tokenizers.semantic.fit_kmeans",
        "stream features over audio shards and fit the semantic k-means",
    ),
    "mulan-rvq": ("musiclm.conditioning.conditioning_rvq", "fit the conditioning RVQ on MuLan"),
    "melody-rvq": ("musiclm.conditioning.melody_tokens", "fit the melody-token RVQ"),
    "tokens": ("musiclm.commands.prepare_tokens", "audio shards -> token shards"),
}


def usage() -> str:
    lines = ["usage: musiclm prepare <job> [options]", "", "jobs:"]
    lines += [f"  {name:<14} {text}" for name, (_, text) in JOBS.items()]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    job, rest = argv[0], argv[1:]
    if job not in JOBS:
        print(f"musiclm prepare: unknown job {job!r}\n\n{usage()}", file=sys.stderr)
        return 2
    return int(importlib.import_module(JOBS[job][0]).main(rest) or 0)
