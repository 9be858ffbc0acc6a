"""A stage whose config disagrees with its token shards' manifest is refused at setup:
`musiclm fit` ends with one line naming the folder and what disagrees, exit 2."""

from pathlib import Path

import lightning as L
import pytest
from token_shards import write_synthetic_shards

from musiclm.datamodules.tokens import TokenDataModule
from musiclm.stages.coarse import CoarseStage
from musiclm.usage import SetupError

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tokens") / "train"
    write_synthetic_shards(root, sizes=[2])  # 4 codec levels, made by 'synthetic'
    return root


@pytest.mark.parametrize(
    ("model_args", "words"),
    [
        ({"coarse_levels": 8}, ["coarse_levels=8 not in 1..4 codec levels"]),
        ({"codec": "dac"}, ["expects codec 'dac'", "made by 'synthetic'"]),
        ({"melody": True}, ["carry no melody tokens"]),
    ],
)
def test_stage_config_against_the_manifest_is_a_setup_error(shards, tmp_path, model_args, words):
    model = CoarseStage(dim=16, depth=1, heads=2, **{"coarse_levels": 2, **model_args})
    data = TokenDataModule(str(shards), seconds=1.0, batch_size=2, num_workers=0)
    trainer = L.Trainer(
        max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path),
    )  # fmt: skip
    with pytest.raises(SetupError) as info:
        trainer.fit(model, data)
    message = str(info.value)
    assert message.startswith(f"coarse stage config vs {shards}: ")
    assert "\n" not in message and all(w in message for w in words), message


def test_musiclm_fit_with_a_stage_that_disagrees_is_one_line(shards, tmp_path, capsys):
    from musiclm.cli import main

    args = [
        "fit", "--config", str(ROOT / "conf" / "demo" / "coarse.yaml"),
        "--data.init_args.train_dir", str(shards), "--data.init_args.val_dir", "null",
        "--data.init_args.num_workers", "0",
        "--model.init_args.coarse_levels", "8",
        "--trainer.default_root_dir", str(tmp_path / "run"),
    ]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("musiclm fit: error: coarse stage config vs ")
    assert str(shards) in last and "coarse_levels=8" in last
