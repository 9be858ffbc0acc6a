"""The demo's steps: corpus -> shards -> MuLan -> tokenizers -> token LMs -> generate -> evaluate.

Every step runs the same ``musiclm`` command a user would run on a cluster (a subprocess of
this interpreter), with paths pointing into one run folder. Stages train through
``musiclm fit --config conf/demo/<stage>.yaml`` plus command-line overrides; an interrupted
stage resumes with ``--ckpt_path last``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from musiclm.demo import outputs
from musiclm.demo.paths import DemoPaths
from musiclm.demo.report import write_report
from musiclm.demo.steps import Step, StepRunner, musiclm_argv
from musiclm.stage_names import LM_STAGES


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


def fit_argv(
    p: DemoPaths, stage: str, data: dict[str, Path], extra: list[str], seed: int = 0
) -> list[str]:
    """``musiclm fit`` for one stage, resuming from ``last.ckpt`` when a run was cut short."""
    argv = musiclm_argv(
        "fit",
        "--config",
        str(p.conf / f"{stage}.yaml"),
        f"--trainer.default_root_dir={p.run_dir(stage)}",
    )
    argv += [f"--data.init_args.{k}={v}" for k, v in data.items()]
    argv += [f"--seed_everything={seed}", *extra]
    if p.last_ckpt(stage).is_file():
        argv += ["--ckpt_path", "last"]
    return argv


def build_steps(runner: StepRunner, p: DemoPaths, s: DemoSettings) -> list[Step]:
    """The demo, in order; each step checks its own outputs."""

    def corpus(step: Step) -> None:
        runner.command(
            step,
            musiclm_argv(
                "data", "demo", "--out", str(p.corpus), "--clips", str(s.clips),
                "--seconds", str(s.seconds), "--seed", str(s.seed), "--quiet",
            ),
        )  # fmt: skip

    def audio(step: Step) -> None:
        runner.command(
            step,
            musiclm_argv(
                "prepare", "audio", "--source", "demo", "--input",
                str(p.corpus / "manifest.jsonl"), "--out", str(p.audio), "--quiet",
            ),
        )  # fmt: skip

    def mulan(step: Step) -> None:
        extra = [
            f"--trainer.max_steps={s.mulan_steps}",
            f"--data.init_args.batch_size={s.mulan_batch}",
            f"--data.init_args.batches_per_epoch={max(1, min(150, s.mulan_steps // 2))}",
            *s.mulan_overrides,
        ]
        data = {"train_dir": p.audio / "train", "val_dir": p.audio / "valid"}
        runner.command(step, fit_argv(p, "mulan", data, extra, s.seed))

    def mulan_rvq(step: Step) -> None:
        runner.command(
            step,
            musiclm_argv(
                "prepare", "mulan-rvq", "--checkpoint", str(p.last_ckpt("mulan")),
                "--audio", str(p.audio / "train"), "--out", str(p.rvq),
                "--levels", str(s.rvq_levels), "--codebook-size", str(s.rvq_codebook),
            ),
        )  # fmt: skip

    def semantic_kmeans(step: Step) -> None:
        runner.command(
            step,
            musiclm_argv(
                "prepare", "fit-semantic", "--audio", str(p.audio / "train"),
                "--out", str(p.kmeans), "--semantic", "music-features",
                "--k", str(s.semantic_k),
            ),
        )  # fmt: skip

    def codec(step: Step) -> None:
        runner.command(
            step,
            musiclm_argv(
                "prepare", "fit-codec", "--audio", str(p.audio / "train"), "--out", str(p.codec),
                "--levels", str(s.codec_levels), "--codebook-size", str(s.codec_codebook),
                "--max-frames", str(s.codec_max_frames),
            ),
        )  # fmt: skip

    def tokens(step: Step) -> None:
        c, t = codec_spec(p), semantic_spec(p)
        runner.command(
            step,
            musiclm_argv(
                "prepare", "tokens", "--audio", str(p.audio), "--out", str(p.tokens),
                "--codec", c["name"], "--codec-args", json.dumps(c["args"]),
                "--semantic", t["name"], "--semantic-args", json.dumps(t["args"]),
                "--mulan", str(p.last_ckpt("mulan")), "--mulan-rvq", str(p.rvq),
                "--beats", "--no-progress",
            ),
        )  # fmt: skip

    def lm(stage: str):
        def run(step: Step) -> None:
            n = s.lm_steps[stage]
            extra = [
                f"--trainer.max_steps={n}",
                f"--model.init_args.decay_steps={n}",
                f"--data.init_args.batches_per_epoch={max(1, min(100, n // 3))}",
                *s.lm_overrides,
            ]
            data = {"train_dir": p.tokens / "train", "val_dir": p.tokens / "valid"}
            runner.command(step, fit_argv(p, stage, data, extra, s.seed))

        return run

    def pipeline(step: Step) -> None:
        outputs.write_pipeline(p, cfg_scale=s.cfg_scale, temperatures=s.temperatures)

    def generate_into(step: Step, prompts: Path, out: Path) -> None:
        runner.command(
            step,
            musiclm_argv(
                "generate", "--prompts", str(prompts), "--pipeline", str(p.pipeline),
                "--seconds", str(s.gen_seconds), "--num-samples", "1", "--seed", str(s.seed),
                "--out", str(out), "--rerank", str(s.rerank), *s.gen_args,
            ),
        )  # fmt: skip

    def generate(step: Step) -> None:
        outputs.write_prompts(p, s.prompts)
        generate_into(step, p.prompts, p.generated)
        outputs.attach_attributes(p)

    def generate_other(step: Step) -> None:
        outputs.write_other_prompts(p, s.other_prompts_per_instrument, seed=s.seed)
        generate_into(step, p.prompts_other, p.generated_other)
        outputs.attach_attributes(p, other=True)

    def evaluate_into(step: Step, generated: Path, out: Path) -> None:
        runner.command(
            step,
            musiclm_argv(
                "evaluate", "--generated", str(generated), "--reference", str(p.audio / "test"),
                "--train-reference", str(p.audio / "train"), "--pipeline", str(p.pipeline),
                "--estimators", str(p.eval / "attribute_estimators.json"),
                "--out", str(out), "--seed", str(s.seed), *s.eval_args,
            ),
        )  # fmt: skip

    def evaluate(step: Step) -> None:
        evaluate_into(step, p.generated, p.eval)

    def evaluate_other(step: Step) -> None:
        evaluate_into(step, p.generated_other, p.eval_other)

    def report(step: Step) -> None:
        done = runner.step_seconds()
        write_report(p, step_seconds={n: done[n] for n in names if n in done})

    splits = [p.audio / x / "manifest.json" for x in ("train", "valid", "test")]
    token_splits = [p.tokens / x / "manifest.json" for x in ("train", "valid", "test")]
    table = [
        ("corpus", "render the demo corpus", corpus, [p.corpus / "manifest.jsonl"]),
        ("audio", "audio shards (train/valid/test)", audio, splits),
        ("mulan-rvq", "fit the conditioning RVQ", mulan_rvq, [p.rvq]),
        ("semantic-kmeans", "fit the semantic k-means", semantic_kmeans, [p.kmeans]),
        ("codec", "fit the offline codec", codec, [p.codec]),
        ("tokens", "token shards (semantic, acoustic, MuLan, beat clock)", tokens, token_splits),
    ]
    table += [("pipeline", "write PIPELINE.yaml", pipeline, [p.pipeline])]
    steps = [Step(n, d, r, lambda paths=paths: _missing(*paths)) for n, d, r, paths in table]
    fits = [("mulan", "train MuLan (musiclm fit)", mulan, s.mulan_steps)]
    fits += [(x, f"train the {x} LM (musiclm fit)", lm(x), s.lm_steps[x]) for x in LM_STAGES]
    for i, (stage, describe, run, n) in zip((2, 7, 8, 9), fits, strict=True):
        steps.insert(
            i, Step(stage, describe, run, lambda stage=stage, n=n: fit_missing(p, stage, n))
        )
    steps += [
        Step(
            "generate",
            "generate music for held-out prompts",
            generate,
            lambda: outputs.missing_generated(p),
        ),
        Step(
            "generate-other",
            "generate for the same attributes in other words",
            generate_other,
            lambda: outputs.missing_generated(p, other=True),
        ),
        Step("evaluate", "musiclm evaluate", evaluate, lambda: _missing(p.eval / "metrics.json")),
        Step(
            "evaluate-other",
            "musiclm evaluate (other wording)",
            evaluate_other,
            lambda: _missing(p.eval_other / "metrics.json"),
        ),
        Step("report", "report.md and plots", report, lambda: _missing(p.out / "report.md")),
    ]
    names = [step.name for step in steps]
    return steps
