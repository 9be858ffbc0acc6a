"""``musiclm evaluate``: MCC, FAD, attribute adherence and memorization -> metrics.json/.md.

    musiclm evaluate --generated GEN --reference SHARDS/test --train-reference SHARDS/train \
        --pipeline PIPELINE.yaml --out EVAL [--embedding mulan] [--memorization]

See docs/evaluation.md for the inputs each metric needs and how each is computed.
``metrics.json`` is written last, as the marker of a finished pair (``commit_report``); the
attribute estimators record the ``--train-reference`` they were fitted on and are refitted
when it changes.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from musiclm.evaluation.clips import Clip
from musiclm.tokenizers import joint
from musiclm.usage import run_command

METRICS = ("structure", "adherence", "mcc", "fad", "memorization")
_DEFAULT_METRICS = "structure,adherence,mcc,fad"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="musiclm evaluate",
        description="Score generated audio: attribute adherence, MuLan cycle consistency, "
        "Fréchet audio distance, and (with --memorization) the semantic LM's memorization.",
    )
    p.add_argument("--generated", required=True, help="folder of <name>.wav + <name>.json")
    p.add_argument("--reference", required=True, help="real held-out audio: shard split folder")
    p.add_argument("--out", required=True, help="folder for metrics.json and metrics.md")
    p.add_argument("--train-reference", help="real training audio (shards) to fit estimators on")
    p.add_argument(
        "--estimators",
        help="attribute estimators JSON: loaded if it exists (and, with --train-reference, "
        "was fitted on it), else fitted on --train-reference and saved here (default "
        "OUT/attribute_estimators.json)",
    )
    p.add_argument("--pipeline", help="PIPELINE.yaml naming the MuLan and semantic checkpoints")
    p.add_argument("--mulan", help="MuLan checkpoint (overrides the pipeline's)")
    joint.add_arguments(p, instead_of="--mulan (overrides the pipeline's)")
    p.add_argument(
        "--embedding",
        help="FAD embedding: mulan (default when MuLan is given), logmel (default otherwise), "
        "semantic:NAME[:JSON-args], or package.module:function",
    )
    p.add_argument(
        "--metrics",
        default=_DEFAULT_METRICS,
        help=f"comma-separated subset of {','.join(METRICS)} (default structure,adherence,mcc,fad)",
    )
    p.add_argument("--memorization", action="store_true", help="add the memorization study")
    p.add_argument("--tokens", help="token shards of the training split (memorization)")
    p.add_argument("--semantic-checkpoint", help="semantic stage checkpoint (memorization)")
    p.add_argument("--centroids", help="semantic k-means safetensors artifact (memorization)")
    p.add_argument("--prompt-seconds", default="0,1,2,5,10", help="memorization prompt lengths")
    p.add_argument("--continuation-seconds", type=float, default=5.0)
    p.add_argument("--threshold-percentile", type=float, default=1.0)
    p.add_argument("--max-memorization-clips", type=int, default=64)
    p.add_argument("--max-train-clips", type=int, default=400)
    p.add_argument("--max-reference-clips", type=int)
    p.add_argument("--seed", type=int, default=0)
    return p


def _log(msg: str) -> None:
    print(f"[evaluate] {msg}", file=sys.stderr, flush=True)


def _joint_embedding(args: argparse.Namespace) -> str | joint.JointEmbeddingSpec | None:
    """``--mulan``, or the plugin ``--joint-embedding`` names (checked, not built)."""
    source = joint.from_flags(
        args.mulan, getattr(args, "joint_embedding", None),
        getattr(args, "joint_embedding_args", None), flag="--mulan",
    )  # fmt: skip
    if isinstance(source, joint.JointEmbeddingSpec):
        source.check()
    return source


def read_pipeline(path: str) -> dict[str, Any]:
    """The MuLan checkpoint, semantic stage checkpoint and semantic k-means that PIPELINE.yaml
    names (parsed and validated by ``musiclm.generation.pipeline_file``; absolute paths)."""
    from musiclm.generation.pipeline_file import load_pipeline_file

    pipe = load_pipeline_file(path)
    semantic = pipe.stages.get("semantic")
    tokenizer = pipe.semantic_tokenizer
    return {
        "mulan": pipe.mulan[0] if pipe.mulan else None,
        "semantic": semantic.checkpoint if semantic else None,
        "centroids": (tokenizer.args.get("kmeans") if tokenizer else None) or None,
    }


# ----------------------------------------------------------------------------- metrics


def _estimators(args: argparse.Namespace) -> tuple[Any, Path]:
    """The attribute estimators and their file: loaded when it was fitted on the same
    ``--train-reference`` (path, contents, clip limit, seed), else fitted and saved."""
    from musiclm.evaluation import attributes as A
    from musiclm.evaluation.clips import load_reference, reference_fingerprint

    path = Path(args.estimators or Path(args.out) / "attribute_estimators.json")
    wanted = None
    if args.train_reference:
        wanted = reference_fingerprint(args.train_reference)
        wanted |= {"max_train_clips": args.max_train_clips, "seed": args.seed}
    if path.is_file():
        est = A.AttributeEstimators.load(path)
        if wanted is None or est.trained_on == wanted:
            _log(f"attribute estimators: loading {path}")
            return est, path
        was = _describe_reference(est.trained_on) if est.trained_on else "an unrecorded reference"
        _log(f"attribute estimators: {path} was fitted on {was}; --train-reference is "
             f"{_describe_reference(wanted)}: refitting")  # fmt: skip
    elif wanted is None:
        raise ValueError(
            "adherence needs --train-reference (real training clips) or --estimators FILE"
        )
    train = load_reference(args.train_reference, limit=args.max_train_clips)
    train = [c for c in train if c.attributes]
    if not train:
        raise ValueError(f"no clip in {args.train_reference} carries attributes")
    _log(f"attribute estimators: fitting on {len(train)} real training clips")
    t0 = time.perf_counter()
    analyses = [A.analyse_clip(c.audio, c.sample_rate) for c in train]
    est = A.AttributeEstimators.fit(analyses, [c.attributes for c in train], seed=args.seed)
    est.trained_on = wanted
    est.save(path)
    _log(f"attribute estimators: fitted in {time.perf_counter() - t0:.1f} s -> {path}")
    return est, path


def _describe_reference(ref: dict) -> str:
    return (
        f"{ref.get('path')} ({ref.get('clips')} clips, fingerprint {ref.get('fingerprint')}, "
        f"max {ref.get('max_train_clips')} clips, seed {ref.get('seed')})"
    )


def run_adherence(
    args: argparse.Namespace, generated: list[Clip], reference: list[Clip]
) -> dict[str, Any]:
    from musiclm.evaluation import attributes as A

    est, path = _estimators(args)

    def score(clips: list[Clip]) -> tuple[dict, list[dict]]:
        clips = [c for c in clips if c.attributes]
        preds = [est.predict(est.analyse(c.audio, c.sample_rate)) for c in clips]
        table = A.adherence(preds, [c.attributes for c in clips], tempo_words=est.tempo_words)
        return table, [{"name": c.name, "predicted": p} for c, p in zip(clips, preds, strict=True)]

    gen_table, gen_preds = score(generated)
    real_table, _ = score(reference)

    def chance(clips: list[Clip]) -> dict:
        targets = [c.attributes for c in clips if c.attributes]
        return A.chance_levels(est.train_attributes, targets, tempo_words=est.tempo_words)

    return {
        "estimators": str(path),
        "num_train_clips": est.num_train_clips,
        "generated": gen_table,
        "real": real_table,
        # label-only baselines for the generated clips' targets, and for the real clips'
        "chance": chance(generated) if gen_preds else chance(reference),
        "chance_real": chance(reference),
        # the generated clips scored against other prompts: do they follow their own?
        "shuffled": A.shuffled_prompts(
            [p["predicted"] for p in gen_preds],
            [c.attributes for c in generated if c.attributes],
            tempo_words=est.tempo_words,
            seed=args.seed,
        ),
        "predictions": gen_preds,
    }


def run_structure(generated: list[Clip], reference: list[Clip], out: Path) -> dict[str, Any]:
    """Note motion, pulse, onsets, pitch and key of every clip, generated against real, with
    a plot of the distributions (``out/structure.png``)."""
    from musiclm.evaluation import structure as S

    t0 = time.perf_counter()
    gen = [{"name": c.name, **S.analyse_structure(c.audio, c.sample_rate)} for c in generated]
    real = [{"name": c.name, **S.analyse_structure(c.audio, c.sample_rate)} for c in reference]
    _log(f"structure: {len(gen)} generated and {len(real)} real clips in "
         f"{time.perf_counter() - t0:.1f} s")  # fmt: skip
    png = out / "structure.png"
    S.plot_distributions(gen, real, png)
    return {"summary": S.compare(gen, real), "plot": png.name, "generated": gen, "real": real}


def run_mcc(mulan: Any, generated: list[Clip], reference: list[Clip]) -> dict[str, Any]:
    from musiclm.evaluation.mcc import mcc_report, mulan_embedders

    text, audio = mulan_embedders(mulan)
    gen = [c for c in generated if c.text]
    ref = [c for c in reference if c.text]
    if not gen:
        raise ValueError("MCC needs generated clips with a prompt in their JSON sidecar")
    return mcc_report(
        text,
        audio,
        generated=([c.text for c in gen], [(c.audio, c.sample_rate) for c in gen]),
        reference=([c.text for c in ref], [(c.audio, c.sample_rate) for c in ref]) if ref else None,
    )


def run_fad(
    spec: str, mulan: Any, generated: list[Clip], reference: list[Clip], seed: int
) -> dict[str, Any]:
    from musiclm.evaluation.fad import embed_clips, frechet_audio_distance, resolve_embedding

    embed = resolve_embedding(spec, mulan=mulan)
    g = embed_clips(embed, [(c.name, c.audio, c.sample_rate) for c in generated])
    r_per_clip = [embed_clips(embed, [(c.name, c.audio, c.sample_rate)]) for c in reference]
    r = np.concatenate(r_per_clip)
    out: dict[str, Any] = {
        "embedding": spec,
        "generated_vs_reference": frechet_audio_distance(g, r),
        "frames_generated": int(g.shape[0]),
        "frames_reference": int(r.shape[0]),
        "dim": int(g.shape[1]),
    }
    # the same statistic between two random halves of the real clips: the floor FAD reaches
    # with this many clips, which gives the generated figure its scale
    if len(r_per_clip) >= 4:
        order = np.random.default_rng(seed).permutation(len(r_per_clip))
        half = len(order) // 2
        a = np.concatenate([r_per_clip[i] for i in order[:half]])
        b = np.concatenate([r_per_clip[i] for i in order[half:]])
        if min(a.shape[0], b.shape[0]) >= 2:
            out["reference_halves"] = frechet_audio_distance(a, b)
    return out


def run_memorization(args: argparse.Namespace, paths: dict[str, str | None]) -> dict[str, Any]:
    from musiclm.evaluation.clips import load_centroids, load_token_examples
    from musiclm.evaluation.memorization import memorization_study, semantic_lm_continue_fn

    ckpt = args.semantic_checkpoint or paths.get("semantic")
    centroids = args.centroids or paths.get("centroids")
    missing = [
        n
        for n, v in (
            ("--tokens", args.tokens),
            ("--semantic-checkpoint", ckpt),
            ("--centroids", centroids),
        )
        if not v
    ]
    if missing:
        raise ValueError(f"memorization needs {', '.join(missing)} (or a pipeline naming them)")
    examples = load_token_examples(args.tokens, limit=args.max_memorization_clips)
    from musiclm.datamodules.shards import read_manifest

    rate = float(read_manifest(args.tokens)["semantic"]["frame_rate"])
    prompt_seconds = [float(s) for s in args.prompt_seconds.split(",") if s.strip()]
    _log(f"memorization: {len(examples)} training clips, prompts {prompt_seconds} s")
    return memorization_study(
        semantic_lm_continue_fn(ckpt),
        examples,
        centroids=load_centroids(centroids),
        frame_rate=rate,
        prompt_seconds=prompt_seconds,
        continuation_seconds=args.continuation_seconds,
        percentile=args.threshold_percentile,
    )


# ----------------------------------------------------------------------------- command


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    """Run the chosen metrics and return the metrics dict (also written to ``args.out``)."""
    from musiclm.evaluation.clips import load_folder, load_reference

    chosen = [m.strip() for m in args.metrics.split(",") if m.strip()]
    if args.memorization and "memorization" not in chosen:
        chosen.append("memorization")
    unknown = sorted(set(chosen) - set(METRICS))
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; choose from {', '.join(METRICS)}")
    paths = read_pipeline(args.pipeline) if args.pipeline else {}
    mulan_ckpt = _joint_embedding(args) or paths.get("mulan")
    # asked for by name, MCC without a MuLan is an error; in the default set it is a note
    if "mcc" in chosen and not mulan_ckpt and args.metrics != _DEFAULT_METRICS:
        raise ValueError(
            "--metrics mcc needs a MuLan checkpoint: give --mulan, --joint-embedding, or --pipeline"
        )
    mulan = None
    if mulan_ckpt and ("mcc" in chosen or (args.embedding or "mulan") == "mulan"):
        _log(f"MuLan: {joint.JointEmbeddingSpec.of(mulan_ckpt).describe()}")
        mulan = joint.load_joint_embedding(mulan_ckpt)
    if isinstance(mulan_ckpt, joint.JointEmbeddingSpec):
        mulan_ckpt = mulan_ckpt.to_block()  # metrics.json names the plugin
    generated_skipped: list[dict] = []
    reference_skipped: list[dict] = []
    generated, bare = load_folder(args.generated, skipped=generated_skipped)
    reference = load_reference(
        args.reference, limit=args.max_reference_clips, skipped=reference_skipped
    )
    _log(f"{len(generated)} generated clips ({len(bare)} without sidecar), {len(reference)} real")
    for skip in generated_skipped + reference_skipped:
        _log(f"skipped {skip['item']}: {skip['reason']}")
    metrics: dict[str, Any] = {
        "inputs": {
            "generated": str(args.generated),
            "reference": str(args.reference),
            "generated_clips": len(generated),
            "generated_without_sidecar": len(bare),
            "reference_clips": len(reference),
            "generated_skipped": generated_skipped,
            "reference_skipped": reference_skipped,
            "mulan": mulan_ckpt,
        },
        "notes": [],
    }
    if "structure" in chosen:
        metrics["structure"] = run_structure(generated, reference, Path(args.out))
    if "adherence" in chosen:
        metrics["adherence"] = run_adherence(args, generated, reference)
    if "mcc" in chosen:
        if mulan is None:
            metrics["notes"].append("MCC skipped: no MuLan checkpoint (--pipeline or --mulan)")
        else:
            _log("MuLan cycle consistency")
            metrics["mcc"] = run_mcc(mulan, generated, reference)
    if "fad" in chosen:
        spec = args.embedding or ("mulan" if mulan is not None else "logmel")
        _log(f"Fréchet audio distance over {spec!r} embeddings")
        metrics["fad"] = run_fad(spec, mulan, generated, reference, args.seed)
    if "memorization" in chosen:
        metrics["memorization"] = run_memorization(args, paths)
    json_path, md_path = commit_report(Path(args.out), metrics)
    _log(f"wrote {json_path} and {md_path}")
    return metrics


def commit_report(out: Path, metrics: dict[str, Any]) -> tuple[Path, Path]:
    """Write ``out/metrics.json`` and ``out/metrics.md`` as a pair: ``metrics.json`` is the
    marker, and when it is there the ``metrics.md`` beside it was made from it.

    Both are written in a hidden folder inside ``out`` first; then the old ``metrics.json``
    goes, ``metrics.md`` is renamed into place and ``metrics.json`` last. A kill at any point
    leaves the old pair, or a ``metrics.md`` without its marker (a reader waits for
    ``metrics.json``), never a ``metrics.json`` beside another run's ``metrics.md``."""
    from musiclm.evaluation.report import write_report

    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".metrics-", dir=out))
    try:
        staged_json, staged_md = write_report(staging, metrics)
        json_path, md_path = out / staged_json.name, out / staged_md.name
        json_path.unlink(missing_ok=True)
        os.replace(staged_md, md_path)
        os.replace(staged_json, json_path)
        fd = os.open(out, os.O_RDONLY)  # the renames themselves reach the disk
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return json_path, md_path


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command("musiclm evaluate", lambda: _main(args))


def _main(args: argparse.Namespace) -> int:
    evaluate(args)
    print((Path(args.out) / "metrics.md").read_text(encoding="utf-8"))
    return 0
