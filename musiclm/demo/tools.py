"""The small jobs between a run's big commands, as command lines of their own.

    musiclm pipeline write-yaml --run RUN [--cfg-scale F|JSON] [--temperatures JSON]
        [--stream-cfg-scale JSON] [--text-neighbours K]
    musiclm pipeline prompts --held-out RUN/audio --count N --out RUN/prompts.jsonl
    musiclm pipeline other-prompts --held-out MANIFEST --per-instrument N --out FILE
    musiclm pipeline attach-attributes --prompts RUN/prompts.jsonl --generated RUN/generated
    musiclm pipeline report --run RUN

``musiclm pipeline`` runs them in-process (no interpreter start per job); ``--print-commands``
prints them as these lines, so a run rebuilt by hand from the printed lines gets the same files.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

from musiclm.demo import melody, outputs
from musiclm.demo.paths import DemoPaths
from musiclm.demo.report import write_report
from musiclm.demo.settings import ACOUSTIC
from musiclm.tokenizers import joint
from musiclm.usage import number, run_command


def _write_yaml(a: argparse.Namespace) -> None:
    spec = joint.from_flags(None, a.joint_embedding, a.joint_embedding_args, flag="--mulan")
    try:
        temperatures = json.loads(a.temperatures) if a.temperatures else None
    except json.JSONDecodeError as exc:
        raise ValueError(f"--temperatures is not valid JSON: {exc}") from None
    run = Path(a.run)
    outputs.write_pipeline(
        DemoPaths(out=run, conf=run),
        cfg_scale=_cfg_scale(a.cfg_scale),
        stream_cfg_scale=_stage_values(a.stream_cfg_scale, "--stream-cfg-scale"),
        temperatures=temperatures,
        joint=spec.to_block() if isinstance(spec, joint.JointEmbeddingSpec) else None,
        melody=a.melody,
        semantic_run=a.semantic_run,
        acoustic=a.acoustic,
        out=Path(a.out) if a.out else None,
        text_neighbours=a.text_neighbours,
    )


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _cfg_scale(text: str) -> float | dict[str, float]:
    """``--cfg-scale``: one number for every guided stage, or JSON ``{"semantic": 2, ...}``."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--cfg-scale {text!r} is neither a number nor JSON: {exc}") from None
    if _is_number(value):
        return float(value)
    if not isinstance(value, dict):
        raise ValueError(f'--cfg-scale {text!r}: give a number or {{"stage": number, ...}}')
    return _stage_map(value, text, "--cfg-scale")


