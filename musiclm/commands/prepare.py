"""``musiclm prepare <job>``: the data-preparation jobs; each job's command line is a module of
``musiclm.commands`` over the library function that does the work."""

from __future__ import annotations

import importlib
import sys

# job -> ("module:function" taking argv and returning an exit status, one-line help)
JOBS: dict[str, tuple[str, str]] = {
    "audio": ("musiclm.commands.prepare_audio:main", "corpus -> WebDataset audio shards"),
    "fit-codec": ("musiclm.commands.fit_codec:main", "fit the offline codec on audio shards"),
    "fit-semantic": (
        "musiclm.commands.fit_semantic:main",
        "stream features over audio shards and fit the semantic k-means",
    ),
    "mulan-rvq": ("musiclm.commands.fit_rvq:mulan_main", "fit the conditioning RVQ on MuLan"),
    "melody-rvq": ("musiclm.commands.fit_rvq:melody_main", "fit the melody-token RVQ"),
    "tokens": ("musiclm.commands.prepare_tokens:main", "audio shards -> token shards"),
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
    module, _, function = JOBS[job][0].partition(":")
    return int(getattr(importlib.import_module(module), function)(rest) or 0)
