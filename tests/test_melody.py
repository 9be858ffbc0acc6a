"""Melody embedding: triplet loss and mining, windows, datamodule sources, a tiny fit."""

import json
import math

import numpy as np
import pytest
import soundfile as sf
import torch

from musiclm.datamodules.melody import (
    DemoMelodies,
    ManifestMelodies,
    MelodyDataModule,
    MelodyGroupBatches,
    melody_line,
)
from musiclm.models.melody import (
    MelodyEmbedder,
    fit_length,
    load_melody,
    num_windows,
    pairwise_distances,
    semihard_triplet_loss,
    semitone_filterbank,
)
from musiclm.stages.melody import MelodyStage, cross_view_recall

SR = 8000
TINY = dict(
    sample_rate=SR, n_fft=1024, hop_length=160, min_midi=36, max_midi=96, patch_frames=4,
    dim=32, depth=1, heads=2, embed_dim=16, window_s=1.0, hop_s=1.0, input_s=2.0,
)  # fmt: skip


def brute_force_semihard(emb, labels, margin):
    """Loop version of FaceNet's semi-hard mining, written independently of the library."""
    d = torch.cdist(emb.double(), emb.double())
    losses = []
    for a in range(len(labels)):
        for p in range(len(labels)):
            if a == p or labels[a] != labels[p]:
                continue
            negs = [float(d[a, n]) for n in range(len(labels)) if labels[n] != labels[a]]
            farther = [x for x in negs if x > d[a, p]]
            chosen = min(farther) if farther else max(negs)
            losses.append(max(float(d[a, p]) - chosen + margin, 0.0))
    return sum(losses) / len(losses)


def test_semihard_loss_matches_a_brute_force_loop():
    g = torch.Generator().manual_seed(0)
    for _trial in range(5):
        emb = torch.nn.functional.normalize(torch.randn(12, 5, generator=g), dim=-1)
        labels = torch.randint(0, 3, (12,), generator=g)
        labels[:3] = torch.tensor([0, 0, 1])  # at least one pair and one negative
        loss, stats = semihard_triplet_loss(emb, labels, 0.4)
        assert loss.item() == pytest.approx(brute_force_semihard(emb, labels, 0.4), abs=1e-5)
        assert 0.0 <= stats["active"].item() <= 1.0


def test_semihard_mining_picks_the_right_negative():
    # anchor at 0, positive at 1; negatives at 0.5 (harder than the positive), 1.2 (semi-hard)
    # and 3.0 (easy): the semi-hard one must be chosen -> loss = 1 - 1.2 + margin
    pts = torch.tensor([[0.0], [1.0], [0.5], [1.2], [3.0]])
    labels = torch.tensor([0, 0, 1, 2, 3])
    loss, _ = semihard_triplet_loss(pts, labels, 0.5)
    # pairs (0,1): semi-hard 1.2 -> 0.3; (1,0): negatives at 0.5, 0.2, 2.0 -> farther than 1.0:
    # 2.0 -> max(1 - 2 + .5, 0) = 0
    assert loss.item() == pytest.approx((0.3 + 0.0) / 2, abs=1e-6)
    # all negatives closer than the positive: the farthest of them is used
    pts = torch.tensor([[0.0], [2.0], [0.5], [0.7]])
    loss, stats = semihard_triplet_loss(pts, torch.tensor([0, 0, 1, 1]), 0.1)
    # (0,1): d_ap 2, negs 0.5, 0.7 -> 0.7 -> 1.4; (1,0): negs 1.5, 1.3 -> 1.5 -> 0.6;
    # (2,3): d_ap .2, negs .5, 1.5 -> .5 -> 0; (3,2): negs .7, 1.3 -> .7 -> 0
    assert loss.item() == pytest.approx((1.4 + 0.6) / 4, abs=1e-6)
    assert stats["active"].item() == pytest.approx(0.5)


