"""Where does the demo lose tempo, key, note motion and pulse? Each link of the chain.

    python research/demo_diagnose.py --run runs/demo [--splits test,valid]

The same attribute estimators as ``musiclm evaluate`` (``<run>/eval/attribute_estimators.json``)
score, for every held-out clip (first ``--seconds`` of it, its caption as the prompt):

* ``real``: the real clip;
* ``codec-all`` / ``codec-coarse``: the clip through the codec (all levels; coarse levels only);
* ``real-coarse->fine``: the real coarse codes, fine levels sampled by the fine LM;
* ``real-semantic->coarse->fine`` (or ``real-semantic->delay``): the real clip's semantic
  tokens, then the pipeline's acoustic stages (conditioned on the caption's MuLan tokens) and
  the codec;
* ``text->all``: the whole chain from the caption (what ``musiclm generate`` does);
* ``text->all:true-bpm``: the same with the clip's true BPM as the beat clock's tempo (a
  semantic stage trained with ``beats`` only): what the chain does with the tempo right;
* ``tokens:real`` / ``tokens:generated``: tempo read straight from semantic tokens (the
  onset feature of each token's k-means centroid), for the real clip's tokens and for tokens
  the semantic LM sampled from the caption;
* ``tokens:from-audio-mulan``: tempo read from semantic tokens the LM sampled from the
  clip's own MuLan *audio* tokens (what it was trained on), to tell a semantic LM that
  ignores its conditioning from a text/audio token mismatch; ``tokens:continued``: the same,
  after the clip's first 2 s of real tokens (tempo of the sampled part only; the real
  tokens of that span: ``tokens:real-after-2s``): can the LM keep a rhythm it is shown;
* ``mulan-tokens:text``: what the conditioning can tell at all: each caption's MuLan text
  tokens matched (longest common prefix of levels) against the MuLan audio tokens of the
  training clips (what the LMs were trained on); the matches' median BPM and majority
  instrument, key and mode are the prediction.

With a beat-conditioned semantic stage (``beats: true``) the sampled links follow a clock: the
tempo predicted from the caption for ``tokens:generated``, the real clip's (tracked at its
stated tempo, as in training) for ``tokens:from-audio-mulan`` and ``tokens:continued``.

One JSON line per (link, attribute); the sampling settings are the pipeline file's.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from musiclm.tokenizers.semantic.music_features import ONSET_COLUMN  # noqa: E402


def token_tempo(tokens: np.ndarray, centroids: np.ndarray, est, rate: float) -> float:
    """Tempo of a semantic token sequence from its centroids' onset feature (same prior)."""
    import librosa

    env = centroids[tokens, ONSET_COLUMN].astype(np.float64)
    env = np.clip(env - np.median(env), 0, None)
    hop = round(est.sample_rate / rate)
    win = min(len(env), round(8.0 * rate))
    tg = librosa.feature.tempogram(
        onset_envelope=env, sr=est.sample_rate, hop_length=hop, win_length=win
    ).mean(1)
    bpm = librosa.feature.tempo(
        tg=tg[:, None], aggregate=None, sr=est.sample_rate, hop_length=hop,
        start_bpm=est.start_bpm, std_bpm=est.std_bpm, max_tempo=320.0,
    )  # fmt: skip
    return float(np.atleast_1d(bpm)[0])


def token_structure(tokens: np.ndarray, centroids: np.ndarray, rate: float) -> dict[str, float]:
    """Motion read straight from semantic tokens (B, F): the total-variation distance of their
    centroids' chroma 1 s apart, the share of frames whose token changes, distinct tokens
    per clip and the pulse of their centroids' onset column (peak unbiased autocorrelation
    at 40-240 BPM, as ``structure.pulse_clarity`` reads audio) (medians over clips)."""
    chroma = np.clip(centroids[:, :12], 0, None)
    chroma = chroma / np.maximum(chroma.sum(1, keepdims=True), 1e-9)
    lag = max(1, round(rate))
    motion = [0.5 * np.abs(chroma[t[lag:]] - chroma[t[:-lag]]).sum(1).mean() for t in tokens]
    return {
        "chroma_motion": round(float(np.median(motion)), 3),
        "change_rate": round(float(np.median([(t[1:] != t[:-1]).mean() for t in tokens])), 3),
        "distinct": float(np.median([len(set(t.tolist())) for t in tokens])),
        "onset_pulse": round(
            float(np.median([_pulse(centroids[t, ONSET_COLUMN], rate) for t in tokens])), 3
        ),
    }


