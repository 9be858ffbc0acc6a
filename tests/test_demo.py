"""`musiclm demo`: the resumable step runner, the files it writes, the report, end to end."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

from musiclm.demo import outputs
from musiclm.demo.paths import DemoPaths
from musiclm.demo.plan import DemoSettings, build_steps, fit_argv
from musiclm.demo.report import (
    STAGES,
    acceptance,
    loss_tags,
    plot_losses,
    read_scalars,
    rerank_summary,
)
from musiclm.demo.steps import Step, StepFailed, StepRunner


def _writer_step(name: str, path: Path, calls: list[str], *, fail: bool = False) -> Step:
    def run(step: Step) -> None:
        calls.append(name)
        if fail:
            raise RuntimeError("boom")
        path.write_text(name)

    return Step(name, f"write {path.name}", run, lambda: [] if path.exists() else [str(path)])


def test_complete_step_is_skipped_incomplete_reruns(tmp_path):
    calls: list[str] = []
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    steps = [_writer_step("a", a, calls), _writer_step("b", b, calls)]
    StepRunner(tmp_path, log=lambda m: None).run(steps)
    assert calls == ["a", "b"]

    times = StepRunner(tmp_path, log=lambda m: None).run(steps)
    assert calls == ["a", "b"], "complete steps must be skipped"
    assert times == {"a": 0.0, "b": 0.0}

    b.unlink()  # the marker stays, but the output it vouches for is gone
    StepRunner(tmp_path, log=lambda m: None).run(steps)
    assert calls == ["a", "b", "b"]


def test_failed_step_leaves_no_marker_and_reruns(tmp_path):
    calls: list[str] = []
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    runner = StepRunner(tmp_path, log=lambda m: None)
    with pytest.raises(StepFailed, match="'b' failed: boom"):
        runner.run([_writer_step("a", a, calls), _writer_step("b", b, calls, fail=True)])
    assert runner.marker("a").is_file() and not runner.marker("b").exists()

    runner.run([_writer_step("a", a, calls), _writer_step("b", b, calls)])
    assert calls == ["a", "b", "b"], "only the interrupted step reruns"


def test_step_without_its_outputs_fails(tmp_path):
    step = Step("c", "claims an output", lambda s: None, lambda: ["out.bin"])
    runner = StepRunner(tmp_path, log=lambda m: None)
    with pytest.raises(StepFailed, match="left no out.bin"):
        runner.run([step])
    assert not runner.marker("c").exists()


def test_force_reruns_the_step_and_later_ones(tmp_path):
    calls: list[str] = []
    steps = [_writer_step(n, tmp_path / f"{n}.txt", calls) for n in "abc"]
    StepRunner(tmp_path, log=lambda m: None).run(steps)
    StepRunner(tmp_path, force=["b"], log=lambda m: None).run(steps)
    assert calls == ["a", "b", "c", "b", "c"]
    with pytest.raises(ValueError, match="no such step"):
        StepRunner(tmp_path, force=["nope"], log=lambda m: None).run(steps)


def test_command_logs_output_and_names_failures(tmp_path):
    runner = StepRunner(tmp_path, log=lambda m: None)
    step = Step("echo", "", lambda s: None)
    runner.command(step, [sys.executable, "-c", "print('hello from child')"])
    assert "hello from child" in (tmp_path / "logs" / "echo.log").read_text()
    with pytest.raises(StepFailed, match=r"status 3 \(log: .*echo.log\)"):
        runner.command(step, [sys.executable, "-c", "raise SystemExit(3)"])


def test_fit_resumes_from_last_checkpoint_only_when_present(tmp_path):
    p = DemoPaths(out=tmp_path, conf=tmp_path / "conf")
    argv = fit_argv(p, "coarse", {"train_dir": tmp_path / "t"}, ["--trainer.max_steps=5"])
    assert argv[argv.index("--config") + 1] == str(tmp_path / "conf" / "coarse.yaml")
    assert f"--trainer.default_root_dir={tmp_path / 'coarse'}" in argv
    assert f"--data.init_args.train_dir={tmp_path / 't'}" in argv
    assert "--ckpt_path" not in argv
    p.last_ckpt("coarse").parent.mkdir(parents=True)
    p.last_ckpt("coarse").write_bytes(b"x")
    argv = fit_argv(p, "coarse", {}, [])
    assert argv[-2:] == ["--ckpt_path", "last"]


def _corpus(p: DemoPaths, rows: list[dict]) -> None:
    p.corpus.mkdir(parents=True)
    (p.corpus / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


ROWS = [
    {"id": "c0", "caption": "violin, slow", "split": "train", "attributes": {"bpm": 60}},
    {"id": "c1", "caption": "organ, fast ", "split": "test", "attributes": {"bpm": 150}},
    {"id": "c3", "caption": "harp, slow", "split": "valid", "attributes": {"bpm": 70}},
    {"id": "c2", "caption": "flute, lively", "split": "test", "attributes": {"bpm": 120}},
]


def test_prompts_and_sidecar_attributes(tmp_path):
    p = DemoPaths(out=tmp_path, conf=tmp_path)
    _corpus(p, ROWS)
    assert [r["id"] for r in outputs.write_prompts(p, 5)] == ["c1", "c2", "c3"]  # test first
    rows = outputs.write_prompts(p, 2)
    assert [r["id"] for r in rows] == ["c1", "c2"]
    lines = [json.loads(x) for x in p.prompts.read_text().splitlines()]
    assert [x["prompt"] for x in lines] == ["organ, fast", "flute, lively"]
    assert lines[0]["attributes"] == {"bpm": 150}
    assert outputs.missing_generated(p), "nothing generated yet"

    p.generated.mkdir()
    for i, prompt in enumerate(["flute, lively", "organ, fast"]):
        (p.generated / f"s{i}.wav").write_bytes(b"")
        (p.generated / f"s{i}.json").write_text(json.dumps({"prompt": prompt, "seed": 0}))
    assert outputs.missing_generated(p) == []
    assert outputs.attach_attributes(p) == 2
    side = json.loads((p.generated / "s0.json").read_text())
    assert side["attributes"] == {"bpm": 120} and side["reference"] == "c2" and side["seed"] == 0

    (p.generated / "s2.json").write_text(json.dumps({"prompt": "something else"}))
    with pytest.raises(ValueError, match="s2.json: prompt 'something else'"):
        outputs.attach_attributes(p)


def test_bad_corpus_manifest_names_file_and_line(tmp_path):
    p = DemoPaths(out=tmp_path, conf=tmp_path)
    _corpus(p, ROWS[:1])
    with pytest.raises(ValueError, match="no clip in the test split"):
        outputs.write_prompts(p, 2)
    with open(p.corpus / "manifest.jsonl", "a") as f:
        f.write("{not json\n")
    with pytest.raises(ValueError, match=r"manifest.jsonl:2: invalid JSON"):
        outputs.write_prompts(p, 2)


def test_pipeline_file_names_every_artifact_relative_to_the_run(tmp_path):
    from musiclm.generation.pipeline_file import PipelineFileError, load_pipeline_file

    p = DemoPaths(out=tmp_path / "run", conf=tmp_path)
    needed = [p.rvq, p.codec, p.kmeans] + [p.last_ckpt(s) for s in STAGES]
    for path in needed:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    p.last_ckpt("coarse").unlink()
    with pytest.raises(PipelineFileError, match="stages.coarse.checkpoint"):
        outputs.write_pipeline(p)
    p.last_ckpt("coarse").write_bytes(b"x")
    outputs.write_pipeline(p, cfg_scale=2.0, temperatures={"fine": 0.3})
    stages = load_pipeline_file(p.pipeline).stages
    assert stages["coarse"].sampling.cfg_scale == 2.0 and stages["fine"].sampling.temperature == 0.3
    spec = yaml.safe_load(p.pipeline.read_text())
    assert (p.out / spec["mulan"]["checkpoint"]).resolve() == p.last_ckpt("mulan").resolve()
    assert (p.out / spec["codec"]["args"]["codebooks"]).resolve() == p.codec.resolve()
    assert (p.out / spec["semantic_tokenizer"]["args"]["kmeans"]).resolve() == p.kmeans.resolve()
    for stage in ("semantic", "coarse", "fine"):
        assert (p.out / spec["stages"][stage]["checkpoint"]) == p.last_ckpt(stage)


def test_loss_curves_from_tensorboard_events(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    p = DemoPaths(out=tmp_path, conf=tmp_path)
    events = p.run_dir("semantic") / "tensorboard" / "run"
    with SummaryWriter(str(events)) as w:
        for step in range(5):
            w.add_scalar("train/loss", 5.0 - step, step)
            w.add_scalar("lr", 0.1, step)
        w.add_scalar("val/loss", 2.5, 4)
    scalars = read_scalars(events)
    assert scalars["train/loss"] == [(i, 5.0 - i) for i in range(5)]
    assert loss_tags(scalars) == ["train/loss", "val/loss"]
    last = plot_losses(p, tmp_path / "loss.png")
    assert last == {"semantic": {"train/loss": 1.0, "val/loss": 2.5}}
    assert (tmp_path / "loss.png").stat().st_size > 1000


def test_acceptance_checks_ask_for_significance_not_a_point_estimate():
    metrics = {
        "adherence": {
            "generated": {
                "instrument": {"accuracy": 0.5, "n": 40},
                "bpm_within_8pct": {"accuracy": 0.2, "n": 40},  # 8 of 40 where 5.6 expected
                "tempo_word": {"accuracy": 0.45, "n": 100},  # 45 of 100 where 29 expected
            },
            "chance": {
                "instrument": {"prior": 0.14},
                "bpm_within_8pct": {"prior": 0.14},
                "tempo_word": {"prior": 0.29},
            },
        },
        "mcc": {
            "generated": {"mean": 0.3, "sem": 0.05},
            "generated_mismatched": {"mean": 0.1, "sem": 0.01},
        },
    }
    got = {what: ok for what, ok, _ in acceptance(metrics) if "real" not in what}
    got.pop("static clips <= 5%")
    assert got == {
        "adherence instrument above chance": True,
        "adherence bpm_within_8pct above chance": False,  # above by point estimate only
        "adherence tempo_word above chance": True,
        "MCC generated above mismatched": True,
    }
    figures = {what: text for what, _, text in acceptance(metrics)}
    assert "8/40" in figures["adherence bpm_within_8pct above chance"]
    metrics["mcc"]["generated"]["mean"] = 0.15  # 1 s.e. above: not enough
    assert not dict((w, ok) for w, ok, _ in acceptance(metrics))["MCC generated above mismatched"]
    assert all(ok is None for _, ok, _ in acceptance({}))
    # the same tempo-word hits, but the clips score as well against other prompts: no pass
    metrics["adherence"]["shuffled"] = {"tempo_word": {"accuracy": 0.44, "p": 0.4}}
    checks = {what: (ok, text) for what, ok, text in acceptance(metrics)}
    ok, text = checks["adherence tempo_word above chance"]
    assert not ok and "permutation p = 0.4" in text
    metrics["adherence"]["shuffled"]["tempo_word"]["p"] = 0.01
    assert dict((w, ok) for w, ok, _ in acceptance(metrics))["adherence tempo_word above chance"]


def test_acceptance_has_the_structure_floor():
    from musiclm.evaluation.structure import compare

    real = [{"note_motion": 0.5, "pulse_clarity": 0.7, "onset_rate": 2.0, "pitch_range": 9.0,
             "pitch_entropy": 2.5, "key_clarity": 0.7, "static": 0.0}] * 4  # fmt: skip
    drone = [{**real[0], "note_motion": 0.01, "pulse_clarity": 0.0, "onset_rate": 0.1,
              "static": 1.0}] * 4  # fmt: skip
    checks = {w: ok for w, ok, _ in acceptance({"structure": {"summary": compare(drone, real)}})}
    rows = [w for w in checks if "real" in w or w.startswith("static")]
    assert len(rows) == 4 and not any(checks[w] for w in rows)
    checks = {w: ok for w, ok, _ in acceptance({"structure": {"summary": compare(real, real)}})}
    assert all(checks[w] for w in rows)


def test_quick_steps_are_the_documented_order(tmp_path):
    p = DemoPaths(out=tmp_path, conf=tmp_path)
    names = [s.name for s in build_steps(StepRunner(tmp_path), p, DemoSettings.quick())]
    assert names == [
        "corpus", "audio", "mulan", "mulan-rvq", "semantic-kmeans", "codec", "tokens",
        "semantic", "delay", "pipeline", "generate", "generate-other", "evaluate",
        "evaluate-other", "report",
    ]  # fmt: skip


def test_cli_refuses_a_run_folder_made_with_other_settings(tmp_path, capsys):
    from musiclm.commands import demo

    out = tmp_path / "run"
    assert demo.main(["--out", str(out), "--quick", "--until", "pipeline", "--list"]) == 0
    assert "corpus" in capsys.readouterr().out
    out.mkdir()
    (out / "settings.json").write_text(json.dumps({**DemoSettings.quick().to_json(), "clips": 7}))
    assert demo.main(["--out", str(out), "--quick"]) == 2
    assert "other settings (clips: 7 -> 30)" in capsys.readouterr().err
    assert demo.main(["--out", str(out), "--until", "nope"]) == 2
    assert "--until 'nope': no such step" in capsys.readouterr().err


@pytest.mark.slow
def test_quick_demo_end_to_end_and_resume(tmp_path):
    """`musiclm demo --quick` in tmp_path, then a rerun that skips every finished step."""
    from musiclm.commands import demo

    out = tmp_path / "demo"
    assert demo.main(["--out", str(out), "--quick"]) == 0
    report = (out / "report.md").read_text()
    assert "## Acceptance" in report and "## Evaluation" in report
    assert "MuLan kept the best of 2 candidates" in report
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    assert {"adherence", "mcc", "fad"} <= set(metrics)
    wavs = sorted((out / "generated").glob("*.wav"))
    assert len(wavs) == DemoSettings.quick().prompts
    assert (out / "plots" / "loss_curves.png").is_file()
    assert (out / "plots" / "spectrograms.png").is_file()
    # the prompts' MuLan tokens come through their nearest training clips, kept in the RVQ
    assert yaml.safe_load((out / "PIPELINE.yaml").read_text())["mulan"]["text_neighbours"] == 8
    for stage in ("mulan", "semantic", "delay"):
        assert (out / stage / "checkpoints" / "last.ckpt").is_file()
        assert list((out / stage / "tensorboard" / "run").glob("events.out.tfevents.*"))

    before = {m.name: m.stat().st_mtime_ns for m in (out / "steps").glob("*.done")}
    assert demo.main(["--out", str(out), "--quick"]) == 0
    after = {m.name: m.stat().st_mtime_ns for m in (out / "steps").glob("*.done")}
    assert before == after, "a rerun of a finished demo must skip every step"


def test_training_step_is_done_only_at_its_step_count(tmp_path):
    """Lightning exits 0 when stopped by SIGTERM: the checkpoint's step decides."""
    import torch

    from musiclm.demo.plan import fit_missing

    p = DemoPaths(out=tmp_path, conf=tmp_path)
    assert fit_missing(p, "fine", 10) == [str(p.last_ckpt("fine"))]
    p.last_ckpt("fine").parent.mkdir(parents=True)
    torch.save({"global_step": 4, "epoch": 0}, p.last_ckpt("fine"))
    assert fit_missing(p, "fine", 10) == [f"6 more training steps in {p.last_ckpt('fine')}"]
    torch.save({"global_step": 10, "epoch": 1}, p.last_ckpt("fine"))
    assert fit_missing(p, "fine", 10) == []


