"""MuLan: loss, retrieval metrics, towers, a short fit, and resume through `musiclm fit`."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from mulan_helpers import NAMES, TINY, ToneCaptions, ToneDataset, collate

from musiclm.models.mulan import MuLan, contrastive_loss, load_mulan, mulan_kwargs
from musiclm.models.retrieval import bidirectional_metrics, match_ranks, retrieval_metrics
from musiclm.stages.mulan import MulanStage, zero_shot_accuracy


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Tiny models gain nothing from more threads; on a shared CPU they mostly spin.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _unit(*shape: int, seed: int = 0) -> torch.Tensor:
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


def test_contrastive_loss_is_symmetric_finite_and_prefers_matches():
    a, t = _unit(8, 16, seed=1), _unit(8, 16, seed=2)
    scale = torch.tensor(math.log(1 / 0.07))
    assert torch.allclose(contrastive_loss(a, t, scale), contrastive_loss(t, a, scale))
    aligned = contrastive_loss(a, a, scale)
    assert aligned < contrastive_loss(a, t, scale)
    # a huge learned scale is clamped (temperature >= 0.01), so the loss stays finite
    assert torch.isfinite(contrastive_loss(a, t, torch.tensor(1e4)))
    # at temperature 1 and orthogonal-free random data the loss is near log(N)
    n = 256
    loss = contrastive_loss(_unit(n, 512, seed=3), _unit(n, 512, seed=4), torch.tensor(0.0))
    assert abs(loss.item() - math.log(n)) < 0.1


def test_contrastive_loss_gradient_reaches_temperature():
    scale = torch.tensor(2.0, requires_grad=True)
    contrastive_loss(_unit(4, 8, seed=5), _unit(4, 8, seed=6), scale).backward()
    assert scale.grad is not None and scale.grad.abs() > 0


def test_retrieval_metrics_on_a_known_ranking():
    # query 0: match ranked 1st; query 1: 3rd; query 2: 2nd
    sim = torch.tensor([[0.9, 0.1, 0.2], [0.8, 0.3, 0.5], [0.1, 0.7, 0.6]])
    assert match_ranks(sim).tolist() == [0, 2, 1]
    m = retrieval_metrics(sim, ks=(1, 2))
    assert m["recall@1"] == pytest.approx(1 / 3)
    assert m["recall@2"] == pytest.approx(2 / 3)
    assert m["mrr"] == pytest.approx((1 + 1 / 3 + 1 / 2) / 3)
    # a tie with a wrong item counts against the query
    assert match_ranks(torch.tensor([[0.5, 0.5], [0.0, 1.0]])).tolist() == [1, 0]


def test_retrieval_counts_shared_captions_as_matches():
    text = torch.eye(3)[[0, 0, 1, 2]]  # items 0 and 1 share a caption
    audio = torch.eye(3)[[0, 0, 1, 2]] + 0.01 * torch.arange(4.0)[:, None]
    captions = ["a", "a", "b", "c"]
    plain = bidirectional_metrics(text, audio)
    grouped = bidirectional_metrics(text, audio, captions=captions)
    assert grouped["t2a/recall@1"] == 1.0 and grouped["a2t/recall@1"] == 1.0
    assert plain["t2a/recall@1"] < 1.0
    assert grouped["t2a/chance@1"] == pytest.approx((2 + 2 + 1 + 1) / 4 / 4)
    with pytest.raises(ValueError, match="positives"):
        match_ranks(torch.zeros(2, 2), torch.zeros(2, 3, dtype=torch.bool))


@pytest.mark.parametrize("tower", ["cnn", "transformer"])
def test_towers_give_unit_embeddings(tower):
    kwargs = {**TINY, "audio_tower": tower, "patch_size": 8, "transformer_dim": 32}
    kwargs["transformer_depth"] = 1
    model = MuLan(**kwargs).eval()
    wav = torch.randn(3, 4000)
    emb = model.embed_audio(wav)
    assert emb.shape == (3, 32)
    assert torch.allclose(emb.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert torch.allclose(model.embed_audio(wav[:, None]), emb, atol=1e-6)
    txt = model.embed_text(["a piano", "two violins playing slowly", "x"])
    assert txt.shape == (3, 32) and torch.allclose(txt.norm(dim=-1), torch.ones(3), atol=1e-5)
    with pytest.raises(TypeError, match="list of strings"):
        model.embed_text("a piano")
    with pytest.raises(ValueError, match=r"\(B, T\)"):
        model.embed_audio(torch.randn(4000))


def test_bad_tower_names_are_clear():
    with pytest.raises(ValueError, match="audio_tower"):
        MuLan(**{**TINY, "audio_tower": "resnet9000"})
    with pytest.raises(ValueError, match="text_pooling"):
        MuLan(**{**TINY, "text_pooling": "max"})


def test_windowed_embedding_is_the_renormalised_mean_of_windows():
    model = MuLan(**TINY).eval()  # window_s = 0.5 s = 4000 samples
    wav = torch.randn(2, 12000)
    per_window = torch.stack([model.embed_audio(wav[:, s : s + 4000]) for s in (0, 4000, 8000)])
    expected = F.normalize(per_window.mean(0), dim=-1)
    got = model.embed_audio_windows(wav, hop_s=0.5)
    assert torch.allclose(got, expected, atol=1e-5)
    short = wav[:, :3000]
    assert torch.allclose(model.embed_audio_windows(short), model.embed_audio(short), atol=1e-6)


def test_zero_shot_accuracy():
    classes = ["flute", "piano"]
    class_emb = torch.eye(2)
    audio = torch.tensor([[1.0, 0.0], [0.2, 0.9], [0.9, 0.1]])
    assert zero_shot_accuracy(audio, ["flute", "piano", "piano"], class_emb, classes) == 2 / 3


def _fit(stage: MulanStage, steps: int) -> None:
    from lightning.pytorch import Trainer

    trainer = Trainer(
        max_steps=steps,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    trainer.fit(stage, ToneCaptions(batches_per_epoch=steps))


def test_short_fit_puts_matching_text_and_audio_closer():
    torch.manual_seed(0)
    stage = MulanStage(**TINY, lr=5e-3, warmup_steps=2)
    _fit(stage, 24)
    stage.eval()
    val = collate([ToneDataset(12, 0.5, seed=7)[i] for i in range(12)])
    with torch.no_grad():
        sim = stage.mulan.embed_audio(val["audio"]) @ stage.mulan.embed_text(val["caption"]).T
        cls_text = stage.mulan.embed_text([f"a {n} melody" for n in NAMES])
    same = torch.tensor([[a == b for b in val["caption"]] for a in val["caption"]])
    assert sim[same].mean() > sim[~same].mean() + 0.3
    labels = [m["attributes"]["instrument"] for m in val["meta"]]
    audio = stage.mulan.embed_audio(val["audio"]).detach()
    assert zero_shot_accuracy(audio, labels, cls_text, NAMES) >= 0.5  # chance 1/6


def test_validation_logs_retrieval_and_zero_shot():
    from lightning.pytorch import Trainer

    stage = MulanStage(**TINY)
    trainer = Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    trainer.validate(stage, ToneCaptions(val_size=12), verbose=False)
    m = trainer.callback_metrics
    for key in ("val/t2a/recall@1", "val/a2t/recall@10", "val/t2a/mrr", "val/loss"):
        assert key in m and 0.0 <= float(m[key]) <= max(1.0, float(m[key]))
    assert float(m["val/zeroshot/instrument_chance"]) == pytest.approx(1 / len(NAMES))
    assert float(m["val/t2a/chance@1"]) == pytest.approx(2 / 12)


def test_hparams_are_plain_and_rebuild_the_network(tmp_path):
    stage = MulanStage(**TINY)
    path = tmp_path / "m.ckpt"
    torch.save({"hyper_parameters": dict(stage.hparams), "state_dict": stage.state_dict()}, path)
    model = load_mulan(str(path))
    wav = torch.randn(2, 4000)
    stage.eval()
    assert torch.allclose(model.embed_audio(wav), stage.mulan.embed_audio(wav), atol=1e-6)
    assert set(mulan_kwargs(dict(stage.hparams))) <= set(stage.hparams)
    with pytest.raises(FileNotFoundError, match="mulan checkpoint"):
        load_mulan(str(tmp_path / "missing.ckpt"))


CONFIG = """
model:
  class_path: musiclm.stages.mulan.MulanStage
  init_args:
    sample_rate: 8000
    embed_dim: 32
    n_mels: 32
    n_fft: 256
    hop_length: 80
    cnn_channels: [8, 16]
    text_encoder: scratch
    text_encoder_args: {dim: 32, depth: 1, heads: 2, vocab_size: 512}
    text_proj_hidden: 0
    window_s: 0.5
