"""Melody tokens in token shards, layouts and stages: accepted when configured, required then,
ignored by stages trained without them."""

import lightning as L
import numpy as np
import pytest
import torch
from generation_helpers import with_streams
from token_shards import write_synthetic_shards

from musiclm.datamodules.token_spec import MelodySpec, MulanSpec, TokenSpec
from musiclm.datamodules.tokens import TokenDataModule, crop_sample
from musiclm.stages.coarse import CoarseStage
from musiclm.stages.semantic import SemanticStage
from musiclm.stages.token_layout import PAD, TokenLayout
from musiclm.stages.token_lm_stage import load_network

TINY = dict(dim=32, depth=1, heads=2, warmup_steps=1)
SPEC = TokenSpec(
    semantic_vocab=32, semantic_rate=5.0, codebook_size=16, num_quantizers=4,
    acoustic_rate=10.0, codec_name="synthetic", codec_fingerprint="synthetic-codec",
    semantic_name="synthetic", semantic_fingerprint="synthetic-semantic",
    streams={
        "mulan": MulanSpec(3, 8, "synthetic-mulan"),
        "melody": MelodySpec(windows=2, levels=3, codebook=5, hop=1.0,
                             fingerprint="melody:x+melody_rvq:y"),
    },
)  # fmt: skip


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("melody_tokens")
    write_synthetic_shards(root / "train", sizes=[6], seconds=4.0, spec=SPEC)
    write_synthetic_shards(root / "val", sizes=[2], seconds=4.0, spec=SPEC, seed=1)
    plain = with_streams(SPEC, melody=None)
    write_synthetic_shards(root / "plain", sizes=[4], seconds=4.0, spec=plain)
    return root


def datamodule(train, val=None):
    return TokenDataModule(
        str(train), str(val) if val else None, seconds=2.0, batch_size=2, num_workers=0,
        batches_per_epoch=2, val_batches=1,
    )  # fmt: skip


def fit(model, dm, tmp_path):
    trainer = L.Trainer(
        max_steps=2, accelerator="cpu", default_root_dir=str(tmp_path), logger=False,
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(model, dm)
    return trainer


def test_manifest_spec_and_batches_carry_aligned_melody_windows(shards):
    dm = datamodule(shards / "train")
    assert dm.spec == SPEC
    batch = next(iter(dm.train_dataloader()))
    assert batch["melody"].shape == (2, 2 * 3)
    # a crop starts on the melody grid and carries the clip's windows from its start
    import io
    import tarfile

    from musiclm.datamodules.shards import shard_paths

    with tarfile.open(shard_paths(shards / "train")[0]) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith("clip00000.")]
        raw = {m.name.split(".", 1)[1]: tar.extractfile(m).read() for m in members}
    raw["__key__"], raw["__url__"] = "clip00000", "shard0"
    melody = np.load(io.BytesIO(raw["melody.npy"]), allow_pickle=False)
    semantic = np.load(io.BytesIO(raw["semantic.npy"]), allow_pickle=False)
    assert melody.shape == (4, 3)  # 4 s clip, a window every 1 s
    starts = set()
    for seed in range(8):
        out = crop_sample(raw, spec=SPEC, seconds=2.0, rng=np.random.default_rng(seed))
        s0 = next(
            i for i in range(len(semantic)) if (semantic[i : i + 10] == out["semantic"]).all()
        )
        start = s0 / SPEC.semantic_rate
        assert start == int(start)  # on the 1 s grid
        assert (out["melody"] == melody[int(start) : int(start) + 2].reshape(-1)).all()
        starts.add(start)
    assert len(starts) > 1  # still random crops
    first = crop_sample(raw, spec=SPEC, seconds=2.0, rng=None)
    assert (first["melody"] == melody[:2].reshape(-1)).all()  # validation: from the start


def test_stage_with_melody_accepts_and_requires_them(shards, tmp_path):
    model = SemanticStage(**TINY, melody=True)
    trainer = fit(model, datamodule(shards / "train", shards / "val"), tmp_path)
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    layout = model.layout
    assert layout.melody and [n for n, _, _ in layout.streams()] == ["mulan", "melody", "semantic"]
    streams = {"mulan": torch.zeros(1, 3, dtype=torch.long), "melody": torch.ones(1, 6).long()}
    assert layout.prefix(streams).shape == (1, 1 + 3 + 6)
    # the melody changes the prefix ids, so the network sees it
    other = {**streams, "melody": torch.full((1, 6), 4)}
    assert not torch.equal(layout.prefix(streams), layout.prefix(other))
    with pytest.raises(ValueError, match="trained with melody conditioning and needs melody"):
        layout.prefix({"mulan": streams["mulan"]})
    with pytest.raises(ValueError, match=r"expects melody tokens \(B, 2 windows x 3 levels\)"):
        layout.prefix({**streams, "melody": torch.zeros(1, 5).long()})
    # the checkpoint remembers it
    net, loaded = load_network(trainer.checkpoint_callback.last_model_path or _ckpt(tmp_path))
    assert loaded.melody and loaded == layout
    # training on shards without melody tokens is refused with a clear error
    with pytest.raises(ValueError, match="carry no melody tokens"):
        fit(
            CoarseStage(**TINY, coarse_levels=2, melody=True),
            datamodule(shards / "plain"),
            tmp_path / "b",
        )


def _ckpt(tmp_path):
    return str(next(tmp_path.rglob("*.ckpt")))


