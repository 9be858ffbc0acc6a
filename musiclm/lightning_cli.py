"""LightningCLI for every stage: ``musiclm fit|validate|test --config conf/<stage>.yaml``.

Each run lives in one folder, ``trainer.default_root_dir``: TensorBoard logs in
``tensorboard/run`` (a fixed version, so ``--ckpt_path last`` resumes into the same run),
checkpoints in ``checkpoints/`` (with ``last.ckpt``), and the resolved ``config.yaml`` beside
the TensorBoard events.
"""

from __future__ import annotations

import os
import zipfile
from typing import Any

from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import TensorBoardLogger

from musiclm.usage import USER_ERRORS, SetupError, one_line

DEFAULT_ROOT = "runs/default"
# checkpoints kept besides last.ckpt: the most recent few, not every epoch (hundreds of GB
# at paper scale); configure a ModelCheckpoint in trainer.callbacks for another policy
KEEP_CHECKPOINTS = 3


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
            callbacks.append(default_checkpointing(layout["checkpoints"]))
        return super()._instantiate_trainer(config, callbacks)

    def before_fit(self) -> None:
        ckpt = self.config_init[self.subcommand].get("ckpt_path")
        if ckpt == "last":
            ckpt = os.path.join(
                run_layout(self.trainer.default_root_dir)["checkpoints"], "last.ckpt"
            )
            if not os.path.exists(ckpt):
                return  # Lightning starts fresh with a warning, as before
        if isinstance(ckpt, str) and "://" not in ckpt and ckpt not in ("best", "hpc", "registry"):
            check_checkpoint(ckpt)


def default_checkpointing(dirpath: str) -> ModelCheckpoint:
    """``last.ckpt`` plus the ``KEEP_CHECKPOINTS`` most recent checkpoints."""
    return ModelCheckpoint(
        dirpath=dirpath, save_last=True, save_top_k=KEEP_CHECKPOINTS, monitor="step", mode="max"
    )


def _whole(path: str) -> str | None:
    """Why ``path`` is not a whole checkpoint (torch's zip format), or None when it is."""
    try:
        with zipfile.ZipFile(path) as z:  # a truncated file has no central directory
            z.infolist()
    except (OSError, zipfile.BadZipFile) as exc:
        return str(exc)
    return None


def check_checkpoint(path: str) -> None:
    """Refuse to resume from a missing or truncated checkpoint, naming the newest intact
    checkpoint beside it (a kill while ``last.ckpt`` was being copied leaves it cut short)."""
    if not os.path.isfile(path):
        raise SetupError(f"--ckpt_path {path}: no such checkpoint")
    why = _whole(path)
    if why is None:
        return
    folder = os.path.dirname(os.path.abspath(path))
    others = sorted(
        (os.path.join(folder, n) for n in os.listdir(folder) if n.endswith(".ckpt")),
        key=os.path.getmtime,
        reverse=True,
    )
    intact = next((o for o in others if not os.path.samefile(o, path) and _whole(o) is None), None)
    hint = (
        f"the newest intact checkpoint beside it is {intact}: resume with --ckpt_path {intact}"
        if intact
        else "no intact checkpoint beside it"
    )
    raise SetupError(f"checkpoint {path} is truncated or corrupt ({why}); {hint}")


def run_lightning(args: list[str]) -> MusicLMCLI:
    """Run one LightningCLI subcommand (``fit``, ``validate`` or ``test``)."""
    return MusicLMCLI(args=args)
