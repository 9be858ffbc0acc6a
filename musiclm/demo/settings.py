"""What one run is made of: its sizes (``DemoSettings``) and its corpus (``Corpus``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from musiclm.stage_names import COARSE, DELAY, FINE, SEMANTIC

# `--acoustic` -> the stages that make the codec tokens
ACOUSTIC: dict[str, tuple[str, ...]] = {"cascade": (COARSE, FINE), "delay": (DELAY,)}


@dataclass
class DemoSettings:
    """Sizes of one demo run (the full default, or ``quick()`` for the integration test)."""

    # 1000 clips rather than 200: rendering, shards and tokens cost ~0.2 s a clip, the
    # MuLan overfitted 160 training clips, and 1000 lifted instrument adherence
    # from 0.30 to 0.52 and MCC from 0.30 to 0.44 over 400 (docs/decisions/demo-clips.md)
    clips: int = 1000
    seconds: float = 10.0
    # One seed for everything the run draws: the corpus, every training job, generation and
    # evaluation. Figures are quoted as mean and spread over seeds 0, 1, 2.
    seed: int = 0
    # MuLan: steps, batch, crop (seconds); the conditioning RVQ over its audio embeddings.
    mulan_steps: int = 300
    mulan_batch: int = 32
    rvq_levels: int = 4
    rvq_codebook: int = 32
    # Offline codec (stft-rvq) and semantic tokenizer (music-features) sizes.
    codec_levels: int = 6
    codec_codebook: int = 256
    codec_max_frames: int = 40_000
    semantic_k: int = 256
    # Token LMs: steps per stage and extra `musiclm fit` overrides shared by all three.
    # The coarse LM is where the music stops moving: rendered from real semantic tokens its
    # onsets barely follow them (onset-envelope correlation 0.2, the codec's 0.89) and its
    # validation loss was still falling at 600 steps (1.43 -> 1.37), so it trains 1500
    # (docs/decisions/coarse-training.md).
    # The delay stage (`--acoustic delay`) replaces coarse + fine with one LM over every codec
    # level; 1500 steps like the coarse LM it replaces (docs/decisions/delay-stage.md).
    lm_steps: dict[str, int] = field(
        default_factory=lambda: {"semantic": 400, "coarse": 1500, "fine": 120, "delay": 1500}
    )
    lm_overrides: list[str] = field(default_factory=list)
    mulan_overrides: list[str] = field(default_factory=list)
    # Generation: held-out prompts (test, then validation captions), clip length, sampling.
    # Every test clip's caption (100 of the 1,000 clips): with 40, one prompt is 2.5 % and a
    # tempo figure 0.06 above chance was p = 0.19 (docs/decisions/demo-clips.md)
    prompts: int = 100
    # Prompts in other words than the caption templates (no BPM number, synonyms, other
    # order), this many per instrument, scored beside the templated ones.
    other_prompts_per_instrument: int = 6
    gen_seconds: float = 8.0
    # Classifier-free guidance per guided stage, toward the text; and toward the streams a
    # stage's conditioning entries guide (the semantic stage's beat clock,
    # conf/demo/semantic.yaml), composed with it (docs/decisions/beat-clock.md).
    cfg_scale: dict[str, float] = field(
        default_factory=lambda: {"semantic": 3.0, "coarse": 3.0, "delay": 3.0}
    )
    stream_cfg_scale: dict[str, float] = field(default_factory=lambda: {"semantic": 2.0})
    # A prompt's MuLan tokens from the mean of its 8 nearest training clips' audio embeddings
    # rather than from its text embedding: prompts in other words than the captions' keep
    # their instrument (docs/decisions/text-neighbours.md); 0 is MusicLM's text tokens.
    text_neighbours: int = 8
    # Below the paper's 1.0 / 0.95 / 0.4: at demo scale cooler sampling makes the text heard
    # (instrument, tempo) at the cost of note motion (docs/decisions/sampling-temperatures.md)
    # The semantically guided delay stage: hotter overshoots real pitch variety and raises FAD
    # (0.9: entropy 1.13x, FAD 2.6x); reading the beat clock it is at 0.6 what it was at 0.7
    # without, with more pulse (docs/decisions/delay-stage.md).
    temperatures: dict[str, float] = field(
        default_factory=lambda: {"semantic": 0.5, "coarse": 0.6, "fine": 0.3, "delay": 0.6}
    )
    # The acoustic stages: MusicGen's delay-pattern LM over every codec level, guided by the
    # semantic tokens (the default: over seeds 0-2 it keeps the note motion, onsets, tempo and
    # text that the coarse + fine cascade loses; docs/results.md, cascade and delay stage),
    # or MusicLM's coarse + fine cascade (`--acoustic cascade`), both from the same shards.
    acoustic: str = "delay"
    # Candidates per prompt, MuLan keeps the closest to the text (`generate --rerank`). Three
    # lifted instrument adherence from 0.47 to 0.64 but not tempo, for 2.7x the generation
    # time, and the MCC of kept candidates is chosen by the same MuLan (docs/results.md,
    # re-ranking): one by default, `musiclm demo --rerank N` to ask for more.
    rerank: int = 1
    gen_args: list[str] = field(default_factory=list)
    eval_args: list[str] = field(default_factory=list)
    # A pretrained joint embedding {name, args} in MuLan's place (no MuLan training), and a
    # text file of prompts added to the held-out captions (the only ones for audio without).
    joint_embedding: dict[str, Any] | None = None
    extra_prompts: str | None = None
    # Melody conditioning (`--melody`): the melody embedding (conf melody_fine.yaml, groups
    # rendered from the demo tunes), its RVQ, a melody-conditioned semantic LM beside a plain
    # one, and the chroma figure over this many held-out clips, with and without the melody.
    melody: bool = False
    melody_steps: int = 400
    melody_overrides: list[str] = field(default_factory=list)
    melody_levels: int = 2
    melody_codebook: int = 32
    melody_clips: int = 8

    @classmethod
    def quick(cls) -> DemoSettings:
        """A few minutes on 2 CPU cores: few clips, few steps, tiny models."""
        tiny = [
            "--model.init_args.dim=32",
            "--model.init_args.depth=2",
            "--model.init_args.heads=2",
            "--data.init_args.batch_size=4",
            "--data.init_args.val_batches=1",
            "--model.init_args.warmup_steps=2",
        ]
        return cls(
            clips=30,
            seconds=4.0,
            mulan_steps=8,
            mulan_batch=8,
            rvq_levels=2,
            rvq_codebook=4,
            codec_levels=3,
            codec_codebook=16,
            codec_max_frames=2000,
            semantic_k=16,
            lm_steps={"semantic": 6, "coarse": 6, "fine": 6, "delay": 6},
            lm_overrides=[*tiny, "--data.init_args.seconds=2.0", "--trainer.log_every_n_steps=1"],
            mulan_overrides=[
                "--data.init_args.crop_seconds=2.0",
                "--model.init_args.window_s=2.0",
                "--trainer.log_every_n_steps=1",
            ],
            prompts=3,
            other_prompts_per_instrument=1,
            gen_seconds=2.0,
            cfg_scale={},
            stream_cfg_scale={},
            rerank=2,  # the integration test covers re-ranking and its report line
            eval_args=["--max-train-clips", "40"],
            melody_steps=4,
            melody_overrides=[
                "--model.init_args.dim=32",
                "--model.init_args.depth=1",
                "--model.init_args.heads=2",
                "--model.init_args.warmup_steps=1",
                "--data.init_args.groups_per_batch=4",
                "--data.init_args.batches_per_epoch=2",
                "--data.init_args.val_groups=4",
                "--data.init_args.num_workers=0",
                "--trainer.log_every_n_steps=1",
            ],
            melody_codebook=8,
            melody_clips=2,
        )

    @property
    def lm_stages(self) -> tuple[str, ...]:
        """The token LMs this run trains, in generation order."""
        return (SEMANTIC, *ACOUSTIC[self.acoustic])

    def to_json(self) -> dict:
        """The settings a run folder keeps: steps and temperatures of its own stages only,
        so a cascade run's record stays what it was before the delay stage existed."""
        out = asdict(self)
        for key in ("lm_steps", "temperatures", "cfg_scale", "stream_cfg_scale"):
            out[key] = {k: v for k, v in out[key].items() if k in self.lm_stages}
        return out


