"""Tokenization throughput per codec / semantic tokenizer (batch 1 vs batched) and the offline
codec's reconstruction figures on held-out demo clips. One JSON line per figure.

    .venv/bin/python benchmarks/bench_tokenize.py [--quick] [--audio SHARDS/test \
        --codebooks stft_rvq.safetensors [--kmeans music_km.safetensors]] [--clips 8]

Without ``--audio`` it makes its inputs first, in a temporary folder: a demo corpus (120 clips
of 10 s, seed 0), its audio shards, the ``stft-rvq`` codec (8 x 1024) and the
``music-features`` k-means (512) fitted on the train split, the clips taken from the test
split. ``--quick`` makes them small (40 clips of 4 s, 4 x 64 levels, 32 clusters) and times
2 clips cropped to 2 s (a smoke run). Figures: docs/results.md.

DAC and EnCodec run their released architectures (DAC 16 kHz: 12 x 1024 at 50 Hz; EnCodec
24 kHz) with untrained weights: the same compute as the pretrained models, which cannot be
downloaded here.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import demo_shards, emit, machine, musiclm

DAC_16K = {
    "encoder_dim": 64,
    "encoder_rates": [2, 4, 5, 8],
    "decoder_dim": 1536,
    "decoder_rates": [8, 5, 4, 2],
    "n_codebooks": 12,
    "codebook_size": 1024,
    "codebook_dim": 8,
    "sample_rate": 16000,
}
ENCODEC_24K = {"sampling_rate": 24000}  # transformers' defaults = facebook/encodec_24khz
HUBERT_BASE = {"model_type": "hubert"}  # transformers' defaults = HuBERT base (12 layers)


def load_clips(audio: str, n: int, seconds: float | None = None) -> list[tuple[np.ndarray, int]]:
    from musiclm.datamodules.shards import iter_audio_samples

    out = []
    for s in iter_audio_samples(audio):
        keep = len(s["audio"]) if seconds is None else int(seconds * s["sample_rate"])
        out.append((s["audio"][:keep], s["sample_rate"]))
        if len(out) == n:
            break
    return out


def at_rate(clips, rate: int) -> torch.Tensor:
    from musiclm.tokenizers.fit_codec import resample

    waves = [resample(a, sr, rate) for a, sr in clips]
    n = min(w.shape[0] for w in waves)
    return torch.stack([w[:n] for w in waves])[:, None]  # (B, 1, T)


def throughput(name: str, fn, wav: torch.Tensor, rate: int, batch: int) -> None:
    fn(wav[:1, :, : rate // 2])  # warm-up
    t0 = time.perf_counter()
    for i in range(0, wav.shape[0], batch):
        fn(wav[i : i + batch])
    dt = time.perf_counter() - t0
    audio_s = wav.shape[0] * wav.shape[-1] / rate
    emit(figure="tokenize_throughput", plugin=name, batch=batch,
         audio_seconds=round(audio_s, 1), audio_s_per_s=round(audio_s / dt, 2))  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--audio", help="held-out audio shard split (default: made here)")
    p.add_argument("--codebooks", help="stft-rvq artifact (fit-codec), with --audio")
    p.add_argument("--kmeans", default=None, help="music-features k-means (fit-semantic)")
    p.add_argument("--clips", type=int, default=8)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--skip", default="", help="comma-separated plugins to leave out")
    p.add_argument("--quick", action="store_true", help="small inputs (a smoke run)")
    a = p.parse_args()
    if bool(a.audio) != bool(a.codebooks):
        p.error("give --audio and --codebooks together, or neither (both are then made here)")
    torch.set_num_threads(2)
    a.seconds = None
    if a.quick:
        a.clips, a.batch, a.seconds = 2, 2, 2.0
    emit(figure="meta", machine=machine(), threads=2, quick=a.quick)
    if a.audio:
        run(a)
        return
    with tempfile.TemporaryDirectory() as tmp:
        a.audio, a.codebooks, a.kmeans = make_inputs(Path(tmp), quick=a.quick)
        run(a)


def make_inputs(root: Path, *, quick: bool) -> tuple[str, str, str]:
    """A demo corpus' test shards, and the codec and k-means fitted on its train shards."""
    clips, seconds = (40, 4.0) if quick else (120, 10.0)
    levels, size, k = ("4", "64", "32") if quick else ("8", "1024", "512")
    shards = demo_shards(root, clips=clips, seconds=seconds, seed=0)
    codec, kmeans = root / "stft_rvq.safetensors", root / "music_km.safetensors"
    t0 = time.perf_counter()
    musiclm("prepare", "fit-codec", "--audio", str(shards / "train"), "--out", str(codec),
            "--levels", levels, "--codebook-size", size)  # fmt: skip
    emit(figure="fit_codec_seconds", value=round(time.perf_counter() - t0, 1), levels=int(levels),
         codebook_size=int(size), clips=clips, clip_seconds=seconds)  # fmt: skip
    musiclm("prepare", "fit-semantic", "--audio", str(shards / "train"), "--k", k,
            "--out", str(kmeans))  # fmt: skip
    return str(shards / "test"), str(codec), str(kmeans)


def run(a) -> None:
    from musiclm.tokenizers.base import build
    from musiclm.tokenizers.codecs.quality import chroma_cosine, multires_mel_distance

    clips = load_clips(a.audio, a.clips, a.seconds)
    skip = set(a.skip.split(","))

    rvq = build("codecs", "stft-rvq", codebooks=a.codebooks)
    wav = at_rate(clips, rvq.sample_rate)
    codes = rvq.encode(wav)
    for q in sorted({rvq.num_quantizers, 4, 1}, reverse=True):
        rec = rvq.decode(codes[:, :q], length=wav.shape[-1])
        x, y = wav[:, 0].numpy(), rec[:, 0].numpy()
        cc = [chroma_cosine(x[i], y[i], rvq.sample_rate) for i in range(len(x))]
        md = [multires_mel_distance(x[i], y[i], rvq.sample_rate) for i in range(len(x))]
        emit(figure="stft_rvq_reconstruction", levels=q, clips=len(x),
             chroma_cosine=round(float(np.mean(cc)), 4),
             chroma_cosine_min=round(float(np.min(cc)), 4),
             mel_distance=round(float(np.mean(md)), 4))  # fmt: skip

    plugins = {
        "stft-rvq": lambda: rvq,
        "dac": lambda: build("codecs", "dac", config=DAC_16K),
        "encodec-hf": lambda: build("codecs", "encodec-hf", config=ENCODEC_24K),
    }
    for name, make in plugins.items():
        if name in skip:
            continue
        codec = make()
        w = at_rate(clips, codec.sample_rate)
        for batch in (1, a.batch):
            throughput(name, codec.encode, w, codec.sample_rate, batch)
    semantic = {
        "music-features": lambda: build(
            "semantic_tokenizers", "music-features", **({"kmeans": a.kmeans} if a.kmeans else {})
        ),
        "hf-ssl": lambda: build("semantic_tokenizers", "hf-ssl", config=HUBERT_BASE),
    }
    for name, make in semantic.items():
        if name in skip:
            continue
        tok = make()
        fitted = name == "music-features" and a.kmeans  # hf-ssl: features (no k-means here)
        fn = tok.tokenize if fitted else tok.features
        w = at_rate(clips, tok.sample_rate)
        for batch in (1, a.batch):
            throughput(name, fn, w, tok.sample_rate, batch)


if __name__ == "__main__":
    main()
