"""WebDataset datamodule over token shards (``musiclm prepare tokens``) for the LM stages.

Each sample holds ``semantic.npy`` ``[F_s]``, ``acoustic.npy`` ``[Q, F_a]``, optionally
``mulan.npy`` ``[Q_m]``, a caption and JSON. A batch is ``{"semantic": (B, F_s),
"acoustic": (B, Q, F_a), "mulan": (B, Q_m), "key": [B], "skipped": ()}``: one random crop of
``seconds`` per sample, the same time window in every stream, ``-1`` where a clip is shorter.
Shards with ``melody.npy`` ``[W_clip, L]`` (a melody token set every ``MelodySpec.hop`` seconds)
add ``"melody": (B, W * L)``: the crop then starts on the melody window grid and takes the
``W`` windows from its start (``-1`` past the clip's end). Streams that the manifest does not
declare (a conditioning stream from a plugin) are read by ``readers``: callables given by the
stage that ``(sample, where, crop) -> {name: array}``, so this module names no stream class.

Training reads resampled shards (every rank and worker draws shards at random, seeded by
(seed, data epoch, rank, worker)), so every rank yields exactly ``batches_per_epoch`` batches
whatever the shard counts: no DDP hang. The data epoch and the position inside it follow from
the trainer's global step, so the stream is a function of the step: a resumed run continues
it instead of replaying its start, and a run resumed at step k sees what an uninterrupted
run sees after step k. Corrupt tars and samples are skipped; each batch carries how many
were skipped since the previous one (``skipped``), which the stage logs.

Validation reads every validation shard in order with a fixed crop (the window start of
the clip) on every rank: identical on all ranks and small, so no rank waits for another.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import IterableDataset

from musiclm.datamodules.shards import (
    SkipCounter,
    check_shards_exist,
    decode_npy,
    read_manifest,
    shard_paths,
)
from musiclm.datamodules.stream_position import (
    StepSeededLoader,
    batches_trained,
    loader_settings,
    warn_changed_settings,
)
from musiclm.datamodules.token_spec import BeatSpec, MelodySpec, MulanSpec, TokenSpec


@dataclass(frozen=True)
class Crop:
    """The time window of one cropped sample, for a stream reader."""

    start: float  # seconds from the clip's start
    seconds: float  # crop length
    semantic_start: int  # first semantic frame and the frame count of the crop
    semantic_frames: int
    acoustic_start: int  # first codec frame and the frame count of the crop
    acoustic_frames: int
    train: bool  # a random crop (False: validation's fixed crop from the start)


# a conditioning stream's reader: (raw sample, where it is for errors, crop) -> arrays
Reader = Callable[[dict, str, Crop], dict[str, np.ndarray]]


def _seed(*parts: int) -> int:
    digest = hashlib.sha256(",".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def crop_sample(
    sample: dict,
    *,
    spec: TokenSpec,
    seconds: float,
    rng: np.random.Generator | None,
    readers: Sequence[Reader] = (),
) -> dict:
    """Decode a raw WebDataset token sample and crop all streams to one time window.

    ``rng=None`` crops from the start (validation). Bad samples raise naming key and shard.
    ``readers`` add the arrays of streams the manifest does not declare.
    """
    where = f"sample {sample.get('__key__')!r} in {sample.get('__url__')}"
    for field in ("semantic.npy", "acoustic.npy"):
        if field not in sample:
            raise ValueError(f"{where} lacks {field!r} (has {sorted(sample)})")
    semantic = decode_npy(sample["semantic.npy"])
    acoustic = decode_npy(sample["acoustic.npy"])
    if semantic.ndim != 1 or acoustic.ndim != 2 or acoustic.shape[0] != spec.num_quantizers:
        raise ValueError(
            f"{where}: semantic {semantic.shape} / acoustic {acoustic.shape}, expected [F_s] "
            f"and [{spec.num_quantizers}, F_a]"
        )
    _check_range(where, "semantic", semantic, spec.semantic_vocab)
    _check_range(where, "acoustic", acoustic, spec.codebook_size)
    n_s = max(1, round(seconds * spec.semantic_rate))
    n_a = max(1, round(seconds * spec.acoustic_rate))
    clip = min(semantic.shape[0] / spec.semantic_rate, acoustic.shape[1] / spec.acoustic_rate)
    start = 0.0 if rng is None else rng.uniform(0.0, max(0.0, clip - seconds))
    melody = spec.streams.get("melody")
    if melody and rng is not None:
        # on the melody grid, so the melody windows describe exactly the cropped audio
        start = melody.hop * int(start // melody.hop)
    # snap the window to the semantic frame grid, then find the acoustic frame at that time
    s0 = int(start * spec.semantic_rate)
    a0 = round(s0 / spec.semantic_rate * spec.acoustic_rate)
    out = {
        "key": sample["__key__"],
        "semantic": _window(semantic[None], s0, n_s)[0],
        "acoustic": _window(acoustic, a0, n_a),
    }
    if "mulan" in spec.streams:
        out["mulan"] = _mulan_tokens(sample, where, spec.streams["mulan"])
    if melody:
        out["melody"] = _melody_windows(sample, where, melody, start)
    clock = spec.streams.get("beats")
    if clock:
        beat, tempo = _beat_clock(sample, where, clock, semantic.shape[0])
        out["beat"] = _window(beat[None], s0, n_s)[0]
        out["tempo"] = tempo
        if clock.tempo_input_dim:
            out["mulan_embedding"] = _tempo_input(sample, where, clock.tempo_input_dim)
    crop = Crop(start, seconds, s0, n_s, a0, n_a, rng is not None)
    for read in readers:
        out |= read(sample, where, crop)
    return out


def _mulan_tokens(sample: dict, where: str, mulan: MulanSpec) -> np.ndarray:
    """A clip's MuLan tokens [Q_m], checked."""
    if "mulan.npy" not in sample:
        raise ValueError(f"{where} lacks 'mulan.npy' but the manifest declares MuLan tokens")
    tokens = decode_npy(sample["mulan.npy"]).reshape(-1)
    if tokens.shape[0] != mulan.levels:
        raise ValueError(f"{where}: mulan has {tokens.shape[0]} levels, expected {mulan.levels}")
    _check_range(where, "mulan", tokens, mulan.codebook)
    return tokens.astype(np.int64)