def test_triplet_loss_rejects_batches_without_pairs_and_has_finite_gradients():
    with pytest.raises(ValueError, match="needs >= 2 labels"):
        semihard_triplet_loss(torch.randn(3, 4), torch.tensor([0, 1, 2]), 0.2)
    emb = torch.ones(4, 3, requires_grad=True)  # identical points: distance 0
    assert torch.isfinite(pairwise_distances(emb)).all()
    loss, _ = semihard_triplet_loss(emb, torch.tensor([0, 0, 1, 1]), 0.2)
    loss.backward()
    assert torch.isfinite(emb.grad).all()


def test_filterbank_and_frontend():
    fb = semitone_filterbank(SR, 1024, 36, 96)
    assert fb.shape == (60, 513)
    assert torch.allclose(fb.sum(1), torch.ones(60))
    with pytest.raises(ValueError, match="raise n_fft"):
        semitone_filterbank(SR, 64, 36, 96)
    model = MelodyEmbedder(**TINY)
    t = torch.arange(SR) / SR
    tone = torch.sin(2 * math.pi * 440.0 * t)[None]
    frames = model.frontend(tone)
    semis = frames[0, :, :60].mean(0)
    assert int(semis.argmax()) == 69 - 36  # A4 lands in its semitone bin
    assert int(frames[0, :, 60:].mean(0).argmax()) == 9  # and pitch class A


def test_fit_length_windows_and_embedding_shape():
    x = torch.arange(5.0)[None]
    assert fit_length(x, 12).tolist() == [[0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1]]  # looped
    assert fit_length(x, 3).tolist() == [[0, 1, 2]]  # cut
    assert num_windows(10, 4, 3) == 3 and num_windows(3, 4, 3) == 1
    model = MelodyEmbedder(**TINY)
    assert model.num_windows == 2
    for seconds in (0.7, 2.0, 3.3):  # shorter, exact, longer
        emb = model.embed_windows(torch.randn(3, 1, int(seconds * SR)))
        assert emb.shape == (3, 2, 16)
        assert torch.allclose(emb.norm(dim=-1), torch.ones(3, 2), atol=1e-5)


def test_melody_line_keeps_the_top_voice():
    chord = [(0.0, 2.0, 60), (0.0, 2.0, 67), (0.0, 1.0, 72), (1.0, 1.0, 74), (1.0, 1.0, 55)]
    assert melody_line(chord) == [(0.0, 1.0, 72), (1.0, 1.0, 74)]


def test_cross_view_recall():
    emb = torch.tensor([[1.0, 0], [0, 1], [0, 1], [1, 0]])
    labels = torch.tensor([0, 1, 0, 1])
    views = torch.tensor([0, 0, 1, 1])
    assert cross_view_recall(emb, labels, views) == 0.0  # nearest is never in the other view
    emb = torch.tensor([[1.0, 0], [0, 1], [0.9, 0.1], [0.1, 0.9]])
    assert cross_view_recall(emb, labels, views) == 1.0


def _write_manifest(tmp_path, melodies, instruments, *, split="train"):
    from musiclm.demo_corpus import render_notes

    lines = []
    for m, notes in melodies.items():
        for ins in instruments:
            path = tmp_path / f"{m}-{ins.replace(' ', '_')}.wav"
            y = render_notes(notes, instrument=ins, bpm=120, sample_rate=SR, seconds=2.0, seed=1)
            sf.write(path, y, SR)
            lines.append({"audio": path.name, "melody_id": m, "split": split})
    manifest = tmp_path / "melodies.jsonl"
    manifest.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return manifest


UP = [(i * 0.5, 0.5, 60 + s) for i, s in enumerate([0, 2, 4, 5, 7, 9, 11, 12])]
DOWN = [(i * 0.5, 0.5, 72 - s) for i, s in enumerate([0, 5, 8, 12, 3, 7, 0, 10])]


def test_manifest_source_errors_name_the_line_and_file(tmp_path):
    manifest = tmp_path / "m.jsonl"
    sf.write(tmp_path / "a.wav", np.zeros(SR, dtype=np.float32), SR)
    manifest.write_text('{"audio": "a.wav", "melody_id": "x"}\n{"audio": "b.wav"}\n')
    with pytest.raises(ValueError, match=r"m.jsonl line 2: .*'melody_id'"):
        ManifestMelodies(str(manifest), "train", sample_rate=SR, seconds=1.0)
    manifest.write_text('{"audio": "missing.wav", "melody_id": "x"}\n')
    with pytest.raises(FileNotFoundError, match=r"line 1: audio file .*missing.wav"):
        ManifestMelodies(str(manifest), "train", sample_rate=SR, seconds=1.0)
    good = _write_manifest(tmp_path, {"up": UP}, ["flute", "organ"])
    with pytest.raises(ValueError, match=">= 2 melody_ids"):
        ManifestMelodies(str(good), "train", sample_rate=SR, seconds=1.0)


