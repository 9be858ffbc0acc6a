"""``musiclm demo``: ``musiclm pipeline --source demo`` with the demo's defaults.

    musiclm demo --out runs/demo [--quick] [--clips N] [--seconds S] [--rerank N] [--force STEP]

Each step is skipped when its outputs are complete, so rerunning the same command after a
kill continues where it stopped. ``--force STEP`` reruns that step and every step after it.
"""

from __future__ import annotations

import argparse

from musiclm.commands import pipeline

_settings = pipeline._settings


def build_parser() -> argparse.ArgumentParser:
    return pipeline.build_parser(prog="musiclm demo", demo=True)


def main(argv: list[str]) -> int:
    return pipeline.run(build_parser().parse_args(argv), "musiclm demo")
