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
import re
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from musiclm.datamodules.shards import atomic_file, atomic_write_text, remove_stale_temps
from musiclm.folder_lock import folder_lock
from musiclm.usage import check_number, number, run_command

SAMPLING_FLAGS = {
    "temperature": float,
    "top_k": int,
    "top_p": float,
    "cfg_scale": float,
    "stream_cfg_scale": float,
}
# the values ``SamplingConfig`` accepts, checked before the pipeline loads; NaN and
# infinities are refused too (a NaN temperature fails inside torch.multinomial)
SAMPLING_RANGES: dict[str, dict[str, Any]] = {
    "temperature": {"low": 0},
    "top_k": {"low": 0},
    "top_p": {"low": 0, "low_open": True, "high": 1},
    "cfg_scale": {"low": 0},
    "stream_cfg_scale": {"low": 0},
}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="musiclm generate", description="Text -> music through the whole hierarchy."
    )
    p.add_argument("prompt", nargs="?", help="text prompt (or --prompts / --story)")
    p.add_argument("--pipeline", required=True, help="PIPELINE.yaml (see docs/generation.md)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--seconds",
        type=number(float, low=0, low_open=True),
        default=10.0,
        help="seconds of new audio",
    )
    p.add_argument("--num-samples", type=number(int, low=1), default=1, help="samples per prompt")
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
        type=number(float, low=0, low_open=True),
        default=None,
        help="tempo of the beat clock, for a semantic stage trained with beats (default: "
        "predicted from each prompt)",
    )
    p.add_argument(
        "--rerank", type=number(int, low=1), default=1, help="candidates per sample, best by MuLan"
    )
    p.add_argument("--plot", action="store_true", help="also write a spectrogram PNG")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace clips and sidecars already in --out (by default an existing file is "
        "an error, so a second run never silently replaces the first)",
    )
    p.add_argument("--device", default=None, help="override the pipeline's device")
    for flag in SAMPLING_FLAGS:
        p.add_argument(
            "--" + flag.replace("_", "-"),
            default=None,
            help="one value for every stage, or stage=value,... (e.g. semantic=1.0,fine=0.4)",
        )
    return p


def parse_stage_values(
    text: str, kind: type, flag: str, stages: list[str] | None
) -> dict[str, Any]:
    """``"0.9"`` -> every stage; ``"semantic=1.0,coarse=0.95"`` -> those stages.

    Values are range-checked; ``stages=None`` checks the values only (before the pipeline,
    which knows the stage names, is loaded) and keys them by the name given (``""``: all).
    """
    out: dict[str, Any] = {}
    for part in filter(None, (x.strip() for x in text.split(","))):
        name, _, value = part.rpartition("=")
        try:
            parsed = None if value.lower() in ("none", "null") else kind(value)
        except ValueError:
            raise ValueError(f"--{_dashed(flag)}: {value!r} is not a {kind.__name__}") from None
        if parsed is not None:
            check_number(f"--{_dashed(flag)}", parsed, **SAMPLING_RANGES.get(flag, {}))
        if stages is None:
            out[name] = parsed
            continue
        for target in [name] if name else stages:
            if target not in stages:
                raise ValueError(f"--{_dashed(flag)}: unknown stage {target!r}; stages: {stages}")
            out[target] = parsed
    return out


def _dashed(flag: str) -> str:
    return flag.replace("_", "-")