def test_group_batches_are_seeded_and_labelled(tmp_path):
    manifest = _write_manifest(tmp_path, {"up": UP, "down": DOWN}, ["flute", "organ", "piano"])
    src = ManifestMelodies(str(manifest), "train", sample_rate=SR, seconds=1.0)
    a = list(MelodyGroupBatches(src, groups=2, views=3, batches=2, seed=5))
    b = list(MelodyGroupBatches(src, groups=2, views=3, batches=2, seed=5))
    assert len(a) == 2
    assert a[0]["audio"].shape == (6, SR)
    assert a[0]["label"].tolist() == [0, 0, 0, 1, 1, 1]
    assert all(torch.equal(x["audio"], y["audio"]) for x, y in zip(a, b, strict=True))


def test_demo_source_renders_distinct_instruments_of_one_tune():
    src = DemoMelodies("valid", sample_rate=SR, seconds=1.0)
    assert len(src) > 0
    train = {t.id for t in DemoMelodies("train", sample_rate=SR, seconds=1.0).tunes}
    assert not train & {t.id for t in src.tunes}  # held-out pieces
    views = src.group(0, 2, np.random.default_rng(0), instruments=["flute", "piano"])
    assert len(views) == 2 and all(v.shape == (SR,) and np.abs(v).max() > 0 for v in views)
    assert not np.allclose(views[0], views[1])


def test_tiny_fit_separates_two_melodies(tmp_path):
    import lightning as L

    torch.manual_seed(0)
    manifest = _write_manifest(
        tmp_path, {"up": UP, "down": DOWN}, ["flute", "organ", "piano", "marimba"]
    )
    data = MelodyDataModule(
        str(manifest), sample_rate=SR, window_seconds=1.0, groups_per_batch=2,
        views_per_group=4, batches_per_epoch=40, val_groups=2,
    )  # fmt: skip
    stage = MelodyStage(**TINY, margin=0.5, lr=3e-3, warmup_steps=5)

    def gap() -> float:
        src = ManifestMelodies(str(manifest), "train", sample_rate=SR, seconds=1.0)
        clips = torch.stack(
            [torch.from_numpy(src._load(c)[: int(1.5 * SR)]) for c in sum(src.groups, [])]
        )
        labels = torch.tensor([i for i, g in enumerate(src.groups) for _ in g])
        with torch.no_grad():
            stage.eval()
            emb = stage.melody(clips)  # 1.5 s: unseen crops of the clips
        stage.train()
        d = pairwise_distances(emb)
        same = (labels[:, None] == labels[None, :]) & ~torch.eye(len(labels), dtype=torch.bool)
        return float(d[labels[:, None] != labels[None, :]].min() - d[same].max())

    before = gap()
    trainer = L.Trainer(
        max_steps=40, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        limit_val_batches=0,
    )  # fmt: skip
    trainer.fit(stage, datamodule=data)
    after = gap()
    assert after > 0, (before, after)  # every cross-melody pair farther than every same pair
    assert after > before


def test_checkpoint_round_trip(tmp_path):
    import lightning as L

    stage = MelodyStage(**TINY)
    trainer = L.Trainer(accelerator="cpu", logger=False, max_steps=0)
    trainer.strategy.connect(stage)
    path = tmp_path / "m.ckpt"
    trainer.save_checkpoint(path)
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["hyper_parameters"]["embed_dim"] == 16
    model = load_melody(str(path))
    x = torch.randn(2, SR)
    assert torch.allclose(model(x), stage.melody.eval()(x), atol=1e-6)
    with pytest.raises(FileNotFoundError, match="melody checkpoint not found"):
        load_melody(str(tmp_path / "nope.ckpt"))
