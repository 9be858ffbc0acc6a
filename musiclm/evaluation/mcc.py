"""MuLan cycle consistency (MCC): does the audio say what the prompt asked for?

MCC is the cosine between MuLan's text embedding of a prompt and MuLan's audio embedding of
the audio generated for it (MusicLM, section 5). Alone the figure has no scale, so it is
reported beside two references computed by the same towers:

* real held-out clips with their own captions (what matching pairs score), and
* mismatched pairs: every prompt against every other clip's audio (what chance scores).

The towers are two callables (``TextEmbedder``, ``AudioEmbedder``), so any joint embedding
model fits; ``MulanConditioner`` and ``MuLan`` provide both.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

TextEmbedder = Callable[[list[str]], Any]  # texts -> (B, D)
AudioEmbedder = Callable[[np.ndarray, int], Any]  # (audio [T], sample_rate) -> (D,) or (1, D)


def _unit(x: Any) -> np.ndarray:
    a = np.asarray(x.detach().cpu() if hasattr(x, "detach") else x, dtype=np.float64)
    a = a.reshape(a.shape[0], -1) if a.ndim > 1 else a[None]
    norm = np.linalg.norm(a, axis=1, keepdims=True)
    if not np.all(np.isfinite(a)) or np.any(norm == 0):
        raise ValueError("embeddings must be finite and non-zero")
    return a / norm


def embed_pairs(
    embed_text: TextEmbedder,
    embed_audio: AudioEmbedder,
    prompts: Sequence[str],
    audios: Sequence[tuple[np.ndarray, int]],
    *,
    batch_size: int = 32,
) -> tuple[np.ndarray, np.ndarray]:
    """Unit text embeddings (B, D) and unit audio embeddings (B, D) of aligned pairs."""
    if len(prompts) != len(audios):
        raise ValueError(f"{len(prompts)} prompts but {len(audios)} clips")
    if not prompts:
        raise ValueError("no prompt-audio pairs to score")
    text = np.concatenate(
        [
            _unit(embed_text(list(prompts[i : i + batch_size])))
            for i in range(0, len(prompts), batch_size)
        ]
    )
    audio = np.concatenate([_unit(embed_audio(a, sr)) for a, sr in audios])
    if text.shape != audio.shape:
        raise ValueError(f"text embeddings {text.shape} and audio embeddings {audio.shape} differ")
    return text, audio


def _summary(values: np.ndarray) -> dict[str, float]:
    n = values.size
    sem = float(values.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan")
    return {"mean": float(values.mean()), "std": float(values.std()), "sem": sem, "n": int(n)}


def cycle_consistency(text: np.ndarray, audio: np.ndarray) -> dict[str, dict[str, float]]:
    """MCC of matched pairs (row i with row i) and of all mismatched pairs (i with j != i).

    ``text`` and ``audio`` are unit embeddings (B, D) of aligned pairs.
    """
    sim = text @ audio.T  # (B, B) cosine
    matched = np.diag(sim)
    out = {"matched": _summary(matched)}
    if sim.shape[0] > 1:
        off = ~np.eye(sim.shape[0], dtype=bool)
        out["mismatched"] = _summary(sim[off])
        # how often the prompt's own clip outranks a random other clip
        out["pairwise_win_rate"] = {
            "mean": float((matched[:, None] > sim)[off].mean()),
            "n": int(off.sum()),
        }
    return out


def mcc_report(
    embed_text: TextEmbedder,
    embed_audio: AudioEmbedder,
    *,
    generated: tuple[Sequence[str], Sequence[tuple[np.ndarray, int]]],
    reference: tuple[Sequence[str], Sequence[tuple[np.ndarray, int]]] | None = None,
) -> dict[str, Any]:
    """MCC for generated clips (with their prompts), real reference clips (with their
    captions), and mismatched pairs of each."""
    out: dict[str, Any] = {}
    text, audio = embed_pairs(embed_text, embed_audio, *generated)
    g = cycle_consistency(text, audio)
    out["generated"] = g["matched"]
    if "mismatched" in g:
        out["generated_mismatched"] = g["mismatched"]
        out["generated_pairwise_win_rate"] = g["pairwise_win_rate"]
    if reference is not None:
        text, audio = embed_pairs(embed_text, embed_audio, *reference)
        r = cycle_consistency(text, audio)
        out["real"] = r["matched"]
        if "mismatched" in r:
            out["real_mismatched"] = r["mismatched"]
            out["real_pairwise_win_rate"] = r["pairwise_win_rate"]
    return out


def mulan_embedders(mulan: Any) -> tuple[TextEmbedder, AudioEmbedder]:
    """Text and audio embedders from a ``MuLan`` or ``MulanConditioner`` (mean of windows)."""
    import torch

    from musiclm.evaluation.fad import _resample

    windows = getattr(mulan, "embed_audio_windows", None) or mulan.embed_audio

    @torch.no_grad()
    def text(texts: list[str]) -> Any:
        return mulan.embed_text(texts)

    @torch.no_grad()
    def audio(wav: np.ndarray, sample_rate: int) -> Any:
        return windows(_resample(wav, sample_rate, mulan.sample_rate)[None, None])

    return text, audio
