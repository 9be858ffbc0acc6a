"""Conditioning streams as objects: the registry, the ``conditioning`` list of a stage and its
translation from the switches of older configs and checkpoints, and a stream defined only
under ``tests/`` (``genre_stream.py``) that a stage trains and generates with."""

from __future__ import annotations

import lightning as L
import pytest
import torch
import yaml
from generation_helpers import with_streams
from genre_stream import GENRES, genre_of_key, genre_of_text
from token_shards import write_synthetic_shards

from musiclm import registry
from musiclm.conditioning.registry import (
    available_streams,
    build_stream,
    register_stream,
    stream_class,
)
from musiclm.conditioning.request import GenerationRequest, RequestStream, Streams
from musiclm.conditioning.stream import ConditioningStream, Fuse, RequestWindow
from musiclm.datamodules.token_spec import BeatSpec, MelodySpec, MulanSpec, TokenSpec
from musiclm.datamodules.tokens import TokenDataModule
from musiclm.generation.pipeline_file import StageEntry
from musiclm.generation.sampling import SamplingConfig
from musiclm.generation.stage_runner import load_stage, prepare_streams
from musiclm.lightning_cli import MusicLMCLI
from musiclm.stages.semantic import SemanticStage
from musiclm.stages.token_layout import TokenLayout
from musiclm.stages.token_lm_stage import layout_from_hparams, load_network

SPEC = TokenSpec(
    semantic_vocab=16,
    semantic_rate=5.0,
    codebook_size=8,
    num_quantizers=4,
    acoustic_rate=10.0,
    streams={"mulan": MulanSpec(3, 8), "beats": BeatSpec(8, 6, 60.0, 240.0)},
)

# legacy switches -> the list they stand for
LEGACY = [
    ("semantic", {}, [{"stream": "mulan"}]),
    (
        "semantic",
        {"frame_conditioning": True},
        [{"stream": "mulan", "fuse": ["prefix", "frame_sum"]}],
    ),
    (
        "semantic",
        {"beats": True, "frame_conditioning": True, "aligned_positions": True},
        [{"stream": "mulan"}, {"stream": "beat", "fuse": ["frame_sum", "aligned"]}],
    ),
    (
        "coarse",
        {"frame_conditioning": True, "aligned_positions": True},
        [{"stream": "mulan"}, {"stream": "semantic", "fuse": ["frame_sum", "aligned"]}],
    ),
    ("fine", {}, [{"stream": "coarse"}]),
    (
        "fine",
        {"fine_sees_mulan": True, "aligned_positions": True},
        [{"stream": "mulan"}, {"stream": "coarse", "fuse": "aligned"}],
    ),
]


def batch(seed: int = 0, frames: int = 10) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "mulan": torch.randint(
            0, SPEC.streams["mulan"].codebook, (2, SPEC.streams["mulan"].levels), generator=g
        ),
        "beat": torch.randint(0, SPEC.streams["beats"].phase_bins, (2, frames), generator=g),
        "semantic": torch.randint(0, SPEC.semantic_vocab, (2, frames), generator=g),
        "acoustic": torch.randint(0, 8, (2, 4, 2 * frames), generator=g),
    }


@pytest.mark.parametrize("stage,switches,listed", LEGACY)
def test_the_switches_of_older_configs_are_a_conditioning_list(stage, switches, listed):
    old = TokenLayout(stage=stage, spec=SPEC, coarse_levels=2, **switches)
    new = TokenLayout(stage=stage, spec=SPEC, coarse_levels=2, conditioning=listed)
    assert old.fuses == new.fuses
    assert old.streams() == new.streams() and old.num_tokens == new.num_tokens
    b = batch()
    seq_old, seq_new = old.sequence(b), new.sequence(b)
    torch.testing.assert_close(seq_old.tokens, seq_new.tokens)
    inputs, p = seq_old.tokens[:, :-1], seq_old.prefix_len
    fo, fn = old.frame_ids(inputs, p), new.frame_ids(inputs, p)
    assert (fo is None) == (fn is None)
    if fo is not None:
        torch.testing.assert_close(fo, fn)
    if new.aligned_positions:
        torch.testing.assert_close(old.positions(p, 30), new.positions(p, 30))
    drop = torch.tensor([True, False])
    torch.testing.assert_close(
        old.drop_conditioning(inputs, drop), new.drop_conditioning(inputs, drop)
    )
    # the switches read back from a list, and a list-built layout survives its plain dict
    for key in switches:
        assert getattr(new, key) == switches[key], key
    assert TokenLayout.from_dict(new.to_dict()) == new


def test_checkpoint_hparams_without_a_conditioning_list_still_load():
    hp = {
        "stage": "semantic",
        "spec": SPEC.to_dict(),
        "coarse_levels": 4,
        "fine_levels": None,
        "fine_sees_mulan": False,
        "beats": True,
        "frame_conditioning": True,
    }
    layout = layout_from_hparams(hp)
    assert [f.stream for f in layout.fuses] == ["mulan", "beat"]
    assert layout.fuses[1].frame_sum and not layout.fuses[1].aligned


