"""A second writer into one output folder is refused (exit 2, one line naming the folder
and the pid holding it); a lock left by a dead process is taken over with a warning."""

import json
import socket
import subprocess

import numpy as np
import pytest
import soundfile as sf

from musiclm.commands import generate
from musiclm.commands import prepare_audio as pa
from musiclm.folder_lock import FolderLocked, folder_lock, lock_path
from musiclm.generation.pipeline import Pipeline


@pytest.fixture
def live_pid():
    proc = subprocess.Popen(["sleep", "60"])
    yield proc.pid
    proc.kill()
    proc.wait()


@pytest.fixture
def dead_pid():
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


@pytest.fixture
def no_rank_env(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "NODE_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)


def _lock(folder, pid, slot="", host=None):
    folder.mkdir(parents=True, exist_ok=True)
    record = {"pid": pid, "host": host or socket.gethostname(), "command": ["test"]}
    lock_path(folder, slot).write_text(json.dumps(record))


def _one_line(err: str, prog: str, *words: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err and len(lines) == 1, err
    assert lines[0].startswith(f"{prog}: error: "), err
    for word in words:
        assert word in lines[0], err


@pytest.fixture
def corpus(tmp_path):
    t = np.arange(16000) / 16000
    sf.write(tmp_path / "a.wav", (0.2 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), 16000)
    row = {"audio": "a.wav", "caption": "a tone", "split": "train"}
    (tmp_path / "m.jsonl").write_text(json.dumps(row) + "\n")
    return ["--source", "jsonl", "--input", str(tmp_path / "m.jsonl"), "--quiet"]


def test_generate_into_a_folder_another_generate_writes_is_refused(
    tmp_path, capsys, monkeypatch, live_pid
):
    def refuse(*args, **kwargs):
        raise AssertionError("the pipeline was loaded although the folder is locked")

    monkeypatch.setattr(Pipeline, "from_file", refuse)
    out = tmp_path / "gen"
    _lock(out, live_pid)
    argv = ["a tune", "--pipeline", str(tmp_path / "P.yaml"), "--out", str(out)]
    assert generate.main(argv) == 2
    _one_line(capsys.readouterr().err, "musiclm generate", str(out), f"pid {live_pid}")
    assert lock_path(out).is_file()  # the holder's lock stays


def test_prepare_audio_of_the_same_rank_is_refused_other_ranks_are_not(
    tmp_path, corpus, capsys, live_pid, no_rank_env
):
    out = tmp_path / "a"
    _lock(out, live_pid, slot="rank0")
    assert pa.main([*corpus, "--out", str(out)]) == 2
    _one_line(capsys.readouterr().err, "musiclm prepare audio", str(out), f"pid {live_pid}")
    assert not (out / "train").exists()
    # rank 1 of a 2-rank job writes beside a live rank 0
    assert pa.main([*corpus, "--out", str(out), "--rank", "1", "--world-size", "2"]) == 0


def test_prepare_tokens_into_a_locked_folder_is_refused_before_building_models(
    tmp_path, corpus, capsys, live_pid, no_rank_env
):
    from musiclm.cli import main

    assert pa.main([*corpus, "--out", str(tmp_path / "a")]) == 0
    out = tmp_path / "tok"
    _lock(out, live_pid)
    argv = ["prepare", "tokens", "--audio", str(tmp_path / "a"), "--out", str(out)]
    # stft-rvq without its codebooks would fail when built: the lock is checked first
    argv += ["--codec", "stft-rvq", "--codec-args", json.dumps({"codebooks": "none.safetensors"})]
    argv += ["--semantic", "music-features", "--no-progress"]
    assert main(argv) == 2
    _one_line(capsys.readouterr().err, "musiclm prepare tokens", str(out), f"pid {live_pid}")


def test_a_stale_lock_is_taken_over_with_a_warning(tmp_path, corpus, dead_pid, no_rank_env):
    out = tmp_path / "a"
    _lock(out, dead_pid, slot="rank0")
    with pytest.warns(UserWarning, match=f"stale lock .* of pid {dead_pid}"):
        assert pa.main([*corpus, "--out", str(out)]) == 0
    assert (out / "train" / "manifest.json").is_file()
    assert not lock_path(out, "rank0").exists()  # released when done


def test_a_lock_from_another_host_is_honoured(tmp_path, dead_pid):
    _lock(tmp_path, dead_pid, host="elsewhere.invalid")
    with pytest.raises(FolderLocked, match=f"pid {dead_pid} on elsewhere.invalid"):
        with folder_lock(tmp_path):
            pass


def test_one_process_holds_one_slot_once_and_leaves_no_empty_folder(tmp_path):
    out = tmp_path / "o"
    with folder_lock(out) as held:
        assert json.loads(held.read_text())["pid"] > 0
        with pytest.raises(FolderLocked, match=f"{out} is being written by another process"):
            with folder_lock(out):
                pass
        with folder_lock(out, slot="rank1"):  # another rank's slot is free
            pass
    assert not out.exists()  # created by the lock and left empty: removed
