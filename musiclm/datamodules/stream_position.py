"""Where a training stream stands, from the trainer alone, and what a resume changes.

RNG state is not in Lightning's checkpoints and dataloader workers are fresh processes each
pass, so a stream seeded once would replay the same samples every epoch (and from its start
after a resume). The training datamodules instead seed each pass from the *data epoch*, and
skip what the current epoch already trained on, both read from :func:`batches_trained`:
the stream is a function of how far training got. :class:`StepSeededLoader` does this
around a ``WebLoader``; the stream it wraps has an ``epoch`` attribute read in ``__iter__``.

What a resume cannot keep is the stream under other loader settings: another world size,
worker count, batch size or epoch length draws other samples. :func:`loader_settings` is
saved in the checkpoint and :func:`warn_changed_settings` says what changed on resume.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from itertools import islice
from typing import Any

from lightning.pytorch.utilities import rank_zero_warn


def batches_trained(trainer: Any) -> int:
    """Training batches this run has processed so far, across epochs and resumes.

    Lightning's progress counter, restored from the checkpoint. ``global_step`` counts
    optimizer steps, which is not the same: with gradient accumulation an epoch ends with a
    step whatever the remainder, so ``global_step * accumulate_grad_batches`` overshoots when
    ``batches_per_epoch`` is not a multiple of it."""
    if trainer is None:
        return 0
    return int(trainer.fit_loop.epoch_loop.batch_progress.total.processed)


class StepSeededLoader:
    """Iterable over a ``WebLoader.with_epoch``: each pass reseeds from how far training got.

    Data epoch ``e = batches_done // batches_per_epoch`` is set on ``stream.epoch`` before
    the loader starts its workers (they copy the stream then); a pass started mid-epoch (a
    resumed run) skips the batches of that epoch already trained on.
    """

    def __init__(
        self, stream: Any, loader: Any, batches_per_epoch: int, position: Callable[[], int]
    ) -> None:
        self.stream, self.loader = stream, loader
        self.batches_per_epoch, self.position = batches_per_epoch, position

    def __len__(self) -> int:
        return self.batches_per_epoch

    def __iter__(self) -> Iterator[Any]:
        done = int(self.position())
        self.stream.epoch, skip = divmod(done, self.batches_per_epoch)
        return islice(iter(self.loader), skip, None)


# loader settings that decide which samples a resumed stream draws, with their names in
# the warning
SETTINGS = {
    "world_size": "devices x nodes",
    "num_workers": "num_workers",
    "batch_size": "batch_size",
    "batches_per_epoch": "batches_per_epoch",
    "accumulate_grad_batches": "accumulate_grad_batches",
    "seed": "seed",
}


def loader_settings(hparams: Any, trainer: Any) -> dict[str, int]:
    """The settings in :data:`SETTINGS` of a datamodule (its hparams) and its trainer."""
    out = {k: int(hparams[k]) for k in ("num_workers", "batch_size", "batches_per_epoch", "seed")}
    if trainer is not None:
        out["world_size"] = int(trainer.world_size)
        out["accumulate_grad_batches"] = int(trainer.accumulate_grad_batches)
    return out


def warn_changed_settings(saved: dict[str, int], now: dict[str, int], where: str) -> list[str]:
    """Warn (rank 0) naming every loader setting that differs from the checkpoint's, and
    what that changes; returns the changes (``"name A -> B"``)."""
    changes = [
        f"{label} {saved[key]} -> {now[key]}"
        for key, label in SETTINGS.items()
        if key in saved and key in now and saved[key] != now[key]
    ]
    if changes:
        text = (
            f"resuming {where} with other loader settings than the checkpoint: "
            f"{', '.join(changes)}. Training goes on from the same batch count, but the data "
            "stream is not the one the original run would have drawn"
        )
        sizes = ("batch_size", "world_size", "accumulate_grad_batches")
        if all(k in saved and k in now for k in sizes):
            was, new = (
                d["batch_size"] * d["world_size"] * d["accumulate_grad_batches"]
                for d in (saved, now)
            )
            if was != new:
                text += f"; the global batch per optimizer step is {new} samples (was {was})"
        rank_zero_warn(text)
    return changes