def _tempo_input(sample: dict, where: str, dim: int) -> np.ndarray:
    """The clip's MuLan embedding [D] for the tempo predictor (written with the beat clock)."""
    if "mulan_embedding.npy" not in sample:
        raise ValueError(f"{where} lacks 'mulan_embedding.npy' (written with --beats and --mulan)")
    emb = decode_npy(sample["mulan_embedding.npy"]).reshape(-1).astype(np.float32)
    if emb.shape != (dim,) or not np.isfinite(emb).all():
        raise ValueError(f"{where}: mulan_embedding {emb.shape}, expected {dim} finite values")
    return emb


def _beat_clock(sample: dict, where: str, clock: BeatSpec, frames: int) -> tuple[np.ndarray, Any]:
    """A clip's beat phase ids [F_s] and tempo bin (-1: no pulse), checked."""
    for field in ("beat.npy", "tempo.npy"):
        if field not in sample:
            raise ValueError(f"{where} lacks {field!r} but the manifest declares a beat clock")
    beat = decode_npy(sample["beat.npy"])
    tempo = decode_npy(sample["tempo.npy"]).reshape(-1)
    if beat.shape != (frames,) or tempo.shape != (1,):
        raise ValueError(
            f"{where}: beat {beat.shape} / tempo {tempo.shape}, expected [{frames}] and [1]"
        )
    _check_range(where, "beat", beat + 1, clock.phase_bins + 1)  # -1: no pulse
    _check_range(where, "tempo", tempo + 1, clock.tempo_bins + 1)
    return beat, tempo.astype(np.int64)[0]


def _melody_windows(sample: dict, where: str, spec: MelodySpec, start: float) -> np.ndarray:
    """The ``W`` melody windows from ``start`` seconds, flattened window-major ``(W * L,)``."""
    if "melody.npy" not in sample:
        raise ValueError(f"{where} lacks 'melody.npy' but the manifest declares melody tokens")
    melody = decode_npy(sample["melody.npy"])
    if melody.ndim != 2 or melody.shape[1] != spec.levels:
        raise ValueError(f"{where}: melody {melody.shape}, expected [windows, {spec.levels}]")
    _check_range(where, "melody", melody, spec.codebook)
    first = int(round(start / spec.hop))
    return _window(melody.T, first, spec.windows).T.reshape(-1)