def _pulse(env: np.ndarray, rate: float) -> float:
    x = env.astype(np.float64) - env.mean()
    n, energy = x.size, float(np.dot(x, x))
    lo, hi = max(1, int(60.0 / 240.0 * rate)), min(n - 1, int(np.ceil(60.0 / 40.0 * rate)))
    if energy <= 1e-12 or hi <= lo:
        return 0.0
    spec = np.fft.rfft(x, 2 * n)
    ac = np.fft.irfft(spec * np.conj(spec))[:n] / np.arange(n, 0, -1) / (energy / n)
    return float(np.clip(ac[lo : hi + 1].max(), 0.0, 1.0))


# links that re-render the real clip from (part of) its own tokens
FOLLOWS_REAL = (
    "codec-all",
    "codec-coarse",
    "real-coarse->fine",
    "real-semantic->coarse->fine",
    "real-semantic->delay",
)


def onset_envelope(audio: np.ndarray, sr: int) -> np.ndarray:
    """Onset strength at the structure metrics' frame rate (``structure.RATE / HOP``)."""
    import librosa

    from musiclm.evaluation.structure import HOP, RATE

    y = librosa.resample(audio.astype(np.float32), orig_sr=sr, target_sr=RATE)
    return librosa.onset.onset_strength(y=y, sr=RATE, hop_length=HOP)


def onset_alignment(env: list[np.ndarray], real: list[np.ndarray]) -> dict[str, float]:
    """Median over clips of the correlation of each onset envelope with the real clip's, at
    lag 0 and at the best lag within +-5 frames (+-116 ms), and the median best lag."""
    at0, best, lags = [], [], []
    for a, b in zip(env, real, strict=True):
        m = min(a.size, b.size)
        a, b = a[:m] - a[:m].mean(), b[:m] - b[:m].mean()
        norm = float(np.linalg.norm(a) * np.linalg.norm(b)) or 1.0
        cc = {k: float(np.dot(a[max(0, k) : m + min(0, k)], b[max(0, -k) : m - max(0, k)]))
              / norm for k in range(-5, 6)}  # fmt: skip
        at0.append(cc[0])
        k = max(cc, key=cc.get)
        best.append(cc[k])
        lags.append(k)
    return {"r_lag0": round(float(np.median(at0)), 3), "r_best": round(float(np.median(best)), 3),
            "best_lag_frames": float(np.median(lags))}  # fmt: skip


def acoustic_from_semantic(
    pipe, semantic: torch.Tensor, texts: list[str], seconds: float, gen
) -> torch.Tensor:
    """Codec codes (B, Q, F) from semantic tokens (B, F_s): the pipeline file's acoustic stages
    (coarse + fine, or the delay stage) run as ``Pipeline.generate`` runs them, after
    ``semantic`` instead of the semantic stage's output."""
    from musiclm.stage_names import SEMANTIC

    rows = [[(0.0, t)] for t in texts]
    streams, codes, _ = pipe._request(rows, rows, seconds, None, None, None)
    codes[SEMANTIC] = semantic
    for stage in pipe.acoustic_stages:
        codes[stage.produces] = stage.run(streams, codes, seconds, None, gen)
    return torch.cat([codes[s.produces] for s in pipe.acoustic_stages], dim=1)


def fine_from_coarse(pipe, codes: torch.Tensor, cond, gen) -> torch.Tensor:
    """Coarse codes (B, L, F) + fine codes sampled by the fine LM -> (B, Q, F)."""
    if "fine" not in pipe.stages:
        return codes
    fine = pipe.stages["fine"]

    def fine_prompt(f0: int, f1: int, new: int) -> torch.Tensor:
        streams = {"acoustic": codes[..., f0:f1]}
        if fine.layout.uses_mulan:
            streams["mulan"] = cond
        return fine.layout.prefix(streams)

    rest = pipe._run(fine, fine_prompt, codes.shape[-1], None, codes.shape[0], gen)
    return torch.cat([codes, rest], dim=1)


def mulan_neighbours(pipe, run: Path, texts: list[str]) -> list[dict]:
    """Attributes of the training clips whose MuLan tokens (as in the token shards) share the
    longest prefix with each text's MuLan tokens (median BPM; majority instrument and key)."""
    from collections import Counter

    from musiclm.evaluation.clips import load_token_examples

    rows = [json.loads(x) for x in (run / "corpus" / "manifest.jsonl").read_text().splitlines()]
    attrs = {r["id"]: r["attributes"] for r in rows}
    train = load_token_examples(run / "tokens" / "train")
    audio_tokens = np.stack([e.conditioning for e in train]).astype(np.int64)
    out = []
    for q in pipe.conditioner.text_tokens(texts).numpy():
        shared = (audio_tokens == q).cumprod(1).sum(1)
        near = [attrs[train[i].key] for i in np.flatnonzero(shared == shared.max())]
        key = Counter((a["key"], a["mode"]) for a in near).most_common(1)[0][0]
        out.append({
            "bpm": float(np.median([a["bpm"] for a in near])),
            "instrument": Counter(a["instrument"] for a in near).most_common(1)[0][0],
            "key": key[0], "mode": key[1],
        })  # fmt: skip
    return out