def read_prompts(path: str) -> list[dict[str, Any]]:
    """Plain lines, or JSON objects with at least a "prompt" (blank lines and # skipped)."""
    items = []
    for line_no, line in enumerate(Path(path).read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("{"):
            try:
                item = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{line_no}: not valid JSON ({err})") from None
            if not isinstance(item.get("prompt"), str):
                raise ValueError(f"{path}:{line_no}: a JSON line needs a string 'prompt'")
            items.append(item)
        else:
            items.append({"prompt": line})
    if not items:
        raise ValueError(f"{path}: no prompts")
    return items


def read_story(path: str) -> list[tuple[float, str]]:
    """``SECONDS text`` per line (``0 calm piano`` / ``15 drums join in``), times rising."""
    story = []
    for line_no, line in enumerate(Path(path).read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        head, _, text = line.partition(" ")
        try:
            start = float(head)
        except ValueError:
            raise ValueError(f"{path}:{line_no}: expected 'SECONDS text', got {line!r}") from None
        if not text.strip():
            raise ValueError(f"{path}:{line_no}: no text after the time")
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
    return run_command("musiclm generate", lambda: run(args))


def output_names(items: list[dict[str, Any]], num_samples: int) -> list[str]:
    """The file stem of every clip, in the order the clips are generated."""
    return [
        f"{index:03d}-{slug(item['prompt'])}-{sample}"
        for index, item in enumerate(items)
        for sample in range(num_samples)
    ]


def request_of(args: argparse.Namespace, item: dict[str, Any], sample: int) -> dict[str, Any]:
    """What one clip was asked for (kept in its sidecar): the same request gives the same
    seeded clip, so only a clip made for another request counts as overwritten."""
    return {
        "prompt": item["prompt"],
        "schedule": [list(x) for x in item["schedule"]],
        "seed": args.seed,
        "sample": sample,
        "seconds": args.seconds,
        "pipeline": str(Path(args.pipeline).resolve()),
        "rerank": args.rerank,
        "bpm": args.bpm,
        "melody": args.melody and str(Path(args.melody).resolve()),
        "continue": args.continue_wav and str(Path(args.continue_wav).resolve()),
        "sampling_flags": {flag: getattr(args, flag) for flag in SAMPLING_FLAGS},
    }


def _refuse_overwrite(out: Path, names: list[str], requests: list[dict], plot: bool) -> None:
    """Refuse to replace a clip another request made (a rerun of the same command, e.g.
    after a kill, replaces its own clips with the same ones)."""
    for name, request in zip(names, requests, strict=True):
        present = [s for s in (".wav", ".json", ".png") if (out / f"{name}{s}").exists()]
        if not present or (not plot and present == [".png"]):
            continue
        try:
            earlier = json.loads((out / f"{name}.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            earlier = {}
        if not isinstance(earlier, dict) or earlier.get("request") != request:
            raise ValueError(
                f"--out {out}: {name}{present[0]} already exists from another run; pass "
                "--overwrite to replace it, or choose another --out"
            )


def run(args: argparse.Namespace) -> int:
    items = _items(args)
    for flag, kind in SAMPLING_FLAGS.items():
        if getattr(args, flag) is not None:  # values checked before the pipeline loads
            parse_stage_values(getattr(args, flag), kind, flag, None)
    names = output_names(items, args.num_samples)
    requests = [request_of(args, it, n) for it in items for n in range(args.num_samples)]
    out = Path(args.out)
    # one generate per --out: two would both pass the overwrite check, then replace each
    # other's clips
    with folder_lock(out):
        # a generate killed mid-write leaves hidden temporaries of these clips; the lock says
        # their writer is gone
        stale = remove_stale_temps(out, names)
        if stale:
            print(f"musiclm generate: removed {stale} temporary file(s) an interrupted run "
                  f"left in {out}", file=sys.stderr)  # fmt: skip
        if not args.overwrite:
            _refuse_overwrite(out, names, requests, args.plot)
        return _generate(args, items, names, requests, out)


def _generate(
    args: argparse.Namespace,
    items: list[dict[str, Any]],
    names: list[str],
    requests: list[dict[str, Any]],
    out: Path,
) -> int:
    """Load the pipeline, generate every clip and write it with its sidecar into ``out``."""
    melody = _read_clip(args.melody, "--melody") if args.melody else None
    clip = _read_clip(args.continue_wav) if args.continue_wav else None
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
    schedules = [item["schedule"] for item in items for _ in range(args.num_samples)]
    clock = time.perf_counter()
    result = pipe.generate(
        schedules, seconds=args.seconds, seed=args.seed, rerank=args.rerank, continue_audio=clip,
        melody_audio=melody, bpm=args.bpm,
    )  # fmt: skip
    wall = time.perf_counter() - clock
    out.mkdir(parents=True, exist_ok=True)
    sampling = {name: asdict(s.sampling) for name, s in pipe.stages.items()}
    row = 0
    for item in items:
        for sample in range(args.num_samples):
            name = names[row]
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
                "request": requests[row],
            }
            if len(item["schedule"]) > 1:
                sidecar["story"] = [list(x) for x in item["schedule"]]
            if melody is not None:
                sidecar["melody"] = str(Path(args.melody).resolve())
            if clip is not None:
                sidecar["continued_from"] = str(Path(args.continue_wav).resolve())
                sidecar["prompt_seconds"] = result.prompt_seconds
            # the sidecar first: a reader then sees a clip with its sidecar or no clip
            atomic_write_text(out / f"{name}.json", json.dumps(sidecar, indent=2) + "\n")
            _write_wav(out / f"{name}.wav", result.audio[row, 0], result.sample_rate)
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

    with atomic_file(path, suffix=".wav") as tmp:
        sf.write(tmp, wav.clamp(-1, 1).numpy(), rate, subtype="PCM_16")


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
    with atomic_file(path, suffix=".png") as tmp:
        fig.savefig(tmp)
    plt.close(fig)
