"""Training tokens/s and model-FLOPs utilisation (MFU), logged to TensorBoard.

MFU = model FLOPs per second / peak FLOP/s of one device. The peak is given in the config or
measured at fit start by a short matmul probe in the training dtype (fp32 on the CPU, bf16
for ``bf16-mixed``), so the figure is relative to what this machine really does. Rolling
rates come from Lightning's ``Throughput`` over a window of steps. Timing reads the wall
clock at batch ends and synchronises the device only on logging steps.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from lightning.fabric.utilities.throughput import Throughput
from lightning.pytorch import Callback, LightningModule, Trainer


def matmul_flops(
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    size: int = 2048,
    seconds: float = 1.0,
    warmup: float = 0.5,
) -> float:
    """Measured FLOP/s of ``size``-square matrix products (best of repeated timings).

    ``warmup`` seconds of untimed products come first: on a CPU that has been idle the first
    second runs well below the steady rate (clock ramp, cold caches), which would understate
    the peak and overstate every MFU quoted against it.
    """
    device = torch.device(device)
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    deadline = time.perf_counter() + warmup
    torch.mm(a, b)
    while time.perf_counter() < deadline:
        torch.mm(a, b)
    sync()
    best, deadline = float("inf"), time.perf_counter() + seconds
    reps = 1
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        for _ in range(reps):
            torch.mm(a, b)
        sync()
        elapsed = (time.perf_counter() - start) / reps
        best = min(best, elapsed)
        if elapsed * reps < 0.05:
            reps *= 2
    return 2.0 * size**3 / best


class ThroughputMonitor(Callback):
    """Logs ``perf/tokens_per_sec``, ``perf/flops_per_sec``, ``perf/mfu``, ``perf/peak_flops``.

    The module must expose ``last_batch_tokens`` (int) and ``flops_per_batch()`` (float).
    """

    def __init__(
        self, peak_flops: float | None = None, window: int = 20, probe_size: int = 2048
    ) -> None:
        """
        Args:
            peak_flops: peak FLOP/s of one device; None measures it at fit start.
            window: steps in the rolling average.
            probe_size: matrix size of the probe.
        """
        super().__init__()
        self.peak_flops, self.window, self.probe_size = peak_flops, window, probe_size
        self._throughput: Throughput | None = None
        self._start = 0.0
        self._tokens = 0
        self._samples = 0
        self._batches = 0

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.peak_flops is None:
            dtype = torch.bfloat16 if "bf16" in str(trainer.precision) else torch.float32
            if pl_module.device.type == "cpu":
                dtype = torch.float32  # the CPU figure is quoted against fp32 throughout
            self.peak_flops = matmul_flops(pl_module.device, dtype, self.probe_size)
        self._throughput = Throughput(
            available_flops=self.peak_flops, world_size=trainer.world_size, window_size=self.window
        )

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, *args: Any
    ) -> None:
        if self._batches == 0:
            self._start = time.perf_counter()

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, idx: int
    ) -> None:
        assert self._throughput is not None
        tokens = int(getattr(pl_module, "last_batch_tokens", 0))
        self._batches += 1
        self._tokens += tokens
        self._samples += len(batch["key"]) if isinstance(batch, dict) and "key" in batch else 1
        logging_step = trainer.global_step % max(1, trainer.log_every_n_steps) == 0
        if logging_step and pl_module.device.type == "cuda":
            torch.cuda.synchronize()
        self._throughput.update(
            time=time.perf_counter() - self._start,
            batches=self._batches,
            samples=self._samples,
            lengths=self._tokens,
            flops=float(pl_module.flops_per_batch()),
        )
        if not logging_step or trainer.logger is None:
            return
        metrics = self._throughput.compute()
        out = {"perf/peak_flops": float(self.peak_flops or 0.0)}
        for src, dst in (
            ("device/items_per_sec", "perf/tokens_per_sec"),
            ("device/flops_per_sec", "perf/flops_per_sec"),
            ("device/mfu", "perf/mfu"),
        ):
            if src in metrics:
                out[dst] = float(metrics[src])
        if trainer.is_global_zero:
            trainer.logger.log_metrics(out, step=trainer.global_step)
        self.last_metrics = out
