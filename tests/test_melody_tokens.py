"""Melody tokens: RVQ artifact, conditioner shapes, fingerprint checks, the fit command."""

import json

import numpy as np
import pytest
import torch

from musiclm.conditioning.melody_tokens import MelodyConditioner, MelodyRVQ, melody_fingerprint
from musiclm.datamodules.shards import ShardWriter, atomic_write_json, encode_flac

SR = 8000
TINY = dict(
    sample_rate=SR, n_fft=1024, hop_length=160, min_midi=36, max_midi=96, patch_frames=4,
    dim=32, depth=1, heads=2, embed_dim=16, window_s=1.0, hop_s=0.5, input_s=2.0,
)  # fmt: skip


@pytest.fixture
def checkpoint(tmp_path):
    import lightning as L

    from musiclm.stages.melody import MelodyStage

    torch.manual_seed(0)
    stage = MelodyStage(**TINY)
    trainer = L.Trainer(accelerator="cpu", logger=False, max_steps=0)
    trainer.strategy.connect(stage)
    path = tmp_path / "melody.ckpt"
    trainer.save_checkpoint(path)
    return str(path), stage.melody.eval()


def test_conditioner_tokens_have_the_configured_shape(tmp_path, checkpoint):
    path, net = checkpoint
    emb = net.embed_windows(torch.randn(20, 1, 2 * SR)).flatten(0, 1)
    assert net.num_windows == 3  # windows at 0, 0.5, 1.0 s over 2 s
    rvq = MelodyRVQ.fit(
        emb,
        levels=4,
        codebook_size=8,
        iters=5,
        meta={"melody_fingerprint": melody_fingerprint(net)},
    )
    rvq.save(tmp_path / "rvq.safetensors")
    cond = MelodyConditioner.from_files(path, str(tmp_path / "rvq.safetensors"))
    assert cond.num_tokens == 3 * 4 and cond.sample_rate == SR
    for seconds in (0.6, 2.0, 5.0):  # shorter (looped), exact, longer (cut)
        toks = cond.tokens(torch.randn(2, 1, int(seconds * SR)))
        assert toks.shape == (2, 12) and toks.dtype == torch.long
        assert int(toks.min()) >= 0 and int(toks.max()) < 8
    wav = torch.randn(1, 1, 2 * SR)
    assert torch.equal(cond.tokens(wav), cond.tokens(wav))
    # window-major: the tokens of window w are the RVQ of that window's embedding
    per_window = rvq.tokens(cond.embed(wav)[0])  # (3, 4)
    assert torch.equal(cond.tokens(wav)[0], per_window.flatten())
    # a clip cut to input_s gives the same tokens as the longer clip
    long = torch.cat([wav, torch.randn(1, 1, SR)], dim=-1)
    assert torch.equal(cond.tokens(long), cond.tokens(wav))
    assert cond.fingerprint().startswith("melody:") and "+melody_rvq:" in cond.fingerprint()


def test_rvq_refuses_another_network_and_another_kind(tmp_path, checkpoint):
    from musiclm.conditioning.conditioning_rvq import ConditioningRVQ

    path, net = checkpoint
    emb = torch.nn.functional.normalize(torch.randn(64, 16), dim=-1)
    MelodyRVQ.fit(emb, levels=2, codebook_size=4, meta={"melody_fingerprint": "melody:0"}).save(
        tmp_path / "other.safetensors"
    )
    with pytest.raises(ValueError, match="refit it with `musiclm prepare melody-rvq`"):
        MelodyConditioner.from_files(path, str(tmp_path / "other.safetensors"))
    ConditioningRVQ.fit(emb, levels=2, codebook_size=4).save(tmp_path / "mulan.safetensors")
    with pytest.raises(ValueError, match="expected 'melody_rvq'"):
        MelodyRVQ.load(tmp_path / "mulan.safetensors")
    with pytest.raises(ValueError, match="melody RVQ dim 8 != melody embed_dim 16"):
        MelodyConditioner(net, MelodyRVQ.fit(torch.randn(64, 8), levels=1, codebook_size=4))


def test_more_levels_quantise_better():
    emb = torch.nn.functional.normalize(
        torch.randn(400, 16, generator=torch.Generator().manual_seed(1)), dim=-1
    )
    errors = MelodyRVQ.fit(emb, levels=4, codebook_size=16, iters=10).meta["quantization_mse"]
    assert all(b < a for a, b in zip(errors, errors[1:], strict=False))


def test_prepare_melody_rvq_command(tmp_path, checkpoint, capsys):
    from musiclm.commands.prepare import main as prepare_main

    path, _ = checkpoint
    shards = tmp_path / "shards"
    rng = np.random.default_rng(0)
    with ShardWriter(shards, prefix="train", max_count=4) as w:
        for i in range(6):
            y = (0.1 * rng.standard_normal(int(SR * (1.5 + 0.3 * i)))).astype(np.float32)
            w.write(
                {"__key__": f"c{i}", "audio.flac": encode_flac(y, SR), "caption.txt": "x",
                 "json": {}},
                seconds=len(y) / SR,
            )  # fmt: skip
    atomic_write_json(
        shards / "manifest.json", {"schema_version": 1, "sample_rate": SR, "shards": w.completed}
    )
    out = tmp_path / "melody_rvq.safetensors"
    rc = prepare_main(
        ["melody-rvq", "--checkpoint", path, "--audio", str(shards), "--out", str(out),
         "--levels", "3", "--codebook-size", "4", "--iters", "3"]
    )  # fmt: skip
    assert rc == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["windows"] == 6 * 3
    rvq = MelodyRVQ.load(out)
    assert (rvq.num_levels, rvq.codebook_size, rvq.meta["num_windows"]) == (3, 4, 3)
    assert MelodyConditioner.from_files(path, str(out)).tokens(torch.randn(1, 1, SR)).shape == (
        1,
        9,
    )
