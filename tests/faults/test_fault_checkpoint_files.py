"""A truncated, corrupt or foreign checkpoint handed to a loader is one ValueError naming the
file (exit 2 through ``musiclm.usage``), not a PytorchStreamReader or unpickling traceback."""

import pytest
import torch

from musiclm.checkpoint_file import read_checkpoint
from musiclm.models.melody import load_melody
from musiclm.models.mulan import load_mulan
from musiclm.usage import run_command


def _truncated(tmp_path):
    path = tmp_path / "cut.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1000)}, "hyper_parameters": {}}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _garbage(tmp_path):
    path = tmp_path / "text.ckpt"
    path.write_text("not a checkpoint\n")
    return path


def _foreign(tmp_path):
    path = tmp_path / "plain.ckpt"
    torch.save({"weights": torch.zeros(2)}, path)
    return path


@pytest.mark.parametrize("make", [_truncated, _garbage, _foreign])
@pytest.mark.parametrize("load", [load_mulan, load_melody])
def test_unreadable_checkpoints_are_one_value_error_naming_the_file(tmp_path, make, load):
    path = make(tmp_path)
    with pytest.raises(ValueError, match=str(path.name)) as info:
        load(str(path))
    assert "\n" not in str(info.value)


def test_missing_checkpoint_names_what_it_is(tmp_path):
    with pytest.raises(FileNotFoundError, match="mulan checkpoint not found"):
        read_checkpoint(tmp_path / "nope.ckpt", what="mulan")


def test_a_command_reading_a_truncated_checkpoint_exits_2(tmp_path, capsys):
    path = _truncated(tmp_path)
    assert run_command("musiclm prepare mulan-rvq", lambda: load_mulan(str(path))) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "cut.ckpt" in err and "truncated or corrupt" in err


def test_an_intact_checkpoint_reads_back(tmp_path):
    path = tmp_path / "ok.ckpt"
    torch.save({"state_dict": {"w": torch.ones(3)}}, path)
    assert torch.equal(read_checkpoint(path, what="x")["state_dict"]["w"], torch.ones(3))
