"""generate never silently replaces another run's clip, and its files follow the umask."""

import json
import os
import stat

import pytest
import torch
from generation_helpers import write_pipeline

from musiclm.commands import generate
from musiclm.datamodules.shards import atomic_write_json


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    return write_pipeline(tmp_path_factory.mktemp("plain"))


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _run(pipeline, out, *extra: str) -> int:
    argv = ["a calm tune", "--pipeline", str(pipeline), "--out", str(out), "--seconds", "1"]
    return generate.main([*argv, *extra])


def test_second_generate_with_another_seed_refuses_to_overwrite(pipeline, tmp_path, capsys):
    out = tmp_path / "gen"
    assert _run(pipeline, out, "--seed", "0") == 0
    wav = out / "000-a-calm-tune-0.wav"
    first = wav.read_bytes()
    capsys.readouterr()
    assert _run(pipeline, out, "--seed", "1") == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert err.startswith("musiclm generate: error: ")
    assert "000-a-calm-tune-0.wav" in err and "--overwrite" in err
    assert wav.read_bytes() == first
    assert json.loads(wav.with_suffix(".json").read_text())["seed"] == 0
    # the same command again (a rerun after a kill) replaces its own clip with the same one
    assert _run(pipeline, out, "--seed", "0") == 0
    assert wav.read_bytes() == first
    assert _run(pipeline, out, "--seed", "1", "--overwrite") == 0
    assert json.loads(wav.with_suffix(".json").read_text())["seed"] == 1


def test_generated_files_follow_the_umask(pipeline, tmp_path, umask_022):
    out = tmp_path / "gen"
    assert _run(pipeline, out) == 0
    for path in out.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
    atomic_write_json(tmp_path / "m.json", {"a": 1})
    assert stat.S_IMODE((tmp_path / "m.json").stat().st_mode) == 0o644