def _stage_values(text: str | None, flag: str) -> dict[str, float]:
    """A flag's JSON ``{"stage": number, ...}`` (None: empty)."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{flag} {text!r} is not valid JSON: {exc}") from None
    return _stage_map(value, text, flag)


def _stage_map(value: object, text: str, flag: str) -> dict[str, float]:
    """A parsed ``{"stage": number, ...}``; anything else is an error naming ``flag``."""
    if isinstance(value, dict) and all(_is_number(v) for v in value.values()):
        return {str(k): float(v) for k, v in value.items()}
    raise ValueError(f'{flag} {text!r}: give {{"stage": number, ...}}')


def _prompts(a: argparse.Namespace) -> None:
    extra = None
    if a.extra_prompts:
        path = Path(a.extra_prompts)
        if not path.is_file():
            raise FileNotFoundError(f"--extra-prompts {path}: no such file")
        extra = [x.strip() for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]
    try:
        held = outputs.held_out(Path(a.held_out), a.count)
    except ValueError:
        if not extra:  # a corpus without captions prompts only with the given ones
            raise
        held = []
    outputs.write_prompts_file(held, Path(a.out), extra)


def _other_prompts(a: argparse.Namespace) -> None:
    held = outputs.held_out(Path(a.held_out), 10**9)
    outputs.write_other_prompts_file(held, Path(a.out), a.per_instrument, a.seed)


def _attach(a: argparse.Namespace) -> None:
    outputs.attach_attributes_to(Path(a.prompts), Path(a.generated))


def marker_seconds(run: Path) -> dict[str, float]:
    """Seconds of each finished step from its ``steps/<name>.done`` marker, in the order the
    steps finished (a forced step and all after it finish again, in order)."""
    markers = sorted((run / "steps").glob("*.done"), key=lambda m: (m.stat().st_mtime_ns, m.name))
    return {m.stem: float(json.loads(m.read_text())["seconds"]) for m in markers}


def _report(a: argparse.Namespace) -> None:
    run = Path(a.run)
    write_report(DemoPaths(out=run, conf=run), step_seconds=marker_seconds(run), title=a.title)


def _parsers() -> dict[str, tuple[argparse.ArgumentParser, Callable[[argparse.Namespace], None]]]:
    def parser(job: str, text: str) -> argparse.ArgumentParser:
        return argparse.ArgumentParser(prog=f"musiclm pipeline {job}", description=text)

    w = parser("write-yaml", "Write RUN/PIPELINE.yaml naming the run's checkpoints and artifacts.")
    w.add_argument("--run", required=True, help="run folder")
    w.add_argument(
        "--cfg-scale", default="1.0",
        help='guidance of every guided stage (semantic, coarse or delay), or JSON {"stage": F}',
    )  # fmt: skip
    w.add_argument("--temperatures", help='JSON {"semantic": T, "coarse": T, "fine": T}')
    w.add_argument(
        "--stream-cfg-scale", help='JSON {"semantic": F}: guidance toward its guided streams'
    )
    w.add_argument(
        "--text-neighbours", type=number(int, low=0), default=0,
        help="read each prompt's MuLan tokens through its K nearest training clips (0: off)",
    )  # fmt: skip
    w.add_argument(
        "--acoustic", choices=sorted(ACOUSTIC), default="cascade",
        help="acoustic stages of the run: coarse + fine, or the delay stage",
    )  # fmt: skip
    joint.add_arguments(w, instead_of="the run's MuLan checkpoint")
    w.add_argument("--melody", action="store_true", help="name RUN/melody's conditioner")
    w.add_argument("--semantic-run", default="semantic", help="the semantic LM's run folder")
    w.add_argument("--out", help="pipeline file to write (default RUN/PIPELINE.yaml)")

    p = parser("prompts", "Held-out captions -> a prompts JSONL for `musiclm generate`.")
    p.add_argument("--held-out", required=True, help="audio shard folder or JSONL manifest")
    p.add_argument("--count", type=int, required=True, help="prompts (test split, then valid)")
    p.add_argument("--extra-prompts", help="text file, one prompt a line, added after them")
    p.add_argument("--out", required=True, help="prompts JSONL to write")

    o = parser("other-prompts", "The demo corpus's held-out attributes in other words.")
    o.add_argument("--held-out", required=True, help="the demo corpus manifest.jsonl")
    o.add_argument("--per-instrument", type=int, required=True)
    o.add_argument("--seed", type=int, default=0)
    o.add_argument("--out", required=True, help="prompts JSONL to write")

    t = parser("attach-attributes", "Give generated sidecars their prompt's attributes.")
    t.add_argument("--prompts", required=True, help="the prompts JSONL generation read")
    t.add_argument("--generated", required=True, help="folder of generated wav + JSON")

    m = parser("melody-clips", "Held-out clips as melody_<i>.wav, each with prompt_<i>.jsonl "
               "holding another clip's caption.")  # fmt: skip
    m.add_argument("--audio", required=True, help="the run's audio shard folder")
    m.add_argument("--count", type=int, required=True)
    m.add_argument("--out", required=True, help="folder to write")

    f = parser("melody-figure", "Chroma cosine of each melody clip against the clips generated "
               "with and without it -> JSON.")  # fmt: skip
    f.add_argument("--clips", required=True, help="the melody-clips folder")
    f.add_argument("--generated", required=True, help="folder of with_<i>/ and without_<i>/")
    f.add_argument("--count", type=int, required=True)
    f.add_argument("--out", required=True, help="JSON to write")

    r = parser("report", "RUN/report.md: steps, corpus, training curves, clips, evaluation.")
    r.add_argument("--run", required=True, help="run folder")
    r.add_argument("--title", default="musiclm pipeline", help="the report's heading")
    return {
        "write-yaml": (w, _write_yaml),
        "prompts": (p, _prompts),
        "other-prompts": (o, _other_prompts),
        "attach-attributes": (t, _attach),
        "melody-clips": (m, lambda a: melody.write_clips(Path(a.audio), a.count, Path(a.out))),
        "melody-figure": (
            f,
            lambda a: melody.write_figure(Path(a.clips), Path(a.generated), a.count, Path(a.out)),
        ),  # fmt: skip
        "report": (r, _report),
    }


JOBS = ("write-yaml", "prompts", "other-prompts", "attach-attributes", "melody-clips",
        "melody-figure", "report")  # fmt: skip


def run(argv: list[str]) -> None:
    """Run one job; user errors raise (``ValueError``, ``OSError``)."""
    parser, work = _parsers()[argv[0]]
    work(parser.parse_args(argv[1:]))


def main(argv: list[str]) -> int:
    """``musiclm pipeline <job> ...``: one line and exit 2 on a user error."""
    return run_command(f"musiclm pipeline {argv[0]}", lambda: run(argv))
