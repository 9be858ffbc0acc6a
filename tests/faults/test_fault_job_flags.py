"""The other jobs (`prepare fit-codec`, `fit-semantic`, `mulan-rvq`, `melody-rvq`, `data
demo`, `data melody-pairs`) refuse out-of-range numbers naming the flag and end a user
mistake with one line and exit 2, before loading anything."""

import pytest

from musiclm.cli import main

AUDIO = ["--audio", "AUDIO", "--out", "OUT/x.safetensors"]
RVQ = ["--checkpoint", "CKPT", *AUDIO]


def _status(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:  # argparse's own errors
        return exc.code


def _one_line(err: str, prog: str, *words: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err, err
    assert lines[-1].startswith(f"{prog}: error: "), err
    for word in words:
        assert word in lines[-1], err


@pytest.mark.parametrize(
    ("job", "base", "flag", "value"),
    [
        ("fit-codec", AUDIO, "--levels", "0"),
        ("fit-codec", AUDIO, "--hop", "-320"),
        ("fit-codec", AUDIO, "--power", "nan"),
        ("fit-codec", AUDIO, "--max-frames", "0"),
        ("fit-semantic", AUDIO, "--k", "0"),
        ("fit-semantic", AUDIO, "--passes", "0"),
        ("fit-semantic", AUDIO, "--batch-frames", "-1"),
        ("mulan-rvq", RVQ, "--levels", "0"),
        ("mulan-rvq", RVQ, "--codebook-size", "0"),
        ("mulan-rvq", RVQ, "--max-clips", "0"),
        ("melody-rvq", RVQ, "--batch-size", "0"),
        ("melody-rvq", RVQ, "--iters", "inf"),
    ],
)
def test_prepare_jobs_refuse_out_of_range_flags(capsys, job, base, flag, value):
    assert _status(["prepare", job, *base, flag, value]) == 2
    _one_line(capsys.readouterr().err, f"musiclm prepare {job}", flag)


@pytest.mark.parametrize(
    ("job", "flag", "value"),
    [
        ("demo", "--clips", "0"),
        ("demo", "--seconds", "inf"),
        ("demo", "--sample-rate", "0"),
        ("demo", "--workers", "0"),
        # importing the melody module alone takes about 6 s here
        pytest.param("melody-pairs", "--views", "1", marks=pytest.mark.slow),
        pytest.param("melody-pairs", "--seconds", "-4", marks=pytest.mark.slow),
    ],
)
def test_data_jobs_refuse_out_of_range_flags(tmp_path, capsys, job, flag, value):
    assert _status(["data", job, "--out", str(tmp_path / "o"), flag, value]) == 2
    _one_line(capsys.readouterr().err, f"musiclm data {job}", flag)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("job", ["fit-codec", "fit-semantic", "mulan-rvq", "melody-rvq"])
def test_prepare_jobs_over_a_missing_folder_are_one_line(tmp_path, capsys, job):
    base = RVQ if job.endswith("-rvq") else AUDIO
    argv = [str(tmp_path / "nope") if a == "AUDIO" else a for a in base]
    argv = [str(tmp_path / "x.ckpt") if a == "CKPT" else a for a in argv]
    assert _status(["prepare", job, *argv]) == 2
    _one_line(capsys.readouterr().err, f"musiclm prepare {job}", "no shard manifest at")


def test_fit_semantic_with_an_unknown_tokenizer_is_one_line(tmp_path, capsys):
    argv = ["prepare", "fit-semantic", "--audio", str(tmp_path), "--out", str(tmp_path / "k")]
    assert _status([*argv, "--semantic", "nope"]) == 2
    _one_line(capsys.readouterr().err, "musiclm prepare fit-semantic", "'nope'", "available")
