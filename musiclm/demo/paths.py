"""Where each step of the demo leaves its outputs inside the run folder."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class DemoPaths:
    """Where each step leaves its outputs inside the run folder."""

    out: Path
    conf: Path

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        self.conf = Path(self.conf)

    @property
    def corpus(self) -> Path:
        return self.out / "corpus"

    @property
    def audio(self) -> Path:
        return self.out / "audio"

    @property
    def tokens(self) -> Path:
        return self.out / "tokens"

    @property
    def rvq(self) -> Path:
        return self.out / "mulan" / "rvq.safetensors"

    @property
    def codec(self) -> Path:
        return self.out / "tokenizers" / "codec.safetensors"

    @property
    def kmeans(self) -> Path:
        return self.out / "tokenizers" / "semantic_kmeans.safetensors"

    @property
    def pipeline(self) -> Path:
        return self.out / "PIPELINE.yaml"

    @property
    def prompts(self) -> Path:
        return self.out / "prompts.jsonl"

    @property
    def prompts_other(self) -> Path:
        return self.out / "prompts_other.jsonl"

    @property
    def generated(self) -> Path:
        return self.out / "generated"

    @property
    def generated_other(self) -> Path:
        return self.out / "generated_other"

    @property
    def eval(self) -> Path:
        return self.out / "eval"

    @property
    def eval_other(self) -> Path:
        return self.out / "eval_other"

    @property
    def pipeline_plain(self) -> Path:
        """The pipeline whose semantic LM has no melody (``--melody`` runs)."""
        return self.out / "PIPELINE_plain.yaml"

    @property
    def melody_rvq(self) -> Path:
        return self.out / "melody" / "rvq.safetensors"

    @property
    def melody_clips(self) -> Path:
        return self.out / "melody_clips"

    @property
    def melody_eval(self) -> Path:
        return self.out / "melody_eval"

    def run_dir(self, stage: str) -> Path:
        return self.out / stage

    def last_ckpt(self, stage: str) -> Path:
        return self.run_dir(stage) / "checkpoints" / "last.ckpt"
