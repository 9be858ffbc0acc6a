"""Conditioning RVQ: residual k-means round trip, safe artifacts, MulanConditioner, the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from mulan_helpers import SAMPLE_RATE, TINY, ToneDataset

from musiclm.commands.fit_rvq import mulan_main as main
from musiclm.conditioning.conditioning_rvq import (
    ConditioningRVQ,
    MissingEmbeddingsError,
    MulanConditioner,
    neighbour_mean,
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Tiny models gain nothing from more threads; on a shared CPU they mostly spin.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _embeddings(n: int = 512, d: int = 16, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(12, d, generator=gen)
    x = centres[torch.randint(12, (n,), generator=gen)] + 0.3 * torch.randn(n, d, generator=gen)
    return F.normalize(x, dim=-1)


@pytest.fixture(scope="module")
def rvq() -> ConditioningRVQ:
    return ConditioningRVQ.fit(_embeddings(), levels=4, codebook_size=16, iters=10)


def test_more_levels_give_smaller_error(rvq):
    errors = rvq.meta["quantization_mse"]
    assert len(errors) == 4
    assert all(b <= a + 1e-6 for a, b in zip(errors, errors[1:], strict=False))
    assert errors[-1] < 0.5 * errors[0]
    held_out = _embeddings(seed=1)
    assert rvq.quantization_errors(held_out)[-1] < rvq.quantization_errors(held_out)[0]


def test_tokens_and_decode_round_trip(rvq):
    emb = _embeddings(8, seed=2)
    toks = rvq.tokens(emb)
    assert toks.shape == (8, 4) and toks.dtype == torch.long
    assert int(toks.min()) >= 0 and int(toks.max()) < 16
    # the first level is the nearest codeword; the decode is the sum of the chosen codewords
    nearest = torch.cdist(emb, rvq.codebooks[0]).argmin(1)
    assert torch.equal(toks[:, 0], nearest)
    chosen = sum(rvq.codebooks[level][toks[:, level]] for level in range(4))
    assert torch.allclose(rvq.decode(toks), chosen, atol=1e-6)
    err_full = (emb - rvq.decode(toks)).pow(2).sum(1).mean()
    err_one = (emb - rvq.decode(toks[:, :1])).pow(2).sum(1).mean()
    assert err_full < err_one
    with pytest.raises(ValueError, match=r"\(B, 16\)"):
        rvq.tokens(torch.zeros(2, 7))


def test_save_load_is_exact_and_pickle_free(rvq, tmp_path):
    path = tmp_path / "rvq.safetensors"
    rvq.save(path)
    again = ConditioningRVQ.load(path)
    assert again.fingerprint() == rvq.fingerprint()
    emb = _embeddings(8, seed=3)
    assert torch.equal(again.tokens(emb), rvq.tokens(emb))
    report = json.loads((tmp_path / "rvq.safetensors.json").read_text())
    assert report["fingerprint"] == rvq.fingerprint() and len(report["quantization_mse"]) == 4
    assert b"pickle" not in path.read_bytes()[:2048]
    data = bytearray(path.read_bytes())
    data[-4:] = b"\x00\x01\x02\x03"  # flip codebook bytes
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="fingerprint"):
        ConditioningRVQ.load(path)
    with pytest.raises(FileNotFoundError):
        ConditioningRVQ.load(tmp_path / "nope.safetensors")


def test_kept_embeddings_round_trip_and_leave_the_fingerprint(rvq, tmp_path):
    emb = _embeddings()
    kept = ConditioningRVQ.fit(emb, levels=4, codebook_size=16, iters=10, keep_embeddings=1000)
    # the tokens do not depend on the kept embeddings, so neither does the fingerprint
    assert kept.fingerprint() == rvq.fingerprint() and rvq.audio_embeddings is None
    assert torch.equal(kept.audio_embeddings, emb)
    kept.save(tmp_path / "rvq.safetensors")
    again = ConditioningRVQ.load(tmp_path / "rvq.safetensors")
    assert again.fingerprint() == rvq.fingerprint()
    torch.testing.assert_close(again.audio_embeddings, emb, atol=1e-3, rtol=0)  # fp16 on disk
    # more embeddings than asked for: a seeded sample of distinct rows of them
    sample = ConditioningRVQ.fit(emb, levels=1, codebook_size=16, iters=2, keep_embeddings=100)
    same = ConditioningRVQ.fit(emb, levels=1, codebook_size=16, iters=2, keep_embeddings=100)
    assert sample.audio_embeddings.shape == (100, 16)
    assert torch.equal(sample.audio_embeddings, same.audio_embeddings)
    rows = (sample.audio_embeddings[:, None] == emb[None]).all(-1)  # (100, 512)
    assert bool(rows.any(1).all()) and len(set(rows.int().argmax(1).tolist())) == 100
    with pytest.raises(ValueError, match=r"\(N, 16\)"):
        ConditioningRVQ(rvq.codebooks, audio_embeddings=torch.zeros(3, 5))


def test_neighbour_mean_is_the_mean_of_the_k_most_similar_rows():
    bank = F.normalize(torch.randn(50, 8, generator=torch.Generator().manual_seed(0)), dim=-1)
    query = 3.0 * bank[[7, 21]] + 0.01  # unnormalised: only directions count
    for k in (1, 4):
        got = neighbour_mean(query, bank, k)
        for row in range(2):
            cos = F.cosine_similarity(query[row][None], bank)
            top = cos.argsort(descending=True)[:k]
            want = F.normalize(bank[top].mean(0), dim=0)
            torch.testing.assert_close(got[row], want)
    torch.testing.assert_close(neighbour_mean(query, bank, 1), bank[[7, 21]])
    # more neighbours than rows: the mean of them all
    everything = F.normalize(bank.mean(0), dim=0).expand(2, -1)
    torch.testing.assert_close(neighbour_mean(query, bank, 500), everything)


def test_text_neighbours_quantise_a_prompt_from_its_nearest_audio(tmp_path):
    ckpt = _checkpoint(tmp_path)
    plain = MulanConditioner.from_files(ckpt, _fitted_rvq(tmp_path, ckpt, keep=0))
    with_bank = _fitted_rvq(tmp_path, ckpt, keep=64)
    cond = MulanConditioner.from_files(ckpt, with_bank, text_neighbours=3)
    texts = ["a piano melody", "a harp melody"]
    bank = cond.rvq.audio_embeddings
    want = neighbour_mean(cond.embed_text(texts), bank, 3)
    torch.testing.assert_close(cond.text_condition(texts), want)
    assert torch.equal(cond.text_tokens(texts), cond.rvq.tokens(want))
    # off (0): the text embedding itself, as MusicLM quantises it
    torch.testing.assert_close(plain.text_condition(texts), plain.embed_text(texts))
    assert torch.equal(plain.text_tokens(texts), plain.rvq.tokens(plain.embed_text(texts)))
    with pytest.raises(MissingEmbeddingsError, match="rvq0.safetensors holds no audio"):
        MulanConditioner.from_files(ckpt, str(tmp_path / "rvq0.safetensors"), text_neighbours=2)
    with pytest.raises(ValueError, match=">= 0"):
        MulanConditioner.from_files(ckpt, with_bank, text_neighbours=-1)


def _fitted_rvq(tmp_path, ckpt: str, *, keep: int) -> str:
    """A 2 x 4 RVQ over random unit vectors, fitted for the MuLan at ``ckpt``."""
    from musiclm.conditioning.conditioning_rvq import mulan_fingerprint
    from musiclm.models.mulan import load_mulan

    meta = {"mulan_fingerprint": mulan_fingerprint(load_mulan(ckpt))}
    rvq = ConditioningRVQ.fit(
        _embeddings(64, d=32), levels=2, codebook_size=4, meta=meta, keep_embeddings=keep
    )
    path = tmp_path / f"rvq{keep}.safetensors"
    rvq.save(path)
    return str(path)


def test_too_few_embeddings_is_a_clear_error():
    with pytest.raises(ValueError, match="smaller --codebook-size"):
        ConditioningRVQ.fit(_embeddings(10), levels=2, codebook_size=64)


def _checkpoint(tmp_path) -> str:
    from musiclm.stages.mulan import MulanStage

    torch.manual_seed(0)
    stage = MulanStage(**TINY)
    path = tmp_path / "mulan.ckpt"
    torch.save({"hyper_parameters": dict(stage.hparams), "state_dict": stage.state_dict()}, path)
    return str(path)


def _audio_shards(directory) -> None:
    from musiclm.datamodules.shards import ShardWriter, atomic_write_json, encode_flac

    ds = ToneDataset(24, 1.0, seed=5)
    with ShardWriter(directory, prefix="train", max_count=10) as w:
        for i in range(len(ds)):
            item = ds[i]
            audio = np.clip(item["audio"].numpy(), -1, 1)
            w.write(
                {
                    "__key__": f"clip{i:03d}",
                    "audio.flac": encode_flac(audio, SAMPLE_RATE),
                    "caption.txt": item["caption"],
                    "json": item["meta"],
                },
                seconds=1.0,
            )
    atomic_write_json(
        directory / "manifest.json",
        {"schema_version": 1, "sample_rate": SAMPLE_RATE, "shards": w.completed},
    )


def test_cli_fits_an_rvq_that_the_conditioner_uses(tmp_path, capsys):
    ckpt = _checkpoint(tmp_path)
    shards = tmp_path / "shards"
    _audio_shards(shards)
    out = tmp_path / "rvq.safetensors"
    argv = ["--checkpoint", ckpt, "--audio", str(shards), "--out", str(out)]
    assert main([*argv, "--levels", "3", "--codebook-size", "4", "--device", "cpu"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["clips"] == 24 and len(printed["quantization_mse_by_levels"]) == 3
    assert printed["kept_embeddings"] == 24  # what text_neighbours reads at generation

    cond = MulanConditioner.from_files(ckpt, str(out))
    assert (cond.sample_rate, cond.num_levels, cond.codebook_size) == (SAMPLE_RATE, 3, 4)
    wav = ToneDataset(2, 1.0, seed=9)[0]["audio"][None, None]  # (1, 1, T)
    toks = cond.audio_tokens(wav)
    assert toks.shape == (1, 3) and toks.dtype == torch.long
    assert torch.equal(toks, cond.rvq.tokens(cond.embed_audio(wav)))
    text = cond.text_tokens(["a piano melody", "a harp melody"])
    assert text.shape == (2, 3) and int(text.max()) < 4
    assert cond.embed_text(["x"]).shape == (1, 32)
    fp = cond.fingerprint()
    assert fp.startswith("mulan:") and cond.rvq.fingerprint() in fp
    clips = torch.stack([ToneDataset(24, 1.0, seed=5)[i]["audio"] for i in range(24)])
    torch.testing.assert_close(
        cond.rvq.audio_embeddings, cond.embed_audio(clips[:, None]), atol=2e-3, rtol=0
    )


def test_conditioner_refuses_an_rvq_fitted_on_another_mulan(tmp_path):
    ckpt = _checkpoint(tmp_path)
    rvq = ConditioningRVQ.fit(
        _embeddings(64, d=32), levels=1, codebook_size=4, meta={"mulan_fingerprint": "mulan:0"}
    )
    rvq.save(tmp_path / "rvq.safetensors")
    with pytest.raises(ValueError, match="refit"):
        MulanConditioner.from_files(ckpt, str(tmp_path / "rvq.safetensors"))
