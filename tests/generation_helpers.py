"""Tiny random stage checkpoints (2 layers, d=32) and a pipeline around them, for generation
tests. Nothing here is trained: tests check plumbing and exactness, not music."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
import yaml

from musiclm.datamodules.token_spec import MulanSpec, StreamSpec, TokenSpec
from musiclm.stages.coarse import CoarseStage
from musiclm.stages.fine import FineStage
from musiclm.stages.semantic import SemanticStage

STAGES = {"semantic": SemanticStage, "coarse": CoarseStage, "fine": FineStage}


def tiny_spec(*, mulan_levels: int = 3, num_quantizers: int = 4) -> TokenSpec:
    """Tiny token shards' spec: ``mulan_levels`` MuLan levels of 8 ids (0: no MuLan)."""
    spec = TokenSpec(
        semantic_vocab=16,
        semantic_rate=5.0,
        codebook_size=8,
        num_quantizers=num_quantizers,
        acoustic_rate=10.0,
    )
    return with_streams(spec, mulan=MulanSpec(mulan_levels, 8) if mulan_levels else None)


def with_streams(spec: TokenSpec, **streams: StreamSpec | None) -> TokenSpec:
    """``spec`` with these conditioning streams (by manifest section) added or replaced, or
    removed where None."""
    merged = {**spec.streams, **streams}
    return dataclasses.replace(spec, streams={k: v for k, v in merged.items() if v is not None})


def tiny_stage(stage: str, spec: TokenSpec | None = None, *, seed: int = 0, **kw):
    """A randomly initialised stage module (eval mode)."""
    torch.manual_seed(seed)
    args = {"dim": 32, "depth": 2, "heads": 4, "coarse_levels": 2, "cond_dropout": 0.1} | kw
    module = STAGES[stage](spec=(spec or tiny_spec()).to_dict(), **args)
    return module.eval()


def window_checker(net, layout, records: list):
    """A ``generate_window`` hook recording how far the decoder's logits are from the
    network's full forward pass over the finished window (positions and frame
    conditioning as training computes them); appends ``(max diff, tokens, prompt_len)``."""

    def hook(tokens, logits, prompt_len, cond_len):
        # the kept targets are recognised by their ids, independently of the decoder
        targets_in_prompt = tokens[0, :prompt_len] >= layout.offsets()[layout.target_stream]
        assert cond_len == prompt_len - int(targets_in_prompt.sum())
        inputs = tokens[:, :-1]
        with torch.no_grad():
            full = net(
                inputs,
                pos=layout.positions(cond_len, inputs.shape[1]),
                frame_ids=layout.frame_ids(inputs, cond_len),
            )[:, prompt_len - 1 :]
        assert full.shape == logits.shape
        records.append(((full - logits).abs().max().item(), tokens, prompt_len))

    return hook


def save_checkpoint(module, path: Path, *, seconds: float) -> Path:
    """What Lightning writes for a stage, reduced to the keys generation reads."""
    ckpt = {
        "hyper_parameters": dict(module.hparams),
        "datamodule_hyper_parameters": {"seconds": seconds},
        "state_dict": module.state_dict(),
    }
    torch.save(ckpt, path)
    return path


def random_input(layout, batch: int, frames: int, seed: int = 0) -> torch.Tensor:
    """A realistic input sequence: prefix ids then interleaved target ids."""
    g = torch.Generator().manual_seed(seed)
    spec = layout.spec
    mulan = spec.streams.get("mulan", MulanSpec(0, 1))
    streams = {
        "mulan": torch.randint(0, mulan.codebook, (batch, mulan.levels), generator=g),
        "semantic": torch.randint(0, spec.semantic_vocab, (batch, frames), generator=g),
        "acoustic": torch.randint(
            0, spec.codebook_size, (batch, spec.num_quantizers, frames), generator=g
        ),
    }
    return layout.sequence(streams).tokens


def write_pipeline(
    tmp: Path, *, contexts=(4.0, 2.0, 1.0), mulan: bool = False, codec=None, extra=None
) -> Path:
    """Three tiny stage checkpoints and a PIPELINE.yaml naming them (MuLan-conditioned, with
    conditioning dropout, when ``mulan``)."""
    spec = tiny_spec(mulan_levels=3 if mulan else 0, num_quantizers=4)
    stages = {}
    for (name, seconds), seed in zip(zip(STAGES, contexts, strict=True), range(3), strict=True):
        module = tiny_stage(name, spec, seed=seed, cond_dropout=0.1 if mulan else 0.0)
        save_checkpoint(module, tmp / f"{name}.ckpt", seconds=seconds)
        stages[name] = {"checkpoint": f"{name}.ckpt"}
    data = {"codec": codec or {"name": "dac", "args": {"config": TINY_DAC}}, "stages": stages}
    if mulan:
        data["mulan"] = write_mulan(tmp)
    data.update(extra or {})
    path = tmp / "PIPELINE.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


# an untrained DAC at 1.6 kHz with a 160-sample hop: 10 Hz frames, 4 levels of 8 entries
TINY_DAC = {
    "sample_rate": 1600,
    "encoder_dim": 4,
    "encoder_rates": [2, 4, 4, 5],
    "decoder_dim": 32,
    "decoder_rates": [5, 4, 4, 2],
    "n_codebooks": 4,
    "codebook_size": 8,
    "codebook_dim": 4,
}


def write_mulan(tmp: Path) -> dict[str, str]:
    """A tiny random MuLan checkpoint and a 3 x 8 conditioning RVQ fitted to random vectors."""
    from mulan_helpers import TINY

    from musiclm.conditioning.conditioning_rvq import ConditioningRVQ, mulan_fingerprint
    from musiclm.stages.mulan import MulanStage

    torch.manual_seed(0)
    stage = MulanStage(**TINY)
    ckpt = tmp / "mulan.ckpt"
    torch.save({"hyper_parameters": dict(stage.hparams), "state_dict": stage.state_dict()}, ckpt)
    from musiclm.models.mulan import load_mulan

    emb = torch.nn.functional.normalize(torch.randn(64, TINY["embed_dim"]), dim=-1)
    meta = {"mulan_fingerprint": mulan_fingerprint(load_mulan(str(ckpt)))}
    ConditioningRVQ.fit(emb, levels=3, codebook_size=8, meta=meta).save(tmp / "rvq.safetensors")
    return {"checkpoint": "mulan.ckpt", "rvq": "rvq.safetensors"}


def write_semantic_tokenizer(tmp: Path) -> dict:
    """``music-features`` at 1.6 kHz / 5 Hz with 16 centroids picked from random audio."""
    from musiclm.tokenizers.artifacts import save_artifact
    from musiclm.tokenizers.base import build
    from musiclm.tokenizers.semantic.common import ARTIFACT_KIND

    args = {"sample_rate": 1600, "hop": 320, "n_fft": 256}
    tok = build("semantic_tokenizers", "music-features", **args)
    feats = tok.features(
        0.1 * torch.randn(1, 1, 1600 * 4, generator=torch.Generator().manual_seed(0))
    )
    meta = {"kind": ARTIFACT_KIND, "features_fingerprint": tok.features_fingerprint}
    save_artifact(tmp / "km.safetensors", {"centroids": feats[0, :16].clone()}, meta)
    return {"name": "music-features", "args": {**args, "kmeans": "km.safetensors"}}