def test_rerank_flag_reaches_generate_and_the_report_reads_its_scores(tmp_path, capsys):
    from musiclm.commands import demo

    class Recorder(StepRunner):
        def command(self, step, argv, *, env=None):
            self.argv = [str(a) for a in argv]

    args = demo.build_parser().parse_args(["--quick", "--rerank", "3"])
    settings = demo._settings(args)
    assert settings.rerank == 3 and DemoSettings().rerank == 1
    p = DemoPaths(out=tmp_path, conf=tmp_path)
    runner = Recorder(tmp_path)
    generate = next(s for s in build_steps(runner, p, settings) if s.name == "generate")
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "manifest.jsonl").write_text(
        json.dumps({"id": "a", "caption": "x", "split": "test", "attributes": {}}) + "\n"
    )
    generate.run(generate)
    assert runner.argv[runner.argv.index("--rerank") + 1] == "3"
    assert demo.main(["--out", str(tmp_path / "r"), "--quick", "--rerank", "0"]) == 2
    assert "--rerank 0" in capsys.readouterr().err

    gen = tmp_path / "generated"
    gen.mkdir(exist_ok=True)
    assert rerank_summary(gen) is None
    for name, scores in (("a", [0.2, 0.5, 0.1]), ("b", [0.4, 0.3, 0.6])):
        (gen / f"{name}.json").write_text(json.dumps({"candidate_scores": scores}))
    got = rerank_summary(gen)
    assert got == pytest.approx(
        {"clips": 2, "candidates": 3, "kept": 0.55, "first": 0.3, "all": 2.1 / 6}
    )