def _check_range(where: str, name: str, arr: np.ndarray, size: int) -> None:
    if arr.dtype.kind not in "iu":
        raise ValueError(f"{where}: {name} has dtype {arr.dtype}, expected integers")
    if arr.size and (arr.min() < 0 or arr.max() >= size):
        raise ValueError(f"{where}: {name} ids outside 0..{size - 1}")


def _window(arr: np.ndarray, start: int, length: int) -> np.ndarray:
    """``arr[:, start:start+length]`` as int64, right-padded with -1."""
    out = np.full((arr.shape[0], length), -1, dtype=np.int64)
    part = arr[:, start : start + length]
    out[:, : part.shape[1]] = part
    return out


def collate(samples: list[dict]) -> dict[str, Any]:
    batch: dict[str, Any] = {"key": [s["key"] for s in samples]}
    for name, value in samples[0].items():
        # arrays of numbers (the streams, from the manifest and from readers); ids stay lists
        if name != "key" and np.asarray(value).dtype.kind in "biuf":
            batch[name] = torch.from_numpy(np.stack([s[name] for s in samples]))
    return batch


def probe_shards(
    urls: list[str], spec: TokenSpec, directory: str | Path, *, samples: int = 16
) -> None:
    """Decode the first samples of the first shards against the manifest's spec, so shards
    that disagree with their manifest (other levels, vocabularies, streams) are refused at
    setup instead of skipped sample by sample forever. One good sample passes: corrupt
    samples and unreadable tars are left to the stream's skip counts."""
    import webdataset as wds

    failures: list[str] = []
    skips = SkipCounter(warn=False)  # unreadable tars: not a disagreement
    stream = wds.DataPipeline(
        wds.SimpleShardList(urls[:8]), wds.tarfile_to_samples(handler=skips.handler)
    )
    for sample in islice(stream, samples):
        try:
            crop_sample(sample, spec=spec, seconds=1.0, rng=None)
            return
        except ValueError as exc:
            failures.append(str(exc))
    if failures:
        raise ValueError(
            f"token shards {directory} do not match their manifest.json: none of the first "
            f"{len(failures)} samples decodes ({failures[0]})"
        )


class TokenStream(IterableDataset):
    """Endless crops from resampled shards, batched; seeded by (seed, epoch, rank, worker)."""

    def __init__(
        self,
        urls: list[str],
        *,
        spec: TokenSpec,
        seconds: float,
        batch_size: int,
        seed: int,
        shuffle_buffer: int,
        max_consecutive_skips: int = 1000,
        readers: Sequence[Reader] = (),
    ) -> None:
        super().__init__()
        self.urls, self.spec, self.seconds, self.readers = urls, spec, seconds, tuple(readers)
        self.batch_size, self.seed, self.shuffle_buffer = batch_size, seed, shuffle_buffer
        self.max_consecutive_skips = max_consecutive_skips
        self.epoch = 0  # set by StepSeededLoader before each pass

    def __iter__(self) -> Iterator[dict[str, Any]]:
        import webdataset as wds

        rank, _, worker, _ = wds.utils.pytorch_worker_info()
        seed = _seed(self.seed, self.epoch, rank, worker)
        # resampled shards never run dry: without a bound, a stream of bad samples never ends
        skips = SkipCounter(
            warn=False,
            limit=self.max_consecutive_skips,
            where=f"token shards {Path(self.urls[0]).parent}",
        )
        pipeline = wds.DataPipeline(
            wds.ResampledShards(self.urls, seed=seed, worker_seed=lambda: 0, deterministic=True),
            wds.tarfile_to_samples(handler=skips.handler),
            wds.shuffle(self.shuffle_buffer, initial=self.shuffle_buffer, rng=random.Random(seed)),
            wds.map(
                partial(
                    crop_sample,
                    spec=self.spec,
                    seconds=self.seconds,
                    rng=np.random.default_rng(seed),
                    readers=self.readers,
                ),
                handler=skips.handler,
            ),
            wds.map(skips.ok),
            wds.batched(self.batch_size, collation_fn=collate, partial=False),
        )
        reported = 0
        for batch in pipeline:
            batch["skipped"] = torch.tensor(skips.count - reported)
            reported = skips.count
            yield batch


