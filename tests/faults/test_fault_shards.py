"""Token shards that cannot feed training are refused at setup or stop after a bounded
number of bad samples; manifests name only plain files inside their folder."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from token_shards import write_synthetic_shards

from musiclm.datamodules.shards import StreamStarved, read_manifest
from musiclm.datamodules.tokens import TokenDataModule, TokenStream

ROOT = Path(__file__).resolve().parents[2]


def _edit_manifest(folder: Path, change) -> None:
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


def test_missing_tars_are_refused_at_setup_naming_folder_and_file(tmp_path):
    write_synthetic_shards(tmp_path, sizes=[2, 2])
    (tmp_path / "tokens-000-000001.tar").unlink()
    with pytest.raises(FileNotFoundError, match="1 of 2 shards .* missing .*tokens-000-000001"):
        TokenDataModule(str(tmp_path), seconds=1.0, batch_size=2, num_workers=0)


def test_shards_that_disagree_with_their_manifest_are_refused_at_setup(tmp_path):
    write_synthetic_shards(tmp_path, sizes=[2])
    # the manifest says 8 codec levels, the shards hold 4
    _edit_manifest(tmp_path, lambda m: m["codec"].update(num_quantizers=8))
    with pytest.raises(ValueError, match=f"{tmp_path} do not match their manifest.*8, F_a"):
        TokenDataModule(str(tmp_path), seconds=1.0, batch_size=2, num_workers=0)


def test_a_stream_without_one_valid_sample_stops_with_counts_by_reason(tmp_path):
    spec = write_synthetic_shards(tmp_path, sizes=[3, 3])
    urls = [str(p) for p in sorted(tmp_path.glob("*.tar"))]
    bad = spec.__class__(**{**spec.__dict__, "num_quantizers": 8})  # every sample fails
    stream = TokenStream(
        urls, spec=bad, seconds=1.0, batch_size=2, seed=0, shuffle_buffer=1,
        max_consecutive_skips=20,
    )  # fmt: skip
    with pytest.raises(StreamStarved) as info:
        next(iter(stream))
    message = str(info.value)
    assert f"token shards {tmp_path}" in message and "21 samples in a row" in message
    assert "21 x ValueError: semantic (20,) / acoustic (4, 40), expected" in message


@pytest.mark.slow  # a `musiclm fit` process: about 10 s to import and refuse
def test_fit_over_missing_tars_exits_2_with_one_line_instead_of_hanging(tmp_path):
    write_synthetic_shards(tmp_path / "train", sizes=[2])
    (tmp_path / "train" / "tokens-000-000000.tar").unlink()
    args = [
        sys.executable, "-m", "musiclm.cli", "fit",
        "--config", str(ROOT / "conf" / "demo" / "coarse.yaml"),
        "--data.init_args.train_dir", str(tmp_path / "train"),
        "--data.init_args.val_dir", "null",
        "--trainer.default_root_dir", str(tmp_path / "run"),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("musiclm fit: error: ") and "tokens-000-000000.tar" in last


@pytest.mark.parametrize(
    "entry", ["pipe:touch /tmp/owned", "../other/tokens.tar", "/abs/tokens.tar", "sub/x.tar", ""]
)
def test_manifest_shard_entries_must_be_plain_names_inside_the_folder(tmp_path, entry):
    write_synthetic_shards(tmp_path, sizes=[1])
    _edit_manifest(tmp_path, lambda m: m["shards"][0].update(file=entry))
    with pytest.raises(ValueError, match="is not a plain file name inside the folder"):
        read_manifest(tmp_path)
