"""``report.md`` of a demo run: step times, loss curves (TensorBoard), spectrograms, metrics."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from musiclm.datamodules.shards import atomic_write_text
from musiclm.demo.paths import DemoPaths
from musiclm.stage_names import COARSE, DELAY, LM_STAGES, SEMANTIC

STAGES = ("mulan", *LM_STAGES)


def read_scalars(event_dir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series in a TensorBoard run folder: tag -> [(step, value)], by step."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(event_dir), size_guidance={"scalars": 0})
    acc.Reload()
    out = {}
    for tag in acc.Tags().get("scalars", []):
        # A resumed run appends to the same events: keep the last value written at each step.
        by_step = {e.step: float(e.value) for e in acc.Scalars(tag)}
        out[tag] = sorted(by_step.items())
    return out


def loss_tags(scalars: dict[str, list]) -> list[str]:
    """The loss series worth plotting (per-step and validation losses, not epoch means)."""
    return sorted(t for t in scalars if "loss" in t.lower() and not t.endswith("_epoch"))


def plot_losses(p: DemoPaths, png: Path) -> dict[str, dict[str, float]]:
    """One panel per stage with its loss curves; returns the last value of each curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # a run with the delay stage has no coarse or fine LM to show
    delay = p.run_dir(DELAY).is_dir() and not p.run_dir(COARSE).is_dir()
    stages = ("mulan", SEMANTIC, DELAY) if delay else STAGES
    fig, axes = plt.subplots(1, len(stages), figsize=(4 * len(stages), 3.2))
    last: dict[str, dict[str, float]] = {}
    for ax, stage in zip(axes, stages, strict=True):
        events = p.run_dir(stage) / "tensorboard" / "run"
        ax.set_title(stage)
        ax.set_xlabel("step")
        if not events.is_dir():
            ax.text(0.5, 0.5, "no run", ha="center", transform=ax.transAxes)
            continue
        scalars = read_scalars(events)
        for tag in loss_tags(scalars):
            steps, values = zip(*scalars[tag], strict=True)
            ax.plot(steps, values, marker="." if len(steps) < 20 else None, label=tag)
            last.setdefault(stage, {})[tag] = values[-1]
        if ax.lines:
            ax.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, png)
    plt.close(fig)
    return last


def _log_spec(audio: np.ndarray, sr: int) -> np.ndarray:
    import librosa

    mel = librosa.feature.melspectrogram(y=audio, sr=sr, n_fft=1024, hop_length=256, n_mels=80)
    return librosa.power_to_db(mel + 1e-10, ref=np.max)


