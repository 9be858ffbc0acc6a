"""Melody figures: retrieval recall@1 across timbres on held-out tunes, and the chroma-cosine
gain of melody conditioning. One JSON line per figure.

    # recall@1 of a melody checkpoint on the test pairs of `musiclm data melody-pairs`
    python research/melody.py recall --checkpoint CKPT --pairs PAIRS/melodies.jsonl
    # chroma cosine between held-out melody clips and semantic tokens generated with the
    # melody (a stage trained with melody: true) against a stage trained without it
    python research/melody.py chroma --melody-stage A.ckpt --plain-stage B.ckpt \
        --melody CKPT --melody-rvq RVQ --semantic-args '{"kmeans": KM}' --pairs PAIRS/melodies.jsonl
    # chroma cosine between held-out melody clips and the DECODED audio of text prompts that
    # name another instrument, with --melody (pipeline A) and without (pipeline B), same seeds
    python research/melody.py audio --melody-pipeline A.yaml --plain-pipeline B.yaml \
        --corpus CORPUS/manifest.jsonl --split test --samples 2

Chroma cosine (as MusicGen reports it): the per-frame cosine between the chroma of the melody
clip and that of the generated music, averaged over frames. For semantic tokens of the
``music-features`` tokenizer the chroma of a token is the chroma part of its k-means centroid,
so the figure measures the semantic stage (the one melody conditioning steers) without the
acoustic stages and codec in between.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import torch


def _pairs(path: str, split: str) -> list[dict]:
    rows = [json.loads(x) for x in open(path) if x.strip()]
    return [r for r in rows if r.get("split") == split]


def recall(args: argparse.Namespace) -> None:
    """Recall@1 across timbres: view 0 queries view 1 and back (the validation metric)."""
    import soundfile as sf

    from musiclm.models.melody import load_melody
    from musiclm.stages.melody import cross_view_recall

    net = load_melody(args.checkpoint)
    rows = _pairs(args.pairs, args.split)
    root = __import__("pathlib").Path(args.pairs).parent
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["melody_id"], []).append(r)
    audio, labels, views = [], [], []
    for g, (_, members) in enumerate(sorted(groups.items())):
        for v, r in enumerate(members[:2]):
            y, sr = sf.read(root / r["audio"], dtype="float32")
            assert sr == net.sample_rate, (sr, net.sample_rate)
            audio.append(torch.from_numpy(y))
            labels.append(g)
            views.append(v)
    n = min(len(a) for a in audio)
    wav = torch.stack([a[:n] for a in audio])
    labels_t, views_t = torch.tensor(labels), torch.tensor(views)
    t0 = time.perf_counter()
    with torch.no_grad():
        emb = net(wav)
    took = time.perf_counter() - t0
    # a baseline with no learning: mean chroma of the pitch front end, cosine ranked
    with torch.no_grad():
        chroma = net.frontend(wav)[..., -12:].mean(1)
    chroma = torch.nn.functional.normalize(chroma - chroma.mean(1, keepdim=True), dim=-1)
    common = {"split": args.split, "groups": len(groups), "chance": 1 / len(groups)}
    print(
        json.dumps(
            {
                "figure": "melody_recall_at_1",
                "value": cross_view_recall(emb, labels_t, views_t),
                **common,
            }
        )
    )
    print(
        json.dumps(
            {
                "figure": "mean_chroma_recall_at_1",
                "value": cross_view_recall(chroma, labels_t, views_t),
                **common,
            }
        )
    )
    print(json.dumps({"figure": "melody_embed_clips_per_s", "value": len(wav) / took}))


def chroma_frames(wav: np.ndarray, rate: int, frame_rate: float) -> np.ndarray:
    """(F, 12) unit chroma vectors at ``frame_rate`` (librosa's STFT chroma)."""
    import librosa

    hop = int(round(rate / frame_rate))
    c = librosa.feature.chroma_stft(y=wav, sr=rate, hop_length=hop, n_fft=2048, tuning=0.0)
    c = c.T
    return c / np.maximum(np.linalg.norm(c, axis=1, keepdims=True), 1e-8)


def chroma_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over frames of the cosine between two (F, 12) chroma sequences (the shorter F)."""
    n = min(len(a), len(b))
    return float((a[:n] * b[:n]).sum(1).mean())


def chroma(args: argparse.Namespace) -> None:
    import soundfile as sf
    import torchaudio.functional as AF

    from musiclm.conditioning.melody_tokens import MelodyConditioner, clip_window_tokens, tokens_at
    from musiclm.generation.decode import sliding_generate
    from musiclm.generation.sampling import SamplingConfig
    from musiclm.stages.token_lm_stage import load_network
    from musiclm.tokenizers.base import build

    sem = build("semantic_tokenizers", "music-features", **json.loads(args.semantic_args))
    centroids = sem._head.centroids if hasattr(sem._head, "centroids") else None
    if centroids is None:
        from musiclm.tokenizers.artifacts import load_artifact

        centroids = load_artifact(json.loads(args.semantic_args)["kmeans"])[0]["centroids"]
    token_chroma = torch.nn.functional.normalize(centroids[:, :12].float(), dim=-1).numpy()
    cond = MelodyConditioner.from_files(args.melody, args.melody_rvq)
    nets = {"melody": load_network(args.melody_stage), "plain": load_network(args.plain_stage)}
    rows = _pairs(args.pairs, args.split)
    root = __import__("pathlib").Path(args.pairs).parent
    seen, clips = set(), []
    for r in rows:  # one clip per melody (a demo corpus manifest works too: one per clip)
        key = r.get("melody_id", r.get("id"))
        if key not in seen:
            seen.add(key)
            clips.append(r)
    clips = clips[: args.max_melodies]
    frames = int(round(args.seconds * sem.frame_rate))
    scores: dict[str, list[float]] = {k: [] for k in nets}
    for i, r in enumerate(clips):
        y, sr = sf.read(root / r["audio"], dtype="float32")
        wav = torch.from_numpy(y)
        target = chroma_frames(
            AF.resample(wav, sr, 16000).numpy(), 16000, sem.frame_rate
        )  # the melody's chroma
        # the melody clip is looped to the output length, as `generate --melody` does
        reps = int(np.ceil(len(target) and frames / len(target)))
        target = np.concatenate([target] * max(1, reps))[:frames]
        mel = clip_window_tokens(cond, wav, sr, args.seconds)
        for name, (net, layout) in nets.items():

            def prompt(f0, f1, new, layout=layout, mel=mel):
                streams = {"_batch": torch.empty(args.samples, 0)}
                if layout.melody:
                    spec, melody = layout.spec, layout.spec.streams["melody"]
                    streams["melody"] = tokens_at(
                        mel.expand(args.samples, -1, -1), f0 / spec.semantic_rate,
                        melody.hop, melody.windows,
                    )  # fmt: skip
                return layout.prefix(streams)

            codes = sliding_generate(
                net, layout=layout, conditioning=prompt, total_frames=frames,
                context_frames=int(round(args.context * sem.frame_rate)),
                prefix_frames=int(round(args.context / 2 * sem.frame_rate)),
                sampling=SamplingConfig(temperature=args.temperature),
                generator=torch.Generator().manual_seed(i), batch=args.samples,
            )[:, 0]  # fmt: skip
            for row in codes.numpy():
                scores[name].append(chroma_cosine(target, token_chroma[row]))
    with_m, without = np.array(scores["melody"]), np.array(scores["plain"])
    per_melody = (with_m - without).reshape(len(clips), args.samples).mean(1)
    common = {"melodies": len(clips), "samples_per_melody": args.samples, "seconds": args.seconds,
              "machine": platform.machine(), "split": args.split}  # fmt: skip
    for name, values in (("with_melody", with_m), ("without_melody", without)):
        stats = {"mean": float(values.mean()), "std": float(values.std())}
        print(json.dumps({"figure": f"chroma_cosine_{name}", **stats, **common}))
    gain = {"mean": float(per_melody.mean()), "std": float(per_melody.std())}
    improved = int((per_melody > 0).sum())
    print(json.dumps({"figure": "chroma_cosine_gain", **gain, "melodies_improved": improved,
                      **common}))  # fmt: skip


def _held_out_tunes(corpus: str, split: str, limit: int) -> list[dict]:
    """One clip per piece of a demo corpus manifest's ``split`` (held-out tunes)."""
    seen, out = set(), []
    for line in open(corpus):
        if not line.strip():
            continue
        row = json.loads(line)
        piece = row["attributes"]["piece"]
        if row.get("split") == split and piece not in seen:
            seen.add(piece)
            out.append(row)
    return out[:limit]


def audio(args: argparse.Namespace) -> None:
    """Chroma cosine between each held-out melody clip and the DECODED audio generated from a
    text prompt naming another instrument, with ``--melody`` (one pipeline) and without (a
    pipeline whose semantic stage was trained the same way without melody), same seeds."""
    import soundfile as sf
    import torchaudio.functional as AF

    from musiclm.demo_corpus import INSTRUMENTS
    from musiclm.generation.pipeline import Pipeline
    from musiclm.models.melody import fit_length

    pipes = {"melody": Pipeline.from_file(args.melody_pipeline),
             "plain": Pipeline.from_file(args.plain_pipeline)}  # fmt: skip
    tunes = _held_out_tunes(args.corpus, args.split, args.max_melodies)
    root = __import__("pathlib").Path(args.corpus).parent
    rate = pipes["melody"].codec.sample_rate
    rows, targets = [], []
    started = time.perf_counter()
    for i, r in enumerate(tunes):
        if rows and time.perf_counter() - started > 60 * args.max_minutes:
            break  # a time budget on a shared machine: the summary covers the prompts done
        attrs = r["attributes"]
        others = [x for x in INSTRUMENTS if x != attrs["instrument"]]
        instrument = others[i % len(others)]  # a timbre the melody clip does not have
        article = "An" if instrument[0] in "aeiou" else "A"
        prompt = args.template.format(article=article, instrument=instrument,
                                      source=attrs["source"], bpm=attrs["bpm"])  # fmt: skip
        y, sr = sf.read(root / r["audio"], dtype="float32", always_2d=True)
        wav = torch.from_numpy(y.mean(1))
        # the target: the melody clip as `generate --melody` uses it (looped or cut)
        target = fit_length(AF.resample(wav, sr, rate), int(round(args.seconds * rate)))
        targets.append(chroma_frames(target.numpy(), rate, args.frame_rate))
        scores = {}
        for name, pipe in pipes.items():
            t0 = time.perf_counter()
            out = pipe.generate(
                [[(0.0, prompt)]] * args.samples, seconds=args.seconds, seed=args.seed + i,
                melody_audio=(wav, sr) if name == "melody" else None,
            )  # fmt: skip
            took = time.perf_counter() - t0
            gen = [chroma_frames(a[0].numpy(), out.sample_rate, args.frame_rate)
                   for a in out.audio]  # fmt: skip
            scores[name] = [chroma_cosine(targets[-1], g) for g in gen]
            scores[name + "_s"] = took
        row = {"figure": "chroma_cosine_prompt", "melody_id": r["id"], "piece":
               attrs["piece"], "melody_instrument": attrs["instrument"], "prompt": prompt,
               "with_melody": scores["melody"], "without_melody": scores["plain"],
               "gain": float(np.mean(scores["melody"]) - np.mean(scores["plain"])),
               "seconds_generating": [round(scores["melody_s"], 1),
                                      round(scores["plain_s"], 1)]}  # fmt: skip
        rows.append(row)
        print(json.dumps(row), flush=True)
    with_m = np.array([x for r in rows for x in r["with_melody"]])
    without = np.array([x for r in rows for x in r["without_melody"]])
    gains = np.array([r["gain"] for r in rows])
    # floor: a real clip of another held-out tune against this melody
    floor = [chroma_cosine(targets[i], targets[(i + 1) % len(targets)])
             for i in range(len(targets))]  # fmt: skip
    common = {"prompts": len(rows), "samples_per_prompt": args.samples, "seconds": args.seconds,
              "split": args.split, "template": args.template}  # fmt: skip
    for name, values in (("with_melody", with_m), ("without_melody", without)):
        stats = {"mean": float(values.mean()), "std": float(values.std())}
        print(json.dumps({"figure": f"audio_chroma_cosine_{name}", **stats, **common}))
    print(json.dumps({"figure": "audio_chroma_cosine_gain", "mean": float(gains.mean()),
                      "std": float(gains.std()), "sem": float(gains.std() / np.sqrt(len(gains))),
                      "prompts_improved": int((gains > 0).sum()), **common}))  # fmt: skip
    print(
        json.dumps(
            {
                "figure": "audio_chroma_cosine_floor_other_tune",
                "mean": float(np.mean(floor)),
                "std": float(np.std(floor)),
                **common,
            }
        )
    )


def teacher(args: argparse.Namespace) -> None:
    """Teacher-forced loss of a melody-conditioned stage on token shards with each clip's own
    melody tokens against another clip's (rolled by one in the batch): a stage that follows
    the melody predicts its clip's tokens better with the right melody; one that memorised
    training clips shows the gap on the training split only."""
    from musiclm.datamodules.tokens import TokenDataModule
    from musiclm.stages.token_lm_stage import load_network, target_logits, target_loss

    net, layout = load_network(args.stage)
    for split in args.splits.split(","):
        data = TokenDataModule(f"{args.tokens}/{split}", f"{args.tokens}/{split}",
                               seconds=args.seconds, batch_size=args.clips, num_workers=0,
                               batches_per_epoch=1, val_batches=1)  # fmt: skip
        batch = next(iter(data.val_dataloader()))  # the first clips, cropped from their start

        def loss(b: dict) -> float:
            seq = layout.sequence(b)
            with torch.no_grad():
                logits = target_logits(net, layout, seq.tokens, seq.prefix_len)
                return float(target_loss(logits, seq.labels, layout))

        other = {**batch, "melody": batch["melody"].roll(1, 0)}
        own, rolled = loss(batch), loss(other)
        print(json.dumps({"figure": "teacher_forced_loss", "split": split, "own_melody": own,
                          "other_melody": rolled, "gap": rolled - own,
                          "clips": int(batch["melody"].shape[0])}))  # fmt: skip


def pool(args: argparse.Namespace) -> None:
    """Pool the per-prompt lines of several ``audio`` runs (other seeds, more samples): the
    gain of a prompt is the mean over all its samples with melody minus all without; the
    sign test asks how likely that many prompts improve if melody changed nothing."""
    import math

    samples: dict[str, dict[str, list[float]]] = {}
    for path in args.runs:
        for line in open(path):
            row = json.loads(line)
            if row.get("figure") == "chroma_cosine_prompt":
                got = samples.setdefault(row["melody_id"], {"with": [], "without": []})
                got["with"] += row["with_melody"]
                got["without"] += row["without_melody"]
    gains = np.array([np.mean(v["with"]) - np.mean(v["without"]) for v in samples.values()])
    n, k = len(gains), int((gains > 0).sum())
    tail = sum(math.comb(n, i) for i in range(max(k, n - k), n + 1)) / 2**n
    print(json.dumps({"figure": "audio_chroma_cosine_gain_pooled", "mean": float(gains.mean()),
                      "std": float(gains.std()), "sem": float(gains.std() / np.sqrt(n)),
                      "prompts": n, "prompts_improved": k, "sign_test_p": min(1.0, 2 * tail),
                      "samples": sum(len(v["with"]) for v in samples.values()),
                      "runs": len(args.runs)}))  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    sub = p.add_subparsers(dest="what", required=True)
    r = sub.add_parser("recall")
    r.add_argument("--checkpoint", required=True)
    r.add_argument("--pairs", required=True)
    r.add_argument("--split", default="test")
    c = sub.add_parser("chroma")
    c.add_argument("--melody-stage", required=True, help="semantic stage trained with melody")
    c.add_argument("--plain-stage", required=True, help="same stage trained without melody")
    c.add_argument("--melody", required=True, help="MelodyStage checkpoint")
    c.add_argument("--melody-rvq", required=True)
    c.add_argument("--semantic-args", required=True, help="music-features args (JSON)")
    c.add_argument("--pairs", required=True)
    c.add_argument("--split", default="test")
    c.add_argument("--seconds", type=float, default=8.0)
    c.add_argument("--context", type=float, default=8.0)
    c.add_argument("--samples", type=int, default=2)
    c.add_argument("--max-melodies", type=int, default=24)
    c.add_argument("--temperature", type=float, default=1.0)
    a = sub.add_parser("audio", help="chroma cosine on decoded audio from text prompts")
    a.add_argument("--melody-pipeline", required=True, help="PIPELINE.yaml, melody stages")
    a.add_argument("--plain-pipeline", required=True, help="the same trained without melody")
    a.add_argument("--corpus", required=True, help="demo corpus manifest.jsonl")
    a.add_argument("--split", default="test")
    a.add_argument("--max-melodies", type=int, default=32, help="held-out tunes, one clip each")
    a.add_argument("--samples", type=int, default=2, help="generations per prompt and arm")
    a.add_argument("--seconds", type=float, default=8.0)
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--max-minutes", type=float, default=float("inf"),
                   help="start no new prompt after this long")  # fmt: skip
    a.add_argument("--frame-rate", type=float, default=25.0, help="chroma frames per second")
    a.add_argument("--template", default="{article} {instrument} plays a {source} at {bpm} BPM.",
                   help="prompt; names another instrument, never the key")  # fmt: skip
    t = sub.add_parser("teacher", help="teacher-forced loss, own vs another clip's melody")
    t.add_argument("--stage", required=True, help="stage checkpoint trained with melody")
    t.add_argument("--tokens", required=True, help="token shard root (split folders)")
    t.add_argument("--splits", default="train,valid,test")
    t.add_argument("--clips", type=int, default=32)
    t.add_argument("--seconds", type=float, default=8.0)
    o = sub.add_parser("pool", help="pool the per-prompt lines of several audio runs")
    o.add_argument("runs", nargs="+", help="JSONL outputs of `research/melody.py audio`")
    args = p.parse_args()
    torch.set_num_threads(1)
    {"recall": recall, "chroma": chroma, "audio": audio, "teacher": teacher, "pool": pool}[
        args.what
    ](args)


if __name__ == "__main__":
    main()
