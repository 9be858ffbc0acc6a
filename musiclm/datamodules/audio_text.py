"""Audio-text batches from audio shards, for the MuLan stage.

Train: shards resampled with replacement (so ranks never run out at different times), a
shuffle buffer, random crops (shorter clips zero-padded), and exactly ``batches_per_epoch``
batches per rank (``WebLoader.with_epoch``). Every random draw is seeded from ``seed``, the
data epoch, the rank and the worker; the data epoch and the position inside it follow from
the batches trained so far (``musiclm.datamodules.stream_position``), so every epoch draws
new samples even with fresh worker processes, and a resumed run continues the stream
instead of replaying it.

Validation: every rank reads the whole validation split in one fixed order with centre crops,
so retrieval metrics over the full split agree across ranks.

Corrupt tars and samples are skipped; ``skipped`` holds how many (per rank, all workers), and
:class:`LogSkippedSamples` logs it to the trainer's logger.
"""

from __future__ import annotations

from collections.abc import Iterator

import lightning as L
import numpy as np
import torch

from musiclm.datamodules.shards import (
    SkipCounter,
    decode_audio_sample,
    read_manifest,
    shard_paths,
)
from musiclm.datamodules.stream_position import (
    StepSeededLoader,
    batches_trained,
    loader_settings,
    warn_changed_settings,
)

SKIP_KEY = "_skipped"  # per-worker skip count carried by each batch, removed before the step


def crop(audio: np.ndarray, length: int, rng: np.random.Generator | None) -> np.ndarray:
    """A window of ``length`` samples: random with ``rng``, centred without; zero-padded."""
    if len(audio) < length:
        return np.pad(audio, (0, length - len(audio)))
    spare = len(audio) - length
    start = int(rng.integers(spare + 1)) if rng is not None else spare // 2
    return audio[start : start + length]


def collate(samples: list[dict]) -> dict:
    """Batch of cropped samples: ``{"audio": [B, T], "caption": [...], "meta": [...]}``."""
    return {
        "audio": torch.from_numpy(np.stack([s["audio"] for s in samples])),
        "caption": [s["caption"] for s in samples],
        "meta": [s["meta"] for s in samples],
    }


def _worker() -> tuple[int, int]:
    import webdataset as wds

    rank, _, worker, _ = wds.utils.pytorch_worker_info()
    return rank, worker


class _Decode:
    """Map stage: decode a sample and refuse one at another rate than the manifest's."""

    def __init__(self, sample_rate: int) -> None:
        self.sample_rate = sample_rate

    def __call__(self, raw: dict) -> dict:
        s = decode_audio_sample(raw)
        if s["sample_rate"] != self.sample_rate:
            raise ValueError(
                f"sample {s['key']!r} in {raw.get('__url__')} is at {s['sample_rate']} Hz, "
                f"the manifest says {self.sample_rate} Hz"
            )
        return s


class _Crops:
    """Pipeline stage: shuffle buffer + crops, seeded per (seed, rank, worker) on first use."""

    def __init__(self, *, length: int, sample_rate: int, seed: int | None, buffer: int) -> None:
        self.length, self.sample_rate, self.seed, self.buffer = length, sample_rate, seed, buffer

    def __call__(self, src: Iterator[dict]) -> Iterator[dict]:
        rng = None
        if self.seed is not None:
            rng = np.random.default_rng([self.seed, *_worker()])
        buf: list[dict] = []
        for s in src:
            if rng is None:  # validation: fixed order, centre crop
                yield {**s, "audio": crop(s["audio"], self.length, None)}
                continue
            buf.append(s)
            if len(buf) >= self.buffer:
                s = buf.pop(int(rng.integers(len(buf))))
                yield {**s, "audio": crop(s["audio"], self.length, rng)}
        while buf and rng is not None:
            s = buf.pop(int(rng.integers(len(buf))))
            yield {**s, "audio": crop(s["audio"], self.length, rng)}


class _TagSkips:
    """Pipeline stage: attach (pass token, worker, skip count) so the main process can sum."""

    def __init__(self, counter: SkipCounter) -> None:
        self.counter = counter

    def __call__(self, src: Iterator[dict]) -> Iterator[dict]:
        # one token per pass: workers restart with fresh copies each epoch, so counts are
        # per pass and the main process sums the passes
        self.counter.count = 0
        token = int(np.random.default_rng().integers(2**62))
        for batch in src:
            batch[SKIP_KEY] = (token, _worker()[1], self.counter.count)
            yield batch


class AudioTextStream(torch.utils.data.IterableDataset):
    """Endless cropped batches from resampled audio shards, seeded by (seed, data epoch,
    rank, worker): ``epoch`` is set by :class:`StepSeededLoader` before each pass, so
    fresh workers of a new epoch draw a new stream instead of replaying the first."""

    def __init__(
        self,
        urls: list[str],
        *,
        sample_rate: int,
        crop_samples: int,
        batch_size: int,
        seed: int,
        shuffle_buffer: int,
    ) -> None:
        super().__init__()
        self.urls, self.sample_rate, self.crop_samples = urls, sample_rate, crop_samples
        self.batch_size, self.seed, self.shuffle_buffer = batch_size, seed, shuffle_buffer
        self.epoch = 0

    def __iter__(self) -> Iterator[dict]:
        import webdataset as wds

        rank, worker = _worker()
        seed = int(
            np.random.SeedSequence([self.seed, self.epoch, rank, worker]).generate_state(1)[0]
        )
        counter = SkipCounter()
        pipeline = wds.DataPipeline(
            # every (rank, worker) draws its own shard stream; no node splitter is needed
            wds.ResampledShards(self.urls, seed=seed, worker_seed=lambda: 0, deterministic=True),
            wds.tarfile_to_samples(handler=counter.handler),
            wds.map(_Decode(self.sample_rate), handler=counter.handler),
            _Crops(
                length=self.crop_samples,
                sample_rate=self.sample_rate,
                seed=seed,
                buffer=self.shuffle_buffer,
            ),
            wds.batched(self.batch_size, collation_fn=collate, partial=False),
            _TagSkips(counter),
        )
        return iter(pipeline)


