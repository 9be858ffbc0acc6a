"""The conditioning list that a stage's switches describe, for configs and checkpoints made
before stages took a ``conditioning`` list (their hyper-parameters hold the switches only).

Translated when a layout is built, so an old checkpoint rebuilds exactly the network it was
trained as: the vocabulary order (MuLan, melody, beat clock, upstream stream) and the fuse
modes are those the switches meant.
"""

from __future__ import annotations

from musiclm.conditioning.stream import ALIGNED, FRAME_SUM, PREFIX, Fuse
from musiclm.datamodules.token_spec import TokenSpec
from musiclm.stage_names import COARSE, FINE, SEMANTIC


def legacy_conditioning(
    stage: str,
    spec: TokenSpec,
    *,
    fine_sees_mulan: bool = False,
    melody: bool = False,
    beats: bool = False,
    frame_conditioning: bool = False,
    aligned_positions: bool = False,
) -> tuple[Fuse, ...]:
    """The conditioning list that the switches of older configs and checkpoints describe:
    MuLan tokens (left out when the shards carry none, and by the fine stage unless
    ``fine_sees_mulan``), melody, the beat clock, then the upstream stream; ``frame_sum`` and
    ``aligned`` on the timed stream (on the semantic stage's MuLan tokens without one)."""
    if melody and stage == FINE:
        raise ValueError("melody conditioning is for the semantic and coarse stages")
    if melody and "melody" not in spec.streams:
        raise ValueError(
            f"{stage} stage is built with melody conditioning but the token shards "
            "carry no melody tokens: run `musiclm prepare tokens ... --melody CKPT "
            "--melody-rvq RVQ`, or set melody: false"
        )
    if beats and stage != SEMANTIC:
        raise ValueError("beat conditioning is for the semantic stage")
    if beats and "beats" not in spec.streams:
        raise ValueError(
            "semantic stage is built with beat conditioning but the token shards carry no "
            "beat clock: run `musiclm prepare tokens ... --beats`, or set beats: false"
        )
    summed = (FRAME_SUM,) if frame_conditioning else ()
    timed = (PREFIX, *summed, *((ALIGNED,) if aligned_positions else ()))
    out = []
    if "mulan" in spec.streams and (stage != FINE or fine_sees_mulan):
        mulan_summed = stage == SEMANTIC and not beats
        out.append(Fuse("mulan", (PREFIX, *summed) if mulan_summed else (PREFIX,)))
    elif frame_conditioning and stage == SEMANTIC and not beats:
        raise ValueError(
            "frame_conditioning on the semantic stage adds the MuLan tokens to every input, "
            "but the token shards carry no MuLan tokens"
        )
    if melody:
        out.append(Fuse("melody"))
    if beats:
        out.append(Fuse("beat", timed))
    upstream = {COARSE: "semantic", FINE: "coarse"}.get(stage)
    if upstream:
        out.append(Fuse(upstream, timed))
    return tuple(out)
