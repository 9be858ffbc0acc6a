"""The memorization study driven by a real (tiny, random) semantic stage checkpoint."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from musiclm.datamodules.shards import ShardWriter, atomic_write_json

SEM_VOCAB, MULAN_LEVELS, MULAN_K, RATE = 12, 3, 8, 5.0


@pytest.fixture(scope="module")
def semantic_ckpt(tmp_path_factory):
    from musiclm.datamodules.token_spec import MulanSpec, TokenSpec
    from musiclm.stages.semantic import SemanticStage

    spec = TokenSpec(
        semantic_vocab=SEM_VOCAB,
        semantic_rate=RATE,
        codebook_size=16,
        num_quantizers=2,
        acoustic_rate=10.0,
        streams={"mulan": MulanSpec(MULAN_LEVELS, MULAN_K)},
    )
    torch.manual_seed(0)
    stage = SemanticStage(dim=32, depth=2, heads=2, spec=spec.to_dict())
    path = tmp_path_factory.mktemp("sem") / "semantic.ckpt"
    torch.save({"hyper_parameters": dict(stage.hparams), "state_dict": stage.state_dict()}, path)
    return path


def test_cached_greedy_continuation_equals_full_forward_argmax(semantic_ckpt):
    from musiclm.evaluation.memorization import semantic_lm_continue_fn
    from musiclm.stages.token_lm_stage import load_network

    cont = semantic_lm_continue_fn(str(semantic_ckpt))
    prefix, mulan = np.array([3, 1, 4, 1, 5]), np.array([2, 7, 1])
    cond = {"mulan": mulan}
    out = cont(prefix, cond, 6)
    assert out.shape == (6,) and out.min() >= 0 and out.max() < SEM_VOCAB
    np.testing.assert_array_equal(out, cont(prefix, cond, 6))  # deterministic
    # reference: no cache, the whole sequence through the network at every step
    net, layout = load_network(str(semantic_ckpt))
    seq = torch.tensor(prefix)[None]
    streams = {"semantic": seq, "mulan": torch.tensor(mulan)[None]}
    tokens = torch.cat([layout.prefix(streams), layout.target_to_input(seq)], 1)
    ref = []
    with torch.no_grad():
        for _ in range(6):
            nxt = net(tokens)[:, -1].argmax(-1, keepdim=True)
            ref.append(int(nxt))
            tokens = torch.cat([tokens, layout.target_to_input(nxt)], 1)
    assert out.tolist() == ref
    with pytest.raises(ValueError, match="conditioned on MuLan tokens"):
        cont(prefix, None, 2)


def test_evaluate_memorization_from_token_shards(semantic_ckpt, tmp_path):
    from safetensors.numpy import save_file

    from musiclm.commands import evaluate as cmd

    sys.path.insert(0, str(Path(__file__).parent))
    import soundfile as sf
    from eval_synth import synth_clip  # noqa: E402

    rng = np.random.default_rng(0)
    tokens = tmp_path / "tokens" / "train"
    with ShardWriter(tokens, prefix="tokens", max_count=4) as w:
        for i in range(6):
            w.write(
                {
                    "__key__": f"t{i}",
                    "semantic.npy": rng.integers(0, SEM_VOCAB, 40).astype(np.int32),
                    "mulan.npy": rng.integers(0, MULAN_K, MULAN_LEVELS).astype(np.int32),
                    "caption.txt": "x",
                    "json": {},
                }
            )
    atomic_write_json(
        tokens / "manifest.json",
        {
            "schema_version": 1,
            "kind": "tokens",
            "num_samples": 6,
            "shards": w.completed,
            "semantic": {"frame_rate": RATE, "vocab_size": SEM_VOCAB},
        },
    )
    save_file({"centroids": rng.standard_normal((SEM_VOCAB, 4))}, str(tmp_path / "km.safetensors"))
    gen = tmp_path / "gen"
    gen.mkdir()
    for i in range(2):
        sf.write(
            gen / f"g{i}.wav",
            synth_clip(instrument="sine", bpm=100, key=i, mode="major", seconds=1.0, seed=i),
            16000,
        )
    out = tmp_path / "eval"
    rc = cmd.main(
        [
            "--generated",
            str(gen),
            "--reference",
            str(gen),
            "--out",
            str(out),
            "--metrics",
            "",
            "--memorization",
            "--tokens",
            str(tokens),
            "--semantic-checkpoint",
            str(semantic_ckpt),
            "--centroids",
            str(tmp_path / "km.safetensors"),
            "--prompt-seconds",
            "0,2,6",
            "--continuation-seconds",
            "2",
        ]
    )
    assert rc == 0
    mem = json.loads((out / "metrics.json").read_text())["memorization"]
    rows = {r["prompt_seconds"]: r for r in mem["by_prompt_length"]}
    assert rows[0.0]["n"] == 6 and rows[2.0]["n"] == 6
    assert rows[6.0]["n"] == 6  # 30 + 10 tokens fit in 40
    # a random network does not reproduce random training tokens
    assert all(r["exact_match_rate"] == 0.0 for r in rows.values())
    assert mem["mismatched_pairs"] == 3 * 6 * 5
    assert "Memorization" in (out / "metrics.md").read_text()


def test_a_beat_conditioned_lm_continues_along_the_clips_clock(tmp_path):
    """The continuation equals the argmax of the network's full forward pass (positions and
    frame inputs as in training) over the clip's clock, which it needs."""

    from generation_helpers import save_checkpoint, tiny_spec, tiny_stage, with_streams

    from musiclm.datamodules.token_spec import BeatSpec
    from musiclm.evaluation.memorization import semantic_lm_continue_fn
    from musiclm.stages.token_lm_stage import target_logits

    spec = with_streams(tiny_spec(), beats=BeatSpec(4, 3, 60.0, 240.0))
    stage = tiny_stage("semantic", spec, beats=True, frame_conditioning=True,
                       aligned_positions=True)  # fmt: skip
    path = save_checkpoint(stage, tmp_path / "semantic.ckpt", seconds=2.0)
    cont = semantic_lm_continue_fn(str(path))
    prefix, mulan = np.array([3, 1, 4]), np.array([2, 7, 1])
    beat = np.arange(9) % 4
    out = cont(prefix, {"mulan": mulan, "beat": beat}, 5)
    assert out.shape == (5,)
    seq = torch.tensor(np.concatenate([prefix, out]))[None]
    streams = {"semantic": seq, "mulan": torch.tensor(mulan)[None],
               "beat": torch.tensor(beat[:8])[None]}  # fmt: skip
    built = stage.layout.sequence(streams)
    with torch.no_grad():
        logits = target_logits(stage.net, stage.layout, built.tokens, built.prefix_len)
    assert logits[0, 3:8].argmax(-1).tolist() == out.tolist()  # targets 3..7
    with pytest.raises(ValueError, match="beat clock"):
        cont(prefix, {"mulan": mulan}, 2)