data:
  class_path: mulan_helpers.ToneCaptions
  init_args: {batches_per_epoch: 2, val_size: 6}
trainer:
  accelerator: cpu
  max_steps: 4
  log_every_n_steps: 1
  enable_checkpointing: true  # the run layout adds checkpoints/last.ckpt only when set
  enable_progress_bar: false
  default_root_dir: ROOT
"""


def _scalars(run_dir) -> dict[str, list[int]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    return {tag: [e.step for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_fit_and_resume_continue_the_same_tensorboard_run(tmp_path):
    from musiclm.lightning_cli import run_lightning

    root = tmp_path / "run"
    cfg = tmp_path / "mulan.yaml"
    cfg.write_text(CONFIG.replace("ROOT", str(root)))
    run_lightning(["fit", "--config", str(cfg)])
    last = root / "checkpoints" / "last.ckpt"
    assert last.is_file()
    first = _scalars(root / "tensorboard" / "run")
    assert max(first["train/loss"]) == 3 and "val/t2a/recall@1" in first

    run_lightning(["fit", "--config", str(cfg), "--trainer.max_steps", "8", "--ckpt_path", "last"])
    assert sorted(p.name for p in (root / "tensorboard").iterdir()) == ["run"]
    files = sorted((root / "tensorboard" / "run").glob("events.out.tfevents.*"))
    assert len(files) == 2  # one events file per process, both in the same run folder
    second = _scalars(files[1])["train/loss"]
    assert min(second) >= 4 and max(second) >= 7  # carries on instead of restarting at 0
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 8
    model = load_mulan(str(last))  # the real Lightning checkpoint rebuilds the network
    assert model.embed_audio(torch.randn(1, 4000)).shape == (1, 32)
