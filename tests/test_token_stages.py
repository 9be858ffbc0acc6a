"""Semantic, coarse and fine stages: tiny end-to-end fits on synthetic token shards."""

from pathlib import Path

import lightning as L
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from token_shards import write_synthetic_shards

from musiclm.callbacks.throughput import ThroughputMonitor, matmul_flops
from musiclm.datamodules.tokens import TokenDataModule
from musiclm.lightning_cli import MusicLMCLI
from musiclm.stages.coarse import CoarseStage
from musiclm.stages.fine import FineStage
from musiclm.stages.semantic import SemanticStage
from musiclm.stages.token_layout import NULL
from musiclm.stages.token_lm_stage import TokenLMStage, load_network

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(dim=32, depth=2, heads=4, warmup_steps=2)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("tokens")
    write_synthetic_shards(root / "train", sizes=[6, 4], seconds=[3.0] * 8 + [1.0] * 2)
    write_synthetic_shards(root / "val", sizes=[4], seconds=3.0, seed=1)
    return root


def datamodule(shards, **kw):
    args = dict(seconds=2.0, batch_size=4, num_workers=0, batches_per_epoch=3, val_batches=1)
    return TokenDataModule(str(shards / "train"), str(shards / "val"), **{**args, **kw})


def trainer(tmp_path, steps=3, **kw):
    return L.Trainer(
        max_steps=steps,
        accelerator="cpu",
        default_root_dir=str(tmp_path),
        log_every_n_steps=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kw,
    )


@pytest.mark.parametrize(
    "cls,kw",
    [(SemanticStage, {}), (CoarseStage, {"coarse_levels": 2}), (FineStage, {"coarse_levels": 3})],
)
def test_stage_fits_logs_and_checkpoint_rebuilds_network(cls, kw, shards, tmp_path):
    model = cls(**TINY, **kw)
    # A peak no 2-core CPU reaches in fp32, so MFU stays a fraction however fast the step.
    monitor = ThroughputMonitor(peak_flops=1e13, window=2)
    t = trainer(tmp_path, callbacks=[monitor, L.pytorch.callbacks.LearningRateMonitor()])
    t.fit(model, datamodule(shards))
    metrics = t.callback_metrics
    assert torch.isfinite(metrics["train/loss"]) and torch.isfinite(metrics["val/loss"])
    levels = model.layout.target_level_count
    assert levels == {"semantic": 1, "coarse": 2, "fine": 1}[model.stage]
    for level in range(levels):
        assert 0 <= metrics[f"val/accuracy_level{level}"] <= 1
    assert f"val/accuracy_level{levels}" not in metrics
    assert monitor.last_metrics["perf/tokens_per_sec"] > 0
    assert 0 < monitor.last_metrics["perf/mfu"] < 1

    events = EventAccumulator(str(next(tmp_path.rglob("events.out.tfevents*")).parent))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/perplexity", "perf/tokens_per_sec", "perf/mfu"} <= tags
    assert any(tag.startswith("lr-") for tag in tags), tags

    # the checkpoint alone rebuilds the network (plain hparams, weights_only load)
    path = t.checkpoint_callback.best_model_path
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["hyper_parameters"]["spec"]["codebook_size"] == 16
    net, layout = load_network(path)
    assert layout == model.layout
    tokens = torch.randint(0, layout.num_tokens, (2, 20))
    torch.testing.assert_close(net(tokens), model.net.eval()(tokens))
    reloaded = cls.load_from_checkpoint(path)
    assert reloaded.layout == model.layout


def test_stage_refuses_shards_of_another_codec(shards, tmp_path):
    model = CoarseStage(**TINY, codec="dac")
    with pytest.raises(ValueError, match=r"expects codec 'dac'.*made by 'synthetic'"):
        trainer(tmp_path).fit(model, datamodule(shards))
    model = SemanticStage(**TINY, semantic_tokenizer="synthetic-semantic", mulan="other-rvq")
    with pytest.raises(ValueError, match=r"expects mulan 'other-rvq'.*synthetic-mulan"):
        trainer(tmp_path).fit(model, datamodule(shards))


def test_conditioning_dropout_feeds_null_tokens(shards, tmp_path):
    model = SemanticStage(**TINY, cond_dropout=0.9)
    seen = []
    model.configure_model = lambda: None  # keep the hook below on the network we build here
    TokenLMStage._build(model, datamodule(shards).spec)
    model.hparams["spec"] = datamodule(shards).spec.to_dict()
    model.net.register_forward_pre_hook(lambda mod, args: seen.append(args[0].clone()))
    trainer(tmp_path, steps=2, limit_val_batches=0).fit(model, datamodule(shards))
    nulls = sum(int((t[:, 1:4] == NULL).all(1).sum()) for t in seen)
    assert nulls > 0  # 90% of rows, 8 rows seen
    assert not any((t[:, 4:] == NULL).any() for t in seen)  # targets are never nulled


def test_base_stage_needs_a_concrete_stage():
    with pytest.raises(TypeError, match="concrete stage"):
        TokenLMStage(**TINY)


def test_matmul_probe_measures_positive_rate():
    assert matmul_flops("cpu", size=256, seconds=0.05) > 1e8


@pytest.mark.parametrize("stage", ["semantic", "coarse", "fine"])
def test_configs_instantiate_through_the_cli(stage, shards, tmp_path):
    """Paper and demo configs parse and instantiate (no fit: the paper nets are large)."""
    for config in (ROOT / "conf" / f"{stage}.yaml", ROOT / "conf" / "demo" / f"{stage}.yaml"):
        cli = MusicLMCLI(
            args=[
                "--config",
                str(config),
                "--data.init_args.train_dir",
                str(shards / "train"),
                "--data.init_args.val_dir",
                str(shards / "val"),
                "--trainer.default_root_dir",
                str(tmp_path),
                "--trainer.strategy",
                "auto",
                "--trainer.devices",
                "1",
                "--trainer.accelerator",
                "cpu",
            ],
            run=False,
        )
        assert isinstance(cli.model, TokenLMStage) and cli.model.stage == stage
        assert cli.datamodule.spec.num_quantizers == 4
        if "demo" not in str(config):
            assert (cli.model.hparams.dim, cli.model.hparams.depth) == (1024, 24)
            assert cli.model.hparams.heads == 16


@pytest.mark.slow
def test_compiled_stage_trains_like_eager_and_saves_plain_keys(shards, tmp_path):
    """``compile: true`` (torch.compile, about a minute of compiling here) changes the speed,
    not the function: same seed, same batches, the losses of eager and compiled runs agree,
    and the checkpoint holds the plain network's keys, loadable without compiling."""
    losses = {}
    for compiled in (False, True):
        L.seed_everything(0)
        model = SemanticStage(**TINY, compile=compiled)
        t = trainer(tmp_path / str(compiled), steps=3, limit_val_batches=0)
        t.fit(model, datamodule(shards))
        losses[compiled] = float(t.callback_metrics["train/loss"])
        path = next((tmp_path / str(compiled)).rglob("*.ckpt"))
        keys = torch.load(path, weights_only=True)["state_dict"].keys()
        assert keys and all(k.startswith("net.") and "_orig_mod" not in k for k in keys)
    assert losses[True] == pytest.approx(losses[False], rel=1e-3)
    net, _ = load_network(str(path))
    assert net(torch.randint(0, net.num_tokens, (1, 8))).isfinite().all()
