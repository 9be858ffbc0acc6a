"""``musiclm pipeline``: every step from a corpus to a report, resumably, over any corpus.

    musiclm pipeline --source folder --input DIR --out RUN [--quick] [--list] [--force STEP]
        [--until STEP] [--print-commands]

Each step is a plain ``musiclm`` command; a finished step leaves ``RUN/steps/<step>.done``
after its outputs, so rerunning the same command skips what is done and resumes what was
cut short. ``musiclm pipeline <job>`` runs one of the small jobs between the big commands
(``write-yaml``, ``prompts``, ``other-prompts``, ``attach-attributes``, ``report``).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

from musiclm.datamodules.corpora import SOURCES

EPILOG = """\
steps (in order): corpus (demo only), audio, mulan (not with --joint-embedding), mulan-rvq,
semantic-kmeans, codec, tokens, semantic, delay (or coarse, fine with --acoustic cascade),
pipeline, generate, [generate-other],
evaluate, [evaluate-other], report.

your own corpus:
  folder     --input DIR: audio files (wav, flac, ogg, mp3, aiff) in any sub-folders, each
             with a sidecar NAME.txt (the caption) or NAME.json {"caption": ..., "split":
             "train|valid|test", "attributes": {...}}; any sample rate, mono or stereo
  jsonl      --input FILE: one {"audio": PATH, "caption": ..., "split": ...} a line
  musiccaps  --input musiccaps.csv --audio-dir DIR holding <ytid>.<ext>
Items without a split are split 90/5/5 by a hash of their id. Unreadable or too-short audio
is skipped and counted (report.md, RUN/audio/<split>/manifest.json).

examples:
  musiclm pipeline --source folder --input my_music --out runs/mine --quick
  musiclm pipeline --source folder --input my_music --out runs/mine --list
  musiclm pipeline --source folder --input my_music --out runs/mine --print-commands > run.sh
  musiclm pipeline --source folder --input my_music --out runs/mine --force delay
  musiclm generate "calm piano, slow" --pipeline runs/mine/PIPELINE.yaml --out clips

Audio without captions trains every stage but MuLan: give a pretrained joint embedding
(--joint-embedding clap --joint-embedding-args '{"model": "DIR"}') and --prompts FILE.