def test_seed_reaches_every_command_that_draws(tmp_path):
    class Recorder(StepRunner):
        def command(self, step, argv, *, env=None):
            calls[step.name] = [str(a) for a in argv]

    calls: dict[str, list[str]] = {}
    p = DemoPaths(out=tmp_path, conf=tmp_path)
    s = DemoSettings.quick()
    s.seed = 7
    for step in build_steps(Recorder(tmp_path), p, s):
        if step.name in ("corpus", "mulan", "semantic", "delay", "evaluate"):
            step.run(step)
    assert calls["corpus"][calls["corpus"].index("--seed") + 1] == "7"
    for stage in ("mulan", "semantic", "delay"):
        assert "--seed_everything=7" in calls[stage], stage
    assert calls["evaluate"][calls["evaluate"].index("--seed") + 1] == "7"


def test_other_wording_check_and_table():
    from musiclm.demo.report import wording_check, wording_table

    def m(acc: float) -> dict:
        return {"adherence": {"generated": {"instrument": {"accuracy": acc, "n": 40}}},
                "inputs": {"generated_clips": 40}}  # fmt: skip

    assert wording_check(m(0.6), m(0.5))[1] is True  # 0.5 >= 0.8 * 0.6
    assert wording_check(m(0.6), m(0.4))[1] is False
    assert wording_check(m(0.6), {})[1] is None
    rows = {r[0]: r[1:] for r in wording_table(m(0.6), m(0.4))}
    assert rows["adherence instrument"] == ["0.600", "0.400"]


