"""A run's steps: corpus -> shards -> MuLan -> tokenizers -> token LMs -> generate -> evaluate.

Every step is the ``musiclm`` command a user would run on a cluster (a subprocess of this
interpreter; the small jobs of :mod:`musiclm.demo.tools` run in-process), with paths pointing
into one run folder. Stages train through ``musiclm fit --config CONF/<stage>.yaml`` plus
command-line overrides; an interrupted stage resumes with ``--ckpt_path last``. The corpus is
the demo's (rendered into the run) or any folder, JSONL manifest or MusicCaps CSV that
``musiclm prepare audio`` reads.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from musiclm.demo import outputs, tools
from musiclm.demo.paths import DemoPaths
from musiclm.demo.steps import Step, StepRunner, musiclm_argv
from musiclm.stage_names import LM_STAGES

Commands = Callable[[], list[list[str]]]


@dataclass
class DemoSettings:
    """Sizes of one demo run (the full default, or ``quick()`` for the integration test)."""

    # 1000 clips rather than 200: rendering, shards and tokens cost ~0.2 s a clip, the
    # MuLan overfitted 160 training clips, and 1000 lifted instrument adherence
    # from 0.30 to 0.52 and MCC from 0.30 to 0.44 over 400 (docs/decisions/demo-clips.md)
    clips: int = 1000
    seconds: float = 10.0
    # One seed for everything the run draws: the corpus, every training job, generation and
    # evaluation. Figures are quoted as mean and spread over seeds 0, 1, 2.
    seed: int = 0
    # MuLan: steps, batch, crop (seconds); the conditioning RVQ over its audio embeddings.
    mulan_steps: int = 300
    mulan_batch: int = 32
    rvq_levels: int = 4
    rvq_codebook: int = 32
    # Offline codec (stft-rvq) and semantic tokenizer (music-features) sizes.
    codec_levels: int = 6
    codec_codebook: int = 256
    codec_max_frames: int = 40_000
    semantic_k: int = 256
    # Token LMs: steps per stage and extra `musiclm fit` overrides shared by all three.
    # The coarse LM is where the music stops moving: rendered from real semantic tokens its
    # onsets barely follow them (onset-envelope correlation 0.2, the codec's 0.89) and its
    # validation loss was still falling at 600 steps (1.43 -> 1.37), so it trains 1500
    # (docs/decisions/coarse-training.md).
    lm_steps: dict[str, int] = field(
        default_factory=lambda: {"semantic": 400, "coarse": 1500, "fine": 120}
    )
    lm_overrides: list[str] = field(default_factory=list)
    mulan_overrides: list[str] = field(default_factory=list)
    # Generation: held-out prompts (test, then validation captions), clip length, sampling.
    # Every test clip's caption (100 of the 1,000 clips): with 40, one prompt is 2.5 % and a
    # tempo figure 0.06 above chance was p = 0.19 (docs/decisions/demo-clips.md)
    prompts: int = 100
    # Prompts in other words than the caption templates (no BPM number, synonyms, other
    # order), this many per instrument, scored beside the templated ones.
    other_prompts_per_instrument: int = 6
    gen_seconds: float = 8.0
    cfg_scale: float = 3.0
    # Below the paper's 1.0 / 0.95 / 0.4: at demo scale cooler sampling makes the text heard
    # (instrument, tempo) at the cost of note motion (docs/decisions/sampling-temperatures.md)
    temperatures: dict[str, float] = field(
        default_factory=lambda: {"semantic": 0.5, "coarse": 0.6, "fine": 0.3}
    )
    # Candidates per prompt, MuLan keeps the closest to the text (`generate --rerank`). Three
    # lifted instrument adherence from 0.47 to 0.64 but not tempo, for 2.7x the generation
    # time, and the MCC of kept candidates is chosen by the same MuLan (docs/results.md,
    # re-ranking): one by default, `musiclm demo --rerank N` to ask for more.
    rerank: int = 1
    gen_args: list[str] = field(default_factory=list)
    eval_args: list[str] = field(default_factory=list)
    # A pretrained joint embedding {name, args} in MuLan's place (no MuLan training), and a
    # text file of prompts added to the held-out captions (the only ones for audio without).
    joint_embedding: dict[str, Any] | None = None
    extra_prompts: str | None = None

    @classmethod
    def quick(cls) -> DemoSettings:
        """A few minutes on 2 CPU cores: few clips, few steps, tiny models."""
        tiny = [
            "--model.init_args.dim=32",
            "--model.init_args.depth=2",
            "--model.init_args.heads=2",
            "--data.init_args.batch_size=4",
            "--data.init_args.val_batches=1",
            "--model.init_args.warmup_steps=2",
        ]
        return cls(
            clips=30,
            seconds=4.0,
            mulan_steps=8,
            mulan_batch=8,
            rvq_levels=2,
            rvq_codebook=4,
            codec_levels=3,
            codec_codebook=16,
            codec_max_frames=2000,
            semantic_k=16,
            lm_steps={"semantic": 6, "coarse": 6, "fine": 6},
            lm_overrides=[*tiny, "--data.init_args.seconds=2.0", "--trainer.log_every_n_steps=1"],
            mulan_overrides=[
                "--data.init_args.crop_seconds=2.0",
                "--model.init_args.window_s=2.0",
                "--trainer.log_every_n_steps=1",
            ],
            prompts=3,
            other_prompts_per_instrument=1,
            gen_seconds=2.0,
            cfg_scale=1.0,
            rerank=2,  # the integration test covers re-ranking and its report line
            eval_args=["--max-train-clips", "40"],
        )

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class Corpus:
    """Where a run's audio comes from, and what its metadata holds."""

    source: str = "demo"  # demo | folder | jsonl | musiccaps (``musiclm prepare audio``)
    input: Path | None = None  # None for the demo: rendered into RUN/corpus
    audio_dir: Path | None = None  # musiccaps: the <ytid>.<ext> files
    captions: bool = True  # items carry captions (MuLan trains on them)
    attributes: bool = True  # items carry `attributes` (adherence is scored)

    @property
    def is_demo(self) -> bool:
        return self.source == "demo"

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "input": None if self.input is None else str(self.input),
            "audio_dir": None if self.audio_dir is None else str(self.audio_dir),
        }