def plot_spectrograms(p: DemoPaths, png: Path, *, limit: int = 4) -> list[str]:
    """Generated clips (left) beside the real held-out clip whose caption was the prompt."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import soundfile as sf

    pairs = []
    for side in sorted(p.generated.glob("*.json")):
        data = json.loads(side.read_text(encoding="utf-8"))
        wav = side.with_suffix(".wav")
        ref = p.corpus / "audio" / f"{data.get('reference', '')}.wav"
        # a corpus other than the demo's keeps its real clips in shards only: generated alone
        if wav.is_file():
            pairs.append((wav, ref if ref.is_file() else None, str(data.get("prompt", ""))))
        if len(pairs) == limit:
            break
    if not pairs:
        return []
    fig, axes = plt.subplots(len(pairs), 2, figsize=(11, 2.4 * len(pairs)), squeeze=False)
    for row, (wav, ref, prompt) in enumerate(pairs):
        for col, (path, label) in enumerate([(wav, "generated"), (ref, "reference")]):
            ax = axes[row, col]
            if path is None:
                ax.axis("off")
                continue
            audio, sr = sf.read(str(path), dtype="float32", always_2d=True)
            spec = _log_spec(audio.mean(axis=1), sr)
            seconds = audio.shape[0] / sr
            ax.imshow(spec, origin="lower", aspect="auto", extent=(0, seconds, 0, spec.shape[0]))
            ax.set_title(f"{label}: {path.name}", fontsize=8)
            ax.set_ylabel("mel bin")
        axes[row, 0].set_xlabel(prompt[:90], fontsize=7)
    fig.tight_layout()
    _save(fig, png)
    plt.close(fig)
    return [w.name for w, _, _ in pairs]


def _save(fig, png: Path) -> None:
    png.parent.mkdir(parents=True, exist_ok=True)
    tmp = png.with_name(f".{png.name}.tmp.png")
    fig.savefig(tmp, dpi=90)
    tmp.replace(png)


SIGNIFICANCE = 0.05  # one-sided; with 40 prompts one clip is 2.5 % of an accuracy


def acceptance(metrics: dict[str, Any]) -> list[tuple[str, bool | None, str]]:
    """Issue 8's acceptance checks: (what, passed or None when not measured, the figures).

    "Above" means significantly above, one-sided at ``SIGNIFICANCE``: for adherence, an exact
    binomial test of the correct count against the chance prior *and*, where measured, the
    permutation test against the same clips scored on other prompts (so output that always
    takes the commonest value does not pass); a z test on the two means' standard errors for
    MCC. A point estimate above chance on 40 prompts is not evidence.
    """
    from scipy.stats import binomtest, norm

    checks: list[tuple[str, bool | None, str]] = []
    adh = metrics.get("adherence") or {}
    gen, chance = adh.get("generated", {}), adh.get("chance", {})
    shuffled = adh.get("shuffled") or {}
    for word, prefixes in (("instrument", ("instrument",)), ("tempo", ("bpm", "tempo"))):
        names = [n for n in gen if n.startswith(prefixes)]
        for n in names:
            acc, count = gen[n].get("accuracy"), gen[n].get("n")
            prior = (chance.get(n) or {}).get("prior")
            if acc is None or prior is None or not count:
                checks.append((f"adherence {n} above chance", None, "not measured"))
                continue
            hits = round(acc * count)
            pvalue = binomtest(hits, count, prior, alternative="greater").pvalue
            passed = bool(pvalue < SIGNIFICANCE)
            figures = f"{acc:.3f} vs {prior:.3f} ({hits}/{count}, binomial p = {pvalue:.2g})"
            if n in shuffled:
                other = shuffled[n]
                passed = passed and other["p"] < SIGNIFICANCE
                figures += (
                    f"; other prompts {other['accuracy']:.3f} (permutation p = {other['p']:.2g})"
                )
            checks.append((f"adherence {n} above chance", passed, figures))
        if not names:
            checks.append((f"adherence {word} above chance", None, "not measured"))
    mcc = metrics.get("mcc") or {}
    g, m = mcc.get("generated") or {}, mcc.get("generated_mismatched") or {}
    if all(x.get(k) is not None for x in (g, m) for k in ("mean", "sem")):
        z = (g["mean"] - m["mean"]) / max(1e-12, (g["sem"] ** 2 + m["sem"] ** 2) ** 0.5)
        pvalue = float(norm.sf(z))
        checks.append(
            (
                "MCC generated above mismatched",
                bool(pvalue < SIGNIFICANCE),
                f"{g['mean']:.3f} vs {m['mean']:.3f} (z = {z:.1f}, p = {pvalue:.2g})",
            )
        )
    else:
        checks.append(("MCC generated above mismatched", None, "not measured"))
    # Music like the corpus: note motion, pulse and onsets near the real clips', few static clips.
    from musiclm.evaluation.structure import acceptance_checks

    structure = (metrics.get("structure") or {}).get("summary") or {}
    checks += acceptance_checks(structure)
    return checks


OTHER_WORDING_FLOOR = 0.8  # other-wording instrument adherence, as a share of the templated


def wording_table(templated: dict[str, Any], other: dict[str, Any]) -> list[list[str]]:
    """Rows (figure, templated prompts, other wording) of the figures both evaluations have."""

    def adherence(m: dict, name: str) -> float | None:
        return ((m.get("adherence") or {}).get("generated", {}).get(name) or {}).get("accuracy")

    def mcc(m: dict) -> float | None:
        return ((m.get("mcc") or {}).get("generated") or {}).get("mean")

    def ratio(m: dict, name: str) -> float | None:
        return (((m.get("structure") or {}).get("summary") or {}).get(name) or {}).get("ratio")

    def fmt(x: float | None) -> str:
        return "–" if x is None else f"{x:.3f}"

    rows = []
    for name in ("instrument", "tempo_word", "bpm_within_8pct", "key", "mode"):
        rows.append([f"adherence {name}", fmt(adherence(templated, name)),
                     fmt(adherence(other, name))])  # fmt: skip
    rows.append(["MCC (generated, its prompt)", fmt(mcc(templated)), fmt(mcc(other))])
    for name in ("note_motion", "pulse_clarity", "onset_rate"):
        rows.append([f"{name.replace('_', ' ')} / real", fmt(ratio(templated, name)),
                     fmt(ratio(other, name))])  # fmt: skip
    n = [str((m.get("inputs") or {}).get("generated_clips")) for m in (templated, other)]
    rows.append(["prompts", *n])
    return rows


def wording_check(templated: dict[str, Any], other: dict[str, Any]) -> tuple[str, bool | None, str]:
    """Does instrument adherence hold on prompts in other words (>= OTHER_WORDING_FLOOR of the
    templated figure)?"""
    what = f"other wording: instrument adherence >= {OTHER_WORDING_FLOOR:g}x templated"
    get = lambda m: (m.get("adherence") or {}).get("generated", {}).get("instrument") or {}  # noqa: E731
    t, o = get(templated).get("accuracy"), get(other).get("accuracy")
    if t is None or o is None:
        return what, None, "not measured"
    ok = o >= OTHER_WORDING_FLOOR * t
    return what, bool(ok), f"{o:.3f} vs {t:.3f} ({get(other).get('n')} / {get(templated).get('n')})"


def rerank_summary(generated: Path) -> dict[str, float] | None:
    """What MuLan re-ranking bought, from the sidecars' ``candidate_scores``: the mean MuLan
    score of the kept candidates, of the first ones (what no re-ranking keeps) and of all;
    None when the clips were not re-ranked."""
    rows = []
    for side in sorted(generated.glob("*.json")):
        scores = json.loads(side.read_text(encoding="utf-8")).get("candidate_scores")
        if scores:
            rows.append(scores)
    if not rows:
        return None
    return {
        "clips": len(rows),
        "candidates": max(len(r) for r in rows),
        "kept": float(np.mean([max(r) for r in rows])),
        "first": float(np.mean([r[0] for r in rows])),
        "all": float(np.mean([v for r in rows for v in r])),
    }


def melody_lines(path: Path) -> list[str]:
    """The melody figure of a ``--melody`` run: chroma cosine with and without the melody."""
    if not path.is_file():
        return []
    m = json.loads(path.read_text(encoding="utf-8"))
    return [
        "",
        "## Melody",
        "",
        "Chroma cosine of each held-out clip's melody against music generated under another "
        f"clip's caption, with `--melody` (PIPELINE.yaml) and without (PIPELINE_plain.yaml, "
        f"the same run with a semantic LM trained without melody tokens); {m['clips']} clips.",
        "",
        "| with --melody | without | gain (s.e.m.) | clips improved |",
        "|---|---|---|---|",
        f"| {m['with']:.3f} | {m['without']:.3f} | {m['gain']:+.3f} ({m['gain_sem']:.3f}) | "
        f"{m['improved']} / {m['clips']} |",
    ]


def corpus_lines(audio: Path) -> list[str]:
    """The corpus section: clips and seconds per split, and every item prepare skipped."""
    lines, skipped = [], []
    for split in ("train", "valid", "test"):
        path = audio / split / "manifest.json"
        if not path.is_file():
            continue
        m = json.loads(path.read_text(encoding="utf-8"))
        skipped += m.get("skipped", [])
        lines.append(f"| {split} | {m['num_samples']} | {m['total_seconds']:.1f} | "
                     f"{len(m.get('skipped', []))} |")  # fmt: skip
    if not lines:
        return []
    out = ["## Corpus", "", "| split | clips | seconds | skipped |", "|---|---|---|---|", *lines]
    out += ["", f"Skipped items: {len(skipped)}."]
    out += [f"- {s['item']}: {s['reason']}" for s in skipped[:20]]
    if len(skipped) > 20:
        out.append(f"- … and {len(skipped) - 20} more (`{audio.name}/<split>/manifest.json`)")
    return [*out, ""]


def skipped_metrics(metrics: dict[str, Any]) -> list[str]:
    """What the evaluation did not score, and why (a corpus without attributes, no MuLan)."""
    if not metrics:
        return []
    notes = [str(n) for n in metrics.get("notes", [])]
    if "adherence" not in metrics:
        notes.insert(0, "attribute adherence not scored: the corpus metadata has no "
                     "`attributes` (instrument, tempo, key) to compare against")  # fmt: skip
    if "memorization" not in metrics:
        notes.append("memorization not run (`musiclm evaluate --memorization`)")
    return notes


def write_report(
    p: DemoPaths, *, step_seconds: dict[str, float], title: str = "musiclm demo"
) -> Path:
    """Write ``report.md`` and its PNGs under ``p.out``; return the report's path."""
    plots = p.out / "plots"
    losses = plot_losses(p, plots / "loss_curves.png")
    clips = plot_spectrograms(p, plots / "spectrograms.png")
    metrics_path = p.eval / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    other_path = p.eval_other / "metrics.json"
    other = json.loads(other_path.read_text()) if other_path.is_file() else {}
    lines = [f"# {title}", ""]
    settings = p.out / "settings.json"
    if settings.is_file():
        lines += ["Settings: `settings.json`. Pipeline: `PIPELINE.yaml`.", ""]
    lines += ["## Steps", "", "| step | seconds |", "|---|---|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in step_seconds.items()]
    lines += [f"| **total** | {sum(step_seconds.values()):.1f} |", ""]
    lines += corpus_lines(p.audio)
    skipped = skipped_metrics(metrics)
    if skipped:
        lines += ["## Not scored", "", *[f"- {n}" for n in skipped], ""]
    lines += ["## Acceptance", "", "| check | passed | figures |", "|---|---|---|"]
    checks = [*acceptance(metrics), wording_check(metrics, other)]
    if "adherence" not in metrics:  # a corpus without attributes: no adherence rows at all
        checks = [c for c in checks if "adherence" not in c[0]]
    for what, ok, figures in checks:
        lines.append(f"| {what} | {'–' if ok is None else ('yes' if ok else 'no')} | {figures} |")
    if other:
        lines += [
            "",
            "## Prompts in other words",
            "",
            "The same held-out attributes asked for in words the caption templates never use "
            f"(`{p.prompts_other.name}`: synonyms, no BPM number, other order); full "
            f"evaluation in `{p.eval_other.name}/metrics.md`.",
            "",
            "| figure | templated captions | other wording |",
            "|---|---|---|",
        ]
        lines += [f"| {a} | {b} | {c} |" for a, b, c in wording_table(metrics, other)]
    lines += melody_lines(p.eval / "melody.json")
    lines += ["", "## Training", "", "![loss curves](plots/loss_curves.png)", ""]
    lines += ["| stage | curve | last value |", "|---|---|---|"]
    for stage, tags in losses.items():
        lines += [f"| {stage} | {tag} | {v:.4f} |" for tag, v in tags.items()]
    lines += ["", "TensorBoard: `tensorboard --logdir " + str(p.out) + "`", ""]
    lines += ["## Generated clips", ""]
    if clips:
        lines += ["![spectrograms](plots/spectrograms.png)", ""]
    lines += [f"Audio: `{p.generated.name}/` (one wav and JSON sidecar per prompt).", ""]
    rerank = rerank_summary(p.generated)
    if rerank:
        lines += [
            f"Re-ranked: MuLan kept the best of {rerank['candidates']} candidates for each of "
            f"{rerank['clips']} prompts. Mean MuLan score of the kept candidates "
            f"{rerank['kept']:.3f}, of the first ones (what no re-ranking keeps) "
            f"{rerank['first']:.3f}, of all {rerank['all']:.3f}. The evaluation's MCC below is "
            "of the kept candidates, which the same MuLan chose.",
            "",
        ]
    md = p.eval / "metrics.md"
    if md.is_file():
        body = md.read_text(encoding="utf-8").replace("# Evaluation", "## Evaluation", 1)
        # the evaluation's pictures live beside metrics.md, under eval/
        body = body.replace("](structure.png)", f"]({p.eval.name}/structure.png)")
        lines += [body.replace("\n## ", "\n### ").replace("### Evaluation", "## Evaluation")]
    out = p.out / "report.md"
    atomic_write_text(out, "\n".join(lines).rstrip() + "\n")
    return out