def test_conditioning_list_errors_name_the_problem():
    with pytest.raises(registry.PluginError, match="no conditioning stream named 'tempo'.*beat"):
        TokenLayout(stage="semantic", spec=SPEC, conditioning=[{"stream": "tempo"}])
    with pytest.raises(ValueError, match="unknown fuse mode"):
        Fuse.parse({"stream": "mulan", "fuse": "cross"})
    with pytest.raises(ValueError, match="more than once"):
        TokenLayout(stage="semantic", spec=SPEC, conditioning=["mulan", "mulan"])
    with pytest.raises(ValueError, match="at most one timed stream"):
        TokenLayout(stage="coarse", spec=SPEC, conditioning=["beat", "semantic"])
    with pytest.raises(ValueError, match="'aligned' is for a timed stream"):
        TokenLayout(
            stage="coarse", spec=SPEC, conditioning=[{"stream": "mulan", "fuse": "aligned"}]
        )
    with pytest.raises(ValueError, match="own targets"):
        TokenLayout(stage="semantic", spec=SPEC, conditioning=["semantic"])
    no_melody = "carry no melody tokens"
    with pytest.raises(ValueError, match=no_melody):
        TokenLayout(stage="semantic", spec=SPEC, conditioning=["melody"])
    with pytest.raises(ValueError, match="disagrees with its conditioning list"):
        TokenLayout(stage="semantic", spec=SPEC, beats=True, conditioning=["mulan"])


def test_builtin_streams_register_through_entry_points_and_satisfy_the_protocol():
    builtins = {"mulan", "melody", "beat", "semantic", "coarse"}
    assert builtins <= set(registry.available("conditioning_streams"))
    for name in builtins:
        assert isinstance(build_stream(name, SPEC, coarse_levels=2), ConditioningStream)


def test_a_stream_from_another_distribution_is_found_by_its_entry_point(fake_distribution):
    fake_distribution(
        {"musiclm.conditioning_streams": {"mood": "mood_stream:Mood"}},
        {
            "mood_stream": """
            from genre_stream import GenreStream

            class Mood(GenreStream):
                name = "mood"
            """
        },
    )
    assert "mood" in available_streams()
    layout = TokenLayout(stage="semantic", spec=SPEC, conditioning=["mulan", "mood"])
    assert layout.streams()[1] == ("mood", 1, len(GENRES))
    with pytest.raises(registry.PluginError, match="already present"):
        register_stream("mood")(stream_class("genre"))


def test_a_stream_defined_under_tests_trains_and_generates(tmp_path):
    root = tmp_path / "tokens"
    spec = write_synthetic_shards(root / "train", sizes=[6, 4], seconds=3.0)
    write_synthetic_shards(root / "val", sizes=[4], seconds=3.0, seed=1)
    conditioning = [{"stream": "mulan"}, {"stream": "genre", "fuse": "frame_sum"}]
    model = SemanticStage(
        dim=32, depth=2, heads=4, warmup_steps=2, cond_dropout=0.2, conditioning=conditioning
    )
    data = TokenDataModule(
        str(root / "train"),
        str(root / "val"),
        seconds=2.0,
        batch_size=4,
        num_workers=0,
        batches_per_epoch=3,
        val_batches=1,
    )
    trainer = L.Trainer(
        max_steps=3,
        accelerator="cpu",
        default_root_dir=str(tmp_path),
        log_every_n_steps=1,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, data)
    assert torch.isfinite(trainer.callback_metrics["train/loss"])

    # the datamodule read the stream through the stage's reader: one genre per clip
    example = next(iter(data.val_dataloader()))
    assert example["genre"].tolist() == [genre_of_key(k) for k in example["key"]]
    offset = model.layout.offsets()["genre"]
    prefix = model.layout.prefix(example)
    assert prefix[:, 1 + spec.streams["mulan"].levels].tolist() == [
        offset + g for g in example["genre"]
    ]

    # the checkpoint alone rebuilds the stage with its list
    path = trainer.checkpoint_callback.best_model_path
    net, layout = load_network(path)
    assert layout == model.layout and [f.stream for f in layout.fuses] == ["mulan", "genre"]
    assert SemanticStage.load_from_checkpoint(path).layout == layout

    # generation asks the stream to prepare the request (the genre of each prompt text) and
    # for its tokens: the genre named in each row's prompt
    stage = load_stage("semantic", StageEntry(path, SamplingConfig(temperature=1.0)), "cpu", "t")
    rows = [[(0.0, "some jazz")], [(0.0, "techno at night")]]
    request = GenerationRequest(rows, 3.0, "cpu", FixedMulan(spec), "t")
    streams = prepare_streams([stage], request)
    assert streams.prepared["genre"] == {"some jazz": 1, "techno at night": 3}
    assert stage.needs == ("mulan", "genre")
    prompt = stage.conditioning(streams, {})(0, 5, 0)
    wanted = [offset + genre_of_text(r[0][1]) for r in rows]
    assert (
        prompt[:, 1 + spec.streams["mulan"].levels].tolist() == wanted == [offset + 1, offset + 3]
    )
    out = stage.run(streams, {}, 3.0, None, torch.Generator().manual_seed(0))
    assert out.shape == (2, round(3.0 * spec.semantic_rate))
    assert 0 <= int(out.min()) and int(out.max()) < spec.semantic_vocab