class TokenDataModule(LightningDataModule):
    """Token shards for the semantic, coarse and fine stages."""

    def __init__(
        self,
        train_dir: str,
        val_dir: str | None = None,
        *,
        seconds: float = 10.0,
        batch_size: int = 8,
        num_workers: int = 2,
        batches_per_epoch: int = 1000,
        val_batches: int = 16,
        shuffle_buffer: int = 256,
        seed: int = 0,
        max_consecutive_skips: int = 1000,
    ) -> None:
        """
        Args:
            train_dir: token shard folder (``manifest.json`` + ``tokens-*.tar``).
            val_dir: validation shard folder made by the same tokenizers, or None.
            seconds: crop length; semantic and acoustic windows cover the same time.
            batch_size: per rank.
            num_workers: dataloader worker processes per rank.
            batches_per_epoch: batches every rank yields per (data) epoch.
            val_batches: at most this many validation batches.
            shuffle_buffer: samples held for shuffling per worker.
            seed: base seed of shard sampling, shuffling and crops.
            max_consecutive_skips: training stops with an error (counts by reason) after
                this many unreadable samples in a row.
        """
        super().__init__()
        self.save_hyperparameters()
        if seconds <= 0 or batch_size < 1 or batches_per_epoch < 1 or max_consecutive_skips < 1:
            raise ValueError(
                "seconds, batch_size, batches_per_epoch and max_consecutive_skips must be positive"
            )
        self.manifest = read_manifest(train_dir)
        self.spec = TokenSpec.from_manifest(self.manifest, str(Path(train_dir) / "manifest.json"))
        self.urls = shard_paths(train_dir, self.manifest)
        if not self.urls:
            raise ValueError(f"token shard folder {train_dir} lists no shards in manifest.json")
        check_shards_exist(train_dir, self.manifest)
        probe_shards(self.urls, self.spec, train_dir)
        self.val_urls: list[str] = []
        if val_dir:
            val_manifest = read_manifest(val_dir)
            where = str(Path(val_dir) / "manifest.json")
            val_spec = TokenSpec.from_manifest(val_manifest, where)
            if val_spec != self.spec:
                raise ValueError(
                    f"validation shards {val_dir} were made with other tokenizers or sizes than "
                    f"training shards {train_dir}: {val_spec} vs {self.spec}"
                )
            self.val_urls = shard_paths(val_dir, val_manifest)
            check_shards_exist(val_dir, val_manifest)
            probe_shards(self.val_urls, self.spec, val_dir)
        self.readers: tuple[Reader, ...] = ()

    def set_readers(self, readers: Sequence[Reader]) -> None:
        """Readers of the streams a stage conditions on that the manifest does not declare
        (set by the stage at setup, before any loader is made)."""
        self.readers = tuple(readers)

    def _batches_done(self) -> int:
        return batches_trained(self.trainer)

    def state_dict(self) -> dict[str, Any]:
        # kept in checkpoints so a resume can say what its other settings change
        return {"loader_settings": loader_settings(self.hparams, self.trainer)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict.get("loader_settings")
        if saved:
            now = loader_settings(self.hparams, self.trainer)
            warn_changed_settings(saved, now, f"on {self.hparams.train_dir}")

    def train_dataloader(self) -> StepSeededLoader:
        import webdataset as wds

        hp = self.hparams
        stream = TokenStream(
            self.urls,
            spec=self.spec,
            seconds=hp.seconds,
            batch_size=hp.batch_size,
            seed=hp.seed,
            shuffle_buffer=hp.shuffle_buffer,
            max_consecutive_skips=hp.max_consecutive_skips,
            readers=self.readers,
        )
        loader = wds.WebLoader(
            stream,
            batch_size=None,
            num_workers=hp.num_workers,
            persistent_workers=False,  # workers must see the epoch set before each pass
            prefetch_factor=4 if hp.num_workers else None,
        ).with_epoch(hp.batches_per_epoch)
        return StepSeededLoader(stream, loader, hp.batches_per_epoch, self._batches_done)

    def val_dataloader(self) -> Any:
        import webdataset as wds

        if not self.val_urls:
            return []
        hp = self.hparams
        skips = SkipCounter()
        pipeline = wds.DataPipeline(
            wds.SimpleShardList(self.val_urls),
            wds.tarfile_to_samples(handler=skips.handler),
            wds.map(
                partial(
                    crop_sample, spec=self.spec, seconds=hp.seconds, rng=None, readers=self.readers
                ),
                handler=skips.handler,
            ),
            wds.batched(hp.batch_size, collation_fn=collate, partial=True),
            wds.slice(hp.val_batches),
        )
        return wds.WebLoader(pipeline, batch_size=None, num_workers=0)
