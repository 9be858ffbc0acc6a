"""``musiclm prepare tokens``: audio shards -> token shards, on Lightning's predict engine.

For every split folder of ``--audio``, each input shard ``audio-X.tar`` becomes
``OUT/<split>/tokens-audio-X.tar``: per clip ``semantic.npy`` [F_s], ``acoustic.npy`` [Q, F_a]
(all levels), ``mulan.npy`` [Q_m] (with ``--mulan`` or ``--joint-embedding``, and
``--mulan-rvq``), ``melody.npy`` [W, L_mel] (with
``--melody``: melody tokens of every window of the clip, one every ``hop_s``), ``beat.npy``
[F_s] and ``tempo.npy`` [1] (with ``--beats``: the beat clock, ``musiclm.tokenizers.beats``;
with ``--mulan`` too, ``mulan_embedding.npy`` [D] for the tempo predictor), ``caption.txt``
and ``json``.

``Trainer.predict`` runs it: every (rank, dataloader worker) takes a disjoint slice of the
input shards, and a ``BasePredictionWriter`` writes each finished output shard under a
temporary name, renames it, then leaves a record in ``OUT/<split>/progress/``. A rerun skips
input shards that have a record, so a killed job resumes with nothing lost or duplicated, on
any number of devices. Corrupt tars and samples are skipped and counted. When all ranks are
done, rank 0 writes ``OUT/<split>/manifest.json`` with rates, sizes, counts and fingerprints.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import LightningModule, Trainer
from torch.utils.data import DataLoader, IterableDataset

from musiclm.datamodules.shards import (
    SkipCounter,
    atomic_write_json,
    decode_audio_sample,
    read_manifest,
)
from musiclm.datamodules.token_spec import BeatSpec
from musiclm.folder_lock import env_slot, folder_lock
from musiclm.tokenizers import joint
from musiclm.tokenizers.beats import BeatTracker, metadata_bpm
from musiclm.tokenizers.fingerprints import check_fingerprints
from musiclm.tokenizers.token_writer import TokenShardWriter, unit_done, write_manifest
from musiclm.usage import number, run_command

__all__ = ["check_fingerprints", "main", "prepare_tokens"]


def split_dirs(audio: Path) -> list[Path]:
    """The split folders under ``audio`` (or ``audio`` itself when it is one)."""
    if (audio / "manifest.json").is_file():
        return [audio]
    found = sorted(d for d in audio.iterdir() if (d / "manifest.json").is_file())
    if not found:
        raise FileNotFoundError(f"{audio}: no manifest.json in it or in any sub-folder (split)")
    return found


def _rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class AudioShardBatches(IterableDataset):
    """Yields ready batches of one input shard at a time (``DataLoader(batch_size=None)``).

    A batch: ``unit`` (index into ``units``), ``keys``, ``captions``, ``metas``,
    ``lengths`` (samples at the source rate), ``sources`` (per-rate padded audio (B, 1, T)
    and lengths), ``last`` (the shard's final batch) and, on it, ``skipped``.
    """

    def __init__(
        self,
        units: list[tuple[str, str, str]],
        rates: dict[str, int],
        batch_size: int,
    ) -> None:
        self.units, self.rates, self.batch_size = units, rates, batch_size

    def _mine(self) -> list[int]:
        rank, world = _rank_world()
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        return list(range(len(self.units)))[rank * workers + worker :: world * workers]

    def _batch(self, unit: int, items: list[dict], last: bool, skips: SkipCounter) -> dict:
        from musiclm.tokenizers.fit_codec import resample

        sources = {}
        for name, rate in self.rates.items():
            waves = [resample(s["audio"], s["sample_rate"], rate) for s in items]
            lengths = [w.shape[0] for w in waves]
            padded = torch.zeros(len(waves), 1, max(lengths, default=1))
            for i, w in enumerate(waves):
                padded[i, 0, : w.shape[0]] = w
            sources[name] = (padded, lengths)
        batch = {
            "unit": unit,
            "keys": [s["key"] for s in items],
            "captions": [s["caption"] for s in items],
            "metas": [s["meta"] for s in items],
            "seconds": [len(s["audio"]) / s["sample_rate"] for s in items],
            "sources": sources,
            "last": last,
        }
        if last:
            batch["skipped"] = {"count": skips.count, "reasons": skips.reasons[:10]}
        return batch

    def __iter__(self):
        import webdataset as wds

        for unit in self._mine():
            split_out, shard, _ = self.units[unit]
            if unit_done(Path(split_out), shard):
                continue
            skips = SkipCounter(warn=False)
            pipeline = wds.DataPipeline(
                wds.SimpleShardList([shard]),
                wds.tarfile_to_samples(handler=skips.handler),
                wds.map(decode_audio_sample, handler=skips.handler),
            )
            pending: list[dict] = []
            for sample in pipeline:
                pending.append(sample)
                if len(pending) > self.batch_size:  # keep one back so "last" is known
                    yield self._batch(unit, pending[: self.batch_size], False, skips)
                    pending = pending[self.batch_size :]
            yield self._batch(unit, pending, True, skips)


def _frames(length: int, sample_rate: int, frame_rate: float) -> int:
    return max(1, int(np.ceil(length * frame_rate / sample_rate - 1e-9)))


class Tokenize(LightningModule):
    """Runs codec, semantic tokenizer and (optional) MuLan conditioner on a batch."""

    def __init__(
        self,
        codec: Any,
        semantic: Any,
        mulan: Any | None = None,
        melody: Any | None = None,
        beats: BeatTracker | None = None,
    ) -> None:
        super().__init__()
        self.codec, self.semantic, self.mulan = codec, semantic, mulan
        self.melody, self.beats = melody, beats

    def on_predict_start(self) -> None:
        # plugins are plain objects: move their networks to this rank's device ourselves
        for plugin in (self.codec, self.semantic, self.mulan):
            net = getattr(plugin, "model", None)
            if isinstance(net, torch.nn.Module) and hasattr(plugin, "device"):
                net.to(self.device)
                plugin.device = self.device
        for conditioner in (self.mulan, self.melody):
            if conditioner is not None:
                conditioner.to(self.device)

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        out: dict[str, Any] = {"acoustic": [], "semantic": [], "mulan": [], "melody": []}
        out |= {"beat": [], "tempo": [], "mulan_embedding": []}
        if not batch["keys"]:
            return out
        wav, lengths = batch["sources"]["codec"]
        codes = self.codec.encode(wav).cpu()
        sr, fr = self.codec.sample_rate, self.codec.frame_rate
        out["acoustic"] = [codes[i, :, : _frames(n, sr, fr)].numpy() for i, n in enumerate(lengths)]
        wav, lengths = batch["sources"]["semantic"]
        tokens = self.semantic.tokenize(wav).cpu()
        sr, fr = self.semantic.sample_rate, self.semantic.frame_rate
        out["semantic"] = [tokens[i, : _frames(n, sr, fr)].numpy() for i, n in enumerate(lengths)]
        if self.beats is not None:
            for i, n in enumerate(lengths):
                known = metadata_bpm(batch["metas"][i])
                audio = wav[i, 0, :n].cpu().numpy()
                beat, tempo = self.beats.track(audio, _frames(n, sr, fr), known)
                out["beat"].append(beat)
                out["tempo"].append(np.array([tempo]))
        if self.mulan is not None:
            wav, lengths = batch["sources"]["mulan"]
            # one clip at a time: zero padding would change a clip's embedding
            emb = [self.mulan.embed_audio(wav[i : i + 1, :, :n]) for i, n in enumerate(lengths)]
            out["mulan"] = [self.mulan.rvq.tokens(e)[0].cpu().numpy() for e in emb]
            if self.beats is not None:
                out["mulan_embedding"] = self._tempo_inputs(batch["captions"], emb)
        if self.melody is not None:
            wav, lengths = batch["sources"]["melody"]
            out["melody"] = [
                self.melody.window_tokens(wav[i : i + 1, :, :n])[0].cpu().numpy()
                for i, n in enumerate(lengths)
            ]
        return out

    def _tempo_inputs(self, captions: list[str], audio: list[torch.Tensor]) -> list[np.ndarray]:
        """MuLan embedding of each caption (what the tempo predictor reads at generation),
        of the audio (``audio``, (1, D) each) for a clip without one."""
        out = [e[0].cpu().numpy() for e in audio]
        given = [i for i, c in enumerate(captions) if c.strip()]
        if given:
            text = self.mulan.embed_text([captions[i] for i in given]).cpu().numpy()
            for i, row in zip(given, text, strict=True):
                out[i] = row
        return out


def _header(
    codec, codec_name, codec_args, sem, sem_name, sem_args, mulan, mulan_files,
    melody=None, melody_files=None, beats=None,
) -> dict:  # fmt: skip
    beat_section = {}
    if beats is not None:
        dim = 0 if mulan is None else int(mulan.mulan.embed_dim)
        clock = dataclasses.replace(beats.spec, tempo_input_dim=dim)
        beat_section = {"beats": clock.to_manifest(beats.frame_rate)}
    return {
        "codec": {
            "name": codec_name,
            "args": codec_args,
            "fingerprint": codec.fingerprint(),
            "sample_rate": codec.sample_rate,
            "frame_rate": codec.frame_rate,
            "num_quantizers": codec.num_quantizers,
            "codebook_size": codec.codebook_size,
        },
        "semantic": {
            "name": sem_name,
            "args": sem_args,
            "fingerprint": sem.fingerprint(),
            "sample_rate": sem.sample_rate,
            "frame_rate": sem.frame_rate,
            "vocab_size": sem.vocab_size,
        },
        "mulan": None
        if mulan is None
        else {
            **joint.JointEmbeddingSpec.of(mulan_files[0]).to_block(),
            "rvq": mulan_files[1],
            "fingerprint": mulan.fingerprint(),
            "num_levels": mulan.num_levels,
            "codebook_size": mulan.codebook_size,
        },
        **_melody_header(melody, melody_files),
        **beat_section,
    }


def _melody_header(melody, files) -> dict:
    """The manifest's ``melody`` section; absent (not null) without melody tokens, so the
    manifests of runs without melody stay as they were."""
    if melody is None:
        return {}
    return {
        "melody": {
            "checkpoint": files[0],
            "rvq": files[1],
            "fingerprint": melody.fingerprint(),
            "num_windows": melody.num_windows,
            "num_levels": melody.num_levels,
            "codebook_size": melody.codebook_size,
            "hop_seconds": melody.hop_seconds,
            "input_seconds": melody.input_seconds,
            "sample_rate": melody.sample_rate,
        }
    }


def prepare_tokens(
    audio: str | Path,
    out: str | Path,
    *,
    codec: str,
    semantic: str,
    codec_args: dict | None = None,
    semantic_args: dict | None = None,
    mulan: tuple[str | joint.JointEmbeddingSpec, str] | None = None,
    melody: tuple[str, str] | None = None,
    beats: BeatSpec | None = None,
    batch_size: int = 8,
    num_workers: int = 0,
    accelerator: str = "cpu",
    devices: int | str = 1,
    num_nodes: int = 1,
    progress: bool = True,
) -> dict[str, dict]:
    """Tokenize every split of ``audio`` into ``out``; returns rank 0's manifests by split.

    ``mulan``: (a MuLan checkpoint or a joint-embedding spec, its conditioning RVQ).
    ``beats``: also write the beat clock at the semantic frame rate (``BeatSpec()`` for the
    defaults)."""
    from musiclm import registry
    from musiclm.tokenizers.base import build

    audio, out = Path(audio), Path(out)
    codec_args, semantic_args = dict(codec_args or {}), dict(semantic_args or {})
    # both names, then both argument sets, checked before either plugin is built (building
    # one can take a while)
    plugins = (("codecs", codec, codec_args), ("semantic_tokenizers", semantic, semantic_args))
    for kind, name, _ in plugins:
        registry.load(kind, name)
    for kind, name, kwargs in plugins:
        registry.check_arguments(kind, name, **kwargs)
    if mulan is not None:
        joint.JointEmbeddingSpec.of(mulan[0]).check()
    # the input folders too: a missing, malformed or incomplete manifest is refused before
    # any model is built
    manifests_in = {split_in: read_manifest(split_in) for split_in in split_dirs(audio)}
    # one writer per rank: a second `prepare tokens` into OUT would race on its temp names
    # and progress records
    with folder_lock(out, slot=env_slot()):
        c = build("codecs", codec, **codec_args)
        s = build("semantic_tokenizers", semantic, **semantic_args)
        m = None
        if mulan is not None:
            from musiclm.conditioning.conditioning_rvq import MulanConditioner

            m = MulanConditioner.from_files(*mulan)
        mel = None
        if melody is not None:
            from musiclm.conditioning.melody_tokens import MelodyConditioner

            mel = MelodyConditioner.from_files(*melody)
        tracker = None
        if beats is not None:
            tracker = BeatTracker(beats, sample_rate=s.sample_rate, frame_rate=s.frame_rate)
        header = _header(
            c, codec, codec_args, s, semantic, semantic_args, m, mulan, mel, melody, tracker
        )

        job = out / "job.json"
        if job.is_file():  # a rerun must resume with the same tokenizers, not mix two
            _check_resume(json.loads(job.read_text()), header, f"{out} (resuming an earlier run)")
        elif _rank_world()[0] == 0 and os.environ.get("LOCAL_RANK", "0") == "0":
            atomic_write_json(job, header)

        units, inputs = _work_units(manifests_in, audio, out)
        trainer = _predict(
            Tokenize(c, s, m, mel, tracker), units, batch_size, num_workers, progress,
            accelerator=accelerator, devices=devices, num_nodes=num_nodes,
        )  # fmt: skip
        manifests = {}
        if trainer.global_rank == 0:
            for split_out, files in inputs.items():
                manifests[split_out.name] = write_manifest(split_out, files, header)
        return manifests


def _check_resume(prev: dict, header: dict, where: str) -> None:
    """An earlier run's ``job.json`` must name the same tokenizers, conditioners and clock."""
    check_fingerprints(
        prev,
        codec=header["codec"]["fingerprint"],
        semantic=header["semantic"]["fingerprint"],
        mulan=(header.get("mulan") or {}).get("fingerprint"),
        where=where,
    )
    melody = [(d.get("melody") or {}).get("fingerprint") for d in (prev, header)]
    beats = [d.get("beats") for d in (prev, header)]
    for what, (was, now) in (("melody fingerprint", melody), ("beat clock", beats)):
        if was != now:
            raise ValueError(f"{where}: {what} in the shards is {was!r} but this run gives {now!r}")


def _work_units(
    manifests_in: dict[Path, dict], audio: Path, out: Path
) -> tuple[list[tuple[str, str, str]], dict[Path, list[str]]]:
    """(output split, input shard, input split) per shard, and each output split's inputs."""
    units, inputs = [], {}
    for split_in, manifest in manifests_in.items():
        split_out = out / (split_in.name if split_in != audio else audio.name)
        (split_out / "progress").mkdir(parents=True, exist_ok=True)
        files = [str(split_in / sh["file"]) for sh in manifest["shards"]]
        inputs[split_out] = files
        units += [(str(split_out), f, split_in.name) for f in files]
    return units, inputs


def _predict(
    module: Tokenize,
    units: list[tuple[str, str, str]],
    batch_size: int,
    num_workers: int,
    progress: bool,
    **devices: Any,
) -> Trainer:
    """Tokenize every unit with Lightning's predict loop; the writer callback writes shards."""
    c, s, m, mel = module.codec, module.semantic, module.mulan, module.melody
    rates = {"codec": c.sample_rate, "semantic": s.sample_rate}
    if m is not None:
        rates["mulan"] = m.sample_rate
    if mel is not None:
        rates["melody"] = mel.sample_rate
    vocab = {"a": c.codebook_size, "s": s.vocab_size, "m": m.codebook_size if m else 0}
    vocab["l"] = mel.codebook_size if mel else 0
    loader = DataLoader(
        AudioShardBatches(units, rates, batch_size), batch_size=None, num_workers=num_workers
    )
    trainer = Trainer(
        **devices,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=progress,
        callbacks=[TokenShardWriter(units, vocab)],
        use_distributed_sampler=False,
    )
    with warnings.catch_warnings():
        # batches are whole-shard slices we index ourselves; Lightning's indices are unused
        warnings.filterwarnings("ignore", message="Couldn't infer the batch indices")
        trainer.predict(module, dataloaders=loader, return_predictions=False)
    return trainer


def _json_arg(p: argparse.ArgumentParser, text: str, flag: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        p.error(f"{flag} is not valid JSON: {exc}")
    if not isinstance(value, dict):
        p.error(f"{flag} must be a JSON object")
    return value


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="musiclm prepare tokens",
        description="Audio shards -> token shards OUT/<split>/tokens-*.tar + manifest.json.",
    )
    p.add_argument("--audio", required=True, help="audio shard folder (splits, or one split)")
    p.add_argument("--out", required=True)
    p.add_argument("--codec", required=True, help="codec plugin (`musiclm plugins`)")
    p.add_argument("--codec-args", default="{}", help="JSON kwargs for the codec")
    p.add_argument("--semantic", required=True, help="semantic tokenizer plugin")
    p.add_argument("--semantic-args", default="{}", help="JSON kwargs for the tokenizer")
    p.add_argument("--mulan", default=None, help="MuLan checkpoint (with --mulan-rvq)")
    joint.add_arguments(p, instead_of="--mulan")
    p.add_argument("--mulan-rvq", default=None, help="conditioning RVQ artifact")
    p.add_argument("--melody", default=None, help="MelodyStage checkpoint (with --melody-rvq)")
    p.add_argument("--melody-rvq", default=None, help="melody RVQ artifact (melody tokens)")
    p.add_argument(
        "--beats",
        action="store_true",
        help="also write the beat clock (librosa beat tracker) for beat-conditioned semantic LMs",
    )
    p.add_argument("--batch-size", type=number(int, low=1), default=8)
    p.add_argument("--num-workers", type=number(int, low=0), default=0)
    p.add_argument("--accelerator", default="cpu")
    p.add_argument("--devices", default="1", help="count, or 'auto'")
    p.add_argument("--num-nodes", type=number(int, low=1), default=1)
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    a.mulan = joint.from_arguments(p, a.mulan, a, flag="--mulan")
    if (a.mulan is None) != (a.mulan_rvq is None):
        p.error("--mulan (or --joint-embedding) and --mulan-rvq go together")
    if (a.melody is None) != (a.melody_rvq is None):
        p.error("--melody and --melody-rvq go together")
    codec_args = _json_arg(p, a.codec_args, "--codec-args")
    semantic_args = _json_arg(p, a.semantic_args, "--semantic-args")
    return run_command("musiclm prepare tokens", lambda: _run(a, codec_args, semantic_args))


def _run(a: argparse.Namespace, codec_args: dict, semantic_args: dict) -> int:
    manifests = prepare_tokens(
        a.audio,
        a.out,
        codec=a.codec,
        semantic=a.semantic,
        codec_args=codec_args,
        semantic_args=semantic_args,
        mulan=(a.mulan, a.mulan_rvq) if a.mulan else None,
        melody=(a.melody, a.melody_rvq) if a.melody else None,
        beats=BeatSpec() if a.beats else None,
        batch_size=a.batch_size,
        num_workers=a.num_workers,
        accelerator=a.accelerator,
        devices=int(a.devices) if a.devices.isdigit() else a.devices,
        num_nodes=a.num_nodes,
        progress=not a.no_progress,
    )
    for split, man in manifests.items():
        print(
            json.dumps(
                {
                    "split": split,
                    "num_samples": man["num_samples"],
                    "total_seconds": man["total_seconds"],
                    "skipped": sum(s["count"] for s in man["skipped"]),
                    "complete": man["complete"],
                }
            )
        )
    return 0