def test_acoustic_delay_trains_one_stage_in_place_of_coarse_and_fine(tmp_path):
    """The delay stage (the default) trains in place of coarse + fine: the pipeline file
    names semantic and delay with the delay stage's temperature and guidance, and a run's
    settings record only its own stages (a cascade run's settings.json is as before)."""
    import dataclasses

    from musiclm.generation.pipeline_file import load_pipeline_file

    s = dataclasses.replace(DemoSettings.quick(), acoustic="delay")
    p = DemoPaths(out=tmp_path / "run", conf=tmp_path)
    names = [x.name for x in build_steps(StepRunner(p.out), p, s)]
    assert "delay" in names and "coarse" not in names and "fine" not in names
    assert names.index("semantic") < names.index("delay") < names.index("pipeline")
    assert set(s.to_json()["lm_steps"]) == {"semantic", "delay"}
    cascade = DemoSettings(acoustic="cascade")
    assert set(cascade.to_json()["temperatures"]) == {"semantic", "coarse", "fine"}
    names = [x.name for x in build_steps(StepRunner(p.out), p, cascade)]
    assert names[names.index("semantic") :][:4] == ["semantic", "coarse", "fine", "pipeline"]

    for path in [p.rvq, p.codec, p.kmeans, *(p.last_ckpt(x) for x in ("mulan", "semantic"))]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    with pytest.raises(Exception, match="stages.delay.checkpoint"):
        outputs.write_pipeline(p, acoustic="delay")
    p.last_ckpt("delay").parent.mkdir(parents=True)
    p.last_ckpt("delay").write_bytes(b"x")
    outputs.write_pipeline(p, cfg_scale=3.0, temperatures={"delay": 0.9}, acoustic="delay")
    stages = load_pipeline_file(p.pipeline).stages
    assert set(stages) == {"semantic", "delay"}
    assert stages["delay"].sampling.temperature == 0.9
    assert stages["delay"].sampling.cfg_scale == 3.0
    # guidance by stage: the semantic stage's own scale, the delay stage's
    outputs.write_pipeline(p, cfg_scale={"semantic": 2.0, "delay": 3.0}, acoustic="delay")
    stages = load_pipeline_file(p.pipeline).stages
    assert stages["semantic"].sampling.cfg_scale == 2.0
    assert stages["delay"].sampling.cfg_scale == 3.0
    with pytest.raises(ValueError, match="cfg_scale for stage 'coarse'"):
        outputs.write_pipeline(p, cfg_scale={"coarse": 3.0}, acoustic="delay")
    outputs.write_pipeline(p, stream_cfg_scale={"semantic": 2.0}, acoustic="delay")
    assert load_pipeline_file(p.pipeline).stages["semantic"].sampling.stream_cfg_scale == 2.0
    with pytest.raises(ValueError, match="stream_cfg_scale for stage 'coarse'"):
        outputs.write_pipeline(p, stream_cfg_scale={"coarse": 2.0}, acoustic="delay")
    with pytest.raises(ValueError, match="temperature for stage 'coarse'"):
        outputs.write_pipeline(p, temperatures={"coarse": 0.6}, acoustic="delay")
    assert load_pipeline_file(p.pipeline).text_neighbours == 0  # MusicLM's text tokens
    outputs.write_pipeline(p, acoustic="delay", text_neighbours=8)
    assert load_pipeline_file(p.pipeline).text_neighbours == 8