def emit_table(link: str, preds: list[dict], targets: list[dict], chance: dict, est) -> None:
    from musiclm.evaluation import attributes as A

    table = A.adherence(preds, targets, tempo_words=est.tempo_words)
    for attr, row in table.items():
        print(json.dumps({
            "figure": "adherence", "link": link, "attribute": attr,
            "accuracy": round(row["accuracy"], 3), "n": row["n"],
            "chance_prior": round(chance[attr]["prior"], 3),
            "chance_majority": round(chance[attr]["majority"], 3),
        }), flush=True)  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default="runs/demo", help="a finished demo run folder")
    ap.add_argument("--pipeline", help="pipeline file (default: <run>/PIPELINE.yaml)")
    ap.add_argument("--estimators", help="default: <run>/eval/attribute_estimators.json")
    ap.add_argument("--splits", default="test", help="audio splits of <run>/audio to use")
    ap.add_argument("--max-clips", type=int, help="first N clips with attributes (default all)")
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--links", default="all", help="comma list of links to run (default all)")
    ap.add_argument(
        "--set", action="append", default=[], metavar="STAGE.KEY=VALUE",
        help="sampling override, e.g. semantic.temperature=0.8 or coarse.cfg_scale=5",
    )  # fmt: skip
    args = ap.parse_args()
    torch.manual_seed(args.seed)

    from musiclm.evaluation import attributes as A
    from musiclm.evaluation.clips import load_centroids, load_reference
    from musiclm.generation.pipeline import Pipeline

    run = Path(args.run)
    est = A.AttributeEstimators.load(args.estimators or run / "eval" / "attribute_estimators.json")
    pipe = Pipeline.from_file(str(args.pipeline or run / "PIPELINE.yaml"), device="cpu")
    for item in args.set:
        target, _, value = item.partition("=")
        stage, _, key = target.partition(".")
        cast = int if key == "top_k" else float
        pipe.set_sampling(stage, **{key: cast(value)})
    codec, tok = pipe.codec, pipe.semantic_tokenizer
    clips = [
        c for s in args.splits.split(",") for c in load_reference(run / "audio" / s) if c.attributes
    ][: args.max_clips]
    sr = codec.sample_rate
    if any(c.sample_rate != sr for c in clips) or tok.sample_rate != sr:
        raise ValueError(f"expected every clip and the semantic tokenizer at {sr} Hz")
    n = round(args.seconds * sr)
    wav = torch.stack([torch.from_numpy(np.pad(c.audio[:n], (0, max(0, n - c.audio.size))))
                       for c in clips])[:, None]  # fmt: skip
    texts = [c.text or "" for c in clips]
    targets = [c.attributes for c in clips]
    chance = A.chance_levels(est.train_attributes, targets, tempo_words=est.tempo_words)
    want = None if args.links == "all" else set(args.links.split(","))
    gen = torch.Generator().manual_seed(args.seed)
    load0 = os.getloadavg()[0]

    from musiclm.evaluation.structure import METRICS, analyse_structure

    def emit(link: str, audio: torch.Tensor, seconds: float) -> None:
        clips = [a.reshape(-1).numpy() for a in audio]
        preds = [est.predict(est.analyse(a, sr)) for a in clips]
        emit_table(link, preds, targets, chance, est)
        # what a listener hears first: note motion, pulse, onsets (medians over the clips)
        st = [analyse_structure(a, sr) for a in clips]
        row = {k: round(float(np.median([x[k] for x in st])), 3) for k in METRICS}
        row["static_share"] = round(float(np.mean([x["static"] for x in st])), 3)
        print(json.dumps({"figure": "structure", "link": link, **row}), flush=True)
        if link in FOLLOWS_REAL:  # does it put its onsets where the real clip has them?
            env = [onset_envelope(a, sr) for a in clips]
            print(json.dumps({"figure": "onset alignment", "link": link,
                              **onset_alignment(env, real_env)}), flush=True)  # fmt: skip
        print(json.dumps({"figure": "link seconds", "link": link, "value": round(seconds, 1)}))

    def timed(link: str, make) -> None:
        if want is not None and link not in want:
            return
        t0 = time.perf_counter()
        with torch.inference_mode():
            audio = make()
        emit(link, audio[..., :n], time.perf_counter() - t0)

    real_env = [onset_envelope(w.reshape(-1).numpy(), sr) for w in wav]
    codes = codec.encode(wav)
    real_sem = tok.tokenize(wav)  # (B, F_s)
    timed("real", lambda: wav)
    timed("codec-all", lambda: codec.decode(codes))
    if "coarse" in pipe.stages:
        levels = pipe.stages["coarse"].layout.coarse_levels
        timed("codec-coarse", lambda: codec.decode(codes[:, :levels]))
        timed("real-coarse->fine", lambda: codec.decode(
            fine_from_coarse(pipe, codes[:, :levels], None, gen)))  # fmt: skip
    acoustic = "->".join(s.name for s in pipe.acoustic_stages)
    timed(f"real-semantic->{acoustic}", lambda: codec.decode(
        acoustic_from_semantic(pipe, real_sem, texts, args.seconds, gen)))  # fmt: skip

    sem_gen: dict[str, torch.Tensor] = {}

    def text_all() -> torch.Tensor:
        out = pipe.generate([[(0.0, t)] for t in texts], seconds=args.seconds, seed=args.seed)
        sem_gen["tokens"] = out.codes["semantic"]
        return out.audio

    timed("text->all", text_all)
    sem = pipe.stages["semantic"]
    n_sem = sem.frames(args.seconds)
    text_clock = real_clock = None
    if sem.layout.beats:  # the clock of the predicted tempo; the real clip's, tracked as in
        # training (at its stated tempo)
        from musiclm.tokenizers.beats import BeatTracker

        text_clock = pipe._beat_clock(sem, texts, args.seconds, None, None)[0]
        tracker = BeatTracker(sem.layout.spec.streams["beats"], sample_rate=sr, frame_rate=sem.rate)
        real_clock = torch.stack([
            torch.from_numpy(tracker.track(w.reshape(-1).numpy(), n_sem, t["bpm"])[0])
            for w, t in zip(wav, targets, strict=True)
        ])  # fmt: skip

    def prefix(cond: torch.Tensor, clock: torch.Tensor | None):
        def make(f0: int, f1: int, new: int) -> torch.Tensor:
            beat = {} if clock is None else {"beat": clock[:, f0:f1]}
            return sem.layout.prefix({"mulan": cond, **beat})

        return make

    if sem.layout.beats:
        bpm = [float(t["bpm"]) for t in targets]

        def text_true_bpm() -> torch.Tensor:
            out = pipe.generate(
                [[(0.0, t)] for t in texts], seconds=args.seconds, seed=args.seed, bpm=bpm
            )
            sem_gen["true_bpm"] = out.codes["semantic"]
            return out.audio

        timed("text->all:true-bpm", text_true_bpm)
    if "tokens" not in sem_gen and (want is None or "tokens:generated" in want):
        texts_m = pipe.mulan_tokens(texts)
        cond = torch.stack([texts_m[t] for t in texts])
        sem_gen["tokens"] = pipe._run(sem, prefix(cond, text_clock), n_sem, None, len(texts), gen)[
            :, 0
        ]

    if want is None or "tokens:from-audio-mulan" in want:
        # as in training: the semantic LM conditioned on the clip's own MuLan *audio* tokens
        import torchaudio

        mulan = pipe.conditioner
        audio_m = mulan.audio_tokens(torchaudio.functional.resample(wav, sr, mulan.sample_rate))
        sem_gen["from_audio"] = pipe._run(
            sem, prefix(audio_m, real_clock), n_sem, None, len(texts), gen
        )[:, 0]
        # can the LM keep a rhythm it is shown? 2 s of the clip's real tokens, then sampled
        # ones; tempo is read from the sampled part only
        kept = sem.frames(2.0)
        sem_gen["continued"] = pipe._run(
            sem, prefix(audio_m, real_clock), n_sem, real_sem[:, None, :kept], len(texts), gen
        )[:, 0, kept:]
        sem_gen["real_after_2s"] = real_sem[:, kept:]  # the same span of the real tokens

    if want is None or "mulan-tokens:text" in want:
        emit_table("mulan-tokens:text", mulan_neighbours(pipe, run, texts), targets, chance, est)

    kmeans = pipe.spec.semantic_tokenizer.args.get("kmeans")
    centroids = load_centroids(kmeans)
    rate = pipe.stages["semantic"].rate
    for link, tokens in (
        ("tokens:real", real_sem),
        ("tokens:generated", sem_gen.get("tokens")),
        ("tokens:generated:true-bpm", sem_gen.get("true_bpm")),
        ("tokens:from-audio-mulan", sem_gen.get("from_audio")),
        ("tokens:continued", sem_gen.get("continued")),
        ("tokens:real-after-2s", sem_gen.get("real_after_2s")),
    ):
        if tokens is None:
            continue
        preds = [{"bpm": token_tempo(t.numpy(), centroids, est.tempo, rate)} for t in tokens]
        emit_table(link, preds, targets, chance, est)
        motion = token_structure(tokens.numpy(), centroids, rate)
        print(json.dumps({"figure": "token structure", "link": link, **motion}), flush=True)
    print(json.dumps({"figure": "load average (1 min)", "start": round(load0, 2),
                      "end": round(os.getloadavg()[0], 2)}))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
