"""Gathered negatives: two gloo processes give the loss and gradients of one global batch."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from musiclm.models.mulan import contrastive_loss, gathered_contrastive_loss

WORLD, LOCAL_B, D_IN, D = 2, 4, 12, 8


def _problem() -> tuple[torch.Tensor, torch.Tensor, torch.nn.Module, torch.nn.Module]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(WORLD * LOCAL_B, D_IN, generator=gen)
    y = torch.randn(WORLD * LOCAL_B, D_IN, generator=gen)
    torch.manual_seed(1)
    return x, y, torch.nn.Linear(D_IN, D), torch.nn.Linear(D_IN, D)


def _gather(t: torch.Tensor) -> torch.Tensor:
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(t), dim=0)


def _worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)  # two processes on a 2-core machine
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        x, y, audio_net, text_net = _problem()
        rows = slice(rank * LOCAL_B, (rank + 1) * LOCAL_B)
        scale = torch.tensor(2.5, requires_grad=True)
        a = F.normalize(audio_net(x[rows]), dim=-1)
        t = F.normalize(text_net(y[rows]), dim=-1)
        loss = gathered_contrastive_loss(a, t, scale, _gather)
        loss.backward()
        grads = [p.grad for p in (*audio_net.parameters(), *text_net.parameters(), scale)]
        for g in grads:  # what DDP does to gradients: average over ranks
            dist.all_reduce(g)
            g /= WORLD
        torch.save({"loss": loss.detach(), "grads": grads}, f"{out}/rank{rank}.pt")
        # both ranks done before either closes its gloo pairs: a rank tearing down while its
        # peer still reads the connection aborted the peer at exit (SIGABRT) once in CI
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_gathered_loss_equals_single_process_global_batch(tmp_path):
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)

    x, y, audio_net, text_net = _problem()
    scale = torch.tensor(2.5, requires_grad=True)
    a, t = F.normalize(audio_net(x), dim=-1), F.normalize(text_net(y), dim=-1)
    loss = contrastive_loss(a, t, scale)
    loss.backward()
    expected = [p.grad for p in (*audio_net.parameters(), *text_net.parameters(), scale)]

    local_only = contrastive_loss(a[:LOCAL_B], t[:LOCAL_B], scale.detach())
    for rank in range(WORLD):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert torch.allclose(got["loss"], loss.detach(), atol=1e-6)
        assert not torch.allclose(got["loss"], local_only)  # the negatives did come from both
        for g, e in zip(got["grads"], expected, strict=True):
            assert torch.allclose(g, e, atol=1e-6)


@pytest.mark.slow
def test_stage_gathers_the_global_batch_under_lightning_ddp():
    from lightning.pytorch import Trainer
    from mulan_helpers import TINY, ToneCaptions

    from musiclm.stages.mulan import MulanStage

    trainer = Trainer(
        strategy="ddp_spawn",
        devices=2,
        accelerator="cpu",
        max_steps=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        limit_val_batches=0,
    )
    trainer.fit(MulanStage(**TINY), ToneCaptions(batches_per_epoch=2))
    # the sampler gives each rank 6 of the 12 clips, one batch each; the loss sees all 12
    assert float(trainer.callback_metrics["train/global_batch"]) == 12.0
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
