"""Groups of clips that play the same melody, for the melody embedding stage.

Two sources give groups:

- the demo corpus's tunes (``manifest=None``), rendered on the fly from their note lists: one
  group is one stretch of one tune (a bar-aligned start and a transposition), played by
  ``views`` different instruments at tempi up to ``tempo_jitter`` apart, in other octaves,
  some views reduced to the top line (a hummed melody has one voice, a chorale four). Tunes
  are split by piece exactly as the demo corpus splits them, so validation tunes are unseen;
- a JSONL manifest for user data: one line per clip, ``{"audio": path (relative to the
  manifest), "melody_id": str, "split": "train"|"valid"|"test" (default "train")}``. Clips
  with one ``melody_id`` are taken to play the same melody, aligned in time (covers, stems,
  hums over a reference): windows are cut at the same relative position in each.

Train batches are ``{"audio": (G * V, T), "label": (G * V,)}`` drawn forever from a seeded
generator; every rank and worker yields its share of exactly ``batches_per_epoch`` batches per
epoch (no DDP hang), reseeded from the trainer's global step when the loader is built (a
resumed run does not replay the stream). Validation holds ``val_groups`` fixed groups of two
views in two different instruments (queries and the gallery for recall@1 across timbres).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import lightning as L
import numpy as np
import torch

from musiclm.datamodules.shards import atomic_write_text

DEMO_SPLITS_SEED = 0  # the demo corpus's default seed: its piece -> split assignment


def melody_line(notes: list[tuple[float, float, int]]) -> list[tuple[float, float, int]]:
    """The top voice of a note list: the highest note at each onset, cut at the next onset."""
    by_onset: dict[float, tuple[float, float, int]] = {}
    for onset, dur, pitch in notes:
        key = round(onset, 6)
        if key not in by_onset or pitch > by_onset[key][2]:
            by_onset[key] = (onset, dur, pitch)
    line = sorted(by_onset.values())
    out = []
    for (onset, dur, pitch), nxt in zip(line, [*line[1:], None], strict=True):
        end = onset + dur if nxt is None else min(onset + dur, nxt[0])
        out.append((onset, max(end - onset, 1e-3), pitch))
    return out


class DemoMelodies:
    """Groups rendered from the demo corpus's tunes of one split (see module docstring)."""

    def __init__(
        self,
        split: str,
        *,
        sample_rate: int,
        seconds: float,
        tempo_jitter: float = 0.15,
        top_line_prob: float = 0.5,
        split_seed: int = DEMO_SPLITS_SEED,
        instruments: list[str] | None = None,
    ) -> None:
        from musiclm.demo_corpus import INSTRUMENTS, load_tunes
        from musiclm.demo_corpus.builder import assign_splits

        tunes = load_tunes()
        splits = assign_splits(tunes, split_seed)
        self.tunes = sorted((t for t in tunes if splits[t.id] == split), key=lambda t: t.id)
        if not self.tunes:
            raise ValueError(f"demo melodies: no tunes in split {split!r}")
        self.instruments = list(instruments or INSTRUMENTS)
        unknown = set(self.instruments) - set(INSTRUMENTS)
        if unknown:
            raise ValueError(f"demo melodies: unknown instruments {sorted(unknown)}")
        self.sample_rate, self.seconds = sample_rate, seconds
        self.tempo_jitter, self.top_line_prob = tempo_jitter, top_line_prob

    def __len__(self) -> int:
        return len(self.tunes)

    def group(
        self, index: int, views: int, rng: np.random.Generator, *, instruments: list[str] = ()
    ) -> list[np.ndarray]:
        """``views`` renderings (float32, ``seconds`` long) of one stretch of tune ``index``."""
        from musiclm.demo_corpus import clip_notes, render_notes
        from musiclm.demo_corpus.builder import _BPM_RANGES, beats_per_bar
        from musiclm.demo_corpus.synth import voice

        tune = self.tunes[index % len(self.tunes)]
        lo, hi = _BPM_RANGES.get(tune.source, (80, 140))
        base = float(rng.uniform(lo, hi))
        bar = beats_per_bar(tune.meter)
        beats = self.seconds * base * (1 + self.tempo_jitter) / 60.0
        start = float(rng.integers(0, int(max(0.0, tune.length - beats) // bar) + 1) * bar)
        notes = clip_notes(tune, start=start, beats=beats, transpose=int(rng.integers(-5, 7)))
        if not notes:
            notes = clip_notes(tune, start=0.0, beats=beats)
        names = list(instruments) or list(
            rng.choice(self.instruments, size=views, replace=views > len(self.instruments))
        )
        out = []
        for name in names[:views]:
            view = melody_line(notes) if rng.random() < self.top_line_prob else notes
            pitches = [p for _, _, p in view]
            v_lo, v_hi = voice(name).range
            # any octave that keeps the notes playable on this instrument
            shifts = [
                12 * k for k in range(-3, 4) if min(pitches) + 12 * k >= v_lo - 5
                and max(pitches) + 12 * k <= v_hi + 5
            ] or [0]  # fmt: skip
            shift = int(rng.choice(shifts))
            bpm = base * float(rng.uniform(1 - self.tempo_jitter, 1 + self.tempo_jitter))
            y = render_notes(
                [(o, d, p + shift) for o, d, p in view],
                instrument=name,
                bpm=bpm,
                sample_rate=self.sample_rate,
                seconds=self.seconds,
                seed=int(rng.integers(2**31)),
            )
            out.append(y)
        return out


class ManifestMelodies:
    """Groups from a JSONL manifest of clips with a ``melody_id`` (see module docstring)."""

    def __init__(self, manifest: str, split: str, *, sample_rate: int, seconds: float) -> None:
        path = Path(manifest)
        if not path.is_file():
            raise FileNotFoundError(f"melody manifest {manifest} does not exist")
        groups: dict[str, list[Path]] = {}
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                audio, melody_id = entry["audio"], str(entry["melody_id"])
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise ValueError(
                    f"{manifest} line {n}: need a JSON object with 'audio' and 'melody_id' "
                    f"({exc.__class__.__name__}: {exc})"
                ) from None
            if entry.get("split", "train") != split:
                continue
            clip = (path.parent / audio).resolve()
            if not clip.is_file():
                raise FileNotFoundError(f"{manifest} line {n}: audio file {clip} does not exist")
            groups.setdefault(melody_id, []).append(clip)
        self.groups = [v for _, v in sorted(groups.items()) if len(v) >= 2]
        if len(self.groups) < 2:
            raise ValueError(
                f"{manifest}: split {split!r} needs >= 2 melody_ids with >= 2 clips each, has "
                f"{len(self.groups)}"
            )
        self.sample_rate, self.seconds = sample_rate, seconds
        self._cache: dict[Path, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.groups)

    def _load(self, clip: Path) -> np.ndarray:
        if clip not in self._cache:
            import soundfile as sf

            try:
                y, sr = sf.read(str(clip), dtype="float32", always_2d=True)
            except Exception as exc:
                raise ValueError(f"melody manifest: cannot read audio {clip}: {exc}") from exc
            y = y.mean(axis=1)
            if sr != self.sample_rate:
                import torchaudio

                y = torchaudio.functional.resample(
                    torch.from_numpy(y), sr, self.sample_rate
                ).numpy()
            self._cache[clip] = y
        return self._cache[clip]

    def group(
        self, index: int, views: int, rng: np.random.Generator, *, instruments: list[str] = ()
    ) -> list[np.ndarray]:
        clips = self.groups[index % len(self.groups)]
        picks = rng.choice(len(clips), size=views, replace=views > len(clips))
        where = float(rng.random())  # same relative position in every clip of the group
        n = int(round(self.seconds * self.sample_rate))
        out = []
        for i in picks:
            y = self._load(clips[int(i)])
            if len(y) < n:
                y = np.pad(y, (0, n - len(y)))
            start = int(where * (len(y) - n))
            out.append(y[start : start + n].astype(np.float32))
        return out


def _worker_seed_info() -> tuple[int, int, int, int, int | None]:
    """(rank, world size, worker, workers) and the DataLoader's per-pass worker seed."""
    from torch.utils.data import get_worker_info

    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    info = get_worker_info()
    if info is None:
        return rank, world, 0, 1, None
    return rank, world, info.id, info.num_workers, int(info.seed)


class MelodyGroupBatches(torch.utils.data.IterableDataset):
    """Endless seeded group batches; each pass yields this rank's share of ``batches``."""

    def __init__(self, source, *, groups: int, views: int, batches: int, seed: int) -> None:
        super().__init__()
        self.source, self.groups, self.views = source, groups, views
        self.batches, self.seed = batches, seed
        self._passes = 0

    def __iter__(self) -> Iterator[dict]:
        rank, _, worker, workers, worker_seed = _worker_seed_info()
        # a worker's seed changes every pass (DataLoader draws it); in-process, count passes
        pass_id = worker_seed if worker_seed is not None else self._passes
        self._passes += 1
        rng = np.random.default_rng([self.seed, rank, worker, pass_id % 2**32])
        for _ in range(worker, self.batches, workers):
            idx = rng.choice(
                len(self.source), size=self.groups, replace=self.groups > len(self.source)
            )
            audio, labels = [], []
            for label, i in enumerate(idx):
                audio += self.source.group(int(i), self.views, rng)
                labels += [label] * self.views
            yield {
                "audio": torch.from_numpy(np.stack(audio)),
                "label": torch.tensor(labels, dtype=torch.long),
            }


def fixed_pairs(source, count: int, *, seed: int, batch: int) -> list[dict]:
    """``count`` groups of two views in two different instruments (demo source) or two clips
    (manifest source), batched; ``view`` says which side of the pair a row is."""
    rows: list[tuple[np.ndarray, int, int]] = []
    for g in range(count):
        rng = np.random.default_rng([seed, g])
        instruments: list[str] = []
        if isinstance(source, DemoMelodies):
            instruments = list(rng.choice(source.instruments, size=2, replace=False))
        views = source.group(g, 2, rng, instruments=instruments)
        rows += [(views[0], g, 0), (views[1], g, 1)]
    out = []
    for i in range(0, len(rows), batch):
        part = rows[i : i + batch]
        out.append(
            {
                "audio": torch.from_numpy(np.stack([r[0] for r in part])),
                "label": torch.tensor([r[1] for r in part]),
                "view": torch.tensor([r[2] for r in part]),
            }
        )
    return out


class MelodyDataModule(L.LightningDataModule):
    """Same-melody groups for ``MelodyStage`` from the demo tunes or a JSONL manifest."""

    def __init__(
        self,
        manifest: str | None = None,
        *,
        sample_rate: int = 16000,
        window_seconds: float = 4.0,
        groups_per_batch: int = 16,
        views_per_group: int = 2,
        batches_per_epoch: int = 100,
        val_groups: int = 64,
        val_batch_size: int = 32,
        tempo_jitter: float = 0.15,
        top_line_prob: float = 0.5,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        """
        Args:
            manifest: JSONL of ``{"audio", "melody_id", "split"}`` lines; None: the demo tunes.
            sample_rate, window_seconds: what the network sees (the paper: 4 s windows).
            groups_per_batch, views_per_group: a batch holds G melodies x V renditions.
            batches_per_epoch: per rank, all workers together.
            val_groups: fixed validation pairs (query and gallery) for recall@1.
            tempo_jitter, top_line_prob: demo source only (see ``DemoMelodies``).
        """
        super().__init__()
        if groups_per_batch < 2 or views_per_group < 2 or batches_per_epoch < 1:
            raise ValueError(
                "MelodyDataModule: need groups_per_batch >= 2, views_per_group >= 2 and "
                f"batches_per_epoch >= 1 (got {groups_per_batch}, {views_per_group}, "
                f"{batches_per_epoch})"
            )
        self.save_hyperparameters()
        self._val: list[dict] | None = None
        self._test: list[dict] | None = None

    def source(self, split: str):
        hp = self.hparams
        if hp.manifest is None:
            return DemoMelodies(
                split,
                sample_rate=hp.sample_rate,
                seconds=hp.window_seconds,
                tempo_jitter=hp.tempo_jitter,
                top_line_prob=hp.top_line_prob,
            )
        return ManifestMelodies(
            hp.manifest, split, sample_rate=hp.sample_rate, seconds=hp.window_seconds
        )

    def _step(self) -> int:
        trainer = getattr(self, "_trainer", None)
        return int(trainer.global_step) if trainer is not None else 0

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        hp = self.hparams
        seed = int(np.random.SeedSequence([hp.seed, self._step()]).generate_state(1)[0])
        data = MelodyGroupBatches(
            self.source("train"),
            groups=hp.groups_per_batch,
            views=hp.views_per_group,
            batches=hp.batches_per_epoch,
            seed=seed,
        )
        return torch.utils.data.DataLoader(data, batch_size=None, num_workers=hp.num_workers)

    def _pairs(self, split: str) -> list[dict]:
        hp = self.hparams
        return fixed_pairs(
            self.source(split), hp.val_groups, seed=hp.seed + 1, batch=hp.val_batch_size
        )

    def val_dataloader(self) -> torch.utils.data.DataLoader:
        if self._val is None:  # rendered once, then reused by every validation pass
            self._val = self._pairs("valid")
        return torch.utils.data.DataLoader(self._val, batch_size=None)

    def test_dataloader(self) -> torch.utils.data.DataLoader:
        if self._test is None:
            self._test = self._pairs("test")
        return torch.utils.data.DataLoader(self._test, batch_size=None)


def _render_group(job: tuple[str, int, int, int, int, float, float, str]) -> list[dict]:
    import soundfile as sf

    split, index, views, seed, sample_rate, seconds, tempo_jitter, out = job
    src = _DEMO_CACHE.get((split, sample_rate, seconds, tempo_jitter))
    if src is None:
        src = DemoMelodies(
            split, sample_rate=sample_rate, seconds=seconds, tempo_jitter=tempo_jitter
        )
        _DEMO_CACHE[(split, sample_rate, seconds, tempo_jitter)] = src
    rng = np.random.default_rng([seed, 11, index])
    tune = src.tunes[index % len(src)]
    names = list(rng.choice(src.instruments, size=views, replace=views > len(src.instruments)))
    rows = []
    for v, y in enumerate(src.group(index, views, rng, instruments=names)):
        rel = f"audio/{split}-{index:05d}-{v}.wav"
        path = Path(out) / rel
        tmp = path.with_name(f".{path.name}.tmp")
        sf.write(tmp, y, sample_rate, format="WAV", subtype="PCM_16")
        tmp.replace(path)
        melody_id = f"{tune.id}@{index}"  # one stretch of one tune: views play the same notes
        rows.append(
            {"audio": rel, "melody_id": melody_id, "split": split, "piece": tune.id,
             "instrument": str(names[v])}
        )  # fmt: skip
    return rows


_DEMO_CACHE: dict[tuple, DemoMelodies] = {}


def build_melody_pairs(
    out: str | Path,
    *,
    groups: dict[str, int],
    views: int = 2,
    sample_rate: int = 16000,
    seconds: float = 4.0,
    tempo_jitter: float = 0.15,
    seed: int = 0,
    workers: int = 1,
) -> Path:
    """Render ``groups[split]`` same-melody groups of ``views`` instruments per split from the
    demo tunes into ``out/audio/*.wav`` and ``out/melodies.jsonl`` (the manifest format of
    ``ManifestMelodies``). The same arguments give the same files."""
    from concurrent.futures import ProcessPoolExecutor

    if views < 2 or seconds <= 0 or not groups:
        raise ValueError(f"melody pairs: need views >= 2, seconds > 0 (got {views}, {seconds})")
    out = Path(out)
    (out / "audio").mkdir(parents=True, exist_ok=True)
    jobs = [
        (split, i, views, seed, sample_rate, seconds, tempo_jitter, str(out))
        for split, count in groups.items()
        for i in range(count)
    ]
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            rows = [r for group in pool.map(_render_group, jobs, chunksize=4) for r in group]
    else:
        rows = [r for job in jobs for r in _render_group(job)]
    manifest = out / "melodies.jsonl"
    atomic_write_text(manifest, "".join(json.dumps(r) + "\n" for r in rows))
    return manifest
