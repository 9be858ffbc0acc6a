"""Numeric flags out of range are refused naming the flag (exit 2, one line, no traceback),
before anything is loaded."""

import json

import numpy as np
import pytest
import soundfile as sf

from musiclm.commands import generate
from musiclm.commands import prepare_audio as pa
from musiclm.generation.pipeline import Pipeline


@pytest.fixture
def corpus(tmp_path):
    t = np.arange(16000) / 16000
    sf.write(tmp_path / "a.wav", (0.2 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), 16000)
    (tmp_path / "m.jsonl").write_text(json.dumps({"audio": "a.wav", "caption": "a tone"}) + "\n")
    return tmp_path / "m.jsonl"


def _one_error_line(err: str, prog: str, *words: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err
    assert lines[-1].startswith(f"{prog}: error: "), err
    for word in words:
        assert word in lines[-1], err


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--valid-fraction", "1.5"),
        ("--valid-fraction", "nan"),
        ("--test-fraction", "-0.1"),
        ("--sample-rate", "0"),
        ("--min-seconds", "inf"),
        ("--workers", "0"),
    ],
)
def test_prepare_audio_refuses_out_of_range_flags(tmp_path, corpus, capsys, flag, value):
    argv = ["--source", "jsonl", "--input", str(corpus), "--out", str(tmp_path / "o"), "--quiet"]
    assert pa.main([*argv, flag, value]) == 2
    _one_error_line(capsys.readouterr().err, "musiclm prepare audio", flag)
    assert not (tmp_path / "o").exists()  # refused before anything was written


def test_prepare_audio_refuses_fractions_that_leave_no_train_split(tmp_path, corpus, capsys):
    argv = ["--source", "jsonl", "--input", str(corpus), "--out", str(tmp_path / "o"), "--quiet"]
    assert pa.main([*argv, "--valid-fraction", "0.6", "--test-fraction", "0.4"]) == 2
    _one_error_line(capsys.readouterr().err, "musiclm prepare audio", "train split")


@pytest.fixture
def no_pipeline(monkeypatch):
    """Loading a pipeline fails the test: every check here must come before it."""

    def refuse(*args, **kwargs):
        raise AssertionError("the pipeline was loaded before the flags were checked")

    monkeypatch.setattr(Pipeline, "from_file", refuse)


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--seconds", "inf"),
        ("--seconds", "nan"),
        ("--seconds", "0"),
        ("--num-samples", "0"),
        ("--rerank", "0"),
        ("--bpm", "nan"),
        ("--bpm", "-120"),
    ],
)
def test_generate_refuses_bad_numbers_at_parse_time(tmp_path, capsys, no_pipeline, flag, value):
    argv = ["a tune", "--pipeline", str(tmp_path / "P.yaml"), "--out", str(tmp_path / "o")]
    with pytest.raises(SystemExit) as exit_info:
        generate.main([*argv, flag, value])
    assert exit_info.value.code == 2
    _one_error_line(capsys.readouterr().err, "musiclm generate", flag, "finite")


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--temperature", "nan"),
        ("--temperature", "semantic=inf"),
        ("--temperature", "-1"),
        ("--top-p", "1.5"),
        ("--top-p", "coarse=0"),
        ("--top-k", "-3"),
        ("--cfg-scale", "nan"),
        ("--top-k", "fine=many"),
    ],
)
def test_generate_refuses_bad_sampling_values_before_loading(
    tmp_path, capsys, no_pipeline, flag, value
):
    argv = ["a tune", "--pipeline", str(tmp_path / "P.yaml"), "--out", str(tmp_path / "o")]
    assert generate.main([*argv, flag, value]) == 2
    _one_error_line(capsys.readouterr().err, "musiclm generate", flag)


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--codec", "nope"], ["'nope'", "available: dac"]),
        (["--codec", "stft-rvq", "--codec-args", '{"levls": 2}'], ["'levls'", "stft-rvq"]),
        (["--codec", "stft-rvq", "--semantic", "no-such-tokenizer"], ["'no-such-tokenizer'"]),
        (["--codec", "stft-rvq", "--batch-size", "0"], ["--batch-size"]),
    ],
)
def test_prepare_tokens_unknown_plugin_or_argument_is_one_line(tmp_path, capsys, extra, words):
    from musiclm.cli import main

    argv = ["prepare", "tokens", "--audio", str(tmp_path), "--out", str(tmp_path / "o")]
    argv += ["--semantic", "music-features", *extra]
    try:
        status = main(argv)
    except SystemExit as exc:  # argparse's own range errors
        status = exc.code
    assert status == 2
    _one_error_line(capsys.readouterr().err, "musiclm prepare tokens", *words)