def inspect_corpus(source: str, input: str | Path, audio_dir: str | Path | None = None) -> Corpus:
    """Read a corpus's listing (no audio) to learn whether it has captions and attributes."""
    from musiclm.datamodules.corpora import SPLITS, list_entries

    entries = list_entries(source, input, audio_dir=audio_dir, captions=False)
    usable = [e for e in entries if e.error is None]
    if not usable:
        shown = "; ".join(f"{e.name}: {e.error}" for e in entries[:3]) or "no audio files"
        raise ValueError(f"--input {input}: no usable item ({shown})")
    for split in SPLITS:  # MuLan and the LMs validate on valid, evaluation scores test
        if not any(e.split == split for e in usable):
            raise ValueError(
                f"--input {input}: no item in the {split!r} split ({len(usable)} items); give "
                "some a 'split' in their metadata, or add items (5% go to valid and to test)"
            )
    return Corpus(
        source=source,
        input=Path(input),
        audio_dir=Path(audio_dir) if audio_dir else None,
        captions=any(e.caption for e in usable),
        attributes=any(
            isinstance(e.meta.get("attributes"), dict) and e.meta["attributes"] for e in usable
        ),  # fmt: skip
    )


def default_conf_dir() -> Path:
    """``conf/demo`` of the source tree this package runs from."""
    return Path(__file__).resolve().parents[2] / "conf" / "demo"


def codec_spec(p: DemoPaths) -> dict:
    return {"name": "stft-rvq", "args": {"codebooks": str(p.codec.resolve())}}


def semantic_spec(p: DemoPaths) -> dict:
    return {"name": "music-features", "args": {"kmeans": str(p.kmeans.resolve())}}


def _missing(*paths: Path) -> list[str]:
    return [str(x) for x in paths if not x.exists()]


def checkpoint_step(path: Path) -> int:
    """The global step a Lightning checkpoint was saved at (memory-mapped, nothing unpickled)."""
    import torch

    ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    return int(ckpt["global_step"])


def fit_missing(p: DemoPaths, stage: str, steps: int) -> list[str]:
    """What a training step still owes: ``last.ckpt`` at ``steps`` or more. Lightning exits
    with status 0 when it stops on SIGTERM, so the exit status alone does not prove it."""
    last = p.last_ckpt(stage)
    if not last.is_file():
        return [str(last)]
    got = checkpoint_step(last)
    return [] if got >= steps else [f"{steps - got} more training steps in {last}"]