The small jobs between the big commands are commands too (--print-commands shows them):
musiclm pipeline write-yaml | prompts | other-prompts | attach-attributes | report --help.
More: docs/pipeline.md.
"""


def build_parser(*, prog: str = "musiclm pipeline", demo: bool = False) -> argparse.ArgumentParser:
    """The flags of ``musiclm pipeline`` (``demo``: those of ``musiclm demo``, its alias)."""
    p = argparse.ArgumentParser(
        prog=prog,
        description="Run the whole system over a corpus: audio shards, MuLan and its RVQ, the\n"
        "tokenizers, token shards, the semantic and acoustic stages (`musiclm fit`),\n"
        "PIPELINE.yaml, generation for held-out captions, evaluation and report.md. Each\n"
        "step is a plain `musiclm` command; rerun the same command to continue after an\n"
        "interruption (finished steps are skipped).",
        epilog=None if demo else EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    if not demo:
        p.add_argument("--source", required=True, choices=SOURCES, help="corpus adapter")
        p.add_argument("--input", help="folder, JSONL manifest or MusicCaps CSV (not for demo)")
        p.add_argument("--audio-dir", help="musiccaps: the folder of <ytid>.<ext> files")
    p.add_argument(
        "--out", required=not demo, default="runs/demo" if demo else None, help="run folder"
    )
    p.add_argument(
        "--conf", help="folder of mulan/semantic/delay (or coarse/fine).yaml (default: conf/demo)"
    )
    p.add_argument("--quick", action="store_true", help="tiny models and step counts (minutes)")
    p.add_argument("--clips", type=int, help="demo only: corpus size (default 1000; quick 30)")
    p.add_argument("--seconds", type=float, help="demo only: clip length (default 10; quick 4)")
    p.add_argument("--seed", type=int, help="seed of every job that draws (default 0)")
    p.add_argument(
        "--rerank",
        type=int,
        help="candidates per prompt, MuLan keeps the best (default 1; 3 costs ~2.7x generation)",
    )
    p.add_argument(
        "--force",
        action="append",
        default=[],
        metavar="STEP",
        help="rerun STEP and the steps after it ('all' for everything); repeatable",
    )
    p.add_argument("--until", metavar="STEP", help="stop after STEP")
    p.add_argument("--list", action="store_true", help="list the steps, done or pending; run none")
    if not demo:
        p.add_argument(
            "--print-commands",
            action="store_true",
            help="print every step's musiclm command line in order (for cluster jobs); run none",
        )
        p.add_argument(
            "--joint-embedding",
            metavar="NAME",
            help="a pretrained joint embedding in MuLan's place (`musiclm plugins`), e.g. clap",
        )
        p.add_argument(
            "--joint-embedding-args",
            metavar="JSON",
            help='its arguments, e.g. \'{"model": "laion/larger_clap_music"}\'',
        )
        p.add_argument(
            "--prompts", metavar="FILE", help="text file of prompts, one a line, generated too"
        )
    p.add_argument(
        "--acoustic",
        choices=("delay", "cascade"),
        help="acoustic stages: one delay-pattern LM over every codec level (MusicGen, guided "
        "by the semantic tokens; CONF/delay.yaml; the default), or MusicLM's coarse + fine LMs "
        "(CONF/coarse.yaml, CONF/fine.yaml)",
    )
    p.add_argument(
        "--melody",
        action="store_true",
        help="also train melody conditioning (CONF/melody_fine.yaml): PIPELINE.yaml then takes "
        "`musiclm generate --melody CLIP`, and the report gives the chroma figure",
    )
    return p


def _settings(args: argparse.Namespace):
    """The run's sizes: the defaults or ``--quick``, with the flags that change them."""
    from musiclm.demo.plan import DemoSettings

    s = DemoSettings.quick() if args.quick else DemoSettings()
    demo = getattr(args, "source", "demo") == "demo"
    for flag in ("clips", "seconds"):
        if getattr(args, flag) is not None and not demo:
            raise ValueError(f"--{flag} sizes the demo corpus; not with --source {args.source}")
    if args.clips is not None:
        if args.clips < 10:
            raise ValueError(f"--clips {args.clips}: need at least 10 (train/valid/test splits)")
        s.clips = args.clips
    if args.seconds is not None:
        if args.seconds <= 0:
            raise ValueError(f"--seconds {args.seconds}: must be positive")
        s.seconds = args.seconds
        s.gen_seconds = min(s.gen_seconds, args.seconds)
    if args.seed is not None:
        if args.seed < 0:
            raise ValueError(f"--seed {args.seed}: must be >= 0")
        s.seed = args.seed
    if args.rerank is not None:
        if args.rerank < 1:
            raise ValueError(f"--rerank {args.rerank}: need at least 1 candidate per prompt")
        s.rerank = args.rerank
    s.melody = bool(getattr(args, "melody", False))
    if getattr(args, "acoustic", None):
        s.acoustic = args.acoustic
    return s


def _corpus(args: argparse.Namespace, settings):
    """The corpus the flags name, checked against what MuLan and the prompts need."""
    from musiclm.demo.plan import Corpus, inspect_corpus
    from musiclm.tokenizers import joint

    source = getattr(args, "source", "demo")
    spec = joint.from_flags(
        None, getattr(args, "joint_embedding", None), getattr(args, "joint_embedding_args", None),
        flag="--joint-embedding",
    )  # fmt: skip
    if spec is not None:
        spec.check()  # an unknown plugin or argument, before anything runs
        settings.joint_embedding = {"name": spec.name, "args": dict(spec.args)}
    prompts = getattr(args, "prompts", None)
    if prompts:
        if not Path(prompts).is_file():
            raise FileNotFoundError(f"--prompts {prompts}: no such file")
        settings.extra_prompts = str(prompts)
    if source == "demo":
        if getattr(args, "input", None) or getattr(args, "audio_dir", None):
            raise ValueError("--source demo renders its own corpus: no --input or --audio-dir")
        return Corpus()
    if not args.input:
        raise ValueError(f"--input is required with --source {source}")
    if args.audio_dir and source != "musiccaps":
        raise ValueError(f"--audio-dir is for --source musiccaps, not {source}")
    corpus = inspect_corpus(source, args.input, args.audio_dir)
    if not corpus.captions and spec is None:
        raise ValueError(
            f"--input {args.input}: no item has a caption, and MuLan trains on captions: add "
            "caption sidecars (NAME.txt, or 'caption' in NAME.json), or give a pretrained "
            "joint embedding (--joint-embedding clap --joint-embedding-args '{\"model\": DIR}')"
        )
    if not corpus.captions and not prompts:
        raise ValueError(
            f"--input {args.input}: no item has a caption to prompt with: give --prompts FILE "
            "(one prompt a line)"
        )
    return corpus