@pytest.mark.slow
def test_quick_demo_with_the_cascade_end_to_end(tmp_path):
    """`musiclm demo --quick --acoustic cascade` from nothing: coarse and fine checkpoints, no
    delay run, generated clips scored, and `musiclm generate` on its PIPELINE.yaml."""
    from musiclm.commands import demo, generate

    out = tmp_path / "demo"
    assert demo.main(["--out", str(out), "--quick", "--acoustic", "cascade"]) == 0
    for stage in ("coarse", "fine"):
        assert (out / stage / "checkpoints" / "last.ckpt").is_file()
    assert not (out / "delay").exists()
    assert len(sorted((out / "generated").glob("*.wav"))) == DemoSettings.quick().prompts
    assert "structure" in json.loads((out / "eval" / "metrics.json").read_text())
    assert (out / "plots" / "loss_curves.png").is_file()
    argv = ["a calm piano melody", "--pipeline", str(out / "PIPELINE.yaml"), "--seconds", "1"]
    assert generate.main([*argv, "--out", str(tmp_path / "clips")]) == 0
    assert list((tmp_path / "clips").glob("*.wav"))


def test_write_yaml_takes_one_scale_or_one_per_stage(tmp_path, capsys):
    from musiclm.demo import tools

    run = str(tmp_path / "run")
    for bad, said in (("abc", "neither a number nor JSON"), ('{"semantic": "x"}', "give {")):
        assert tools.main(["write-yaml", "--run", run, "--cfg-scale", bad]) == 2
        assert said in capsys.readouterr().err
    assert tools._cfg_scale("2") == 2.0
    assert tools._cfg_scale('{"semantic": 2, "delay": 3.5}') == {"semantic": 2.0, "delay": 3.5}
    assert tools.main(["write-yaml", "--run", run, "--stream-cfg-scale", "2"]) == 2
    assert "--stream-cfg-scale '2': give {" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        tools.main(["write-yaml", "--run", run, "--text-neighbours", "-1"])
    assert exit_.value.code == 2 and "--text-neighbours" in capsys.readouterr().err