def fit_args(
    p: DemoPaths, stage: str, data: dict[str, Path], extra: list[str], seed: int = 0
) -> list[str]:
    """``musiclm fit`` arguments for one stage, resuming from ``last.ckpt`` when a run was
    cut short."""
    args = ["fit", "--config", str(p.conf / f"{stage}.yaml"),
            f"--trainer.default_root_dir={p.run_dir(stage)}"]  # fmt: skip
    args += [f"--data.init_args.{k}={v}" for k, v in data.items()]
    args += [f"--seed_everything={seed}", *extra]
    if p.last_ckpt(stage).is_file():
        args += ["--ckpt_path", "last"]
    return args


def fit_argv(
    p: DemoPaths, stage: str, data: dict[str, Path], extra: list[str], seed: int = 0
) -> list[str]:
    """:func:`fit_args` as a command line run by this interpreter."""
    return musiclm_argv(*fit_args(p, stage, data, extra, seed))


# ----------------------------------------------------------------------------- commands


def corpus_commands(p: DemoPaths, s: DemoSettings) -> list[list[str]]:
    return [["data", "demo", "--out", str(p.corpus), "--clips", str(s.clips),
             "--seconds", str(s.seconds), "--seed", str(s.seed), "--quiet"]]  # fmt: skip


def audio_commands(p: DemoPaths, c: Corpus) -> list[list[str]]:
    corpus_input = p.corpus / "manifest.jsonl" if c.is_demo else c.input
    args = ["prepare", "audio", "--source", c.source, "--input", str(corpus_input)]
    if c.audio_dir is not None:
        args += ["--audio-dir", str(c.audio_dir)]
    args += ["--out", str(p.audio), "--quiet"]
    if not c.captions:  # audio only: keep the items a captioned corpus would skip
        args += ["--captions", "optional"]
    return [args]


def mulan_commands(p: DemoPaths, s: DemoSettings) -> list[list[str]]:
    extra = [
        f"--trainer.max_steps={s.mulan_steps}",
        f"--data.init_args.batch_size={s.mulan_batch}",
        f"--data.init_args.batches_per_epoch={max(1, min(150, s.mulan_steps // 2))}",
        *s.mulan_overrides,
    ]
    data = {"train_dir": p.audio / "train", "val_dir": p.audio / "valid"}
    return [fit_args(p, "mulan", data, extra, s.seed)]


def joint_flags(p: DemoPaths, s: DemoSettings, mulan_flag: str) -> list[str]:
    """The joint embedding a command reads: the run's MuLan, or the pretrained one."""
    if s.joint_embedding:
        args = json.dumps(s.joint_embedding.get("args", {}))
        return ["--joint-embedding", s.joint_embedding["name"], "--joint-embedding-args", args]
    return [mulan_flag, str(p.last_ckpt("mulan"))]


def mulan_rvq_commands(p: DemoPaths, s: DemoSettings) -> list[list[str]]:
    return [["prepare", "mulan-rvq", *joint_flags(p, s, "--checkpoint"),
             "--audio", str(p.audio / "train"), "--out", str(p.rvq),
             "--levels", str(s.rvq_levels), "--codebook-size", str(s.rvq_codebook)]]  # fmt: skip


def kmeans_commands(p: DemoPaths, s: DemoSettings) -> list[list[str]]:
    return [["prepare", "fit-semantic", "--audio", str(p.audio / "train"),
             "--out", str(p.kmeans), "--semantic", "music-features",
             "--k", str(s.semantic_k)]]  # fmt: skip


def codec_commands(p: DemoPaths, s: DemoSettings) -> list[list[str]]:
    return [["prepare", "fit-codec", "--audio", str(p.audio / "train"), "--out", str(p.codec),
             "--levels", str(s.codec_levels), "--codebook-size", str(s.codec_codebook),
             "--max-frames", str(s.codec_max_frames)]]  # fmt: skip


