"""The training-time generation preview: audio (coarse, fine, delay) or tokens (semantic) logged to
TensorBoard from a real Lightning fit on synthetic token shards."""

import lightning as L
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from token_shards import write_synthetic_shards

from musiclm.callbacks.generation_preview import GenerationPreview
from musiclm.datamodules.tokens import TokenDataModule
from musiclm.stages.coarse import CoarseStage
from musiclm.stages.delay import DelayStage
from musiclm.stages.fine import FineStage
from musiclm.stages.semantic import SemanticStage

# untrained DAC matching the synthetic shards: 10 Hz frames, 4 levels of 16 entries
CODEC = {
    "name": "dac",
    "args": {
        "config": {
            "sample_rate": 1600,
            "encoder_dim": 4,
            "encoder_rates": [2, 4, 4, 5],
            "decoder_dim": 32,
            "decoder_rates": [5, 4, 4, 2],
            "n_codebooks": 4,
            "codebook_size": 16,
            "codebook_dim": 4,
        }
    },
}


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models on a shared 2-core machine: one thread avoids waiting on a busy sibling."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("tokens")
    write_synthetic_shards(root / "train", sizes=[6], seconds=3.0)
    write_synthetic_shards(root / "val", sizes=[2], seconds=3.0, seed=1)
    return root


@pytest.mark.parametrize(
    "cls,kw",
    [
        (SemanticStage, {}),
        (CoarseStage, {"coarse_levels": 2}),
        (FineStage, {"coarse_levels": 2}),
        (DelayStage, {}),
    ],
)
def test_preview_logs_generated_audio_during_fit(cls, kw, shards, tmp_path):
    data = TokenDataModule(
        str(shards / "train"), str(shards / "val"), seconds=2.0, batch_size=2,
        num_workers=0, batches_per_epoch=2, val_batches=1,
    )  # fmt: skip
    model = cls(dim=32, depth=2, heads=4, warmup_steps=1, **kw)
    preview = GenerationPreview(every_n_steps=1, max_seconds=1.0, codec=CODEC)
    trainer = L.Trainer(
        max_steps=3, accelerator="cpu", default_root_dir=str(tmp_path), log_every_n_steps=1,
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
        num_sanity_val_steps=0, callbacks=[preview],
    )  # fmt: skip
    trainer.fit(model, data)
    # steps 1 and 2 previewed the first training row; the epoch's validation then gave a
    # validation example, previewed at step 3
    assert preview.source == "val"
    events = EventAccumulator(str(next(tmp_path.rglob("events.out.tfevents*")).parent))
    events.Reload()
    tags = events.Tags()
    if cls is SemanticStage:
        assert "preview_train/semantic_token_match" in tags["scalars"]
        assert any("semantic_tokens" in t for t in tags["tensors"])
        return
    assert {"preview_train/generated", "preview_train/data", "preview_val/generated"} <= set(
        tags["audio"]
    )
    audio = events.Audio("preview_train/generated")
    assert len(audio) == 2 and audio[0].sample_rate == 1600
    assert audio[0].length_frames == 1600  # max_seconds of 10 Hz frames, 160 samples each
    out = preview.preview(trainer, model)
    levels = model.layout.target_level_count
    assert out["tokens"].shape == (1, levels, 10) and torch.isfinite(out["audio"]).all()


def test_a_failing_preview_warns_and_training_goes_on(shards, tmp_path):
    data = TokenDataModule(
        str(shards / "train"), None, seconds=2.0, batch_size=2, num_workers=0,
        batches_per_epoch=2,
    )  # fmt: skip
    model = CoarseStage(dim=32, depth=2, heads=4, warmup_steps=1, coarse_levels=2)
    preview = GenerationPreview(every_n_steps=1, codec={"name": "no-such-codec"})
    trainer = L.Trainer(
        max_steps=2, accelerator="cpu", default_root_dir=str(tmp_path), logger=False,
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
        callbacks=[preview],
    )  # fmt: skip
    with pytest.warns(UserWarning, match="GenerationPreview failed"):
        trainer.fit(model, data)
    assert preview.disabled and trainer.global_step == 2
