"""LightningCLI for every stage: ``musiclm fit|validate|test --config conf/<stage>.yaml``.

Each run lives in one folder, ``trainer.default_root_dir``: TensorBoard logs in
``tensorboard/run`` (a fixed version, so ``--ckpt_path last`` resumes into the same run),
checkpoints in ``checkpoints/`` (with ``last.ckpt``), and the resolved ``config.yaml`` beside
the TensorBoard events.
"""

from __future__ import annotations

import os
from typing import Any

from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import TensorBoardLogger

from musiclm.usage import USER_ERRORS, SetupError, one_line

DEFAULT_ROOT = "runs/default"


def run_layout(root: str) -> dict[str, str]:
    """Where a run keeps its TensorBoard events and checkpoints."""
    return {
        "tensorboard": os.path.join(root, "tensorboard", "run"),
        "checkpoints": os.path.join(root, "checkpoints"),
    }


class MusicLMCLI(LightningCLI):
    """LightningCLI in subclass mode with one run folder per ``default_root_dir``."""

    def __init__(self, args: list[str] | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        super().__init__(
            LightningModule,
            LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            parser_kwargs={"parser_mode": "omegaconf"},
            args=args,
            **kwargs,
        )

    def parse_arguments(self, parser: Any, args: Any) -> None:
        # ``args`` is always the whole command line here (the ``musiclm`` entry point passes
        # it, tests pass their own): parse it as is. LightningCLI's own version warns whenever
        # sys.argv holds anything else, e.g. pytest's flags.
        self.config = parser.parse_args(args)

    def instantiate_classes(self) -> None:
        # a datamodule refusing its folders (missing shards, shards that disagree with their
        # manifest) is the user's to fix: one line from ``musiclm``, not a traceback
        try:
            super().instantiate_classes()
        except USER_ERRORS as exc:
            raise SetupError(one_line(exc)) from exc

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list) -> Trainer:
        root = config.get("default_root_dir") or DEFAULT_ROOT
        config["default_root_dir"] = root
        layout = run_layout(root)
        if config.get("logger") in (None, True):
            config["logger"] = TensorBoardLogger(save_dir=root, name="tensorboard", version="run")
        configured = list(config.get("callbacks") or []) + list(callbacks)
        if config.get("enable_checkpointing") is not False and not any(
            isinstance(cb, ModelCheckpoint) for cb in configured
        ):
            callbacks.append(
                ModelCheckpoint(dirpath=layout["checkpoints"], save_last=True, save_top_k=-1)
            )
        return super()._instantiate_trainer(config, callbacks)


def run_lightning(args: list[str]) -> MusicLMCLI:
    """Run one LightningCLI subcommand (``fit``, ``validate`` or ``test``)."""
    return MusicLMCLI(args=args)
