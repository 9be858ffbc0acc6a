"""Tiny synthetic audio-text data and a tiny MuLan for the MuLan and conditioning-RVQ tests."""

from __future__ import annotations

import math

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset

NAMES = ["piano", "violin", "flute", "drums", "organ", "harp"]
SAMPLE_RATE = 8000

TINY = dict(
    sample_rate=SAMPLE_RATE,
    embed_dim=32,
    n_mels=32,
    n_fft=256,
    hop_length=80,
    cnn_channels=[8, 16],
    text_encoder="scratch",
    text_encoder_args={"dim": 32, "depth": 1, "heads": 2, "vocab_size": 512},
    text_proj_hidden=0,
    window_s=0.5,
)


def tone(i: int, seconds: float, gen: torch.Generator) -> torch.Tensor:
    """Clip of 'instrument' i: its own pitch and harmonic mix, random phase and loudness."""
    t = torch.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    f0 = 220.0 * 2 ** (i / 2)
    phase = float(torch.rand((), generator=gen)) * 2 * math.pi
    wav = sum(torch.sin(2 * math.pi * f0 * h * t + phase) / h ** (1 + i % 3) for h in range(1, 4))
    gain = 0.3 + 0.4 * float(torch.rand((), generator=gen))
    return gain * wav / wav.abs().max() + 0.01 * torch.randn(t.shape, generator=gen)


class ToneDataset(Dataset):
    def __init__(self, length: int, seconds: float, seed: int) -> None:
        self.length, self.seconds, self.seed = length, seconds, seed

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, idx: int) -> dict:
        i = idx % len(NAMES)
        gen = torch.Generator().manual_seed(self.seed * 100003 + idx)
        return {
            "audio": tone(i, self.seconds, gen),
            "caption": f"a {NAMES[i]} melody",
            "meta": {"attributes": {"instrument": NAMES[i]}},
        }


def collate(items: list[dict]) -> dict:
    return {
        "audio": torch.stack([x["audio"] for x in items]),
        "caption": [x["caption"] for x in items],
        "meta": [x["meta"] for x in items],
    }


class ToneCaptions(LightningDataModule):
    """Each batch holds every caption once (no false negatives); val is a fixed set."""

    def __init__(self, seconds: float = 0.5, batches_per_epoch: int = 4, val_size: int = 12):
        super().__init__()
        self.seconds, self.batches, self.val_size = seconds, batches_per_epoch, val_size
        self.sample_rate = SAMPLE_RATE

    def train_dataloader(self) -> DataLoader:
        ds = ToneDataset(len(NAMES) * self.batches, self.seconds, seed=1)
        return DataLoader(ds, batch_size=len(NAMES), shuffle=False, collate_fn=collate)

    def val_dataloader(self) -> DataLoader:
        ds = ToneDataset(self.val_size, self.seconds, seed=2)
        return DataLoader(ds, batch_size=len(NAMES), collate_fn=collate)
