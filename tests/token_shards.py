"""Token shards of random tokens and their manifest, written into a test's ``tmp_path`` (also
read by ``benchmarks/bench_train.py``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from musiclm.datamodules.shards import ShardWriter, atomic_write_json
from musiclm.datamodules.token_spec import TokenSpec


def write_synthetic_shards(
    directory: str | Path,
    *,
    sizes: list[int],
    seconds: float | list[float] = 4.0,
    spec: TokenSpec | None = None,
    seed: int = 0,
) -> TokenSpec:
    """Token shards of random tokens (``sizes[i]`` samples in shard i) and their manifest.

    Clips are ``seconds`` long (one value or one per sample); the
    acoustic level-0 token is ``semantic frame % codebook_size`` so aligned crops can be
    checked. Returns the spec written to the manifest.
    """
    spec = spec or TokenSpec(
        semantic_vocab=32,
        semantic_rate=5.0,
        codebook_size=16,
        num_quantizers=4,
        acoustic_rate=10.0,
        mulan_levels=3,
        mulan_codebook=8,
        codec_name="synthetic",
        codec_fingerprint="synthetic-codec",
        semantic_name="synthetic",
        semantic_fingerprint="synthetic-semantic",
        mulan_fingerprint="synthetic-mulan",
    )
    rng = np.random.default_rng(seed)
    directory = Path(directory)
    total = sum(sizes)
    lengths = [seconds] * total if isinstance(seconds, int | float) else list(seconds)
    shards, index = [], 0
    for shard, size in enumerate(sizes):
        writer = ShardWriter(directory, prefix="tokens", max_count=max(size, 1), start_index=shard)
        for _ in range(size):
            n_s = round(lengths[index] * spec.semantic_rate)
            n_a = round(lengths[index] * spec.acoustic_rate)
            semantic = rng.integers(0, spec.semantic_vocab, n_s)
            acoustic = rng.integers(0, spec.codebook_size, (spec.num_quantizers, n_a))
            sample = {
                "__key__": f"clip{index:05d}",
                "caption.txt": f"synthetic clip {index}",
                "json": {"seconds": lengths[index]},
            }
            if spec.mulan_levels:
                sample["mulan.npy"] = rng.integers(0, spec.mulan_codebook, spec.mulan_levels)
            if spec.melody_levels:
                windows = 1 + int(max(0.0, lengths[index] - spec.melody_hop) // spec.melody_hop)
                sample["melody.npy"] = rng.integers(
                    0, spec.melody_codebook, (windows, spec.melody_levels)
                )
            if spec.beat_spec is not None:
                # a steady clock at a random tempo; the semantic token follows its phase, so
                # a beat-conditioned LM has a rule to learn
                tempo = int(rng.integers(0, spec.tempo_bins))
                bpm = spec.beat_spec.bin_bpm(tempo)
                beat = spec.beat_spec.clock(bpm, n_s, spec.semantic_rate, rng.uniform())
                semantic[:] = beat % spec.semantic_vocab
                sample["beat.npy"] = beat.astype(np.int16)
                sample["tempo.npy"] = np.array([tempo], dtype=np.int16)
                if spec.tempo_input_dim:
                    # the embedding states the tempo: a predictor can learn it
                    emb = rng.normal(0, 0.1, spec.tempo_input_dim)
                    emb[tempo % spec.tempo_input_dim] += 1.0
                    sample["mulan_embedding.npy"] = emb.astype(np.float16)
            # level 0 at acoustic frame t mirrors the semantic frame covering t
            frames = (np.arange(n_a) * spec.semantic_rate / spec.acoustic_rate).astype(int)
            acoustic[0] = semantic[frames] % spec.codebook_size
            sample["semantic.npy"] = semantic.astype(np.int16)
            sample["acoustic.npy"] = acoustic.astype(np.int16)
            writer.write(sample, seconds=lengths[index])
            index += 1
        writer.close()
        shards += writer.completed
    spec_dict = spec.to_dict()
    manifest = {
        "schema_version": 1,
        "kind": "tokens",
        "num_samples": total,
        "total_seconds": float(sum(lengths)),
        "shards": shards,
        "skipped": [],
        "codec": {
            "name": spec.codec_name,
            "args": {},
            "fingerprint": spec.codec_fingerprint,
            "sample_rate": 16000,
            "frame_rate": spec.acoustic_rate,
            "num_quantizers": spec.num_quantizers,
            "codebook_size": spec.codebook_size,
        },
        "semantic": {
            "name": spec.semantic_name,
            "args": {},
            "fingerprint": spec.semantic_fingerprint,
            "sample_rate": 16000,
            "frame_rate": spec.semantic_rate,
            "vocab_size": spec.semantic_vocab,
        },
        "mulan": None
        if not spec.mulan_levels
        else {
            "checkpoint": "synthetic.ckpt",
            "rvq": "synthetic-rvq",
            "fingerprint": spec_dict["mulan_fingerprint"],
            "num_levels": spec.mulan_levels,
            "codebook_size": spec.mulan_codebook,
        },
    }
    if spec.melody_levels:
        manifest["melody"] = {
            "fingerprint": spec.melody_fingerprint,
            "num_windows": spec.melody_windows,
            "num_levels": spec.melody_levels,
            "codebook_size": spec.melody_codebook,
            "hop_seconds": spec.melody_hop,
        }
    if spec.beat_spec is not None:
        manifest["beats"] = spec.beat_spec.to_manifest(spec.semantic_rate, spec.tempo_input_dim)
    atomic_write_json(directory / "manifest.json", manifest)
    return spec