def tokens_commands(p: DemoPaths, s: DemoSettings) -> list[list[str]]:
    c, t = codec_spec(p), semantic_spec(p)
    return [["prepare", "tokens", "--audio", str(p.audio), "--out", str(p.tokens),
             "--codec", c["name"], "--codec-args", json.dumps(c["args"]),
             "--semantic", t["name"], "--semantic-args", json.dumps(t["args"]),
             *joint_flags(p, s, "--mulan"), "--mulan-rvq", str(p.rvq),
             "--beats", "--no-progress"]]  # fmt: skip


def lm_commands(p: DemoPaths, s: DemoSettings, stage: str) -> list[list[str]]:
    n = s.lm_steps[stage]
    extra = [
        f"--trainer.max_steps={n}",
        f"--model.init_args.decay_steps={n}",
        f"--data.init_args.batches_per_epoch={max(1, min(100, n // 3))}",
        *s.lm_overrides,
    ]
    data = {"train_dir": p.tokens / "train", "val_dir": p.tokens / "valid"}
    return [fit_args(p, stage, data, extra, s.seed)]


def pipeline_commands(p: DemoPaths, s: DemoSettings) -> list[list[str]]:
    args = ["pipeline", "write-yaml", "--run", str(p.out), "--cfg-scale", str(s.cfg_scale),
            "--temperatures", json.dumps(s.temperatures)]  # fmt: skip
    if s.joint_embedding:
        args += joint_flags(p, s, "")
    return [args]


def generate_commands(
    p: DemoPaths, s: DemoSettings, c: Corpus, *, other: bool = False
) -> list[list[str]]:
    """Prompts from held-out clips, ``musiclm generate``, then the prompts' attributes onto
    the clips' sidecars."""
    prompts = p.prompts_other if other else p.prompts
    out = p.generated_other if other else p.generated
    held = p.corpus / "manifest.jsonl" if c.is_demo else p.audio
    if other:
        write = ["pipeline", "other-prompts", "--held-out", str(held), "--per-instrument",
                 str(s.other_prompts_per_instrument), "--seed", str(s.seed)]  # fmt: skip
    else:
        write = ["pipeline", "prompts", "--held-out", str(held), "--count", str(s.prompts)]
        if s.extra_prompts:
            write += ["--extra-prompts", str(s.extra_prompts)]
    generate = ["generate", "--prompts", str(prompts), "--pipeline", str(p.pipeline),
                "--seconds", str(s.gen_seconds), "--num-samples", "1", "--seed", str(s.seed),
                "--out", str(out), "--rerank", str(s.rerank), *s.gen_args]  # fmt: skip
    attach = ["pipeline", "attach-attributes", "--prompts", str(prompts), "--generated", str(out)]
    return [[*write, "--out", str(prompts)], generate, attach]


def evaluate_commands(
    p: DemoPaths, s: DemoSettings, c: Corpus, *, other: bool = False
) -> list[list[str]]:
    """``musiclm evaluate``; a corpus without attributes scores what needs none."""
    generated, out = (p.generated_other, p.eval_other) if other else (p.generated, p.eval)
    args = ["evaluate", "--generated", str(generated), "--reference", str(p.audio / "test")]
    if c.attributes:
        args += ["--train-reference", str(p.audio / "train")]
    args += ["--pipeline", str(p.pipeline)]
    if c.attributes:
        args += ["--estimators", str(p.eval / "attribute_estimators.json")]
    else:
        args += ["--metrics", "structure,mcc,fad"]
    return [[*args, "--out", str(out), "--seed", str(s.seed), *s.eval_args]]


def report_commands(p: DemoPaths, c: Corpus) -> list[list[str]]:
    title = "musiclm demo" if c.is_demo else f"musiclm pipeline ({c.source}: {c.input})"
    return [["pipeline", "report", "--run", str(p.out), "--title", title]]


# ----------------------------------------------------------------------------- steps


def run_commands(runner: StepRunner, commands: Commands) -> Callable[[Step], None]:
    """A step's ``run``: each command in order, ``musiclm pipeline <job>`` in-process."""

    def run(step: Step) -> None:
        for args in commands():
            if args[0] == "pipeline":
                runner.call(step, args, lambda a: tools.run(a[1:]))
            else:
                runner.command(step, musiclm_argv(*args))

    return run


def _step(
    runner: StepRunner, name: str, describe: str, commands: Commands, check: Callable
) -> Step:
    return Step(name, describe, run_commands(runner, commands), check, commands)


