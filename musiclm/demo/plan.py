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
from pathlib import Path

from musiclm.demo import outputs, tools
from musiclm.demo.paths import DemoPaths
from musiclm.demo.settings import Corpus, DemoSettings, inspect_corpus
from musiclm.demo.steps import Step, StepRunner, musiclm_argv

Commands = Callable[[], list[list[str]]]
__all__ = ["Corpus", "DemoSettings", "build_steps", "inspect_corpus"]


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
    p: DemoPaths,
    stage: str,
    data: dict[str, Path],
    extra: list[str],
    seed: int = 0,
    *,
    config: str | None = None,
) -> list[str]:
    """``musiclm fit`` arguments for one stage (trained into ``RUN/<stage>`` by
    ``CONF/<config or stage>.yaml``), resuming from ``last.ckpt`` when a run was cut short."""
    args = ["fit", "--config", str(p.conf / f"{config or stage}.yaml"),
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
             *melody_token_flags(p, s), "--beats", "--no-progress"]]  # fmt: skip


def lm_commands(p: DemoPaths, s: DemoSettings, stage: str) -> list[list[str]]:
    """``musiclm fit`` of one token LM; ``semantic-plain`` is the semantic LM without the
    melody that ``--melody`` gives ``semantic``."""
    config = "semantic" if stage == PLAIN else stage
    n = s.lm_steps[config]
    extra = [
        f"--trainer.max_steps={n}",
        f"--model.init_args.decay_steps={n}",
        f"--data.init_args.batches_per_epoch={max(1, min(100, n // 3))}",
        *s.lm_overrides,
    ]
    if s.melody and stage == "semantic":
        extra.append(melody_flag(p.conf / f"{config}.yaml"))
    data = {"train_dir": p.tokens / "train", "val_dir": p.tokens / "valid"}
    return [fit_args(p, stage, data, extra, s.seed, config=config)]


# ----------------------------------------------------------------------------- melody

PLAIN = "semantic-plain"


def melody_flag(config: Path) -> str:
    """The ``musiclm fit`` override that adds melody conditioning to a stage config: the
    config's ``conditioning`` list with ``melody`` after the MuLan tokens (where the stage's
    switches put it), or the ``melody`` switch for a config without a list."""
    import yaml

    args = (yaml.safe_load(config.read_text(encoding="utf-8")) or {}).get("model", {})
    listed = (args.get("init_args") or {}).get("conditioning")
    if listed is None:
        return "--model.init_args.melody=true"
    at = 1 if listed and listed[0] in ("mulan", {"stream": "mulan"}) else 0
    return "--model.init_args.conditioning=" + json.dumps([*listed[:at], "melody", *listed[at:]])


def melody_fit_commands(p: DemoPaths, s: DemoSettings) -> list[list[str]]:
    extra = [f"--trainer.max_steps={s.melody_steps}", *s.melody_overrides]
    return [fit_args(p, "melody", {}, extra, s.seed, config="melody_fine")]


def melody_rvq_commands(p: DemoPaths, s: DemoSettings) -> list[list[str]]:
    return [["prepare", "melody-rvq", "--checkpoint", str(p.last_ckpt("melody")),
             "--audio", str(p.audio / "train"), "--out", str(p.melody_rvq),
             "--levels", str(s.melody_levels), "--codebook-size", str(s.melody_codebook),
             "--seed", str(s.seed)]]  # fmt: skip


def melody_token_flags(p: DemoPaths, s: DemoSettings) -> list[str]:
    if not s.melody:
        return []
    return ["--melody", str(p.last_ckpt("melody")), "--melody-rvq", str(p.melody_rvq)]


def melody_eval_commands(p: DemoPaths, s: DemoSettings) -> list[list[str]]:
    """Each held-out clip's melody under another clip's caption, through PIPELINE.yaml with
    ``--melody`` and through the plain pipeline without; then the chroma figure."""
    commands = []
    for i in range(s.melody_clips):
        clip, prompt = p.melody_clips / f"melody_{i}.wav", p.melody_clips / f"prompt_{i}.jsonl"
        for name, pipeline, melody in (("with", p.pipeline, ["--melody", str(clip)]),
                                       ("without", p.pipeline_plain, [])):  # fmt: skip
            commands.append(["generate", "--prompts", str(prompt), "--pipeline", str(pipeline),
                             *melody, "--seconds", str(s.gen_seconds), "--seed", str(s.seed),
                             "--out", str(p.melody_eval / f"{name}_{i}")])  # fmt: skip
    commands.append(["pipeline", "melody-figure", "--clips", str(p.melody_clips),
                     "--generated", str(p.melody_eval), "--count", str(s.melody_clips),
                     "--out", str(p.eval / "melody.json")])  # fmt: skip
    return commands


