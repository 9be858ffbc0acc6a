"""Token generation for one stage: a cached window, and sliding windows beyond the context.

``generate_window`` prefills the network's key/value cache with the prompt (``[BOS] +
conditioning`` plus any target tokens kept from before) and samples one token per step, each
a call of the network with its cache (``TokenLM.forward(..., cache=)``). ``sliding_generate``
covers lengths beyond a stage's context the way the paper does (30 s context, 15 s stride):
each new window's prompt keeps the tail of what was already generated (``prefix_frames``) and
the cache is rebuilt from that prompt, so every window sees exactly what a full forward pass
over the window would see.

Codes are ``(B, L, F)``: ``L`` interleaved target levels (1 for semantic tokens), ``F`` frames.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch

from musiclm.generation.sampling import SamplingConfig, guide, guide_streams, sample
from musiclm.models.token_lm import TokenLM

# (f0, f1, new) -> [BOS] + conditioning input ids (B, P) for a window over target frames
# f0..f1-1 whose frames from `new` on are to be generated (story mode picks the text at `new`)
Conditioning = Callable[[int, int, int], torch.Tensor]
# called once per window: (conditional input ids (B, P + n), raw logits (B, n, V), P, C) with
# C = P minus the target tokens kept in the prompt (the [BOS] + conditioning length)
WindowHook = Callable[[torch.Tensor, torch.Tensor, int, int], None]


def level_bias(layout: Any, device: torch.device | str = "cpu") -> torch.Tensor | None:
    """``(levels, num_targets)`` additive mask: 0 on the ids a level may take, -inf elsewhere.

    None when the stage has one level (every target id is allowed at every position).
    """
    levels = layout.target_level_count
    if levels == 1:
        return None
    allowed = layout.allowed_targets(levels, 0, device=device)
    return torch.zeros(allowed.shape, device=device).masked_fill(~allowed, float("-inf"))


@torch.inference_mode()
def generate_window(
    model: TokenLM,
    prompt: torch.Tensor,
    n_new: int,
    *,
    layout: Any,
    sampling: SamplingConfig,
    generator: torch.Generator | None = None,
    level_offset: int = 0,
    use_cache: bool = True,
    on_window: WindowHook | None = None,
) -> torch.Tensor:
    """Sample ``n_new`` target ids after ``prompt`` (B, P) input ids -> (B, n_new) target ids.

    ``level_offset``: target tokens already in the prompt (whole frames), so that each new
    position is restricted to its own codebook level. With ``sampling.cfg_scale != 1`` the
    unconditional rows (MuLan tokens replaced by NULL) are stacked under the conditional ones
    and both run in one forward pass. ``use_cache=False`` recomputes the whole sequence with
    the network's own forward pass at every step (a reference and a benchmark baseline).
    """
    b, p = prompt.shape
    if n_new < 1:
        return prompt.new_empty(b, 0)
    cond_len = p - level_offset  # [BOS] + conditioning, without the kept target tokens
    rows = guidance_rows(layout, prompt, cond_len, sampling)
    bias = level_bias(layout, prompt.device)
    levels = layout.target_level_count
    to_input = layout.offsets()[layout.target_stream]
    out = prompt.new_empty(b, n_new)
    seq = torch.cat([rows, rows.new_zeros(rows.shape[0], n_new)], dim=1)
    kept = [] if on_window is not None else None
    pos = layout.positions(cond_len, p + n_new, device=prompt.device)
    frame = layout.frame_ids(seq, cond_len)  # (rows, p + n_new, C) or None

    def frame_ids(at: slice) -> torch.Tensor | None:
        return None if frame is None else frame[:, at]

    cache = model.new_cache(rows.shape[0], p + n_new) if use_cache else None
    logits = model(rows, cache=cache, pos=pos[:p], frame_ids=frame_ids(slice(p)))[:, -1]
    for t in range(n_new):
        if kept is not None:
            kept.append(logits[:b].clone())
        if sampling.guided:
            logits = guided_logits(logits, b, sampling)
        if bias is not None:
            logits = logits + bias[(level_offset + t) % levels]
        token = sample(logits, sampling, generator)
        out[:, t] = token
        if t + 1 == n_new:
            break
        ids = (token + to_input).repeat(rows.shape[0] // b)
        seq[:, p + t] = ids
        if use_cache:
            at = slice(p + t, p + t + 1)
            logits = model(ids[:, None], cache=cache, pos=pos[at], frame_ids=frame_ids(at))[:, 0]
        else:
            upto = slice(p + t + 1)
            logits = model(seq[:, upto], pos=pos[upto], frame_ids=frame_ids(upto))[:, -1]
    if on_window is not None:
        full = torch.cat([prompt, out + to_input], dim=1)
        on_window(full, torch.stack(kept, dim=1), p, cond_len)
    return out


def guidance_rows(
    layout: Any, prompt: torch.Tensor, cond_len: int, sampling: SamplingConfig
) -> torch.Tensor:
    """The rows one forward pass decodes: the prompt, then with guidance the prompt without
    the text (streams guided by their entry, the beat clock, kept: text guidance is against
    them), then with ``stream_cfg_scale`` the prompt without the text and those streams."""
    if not sampling.guided:
        return prompt
    if not layout.uses_mulan:
        raise ValueError(
            f"cfg_scale={sampling.cfg_scale}: the {layout.stage} stage has no MuLan "
            "conditioning to drop; use cfg_scale 1"
        )
    every = torch.ones(prompt.shape[0], dtype=torch.bool, device=prompt.device)
    if not getattr(layout, "guided_streams", ()):
        if sampling.stream_guided:
            raise ValueError(
                f"stream_cfg_scale={sampling.stream_cfg_scale}: no conditioning entry of the "
                f"{layout.stage} stage says guided: true; use stream_cfg_scale 1"
            )
        return torch.cat([prompt, layout.drop_conditioning(prompt, every, cond_len)])
    text = layout.drop_conditioning(prompt, every, cond_len, text_only=True)
    if not sampling.stream_guided:
        return torch.cat([prompt, text])
    return torch.cat([prompt, text, layout.drop_conditioning(prompt, every, cond_len)])


def guided_logits(logits: torch.Tensor, b: int, sampling: SamplingConfig) -> torch.Tensor:
    """The guided logits (b, V) of the rows ``guidance_rows`` stacked."""
    if not sampling.stream_guided:
        return guide(logits[:b], logits[b:], sampling.cfg_scale)
    cond, text, none = logits[:b], logits[b : 2 * b], logits[2 * b :]
    return guide_streams(cond, text, none, sampling.cfg_scale, sampling.stream_cfg_scale)


def targets_to_codes(layout: Any, targets: torch.Tensor) -> torch.Tensor:
    """Flat target ids (B, F * L) -> codes (B, L, F) (semantic too, with L = 1)."""
    codes = layout.targets_to_codes(targets)
    return codes.unsqueeze(1) if codes.dim() == 2 else codes


def sliding_generate(
    model: TokenLM,
    *,
    layout: Any,
    conditioning: Conditioning,
    total_frames: int,
    context_frames: int,
    prefix_frames: int,
    sampling: SamplingConfig,
    generator: torch.Generator | None = None,
    existing: torch.Tensor | None = None,
    batch: int | None = None,
    use_cache: bool = True,
    on_window: WindowHook | None = None,
) -> torch.Tensor:
    """Generate target codes (B, L, total_frames), window by window.

    ``conditioning(f0, f1, new)`` gives the ``[BOS] + conditioning`` ids for a window covering
    target frames ``f0..f1-1``, new from frame ``new`` (for coarse: the semantic tokens of
    that span). The first
    window starts at frame 0 (or after ``existing`` codes, a prompt to continue); each later
    window starts ``prefix_frames`` before the end of what exists and keeps those frames as
    forced targets, so it adds ``context_frames - prefix_frames`` new frames (the stride).
    """
    levels = layout.target_level_count
    codes, spans = sliding_windows(
        layout,
        total_frames=total_frames,
        context_frames=context_frames,
        prefix_frames=prefix_frames,
        existing=existing,
        batch=batch,
    )
    for start, done, end in spans:
        kept = codes[..., start:done]
        kept_ids = layout.target_to_input(layout.codes_to_targets(kept)) if done > start else None
        prompt = conditioning(start, end, done)
        if kept_ids is not None:
            prompt = torch.cat([prompt, kept_ids.to(prompt.device)], dim=1)
        new = generate_window(
            model,
            prompt,
            (end - done) * levels,
            layout=layout,
            sampling=sampling,
            generator=generator,
            level_offset=(done - start) * levels,
            use_cache=use_cache,
            on_window=on_window,
        )
        codes = torch.cat([codes, targets_to_codes(layout, new).to(codes.device)], dim=-1)
    return codes


def sliding_windows(
    layout: Any,
    *,
    total_frames: int,
    context_frames: int,
    prefix_frames: int,
    existing: torch.Tensor | None,
    batch: int | None,
) -> tuple[torch.Tensor, list[tuple[int, int, int]]]:
    """The codes to continue (``existing`` ``(B, L, F)``, else empty ``(batch, L, 0)``) and the
    ``(start, done, end)`` of each window that takes them to ``total_frames`` (``windows``).

    The one check of the arguments ``sliding_generate`` and ``sliding_delay_generate`` share;
    ``layout``: any stage's (its ``stage`` names it in errors, ``target_level_count`` is L).
    """
    if not 0 <= prefix_frames < context_frames:
        raise ValueError(
            f"{layout.stage}: prefix_frames={prefix_frames} must be in 0..context_frames-1 "
            f"(context_frames={context_frames})"
        )
    levels = layout.target_level_count
    if existing is None:
        if batch is None:
            raise ValueError("give `batch` when there are no existing codes")
        existing = torch.zeros(batch, levels, 0, dtype=torch.long)
    if existing.dim() != 3 or existing.shape[1] != levels:
        raise ValueError(
            f"{layout.stage}: existing codes must be (B, {levels}, F), got {tuple(existing.shape)}"
        )
    spans = windows(existing.shape[-1], total_frames, context_frames, prefix_frames)
    return existing, list(spans)


def windows(done: int, total: int, context: int, prefix: int) -> Iterator[tuple[int, int, int]]:
    """``(start, done, end)`` of each window that takes ``done`` frames to ``total``: frames
    ``start .. done - 1`` are kept (at most ``prefix`` of them, the tail of what exists),
    ``done .. end - 1`` are new, and a window spans at most ``context`` frames."""
    while done < total:
        start = max(0, done - prefix)
        end = min(total, start + context)
        yield start, done, end
        done = end