def test_stage_without_melody_ignores_melody_tokens(shards, tmp_path):
    model = CoarseStage(**TINY, coarse_levels=2)
    fit(model, datamodule(shards / "train"), tmp_path)
    assert not model.layout.melody
    assert "melody" not in [n for n, _, _ in model.layout.streams()]
    plain = TokenLayout(stage="coarse", spec=SPEC, coarse_levels=2)
    streams = {"mulan": torch.zeros(1, 3).long(), "semantic": torch.zeros(1, 4).long()}
    assert plain.prefix(streams).shape == (1, 1 + 3 + 4)


def test_melody_padding_past_the_clip_is_pad(shards):
    layout = TokenLayout(stage="semantic", spec=SPEC, melody=True)
    streams = {"mulan": torch.zeros(1, 3).long(), "melody": torch.tensor([[0, 1, 2, -1, -1, -1]])}
    ids = layout.prefix(streams)[0, 4:]
    assert (ids[:3] != PAD).all() and (ids[3:] == PAD).all()  # the missing second window
    assert len(set(ids[:3].tolist())) == 3  # each level has its own id range
    with pytest.raises(ValueError, match="semantic and coarse"):
        TokenLayout(stage="fine", spec=SPEC, melody=True)


@pytest.mark.slow
def test_prepare_tokens_with_melody_end_to_end(tmp_path):
    """Demo clips -> audio shards -> token shards with melody.npy and a melody manifest."""
    from musiclm.cli import main as cli
    from musiclm.commands.prepare_tokens import prepare_tokens
    from musiclm.conditioning.melody_tokens import MelodyRVQ, melody_fingerprint
    from musiclm.datamodules.shards import read_manifest
    from musiclm.demo_corpus import build_demo_corpus
    from musiclm.models.melody import MelodyEmbedder
    from musiclm.stages.melody import MelodyStage

    manifest = build_demo_corpus(tmp_path / "corpus", clips=4, seconds=3.0, progress=False)
    args = ["--source", "demo", "--input", str(manifest), "--out", str(tmp_path / "audio")]
    assert cli(["prepare", "audio", *args, "--quiet"]) == 0
    km = tmp_path / "km.safetensors"
    assert cli(["prepare", "fit-semantic", "--audio", str(tmp_path / "audio"), "--out", str(km),
                "--k", "4"]) == 0  # fmt: skip
    tiny = dict(sample_rate=8000, n_fft=1024, hop_length=160, dim=16, depth=1, heads=2,
                embed_dim=8, window_s=1.0, hop_s=1.0, input_s=2.0)  # fmt: skip
    stage = MelodyStage(**tiny)
    trainer = L.Trainer(accelerator="cpu", logger=False, max_steps=0)
    trainer.strategy.connect(stage)
    trainer.save_checkpoint(tmp_path / "melody.ckpt")
    net: MelodyEmbedder = stage.melody.eval()
    emb = torch.nn.functional.normalize(torch.randn(32, 8), dim=-1)
    MelodyRVQ.fit(
        emb, levels=2, codebook_size=4, meta={"melody_fingerprint": melody_fingerprint(net)}
    ).save(tmp_path / "rvq.safetensors")
    codec = {"config": {"sampling_rate": 16000, "hidden_size": 16, "num_filters": 4,
                        "upsampling_ratios": [4, 2], "codebook_size": 16,
                        "target_bandwidths": [12.0], "num_lstm_layers": 1}}  # fmt: skip
    manifests = prepare_tokens(
        tmp_path / "audio", tmp_path / "tokens", codec="encodec-hf", codec_args=codec,
        semantic="music-features", semantic_args={"kmeans": str(km)},
        melody=(str(tmp_path / "melody.ckpt"), str(tmp_path / "rvq.safetensors")), progress=False,
    )  # fmt: skip
    split = next(iter(manifests))
    man = read_manifest(tmp_path / "tokens" / split)
    assert man["melody"]["num_windows"] == 2 and man["melody"]["num_levels"] == 2
    spec = TokenSpec.from_manifest(man)
    assert spec.streams["melody"].windows == 2 and spec.streams["melody"].hop == 1.0
    dm = TokenDataModule(str(tmp_path / "tokens" / split), seconds=2.0, batch_size=1,
                         num_workers=0, batches_per_epoch=1)  # fmt: skip
    batch = next(iter(dm.train_dataloader()))
    assert batch["melody"].shape == (1, 4)


def test_cfg_dropout_nulls_the_melody_with_the_text():
    """The unconditional row of classifier-free guidance has neither text nor melody, so the
    guidance strengthens both; the semantic targets (and a stage without melody) are kept."""
    from musiclm.stages.token_layout import NULL

    streams = {
        "mulan": torch.tensor([[1, 2, 3], [4, 5, 6]]),
        "melody": torch.tensor([[0, 1, 2, 3, 4, 0], [1, 1, 1, 2, 2, 2]]),
        "semantic": torch.tensor([[7, 8, 9, 10], [11, 12, 13, 14]]),
    }
    layout = TokenLayout(stage="semantic", spec=SPEC, melody=True)
    seq = layout.sequence(streams)
    out = layout.drop_conditioning(seq.tokens, torch.tensor([True, False]))
    assert (out[0, 1 : 1 + 3 + 6] == NULL).all()  # MuLan and melody of the dropped row
    assert torch.equal(out[0, 1 + 3 + 6 :], seq.tokens[0, 1 + 3 + 6 :])  # targets kept
    assert torch.equal(out[1], seq.tokens[1])  # the other row untouched
    plain = TokenLayout(stage="semantic", spec=SPEC)
    seq = plain.sequence(streams)
    out = plain.drop_conditioning(seq.tokens, torch.tensor([True, True]))
    assert (out[:, 1:4] == NULL).all() and torch.equal(out[:, 4:], seq.tokens[:, 4:])
