"""``musiclm generate``: text -> music through the whole hierarchy.

    musiclm generate "enchanting jazz song with a saxophone solo" --pipeline PIPELINE.yaml \\
        --seconds 10 --num-samples 4 --seed 0 --out DIR

Writes ``DIR/<name>.wav`` per sample and ``DIR/<name>.json`` beside it with the prompt, seed,
seconds, sampling settings and timings (``musiclm evaluate`` reads these), plus
``DIR/<name>.png`` (a log-mel spectrogram) with ``--plot``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

SAMPLING_FLAGS = {
    "temperature": float,
    "top_k": int,
    "top_p": float,
    "cfg_scale": float,
}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="musiclm generate", description="Text -> music through the whole hierarchy."
    )
    p.add_argument("prompt", nargs="?", help="text prompt (or --prompts / --story)")
    p.add_argument("--pipeline", required=True, help="PIPELINE.yaml (see docs/generation.md)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--seconds", type=float, default=10.0, help="seconds of new audio")
    p.add_argument("--num-samples", type=int, default=1, help="samples per prompt")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--prompts",
        help='file with one prompt per line, or JSON lines {"prompt", "attributes"}',
    )
    p.add_argument("--story", help="file of 'SECONDS text' lines: the prompt from each time on")
    p.add_argument("--continue", dest="continue_wav", help="audio clip to continue")
    p.add_argument(
        "--melody",
        help="audio clip (hummed, whistled, played) whose melody the music follows, for stages "
        "trained with melody tokens; a clip shorter than the output is repeated (looped), a "
        "longer one is cut at the output length",
    )
    p.add_argument(
        "--bpm",
        type=float,
        default=None,
        help="tempo of the beat clock, for a semantic stage trained with beats (default: "
        "predicted from each prompt)",
    )
    p.add_argument("--rerank", type=int, default=1, help="candidates per sample, best by MuLan")
    p.add_argument("--plot", action="store_true", help="also write a spectrogram PNG")
    p.add_argument("--device", default=None, help="override the pipeline's device")
    for flag in SAMPLING_FLAGS:
        p.add_argument(
            "--" + flag.replace("_", "-"),
            default=None,
            help="one value for every stage, or stage=value,... (e.g. semantic=1.0,fine=0.4)",
        )
    return p


def parse_stage_values(text: str, kind: type, flag: str, stages: list[str]) -> dict[str, Any]:
    """``"0.9"`` -> every stage; ``"semantic=1.0,coarse=0.95"`` -> those stages."""
    out: dict[str, Any] = {}
    for part in filter(None, (x.strip() for x in text.split(","))):
        name, _, value = part.rpartition("=")
        targets = [name] if name else stages
        for target in targets:
            if target not in stages:
                raise ValueError(f"--{flag}: unknown stage {target!r}; stages: {stages}")
            try:
                out[target] = None if value.lower() in ("none", "null") else kind(value)
            except ValueError:
                raise ValueError(f"--{flag}: {value!r} is not a {kind.__name__}") from None
    return out


def read_prompts(path: str) -> list[dict[str, Any]]:
    """Plain lines, or JSON objects with at least a "prompt" (blank lines and # skipped)."""
    items = []
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("{"):
            try:
                item = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{number}: not valid JSON ({err})") from None
            if not isinstance(item.get("prompt"), str):
                raise ValueError(f"{path}:{number}: a JSON line needs a string 'prompt'")
            items.append(item)
        else:
            items.append({"prompt": line})
    if not items:
        raise ValueError(f"{path}: no prompts")
    return items


def read_story(path: str) -> list[tuple[float, str]]:
    """``SECONDS text`` per line (``0 calm piano`` / ``15 drums join in``), times rising."""
    story = []
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        head, _, text = line.partition(" ")
        try:
            start = float(head)
        except ValueError:
            raise ValueError(f"{path}:{number}: expected 'SECONDS text', got {line!r}") from None
        if not text.strip():
            raise ValueError(f"{path}:{number}: no text after the time")
        story.append((start, text.strip()))
    if not story or story[0][0] != 0:
        raise ValueError(f"{path}: a story needs a first line at time 0")
    if any(b[0] <= a[0] for a, b in zip(story, story[1:], strict=False)):
        raise ValueError(f"{path}: times must rise from line to line")
    return story


def slug(text: str, limit: int = 40) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit] or "prompt"


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return run(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"musiclm generate: {err}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> int:
    items = _items(args)
    if args.num_samples < 1:
        raise ValueError("--num-samples must be >= 1")
    melody = _read_clip(args.melody, "--melody") if args.melody else None
    from musiclm.generation.pipeline import Pipeline

    clock = time.perf_counter()
    pipe = Pipeline.from_file(args.pipeline, device=args.device)
    load_s = time.perf_counter() - clock
    stages = list(pipe.stages)
    for flag, kind in SAMPLING_FLAGS.items():
        value = getattr(args, flag)
        if value is not None:
            for stage, v in parse_stage_values(value, kind, flag, stages).items():
                pipe.set_sampling(stage, **{flag: v})
    clip = _read_clip(args.continue_wav) if args.continue_wav else None
    schedules = [item["schedule"] for item in items for _ in range(args.num_samples)]
    clock = time.perf_counter()
    result = pipe.generate(
        schedules, seconds=args.seconds, seed=args.seed, rerank=args.rerank, continue_audio=clip,
        melody_audio=melody, bpm=args.bpm,
    )  # fmt: skip
    wall = time.perf_counter() - clock
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sampling = {name: asdict(s.sampling) for name, s in pipe.stages.items()}
    row = 0
    for index, item in enumerate(items):
        for sample in range(args.num_samples):
            name = f"{index:03d}-{slug(item['prompt'])}-{sample}"
            _write_wav(out / f"{name}.wav", result.audio[row, 0], result.sample_rate)
            sidecar = {
                "prompt": item["prompt"],
                "attributes": item.get("attributes") or {},
                "seed": args.seed,
                "sample": sample,
                "seconds": result.seconds,
                "sample_rate": result.sample_rate,
                "pipeline": str(Path(args.pipeline).resolve()),
                "sampling": sampling,
                "rerank": args.rerank,
                "mulan_score": result.scores[row],
                "candidate_scores": result.candidate_scores[row] if args.rerank > 1 else None,
                "bpm": result.bpm[row],
                "wall_seconds": wall,
                "load_seconds": load_s,
                "stage_seconds": result.timings,
            }
            if len(item["schedule"]) > 1:
                sidecar["story"] = [list(x) for x in item["schedule"]]
            if melody is not None:
                sidecar["melody"] = str(Path(args.melody).resolve())
            if clip is not None:
                sidecar["continued_from"] = str(Path(args.continue_wav).resolve())
                sidecar["prompt_seconds"] = result.prompt_seconds
            _atomic_text(out / f"{name}.json", json.dumps(sidecar, indent=2) + "\n")
            if args.plot:
                _plot(out / f"{name}.png", result.audio[row, 0], result.sample_rate, item)
            row += 1
    total = result.seconds * len(schedules)
    print(
        f"wrote {len(schedules)} clip(s) to {out}: {total:.1f} s of audio in {wall:.1f} s "
        f"(real-time factor {total / wall:.2f})"
    )
    return 0


def _items(args: argparse.Namespace) -> list[dict[str, Any]]:
    given = [x for x in (args.prompt, args.prompts, args.story) if x]
    if len(given) != 1:
        raise ValueError("give exactly one of: a prompt, --prompts FILE, --story FILE")
    if args.story:
        story = read_story(args.story)
        return [{"prompt": " / ".join(t for _, t in story), "schedule": story}]
    items = read_prompts(args.prompts) if args.prompts else [{"prompt": args.prompt}]
    for item in items:
        item["schedule"] = [(0.0, item["prompt"])]
    return items


def _read_clip(path: str, flag: str = "--continue"):
    import soundfile as sf
    import torch

    if not Path(path).is_file():
        raise FileNotFoundError(f"{flag}: {path} does not exist")
    try:
        data, rate = sf.read(path, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as err:
        raise ValueError(f"{flag}: cannot read {path} as audio ({err})") from None
    if data.shape[0] == 0:
        raise ValueError(f"{flag}: {path} holds no audio samples")
    return torch.from_numpy(data.mean(axis=1)), int(rate)


def _write_wav(path: Path, wav, rate: int) -> None:
    import soundfile as sf

    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".wav")
    os.close(fd)
    try:
        sf.write(tmp, wav.clamp(-1, 1).numpy(), rate, subtype="PCM_16")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _atomic_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _plot(path: Path, wav, rate: int, item: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch
    import torchaudio

    n_fft = min(1024, max(64, 2 ** int(torch.log2(torch.tensor(rate / 25)).item())))
    mel = torchaudio.transforms.MelSpectrogram(
        rate, n_fft=n_fft, hop_length=n_fft // 4, n_mels=min(64, n_fft // 4)
    )(wav.float())
    fig, ax = plt.subplots(figsize=(8, 3))
    ax.imshow(
        (mel + 1e-6).log10().numpy(),
        origin="lower",
        aspect="auto",
        extent=(0, wav.shape[-1] / rate, 0, mel.shape[0]),
    )
    ax.set(xlabel="seconds", ylabel="mel bin", title=item["prompt"][:80])
    fig.tight_layout()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".png")
    os.close(fd)
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)