class FixedMulan:
    """Conditioners with MuLan tokens fixed per text and no MuLan embedding."""

    def __init__(self, spec: TokenSpec) -> None:
        self.spec = spec

    def mulan_tokens(self, texts: list[str]) -> dict[str, torch.Tensor]:
        return {
            t: torch.arange(self.spec.streams["mulan"].levels) % self.spec.streams["mulan"].codebook
            for t in texts
        }

    def text_embeddings(self, texts: list[str]) -> None:
        return None


def test_a_genre_changes_only_its_own_prompt_token():
    layout = TokenLayout(stage="semantic", spec=SPEC, conditioning=["mulan", "genre"])
    a = layout.prefix(batch() | {"genre": torch.tensor([0, 2])})
    c = layout.prefix(batch() | {"genre": torch.tensor([1, 2])})
    assert (a != c).nonzero().tolist() == [[0, 1 + SPEC.streams["mulan"].levels]]


def test_a_config_file_names_the_streams_and_their_fuse_modes(tmp_path):
    """The list is config: ``musiclm fit --config`` takes it as the stage's argument."""
    write_synthetic_shards(tmp_path / "train", sizes=[4], seconds=3.0)
    config = {
        "trainer": {
            "default_root_dir": str(tmp_path / "run"),
            "accelerator": "cpu",
            "devices": 1,
            "max_steps": 2,
            "enable_progress_bar": False,
            "enable_model_summary": False,
        },
        "model": {
            "class_path": "musiclm.stages.semantic.SemanticStage",
            "init_args": {
                "dim": 32,
                "depth": 2,
                "heads": 4,
                "warmup_steps": 1,
                "conditioning": [
                    {"stream": "mulan"},
                    {"stream": "genre", "fuse": ["prefix", "frame_sum"]},
                ],
            },
        },
        "data": {
            "class_path": "musiclm.datamodules.tokens.TokenDataModule",
            "init_args": {
                "train_dir": str(tmp_path / "train"),
                "seconds": 2.0,
                "batch_size": 2,
                "num_workers": 0,
                "batches_per_epoch": 2,
            },
        },
    }
    path = tmp_path / "genre.yaml"
    path.write_text(yaml.safe_dump(config))
    cli = MusicLMCLI(args=["--config", str(path)], run=False)
    cli.trainer.fit(cli.model, cli.datamodule)
    assert cli.model.layout.fuses == (Fuse("mulan"), Fuse("genre", ("prefix", "frame_sum")))
    assert cli.trainer.global_step == 2


FULL = with_streams(SPEC, melody=MelodySpec(windows=2, levels=3, codebook=4, hop=1.0))


@pytest.mark.parametrize("name", sorted({*registry.available("conditioning_streams"), "genre"}))
def test_every_registered_stream_keeps_its_contract(name):
    """What a stream makes for a generation window, it reads back as ``(B, levels, F)`` codes
    within its vocabulary, as from a training batch."""
    stream = build_stream(name, FULL, coarse_levels=2)
    assert isinstance(stream, ConditioningStream) and stream.name == name
    assert stream.levels >= 1 and stream.codebook >= 1
    assert (stream.rate is None) == (stream.frames >= 1)
    stream.check(FULL)
    rows = [[(0.0, "calm jazz")], [(0.0, "rock"), (0.5, "folk at dawn")]]
    # the melody network is not at hand: its windows by hand; every other stream prepares
    # the request itself (the beat clock at the request's tempo)
    prepared = {
        "melody": torch.randint(
            0, FULL.streams["melody"].codebook, (2, 5, FULL.streams["melody"].levels)
        )
    }
    request = GenerationRequest(rows, 3.0, "cpu", FixedMulan(FULL), "t", bpm=[90.0, 120.0])
    if isinstance(stream, RequestStream) and name != "melody":
        prepared |= stream.prepare(request)
    made = {
        "semantic": torch.randint(0, FULL.semantic_vocab, (2, 10)),
        "coarse": torch.randint(0, FULL.codebook_size, (2, 2, 20)),
    }
    window = RequestWindow(Streams(rows, prepared=prepared), made, 4, 12, 10.0, 1.0)
    codes = stream.codes(stream.window_codes(window))
    frames = stream.frames if stream.rate is None else codes.shape[-1]
    assert codes.shape == (2, stream.levels, frames)
    assert 0 <= int(codes.min()) and int(codes.max()) < stream.codebook