@dataclass
class Corpus:
    """Where a run's audio comes from, and what its metadata holds."""

    source: str = "demo"  # demo | folder | jsonl | musiccaps (``musiclm prepare audio``)
    input: Path | None = None  # None for the demo: rendered into RUN/corpus
    audio_dir: Path | None = None  # musiccaps: the <ytid>.<ext> files
    captions: bool = True  # items carry captions (MuLan trains on them)
    attributes: bool = True  # items carry `attributes` (adherence is scored)

    @property
    def is_demo(self) -> bool:
        return self.source == "demo"

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "input": None if self.input is None else str(self.input),
            "audio_dir": None if self.audio_dir is None else str(self.audio_dir),
        }


def inspect_corpus(source: str, input: str | Path, audio_dir: str | Path | None = None) -> Corpus:
    """Read a corpus's listing (no audio) to learn whether it has captions and attributes."""
    from musiclm.datamodules.corpora import SPLITS, list_entries

    entries = list_entries(source, input, audio_dir=audio_dir, captions=False)
    usable = [e for e in entries if e.error is None]
    if not usable:
        shown = "; ".join(f"{e.name}: {e.error}" for e in entries[:3]) or "no audio files"
        raise ValueError(f"--input {input}: no usable item ({shown})")
    for split in SPLITS:  # MuLan and the LMs validate on valid, evaluation scores test
        if not any(e.split == split for e in usable):
            raise ValueError(
                f"--input {input}: no item in the {split!r} split ({len(usable)} items); give "
                "some a 'split' in their metadata, or add items (5% go to valid and to test)"
            )
    return Corpus(
        source=source,
        input=Path(input),
        audio_dir=Path(audio_dir) if audio_dir else None,
        captions=any(e.caption for e in usable),
        attributes=any(
            isinstance(e.meta.get("attributes"), dict) and e.meta["attributes"] for e in usable
        ),  # fmt: skip
    )
