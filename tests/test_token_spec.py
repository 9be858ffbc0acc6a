"""The token spec: the conditioning streams' specs by manifest section, the flat form older
checkpoints stored, and a plugin stream sized by its own manifest section."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import genre_stream  # noqa: F401  (registers the test-only streams)
import pytest
import torch
from generation_helpers import save_checkpoint, tiny_spec, tiny_stage, with_streams
from token_shards import write_synthetic_shards

import musiclm
from musiclm.datamodules.token_spec import BeatSpec, MelodySpec, MulanSpec, PluginSpec, TokenSpec
from musiclm.datamodules.tokens import TokenDataModule
from musiclm.stages.token_layout import TokenLayout
from musiclm.stages.token_lm_stage import load_network

SPEC = with_streams(
    tiny_spec(),
    mulan=MulanSpec(3, 8, "mulan:x"),
    melody=MelodySpec(windows=2, levels=3, codebook=4, hop=1.0, fingerprint="melody:y"),
    beats=BeatSpec(8, 6, 60.0, 240.0, tempo_input_dim=4),
)
# ``SPEC.to_dict()`` as stage checkpoints stored it before the streams were a mapping
FLAT = {
    "semantic_vocab": 16, "semantic_rate": 5.0, "codebook_size": 8, "num_quantizers": 4,
    "acoustic_rate": 10.0, "mulan_levels": 3, "mulan_codebook": 8, "codec_name": "",
    "codec_fingerprint": "", "semantic_name": "", "semantic_fingerprint": "",
    "mulan_fingerprint": "mulan:x", "melody_windows": 2, "melody_levels": 3,
    "melody_codebook": 4, "melody_hop": 1.0, "melody_fingerprint": "melody:y",
    "beat_phase_bins": 8, "tempo_bins": 6, "min_bpm": 60.0, "max_bpm": 240.0,
    "tempo_input_dim": 4,
}  # fmt: skip
NO_STREAMS = {
    "mulan_levels": 0, "mulan_codebook": 0, "mulan_fingerprint": "", "melody_windows": 0,
    "melody_levels": 0, "melody_codebook": 0, "melody_hop": 0.0, "melody_fingerprint": "",
    "beat_phase_bins": 0, "tempo_bins": 0, "min_bpm": 0.0, "max_bpm": 0.0, "tempo_input_dim": 0,
}  # fmt: skip


def test_the_flat_spec_of_older_checkpoints_reads_as_the_mapping():
    assert TokenSpec.from_dict(FLAT) == SPEC == TokenSpec.from_dict(SPEC.to_dict())
    assert TokenSpec.from_dict(FLAT | NO_STREAMS) == dataclasses.replace(SPEC, streams={})
    assert TokenSpec.from_dict({**FLAT, "melody_levels": 0}).streams.keys() == {"mulan", "beats"}


def test_an_older_checkpoint_rebuilds_the_same_layout_and_network(tmp_path):
    stage = tiny_stage("semantic", SPEC, melody=True, beats=True, frame_conditioning=True)
    new = save_checkpoint(stage, tmp_path / "new.ckpt", seconds=2.0)
    old = torch.load(new, weights_only=False)
    old["hyper_parameters"]["spec"] = FLAT
    torch.save(old, tmp_path / "old.ckpt")
    (net_new, layout_new), (net_old, layout_old) = (
        load_network(p) for p in (new, tmp_path / "old.ckpt")
    )
    assert layout_old == layout_new == stage.layout  # the same vocabulary, ids and streams
    for a, b in zip(net_old.state_dict().values(), net_new.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)


def test_a_plugin_stream_is_sized_by_its_own_manifest_section(tmp_path):
    tonality = PluginSpec({"num_keys": 5})
    write_synthetic_shards(
        tmp_path, sizes=[8], seconds=2.0, spec=with_streams(SPEC, tonality=tonality)
    )
    dm = TokenDataModule(str(tmp_path), seconds=1.0, batch_size=4, num_workers=0,
                         batches_per_epoch=1)  # fmt: skip
    assert dm.spec.streams["tonality"] == tonality
    layout = TokenLayout(stage="semantic", spec=dm.spec, conditioning=["mulan", "tonality"])
    assert layout.streams()[1] == ("tonality", 1, 5)
    assert TokenLayout.from_dict(layout.to_dict()) == layout  # a checkpoint keeps the section
    dm.set_readers([s.read for s in layout.conditioning_streams])
    batch = next(iter(dm.train_dataloader()))
    assert batch["tonality"].tolist() == [int(k[4:]) % 5 for k in batch["key"]]  # clipNNNNN
    with pytest.raises(ValueError, match="no 'tonality' section"):
        TokenLayout(stage="semantic", spec=SPEC, conditioning=["mulan", "tonality"])
    # no package file names the section: the stream under tests/ reads it
    package = Path(musiclm.__file__).parent
    assert not any("num_keys" in path.read_text() for path in package.rglob("*.py"))
