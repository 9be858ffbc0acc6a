"""`musiclm pipeline`: the plan over each source, its command lines, its flags and errors, and
the small jobs (`musiclm pipeline prompts | report | ...`) that replace in-process steps."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_pipeline_command_folder import write_folder_corpus

from musiclm.commands import pipeline
from musiclm.datamodules.corpora import list_entries
from musiclm.demo import tools

FOLDER_STEPS = ["audio", "mulan", "mulan-rvq", "semantic-kmeans", "codec", "tokens", "semantic",
                "delay", "pipeline", "generate", "evaluate", "report"]  # fmt: skip


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    write_folder_corpus(root, clips=8, seconds=1.2)
    return root


def _printed(capsys, argv: list[str]) -> tuple[list[str], list[list[str]]]:
    """(step names, command lines) that ``--print-commands`` prints."""
    assert pipeline.main([*argv, "--print-commands"]) == 0
    lines = capsys.readouterr().out.splitlines()
    names = [x[2:].split(":")[0] for x in lines if x.startswith("# ")]
    commands = [shlex.split(x) for x in lines if not x.startswith("#")]
    assert all(c[0] == "musiclm" for c in commands)
    return names, [c[1:] for c in commands]


def _find(commands: list[list[str]], *head: str) -> list[str]:
    return next(c for c in commands if c[: len(head)] == list(head))


def test_folder_plan_prints_every_step_with_the_run_paths(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    names, commands = _printed(
        capsys, ["--source", "folder", "--input", str(corpus), "--out", str(out), "--quick"]
    )
    assert names == FOLDER_STEPS
    audio = _find(commands, "prepare", "audio")
    assert audio[audio.index("--input") + 1] == str(corpus) and "--captions" not in audio
    assert _find(commands, "prepare", "tokens")[5] == str(out / "tokens")
    # no attributes in the sidecars: evaluation scores what needs none
    evaluate = _find(commands, "evaluate")
    assert "--train-reference" not in evaluate
    assert evaluate[evaluate.index("--metrics") + 1] == "structure,mcc,fad"
    prompts = _find(commands, "pipeline", "prompts")
    assert prompts[prompts.index("--held-out") + 1] == str(out / "audio")
    assert not out.exists(), "printing runs nothing and writes nothing"
    names, _ = _printed(
        capsys,
        ["--source", "folder", "--input", str(corpus), "--out", str(out), "--until", "tokens"],
    )
    assert names == FOLDER_STEPS[: FOLDER_STEPS.index("tokens") + 1]


def test_attributes_in_the_metadata_are_scored(tmp_path, capsys):
    write_folder_corpus(tmp_path / "c", clips=8, seconds=1.0)
    for side in (tmp_path / "c").rglob("take_*.json"):
        data = json.loads(side.read_text())
        side.write_text(json.dumps({**data, "attributes": {"instrument": side.parent.name}}))
    argv = ["--source", "folder", "--input", str(tmp_path / "c"), "--out", str(tmp_path / "r")]
    _, commands = _printed(capsys, argv)
    evaluate = _find(commands, "evaluate")
    assert "--train-reference" in evaluate and "--metrics" not in evaluate


def test_jsonl_source_and_the_demo_alias(tmp_path, capsys):
    rows = [{"audio": f"a{i}.wav", "caption": f"clip {i}", "split": s}
            for i, s in enumerate(["train", "train", "valid", "test"])]  # fmt: skip
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    argv = ["--source", "jsonl", "--input", str(tmp_path / "m.jsonl"), "--out", str(tmp_path)]
    names, commands = _printed(capsys, argv)
    assert names == FOLDER_STEPS and _find(commands, "prepare", "audio")[3] == "jsonl"
    names, commands = _printed(capsys, ["--source", "demo", "--out", str(tmp_path), "--quick"])
    assert names[0] == "corpus" and "generate-other" in names and "evaluate-other" in names
    assert _find(commands, "data", "demo")[-1] == "--quiet"


def test_list_shows_done_and_pending(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["--source", "folder", "--input", str(corpus), "--out", str(out), "--list"]
    assert pipeline.main(argv) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert [r[0] for r in rows] == FOLDER_STEPS and {r[1] for r in rows} == {"pending"}


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--source", "folder"], "--input is required with --source folder"),
        (["--source", "folder", "--input", "/no/such/dir"], "--input /no/such/dir: not a folder"),
        (["--source", "CORPUS", "--force", "nope"], "--force 'nope': no such step"),
        (["--source", "CORPUS", "--until", "corpus"], "--until 'corpus': no such step"),
        (["--source", "CORPUS", "--clips", "50"], "--clips sizes the demo corpus"),
        (["--source", "CORPUS", "--audio-dir", "x"], "--audio-dir is for --source musiccaps"),
        (["--source", "CORPUS", "--joint-embedding-args", "{}"], "needs --joint-embedding"),
        (["--source", "CORPUS", "--joint-embedding", "nope"], "nope"),
        (["--source", "CORPUS", "--prompts", "/no/file"], "--prompts /no/file: no such file"),
        (["--source", "demo", "--input", "x"], "--source demo renders its own corpus"),
    ],
)
def test_bad_flags_are_one_line_naming_the_flag(corpus, tmp_path, capsys, extra, message):
    if extra[:2] == ["--source", "CORPUS"]:
        extra = ["--source", "folder", "--input", str(corpus), *extra[2:]]
    assert pipeline.main([*extra, "--out", str(tmp_path / "r"), "--list"]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err


def test_corpus_without_a_split_or_captions(tmp_path, capsys):
    import soundfile as sf

    root = tmp_path / "c"
    root.mkdir()
    for i in range(6):
        sf.write(root / f"x{i}.wav", [0.1, -0.1] * 8000, 16000)
    argv = ["--source", "folder", "--input", str(root), "--out", str(tmp_path / "r"), "--list"]
    assert pipeline.main(argv) == 2
    assert "no item in the 'valid' split" in capsys.readouterr().err
    for i in range(6):
        split = ["train", "train", "train", "train", "valid", "test"][i]
        (root / f"x{i}.json").write_text(json.dumps({"split": split}))
    assert pipeline.main(argv) == 2
    err = capsys.readouterr().err
    assert "no item has a caption, and MuLan trains on captions" in err
    assert "--joint-embedding" in err


def test_audio_without_captions_runs_on_a_pretrained_joint_embedding(tmp_path, capsys):
    import soundfile as sf

    root = tmp_path / "c"
    root.mkdir()
    for i, split in enumerate(["train"] * 4 + ["valid", "test"]):
        sf.write(root / f"x{i}.wav", [0.1, -0.1] * 8000, 16000)
        (root / f"x{i}.json").write_text(json.dumps({"split": split}))
    (tmp_path / "prompts.txt").write_text("calm piano\nfast drums\n")
    base = ["--source", "folder", "--input", str(root), "--out", str(tmp_path / "r")]
    clap = ["--joint-embedding", "clap", "--joint-embedding-args", '{"model": "CLAPDIR"}']
    assert pipeline.main([*base, *clap, "--list"]) == 2
    assert "no item has a caption to prompt with: give --prompts FILE" in capsys.readouterr().err
    names, commands = _printed(capsys, [*base, *clap, "--prompts", str(tmp_path / "prompts.txt")])
    assert "mulan" not in names and names[:2] == ["audio", "mulan-rvq"]
    assert _find(commands, "prepare", "audio")[-2:] == ["--captions", "optional"]
    for head in (("prepare", "mulan-rvq"), ("prepare", "tokens"), ("pipeline", "write-yaml")):
        c = _find(commands, *head)
        assert c[c.index("--joint-embedding") + 1 :][:3] == clap[1:], head
    assert "--extra-prompts" in _find(commands, "pipeline", "prompts")


def test_bad_flag_exits_2_without_a_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "musiclm.cli", "pipeline", "--source", "folder",
         "--out", str(tmp_path)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == "musiclm pipeline: --input is required with --source folder"


def test_help_walks_a_new_user_through_their_own_corpus(capsys):
    with pytest.raises(SystemExit):
        pipeline.main(["--help"])
    text = capsys.readouterr().out
    for needle in ("--source", "sidecar", "--print-commands", "--force", "musiclm generate"):
        assert needle in text


def test_captions_optional_keeps_items_without_a_caption(tmp_path):
    import soundfile as sf

    sf.write(tmp_path / "a.wav", [0.0] * 16000, 16000)
    (tmp_path / "b.wav").write_bytes(b"")
    (tmp_path / "b.json").write_text(json.dumps({"split": "test"}))
    strict = {e.name: e.error for e in list_entries("folder", tmp_path)}
    assert "no caption sidecar" in strict["a.wav"] and "caption" in strict["b.wav"]
    loose = {e.name: e for e in list_entries("folder", tmp_path, captions=False)}
    assert all(e.error is None and e.caption == "" for e in loose.values())
    assert loose["b.wav"].split == "test"


def _shards(corpus: Path, out: Path) -> Path:
    from musiclm.datamodules.prepare_audio import prepare_audio

    prepare_audio("folder", corpus, out, shard_size=2, progress=False)
    return out


def test_prompts_job_reads_held_out_captions_from_shards(corpus, tmp_path):
    audio = _shards(corpus, tmp_path / "audio")
    out = tmp_path / "prompts.jsonl"
    tools.run(["prompts", "--held-out", str(audio), "--count", "5", "--out", str(out)])
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    # one test clip, then the one validation clip (take 3 and take 5 of eight)
    assert [r["id"] for r in rows] == ["bell_take_003", "organ_take_005"]
    assert rows[0]["prompt"].startswith("a ") and rows[0]["attributes"] == {}
    (tmp_path / "extra.txt").write_text("calm piano\n\n")
    tools.run(["prompts", "--held-out", str(audio), "--count", "1", "--out", str(out),
               "--extra-prompts", str(tmp_path / "extra.txt")])  # fmt: skip
    assert [json.loads(x)["prompt"] for x in out.read_text().splitlines()][1:] == ["calm piano"]
    assert tools.main(["prompts", "--held-out", str(tmp_path / "nope"), "--count", "1",
                       "--out", str(out)]) == 2  # fmt: skip


def test_report_job_counts_skips_and_says_what_it_did_not_score(corpus, tmp_path):
    run = tmp_path / "run"
    _shards(corpus, run / "audio")
    (run / "eval").mkdir()
    (run / "eval" / "metrics.json").write_text(json.dumps({"notes": ["MCC skipped: x"]}))
    steps = run / "steps"
    steps.mkdir()
    for i, name in enumerate(["audio", "mulan"]):
        (steps / f"{name}.done").write_text(json.dumps({"step": name, "seconds": 1.5 + i}))
    assert list(tools.marker_seconds(run)) == ["audio", "mulan"]
    assert tools.main(["report", "--run", str(run), "--title", "my run"]) == 0
    report = (run / "report.md").read_text()
    assert report.startswith("# my run") and "| audio | 1.5 |" in report
    assert "Skipped items: 3." in report and "empty.flac" in report
    assert "attribute adherence not scored" in report and "- MCC skipped: x" in report
    assert "adherence instrument" not in report


def test_prepare_audio_captions_optional_shards_audio_only_items(tmp_path, capsys):
    import soundfile as sf

    from musiclm.commands import prepare_audio

    root = tmp_path / "c"
    root.mkdir()
    for i, split in enumerate(["train", "valid", "test"]):
        sf.write(root / f"x{i}.wav", [0.1, -0.1] * 8000, 16000)
        (root / f"x{i}.json").write_text(json.dumps({"split": split}))
    base = ["--source", "folder", "--input", str(root), "--quiet"]
    assert prepare_audio.main([*base, "--out", str(tmp_path / "strict")]) == 0
    assert "0 samples" in capsys.readouterr().out  # captions required: all skipped
    assert prepare_audio.main([*base, "--out", str(tmp_path / "a"), "--captions", "optional"]) == 0
    manifests = [json.loads((tmp_path / "a" / s / "manifest.json").read_text())
                 for s in ("train", "valid", "test")]  # fmt: skip
    assert [m["num_samples"] for m in manifests] == [1, 1, 1]
    assert all(not m["skipped"] for m in manifests)


def test_melody_adds_its_steps_and_a_plain_semantic_lm(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    base = ["--source", "folder", "--input", str(corpus), "--out", str(out), "--quick"]
    names, commands = _printed(capsys, [*base, "--melody"])
    assert names == ["audio", "mulan", "melody", "melody-rvq", "mulan-rvq", "semantic-kmeans",
                     "codec", "tokens", "semantic", "delay", "semantic-plain",
                     "pipeline", "generate", "evaluate", "melody-eval", "report"]  # fmt: skip
    fits = [c for c in commands if c[0] == "fit"]
    melody_fit, semantic, plain = fits[1], fits[2], fits[-1]
    assert melody_fit[2].endswith("melody_fine.yaml")
    # the config's conditioning list with melody after the MuLan tokens
    listed = [a for a in semantic if a.startswith("--model.init_args.conditioning=")]
    assert len(listed) == 1
    entries = json.loads(listed[0].split("=", 1)[1])
    assert entries[:2] == ["mulan", "melody"] and entries[2]["stream"] == "beat"
    assert entries[2]["guided"] is True
    assert plain[2].endswith("semantic.yaml")
    assert not any(a.startswith("--model.init_args.conditioning=") for a in plain)
    assert f"--trainer.default_root_dir={out / 'semantic-plain'}" in plain
    tokens = _find(commands, "prepare", "tokens")
    assert tokens[tokens.index("--melody-rvq") + 1] == str(out / "melody" / "rvq.safetensors")
    yamls = [c for c in commands if c[:2] == ["pipeline", "write-yaml"]]
    assert "--melody" in yamls[0] and yamls[1][-2:] == ["--out", str(out / "PIPELINE_plain.yaml")]
    with_melody = [c for c in commands if c[0] == "generate" and "--melody" in c]
    assert len(with_melody) == 1 + 2  # the held-out prompts, then each figure clip
    assert commands[-2][:2] == ["pipeline", "melody-figure"]


def test_melody_figure_is_higher_for_the_followed_melody(tmp_path):
    import soundfile as sf

    from musiclm.demo import melody

    sr, t = 16000, np.arange(32000) / 16000

    def tone(hz: float) -> np.ndarray:
        return (0.5 * np.sin(2 * np.pi * hz * t)).astype(np.float32)

    clips, gen = tmp_path / "clips", tmp_path / "gen"
    for i, (hz, other) in enumerate([(440.0, 311.1), (261.6, 370.0)]):
        clips.mkdir(exist_ok=True)
        sf.write(clips / f"melody_{i}.wav", tone(hz), sr)
        for name, f in (("with", hz * 2), ("without", other)):  # an octave: same chroma
            (gen / f"{name}_{i}").mkdir(parents=True)
            sf.write(gen / f"{name}_{i}" / "a.wav", tone(f), sr)
    fig = melody.write_figure(clips, gen, 2, tmp_path / "melody.json")
    assert fig["with"] > 0.9 > 0.5 > fig["without"] and fig["improved"] == 2
    assert json.loads((tmp_path / "melody.json").read_text())["clips"] == 2


def test_melody_flag_extends_a_configs_list_or_sets_the_switch(tmp_path):
    from musiclm.demo.plan import melody_flag

    listed = tmp_path / "listed.yaml"
    listed.write_text("model:\n  init_args:\n    conditioning: [mulan, {stream: beat}]\n")
    flag = melody_flag(listed)
    assert json.loads(flag.split("=", 1)[1]) == ["mulan", "melody", {"stream": "beat"}]
    switches = tmp_path / "switches.yaml"
    switches.write_text("model:\n  init_args:\n    beats: true\n")
    assert melody_flag(switches) == "--model.init_args.melody=true"