def _check_settings(out: Path, settings: dict, forcing: bool) -> None:
    """A run folder keeps the settings it was made with; other sizes would mix outputs."""
    from musiclm.datamodules.shards import atomic_write_json

    path = out / "settings.json"
    if path.is_file() and not forcing:
        old = json.loads(path.read_text())
        # Keys only one side knows (a newer version's settings) are not a conflict.
        diff = {k: (old[k], v) for k, v in settings.items() if k in old and old[k] != v}
        if diff:
            shown = ", ".join(f"{k}: {a} -> {b}" for k, (a, b) in diff.items())
            raise ValueError(
                f"{out} was made with other settings ({shown}); use another --out, or "
                "--force all to redo it"
            )
    atomic_write_json(path, settings)


def _check_names(args: argparse.Namespace, names: list[str]) -> None:
    for flag, values in (("--force", args.force), ("--until", [args.until] if args.until else [])):
        for v in values:
            if v not in names and not (flag == "--force" and v == "all"):
                raise ValueError(f"{flag} {v!r}: no such step; steps are {names}")


def print_commands(steps: list) -> None:
    """Every step's command lines, shell-quoted, under a comment naming the step."""
    for step in steps:
        print(f"# {step.name}: {step.describe}")
        for args in step.commands():
            print(shlex.join(["musiclm", *args]))


def run(args: argparse.Namespace, prog: str) -> int:
    """Plan the run the parsed flags describe, then list, print or run its steps."""
    from musiclm.demo.paths import DemoPaths
    from musiclm.demo.plan import build_steps, default_conf_dir
    from musiclm.demo.steps import StepFailed, StepRunner
    from musiclm.usage import USER_ERRORS

    out = Path(args.out)
    conf = Path(args.conf) if args.conf else default_conf_dir()
    try:
        settings = _settings(args)
        needed = ["mulan", *settings.lm_stages, *(["melody_fine"] * settings.melody)]
        missing = [s for s in needed if not (conf / f"{s}.yaml").is_file()]
        if missing:
            raise ValueError(f"--conf {conf}: no {', '.join(m + '.yaml' for m in missing)}")
        corpus = _corpus(args, settings)
        runner = StepRunner(out, force=args.force)
        steps = build_steps(runner, DemoPaths(out=out, conf=conf), settings, corpus)
        names = [s.name for s in steps]
        _check_names(args, names)
        if args.until:
            shown = steps[: names.index(args.until) + 1]
        else:
            shown = steps
        if args.list:
            for step in steps:
                state = "done" if runner.is_done(step) else "pending"
                print(f"{step.name:<16} {state:<8} {step.describe}")
            return 0
        if getattr(args, "print_commands", False):
            print_commands(shown)
            return 0
        _check_settings(out, {**settings.to_json(), "corpus": corpus.to_json()}, bool(args.force))
        start = time.perf_counter()
        print(f"{prog}: run folder {out} ({'quick' if args.quick else 'full'})", flush=True)
        runner.run(shown)
    except StepFailed as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 1
    except USER_ERRORS as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    took = time.perf_counter() - start
    print(f"{prog}: finished in {took / 60:.1f} min; see {out / 'report.md'}")
    return 0


def main(argv: list[str]) -> int:
    from musiclm.demo import tools

    if argv and argv[0] in tools.JOBS:
        return tools.main(argv)
    return run(build_parser().parse_args(argv), "musiclm pipeline")
