"""A `musiclm generate` process killed with SIGKILL mid-run, then rerun with the same command,
leaves exactly what an uninterrupted run leaves: every clip and sidecar once, byte for byte,
and no temporary file."""

import os
import signal
import subprocess
import sys
import time

import pytest
from generation_helpers import write_pipeline

PROMPTS = [f"a tune number {i}" for i in range(6)]


def _argv(pipeline, prompts, out):
    return [
        sys.executable, "-m", "musiclm.cli", "generate", "--prompts", str(prompts),
        "--pipeline", str(pipeline), "--out", str(out), "--seconds", "1", "--seed", "3",
    ]  # fmt: skip


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def _files(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.mark.slow
def test_sigkilled_generate_rerun_equals_uninterrupted(tmp_path):
    (tmp_path / "pipe").mkdir()
    pipeline = write_pipeline(tmp_path / "pipe")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    whole = tmp_path / "whole"
    subprocess.run(_argv(pipeline, prompts, whole), env=_env(), check=True, timeout=600)

    out = tmp_path / "killed"
    proc = subprocess.Popen(_argv(pipeline, prompts, out), env=_env())
    deadline = time.monotonic() + 300
    # kill as soon as the first clip is on disk: the rest are still to be written
    while time.monotonic() < deadline and proc.poll() is None:
        if out.is_dir() and any(p.suffix == ".wav" for p in out.iterdir()):
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    # what a kill mid-write leaves (planted too, so the rerun always has one to clear)
    (out / ".000-a-tune-number-0-0.wav.abc123.wav").write_bytes(b"RIFF")
    # hidden temporaries of clips; the dead run's lock file is taken over, not counted
    left = sorted(p.name for p in out.iterdir() if p.name.startswith(".0"))
    rerun = subprocess.run(
        _argv(pipeline, prompts, out), env=_env(), check=True, timeout=600,
        capture_output=True, text=True,
    )  # fmt: skip
    assert f"removed {len(left)} temporary file(s)" in rerun.stderr, (left, rerun.stderr)

    got, want = _files(out), _files(whole)
    assert not [n for n in got if n.startswith(".")], got.keys()  # no temp files left
    assert sorted(got) == sorted(want)
    assert len([n for n in got if n.endswith(".wav")]) == len(PROMPTS)
    assert all(got[n] == want[n] for n in want if n.endswith(".wav"))


def test_stale_temporaries_of_other_names_are_kept(tmp_path):
    from musiclm.datamodules.shards import remove_stale_temps

    for name in (".a-0.wav.x1.wav", ".a-0.json.y2.tmp", ".a-00.wav.z.wav", ".keep", "a-0.wav"):
        (tmp_path / name).write_text("x")
    assert remove_stale_temps(tmp_path, ["a-0"]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [".a-00.wav.z.wav", ".keep", "a-0.wav"]
    assert remove_stale_temps(tmp_path / "missing", ["a-0"]) == 0