def pipeline_commands(p: DemoPaths, s: DemoSettings) -> list[list[str]]:
    temperatures = {k: v for k, v in s.temperatures.items() if k in s.lm_stages}
    scales = {k: v for k, v in s.cfg_scale.items() if k in s.lm_stages}
    streams = {k: v for k, v in s.stream_cfg_scale.items() if k in s.lm_stages}
    args = ["pipeline", "write-yaml", "--run", str(p.out), "--cfg-scale", json.dumps(scales),
            "--temperatures", json.dumps(temperatures)]  # fmt: skip
    if streams:
        args += ["--stream-cfg-scale", json.dumps(streams)]
    if s.text_neighbours:
        args += ["--text-neighbours", str(s.text_neighbours)]
    if s.acoustic != "cascade":
        args += ["--acoustic", s.acoustic]
    if s.joint_embedding:
        args += joint_flags(p, s, "")
    if not s.melody:
        return [args]
    plain = [*args, "--semantic-run", PLAIN, "--out", str(p.pipeline_plain)]
    return [[*args, "--melody"], plain]


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
    if not s.melody:
        return [[*write, "--out", str(prompts)], generate, attach]
    # a melody pipeline needs a melody: every prompt follows the first held-out clip's
    clips = ["pipeline", "melody-clips", "--audio", str(p.audio), "--count",
             str(s.melody_clips), "--out", str(p.melody_clips)]  # fmt: skip
    generate += ["--melody", str(p.melody_clips / "melody_0.wav")]
    return [[*write, "--out", str(prompts)], clips, generate, attach]


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
    if s.melody:
        steps.append(_step(runner, "melody", "train the melody embedding (musiclm fit)",
                           lambda: melody_fit_commands(p, s),
                           lambda: fit_missing(p, "melody", s.melody_steps)))  # fmt: skip
        steps.append(_step(runner, "melody-rvq", "fit the melody-token RVQ",
                           lambda: melody_rvq_commands(p, s),
                           lambda: _missing(p.melody_rvq)))  # fmt: skip
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
    """The semantic LM and the acoustic ones (delay, or coarse and fine), each a ``musiclm
    fit`` (with ``--melody``, also a semantic LM without the melody, for the figure's
    "without")."""
    stages = [*s.lm_stages, PLAIN] if s.melody else list(s.lm_stages)
    return [
        _step(
            runner,
            stage,
            f"train the {stage} LM (musiclm fit)",
            lambda stage=stage: lm_commands(p, s, stage),
            lambda stage=stage: fit_missing(p, stage, s.lm_steps[stage.split("-")[0]]),
        )
        for stage in stages
    ]


def output_steps(runner: StepRunner, p: DemoPaths, s: DemoSettings, c: Corpus) -> list[Step]:
    """PIPELINE.yaml, generation, evaluation (the demo's also on prompts in other words),
    the report."""
    pipelines = [p.pipeline, p.pipeline_plain] if s.melody else [p.pipeline]
    steps = [_step(runner, "pipeline", "write PIPELINE.yaml", lambda: pipeline_commands(p, s),
                   lambda: _missing(*pipelines))]  # fmt: skip
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
    if s.melody:
        steps.append(_step(runner, "melody-eval", "chroma of outputs with and without --melody",
                           lambda: melody_eval_commands(p, s),
                           lambda: _missing(p.eval / "melody.json")))  # fmt: skip
    steps.append(_step(runner, "report", "report.md and plots", lambda: report_commands(p, c),
                       lambda: _missing(p.out / "report.md")))  # fmt: skip
    return steps


def build_steps(
    runner: StepRunner, p: DemoPaths, s: DemoSettings, corpus: Corpus | None = None
) -> list[Step]:
    """A run, in order; each step checks its own outputs. ``corpus``: the demo's when None."""
    c = corpus or Corpus()
    return [*data_steps(runner, p, s, c), *lm_steps(runner, p, s), *output_steps(runner, p, s, c)]
