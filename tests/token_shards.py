"""Token shards of random tokens and their manifest, written into a test's ``tmp_path`` (also
read by ``benchmarks/bench_train.py``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from musiclm.datamodules.shards import ShardWriter, atomic_write_json
from musiclm.datamodules.token_spec import MulanSpec, PluginSpec, TokenSpec


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
        codec_name="synthetic",
        codec_fingerprint="synthetic-codec",
        semantic_name="synthetic",
        semantic_fingerprint="synthetic-semantic",
        streams={"mulan": MulanSpec(3, 8, "synthetic-mulan")},
    )
    mulan, melody, clock = (spec.streams.get(s) for s in ("mulan", "melody", "beats"))
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
            if mulan:
                sample["mulan.npy"] = rng.integers(0, mulan.codebook, mulan.levels)
            if melody:
                windows = 1 + int(max(0.0, lengths[index] - melody.hop) // melody.hop)
                sample["melody.npy"] = rng.integers(0, melody.codebook, (windows, melody.levels))
            if clock:
                # a steady clock at a random tempo; the semantic token follows its phase, so
                # a beat-conditioned LM has a rule to learn
                tempo = int(rng.integers(0, clock.tempo_bins))
                bpm = clock.bin_bpm(tempo)
                beat = clock.clock(bpm, n_s, spec.semantic_rate, rng.uniform())
                semantic[:] = beat % spec.semantic_vocab
                sample["beat.npy"] = beat.astype(np.int16)
                sample["tempo.npy"] = np.array([tempo], dtype=np.int16)
                if clock.tempo_input_dim:
                    # the embedding states the tempo: a predictor can learn it
                    emb = rng.normal(0, 0.1, clock.tempo_input_dim)
                    emb[tempo % clock.tempo_input_dim] += 1.0
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
        if not mulan
        else {
            "checkpoint": "synthetic.ckpt",
            "rvq": "synthetic-rvq",
            "fingerprint": mulan.fingerprint,
            "num_levels": mulan.levels,
            "codebook_size": mulan.codebook,
        },
    }
    if melody:
        manifest["melody"] = {
            "fingerprint": melody.fingerprint,
            "num_windows": melody.windows,
            "num_levels": melody.levels,
            "codebook_size": melody.codebook,
            "hop_seconds": melody.hop,
        }
    if clock:
        manifest["beats"] = clock.to_manifest(spec.semantic_rate)
    for section, values in spec.streams.items():  # a plugin stream's section
        if isinstance(values, PluginSpec):
            manifest[section] = values.values
    atomic_write_json(directory / "manifest.json", manifest)
    return spec