class AudioTextDataModule(L.LightningDataModule):
    """Audio shard folders (``musiclm prepare audio`` output) -> MuLan batches."""

    def __init__(
        self,
        train_dir: str,
        val_dir: str | None = None,
        *,
        crop_seconds: float = 10.0,
        batch_size: int = 16,
        num_workers: int = 0,
        batches_per_epoch: int = 100,
        seed: int = 0,
        shuffle_buffer: int = 256,
    ) -> None:
        super().__init__()
        if crop_seconds <= 0 or batch_size < 1 or batches_per_epoch < 1:
            raise ValueError(
                "AudioTextDataModule: crop_seconds, batch_size and batches_per_epoch must be "
                f"positive (got {crop_seconds}, {batch_size}, {batches_per_epoch})"
            )
        self.save_hyperparameters()
        self.train_dir, self.val_dir = train_dir, val_dir
        self.crop_seconds, self.batch_size = crop_seconds, batch_size
        self.num_workers, self.batches_per_epoch = num_workers, batches_per_epoch
        self.seed, self.shuffle_buffer = seed, shuffle_buffer
        manifest = read_manifest(train_dir)
        self.sample_rate: int = int(manifest["sample_rate"])
        if val_dir is not None:
            val_rate = int(read_manifest(val_dir)["sample_rate"])
            if val_rate != self.sample_rate:
                raise ValueError(
                    f"val_dir {val_dir} is at {val_rate} Hz but train_dir {train_dir} is at "
                    f"{self.sample_rate} Hz"
                )
        self._skips: dict[tuple[int, int], int] = {}  # (pass token, worker) -> count

    @property
    def crop_samples(self) -> int:
        return int(round(self.crop_seconds * self.sample_rate))

    @property
    def skipped(self) -> int:
        """Corrupt tars/samples skipped so far on this rank (all loaders and workers)."""
        return sum(self._skips.values())

    def train_dataloader(self) -> StepSeededLoader:
        import webdataset as wds

        urls = shard_paths(self.train_dir)
        if not urls:
            raise ValueError(f"train_dir {self.train_dir}: its manifest lists no shards")
        stream = AudioTextStream(
            urls,
            sample_rate=self.sample_rate,
            crop_samples=self.crop_samples,
            batch_size=self.batch_size,
            seed=self.seed,
            shuffle_buffer=self.shuffle_buffer,
        )
        loader = wds.WebLoader(
            stream,
            batch_size=None,
            num_workers=self.num_workers,
            persistent_workers=False,  # workers must see the epoch set before each pass
        ).with_epoch(self.batches_per_epoch)
        return StepSeededLoader(
            stream, loader, self.batches_per_epoch, lambda: batches_trained(self.trainer)
        )

    def state_dict(self) -> dict:
        # kept in checkpoints so a resume can say what its other settings change
        return {"loader_settings": loader_settings(self.hparams, self.trainer)}

    def load_state_dict(self, state_dict: dict) -> None:
        saved = state_dict.get("loader_settings")
        if saved:
            now = loader_settings(self.hparams, self.trainer)
            warn_changed_settings(saved, now, f"on {self.train_dir}")

    def val_dataloader(self):
        import webdataset as wds

        if self.val_dir is None:
            return []
        urls = shard_paths(self.val_dir)
        counter = SkipCounter()
        workers = min(self.num_workers, len(urls))
        pipeline = wds.DataPipeline(
            wds.SimpleShardList(urls),
            wds.split_by_worker,  # never by node: every rank sees the whole split
            wds.tarfile_to_samples(handler=counter.handler),
            wds.map(_Decode(self.sample_rate), handler=counter.handler),
            _Crops(length=self.crop_samples, sample_rate=self.sample_rate, seed=None, buffer=1),
            wds.batched(self.batch_size, collation_fn=collate, partial=True),
            _TagSkips(counter),
        )
        return wds.WebLoader(pipeline, batch_size=None, num_workers=workers)

    def on_before_batch_transfer(self, batch, dataloader_idx: int):
        if isinstance(batch, dict) and SKIP_KEY in batch:
            token, worker, count = batch.pop(SKIP_KEY)
            self._skips[(int(token), int(worker))] = int(count)
        return batch


class LogSkippedSamples(L.Callback):
    """Log ``trainer.datamodule.skipped`` as ``data/skipped`` after every training batch."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        dm = trainer.datamodule
        if dm is not None and hasattr(dm, "skipped"):
            pl_module.log("data/skipped", float(dm.skipped), on_step=True, on_epoch=False)