def data_steps(runner: StepRunner, p: DemoPaths, s: DemoSettings, c: Corpus) -> list[Step]:
    """Corpus and audio shards, MuLan (unless pretrained), the RVQ, the tokenizers, tokens."""
    splits = [p.audio / x / "manifest.json" for x in ("train", "valid", "test")]
    token_splits = [p.tokens / x / "manifest.json" for x in ("train", "valid", "test")]
    steps = []
    if c.is_demo:
        steps.append(_step(runner, "corpus", "render the demo corpus",
                           lambda: corpus_commands(p, s),
                           lambda: _missing(p.corpus / "manifest.jsonl")))  # fmt: skip
    steps.append(_step(runner, "audio", "audio shards (train/valid/test)",
                       lambda: audio_commands(p, c), lambda: _missing(*splits)))  # fmt: skip
    if not s.joint_embedding:
        steps.append(_step(runner, "mulan", "train MuLan (musiclm fit)",
                           lambda: mulan_commands(p, s),
                           lambda: fit_missing(p, "mulan", s.mulan_steps)))  # fmt: skip
    table = [
        ("mulan-rvq", "fit the conditioning RVQ", lambda: mulan_rvq_commands(p, s), [p.rvq]),
        ("semantic-kmeans", "fit the semantic k-means", lambda: kmeans_commands(p, s),
         [p.kmeans]),
        ("codec", "fit the offline codec", lambda: codec_commands(p, s), [p.codec]),
        ("tokens", "token shards (semantic, acoustic, MuLan, beat clock)",
         lambda: tokens_commands(p, s), token_splits),
    ]  # fmt: skip
    for name, describe, commands, paths in table:
        steps.append(_step(runner, name, describe, commands, lambda paths=paths: _missing(*paths)))
    return steps


def lm_steps(runner: StepRunner, p: DemoPaths, s: DemoSettings) -> list[Step]:
    """The semantic, coarse and fine LMs, each a ``musiclm fit``."""
    return [
        _step(
            runner,
            stage,
            f"train the {stage} LM (musiclm fit)",
            lambda stage=stage: lm_commands(p, s, stage),
            lambda stage=stage: fit_missing(p, stage, s.lm_steps[stage]),
        )  # fmt: skip
        for stage in LM_STAGES
    ]


def output_steps(runner: StepRunner, p: DemoPaths, s: DemoSettings, c: Corpus) -> list[Step]:
    """PIPELINE.yaml, generation, evaluation (the demo's also on prompts in other words),
    the report."""
    steps = [_step(runner, "pipeline", "write PIPELINE.yaml", lambda: pipeline_commands(p, s),
                   lambda: _missing(p.pipeline))]  # fmt: skip
    steps.append(_step(runner, "generate", "generate music for held-out prompts",
                       lambda: generate_commands(p, s, c),
                       lambda: outputs.missing_generated(p)))  # fmt: skip
    if c.is_demo:  # other wordings exist for the demo's attributes only
        steps.append(_step(runner, "generate-other",
                           "generate for the same attributes in other words",
                           lambda: generate_commands(p, s, c, other=True),
                           lambda: outputs.missing_generated(p, other=True)))  # fmt: skip
    steps.append(_step(runner, "evaluate", "musiclm evaluate",
                       lambda: evaluate_commands(p, s, c),
                       lambda: _missing(p.eval / "metrics.json")))  # fmt: skip
    if c.is_demo:
        steps.append(_step(runner, "evaluate-other", "musiclm evaluate (other wording)",
                           lambda: evaluate_commands(p, s, c, other=True),
                           lambda: _missing(p.eval_other / "metrics.json")))  # fmt: skip
    steps.append(_step(runner, "report", "report.md and plots", lambda: report_commands(p, c),
                       lambda: _missing(p.out / "report.md")))  # fmt: skip
    return steps


def build_steps(
    runner: StepRunner, p: DemoPaths, s: DemoSettings, corpus: Corpus | None = None
) -> list[Step]:
    """A run, in order; each step checks its own outputs. ``corpus``: the demo's when None."""
    c = corpus or Corpus()
    return [*data_steps(runner, p, s, c), *lm_steps(runner, p, s), *output_steps(runner, p, s, c)]
