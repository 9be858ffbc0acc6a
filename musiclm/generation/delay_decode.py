"""Decoding of the delay stage: one network call per step, every codec level of a step
sampled at once (MusicGen), so a second of 50 Hz audio costs about 50 calls.

``generate_delay_window`` prefills the network's cache with ``[BOS] + M`` and the steps whose
every slot is known (kept frames of the previous window, special ids before the start), then
per step: guide (the unconditional rows, MuLan dropped, are stacked under the conditional
ones and share the forward pass), sample the ``Q`` levels, keep only the slots whose frame is
new (a slot of a kept frame keeps its code, one outside the window gets the special id), and
feed the step back. ``use_cache=False`` recomputes the whole sequence at every step with the
same forward pass training uses (the reference the tests hold the cache to).
``sliding_delay_generate`` covers any length with the cascade's windows, its arguments checked
by the same function (``decode.sliding_windows``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from musiclm.generation.decode import sliding_windows
from musiclm.generation.sampling import SamplingConfig, guide, sample
from musiclm.models.token_lm import TokenLM
from musiclm.stages.delay_layout import DelayLayout, DelayPrompt

# (f0, f1, new) -> the start of a window over frames f0..f1-1, new from frame `new`
DelayConditioning = Callable[[int, int, int], DelayPrompt]
# called at every step with the raw logits (rows, Q, K) of every row (conditional rows
# first, then the unconditional ones with CFG) and the step's index in its window
StepHook = Callable[[torch.Tensor, int], None]


@torch.inference_mode()
def generate_delay_window(
    model: TokenLM,
    layout: DelayLayout,
    prompt: DelayPrompt,
    frames: int,
    *,
    kept: torch.Tensor | None = None,
    sampling: SamplingConfig,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
    on_step: StepHook | None = None,
) -> torch.Tensor:
    """Codes ``(B, Q, frames - k)`` of a window of ``frames`` frames whose first ``k`` are
    ``kept`` ``(B, Q, k)``."""
    b, p = prompt.prefix.shape
    q, size = layout.num_levels, layout.spec.codebook_size
    k = 0 if kept is None else kept.shape[-1]
    device = prompt.prefix.device
    codes = prompt.prefix.new_full((b, q, frames), -1)
    if k:
        codes[..., :k] = kept.to(device)
    frame_of = layout.steps(torch.arange(frames, device=device).expand(1, q, -1), fill=-1)[0]
    n_steps = frame_of.shape[0]  # (S, Q): the frame each slot holds, -1 outside the window
    ids = layout.inputs(prompt.prefix, prompt.semantic, n_steps, prompt.beat)
    first = int((frame_of >= k).any(-1).long().argmax()) if frames > k else n_steps
    for s in range(first):  # steps whose every slot is kept or special
        ids[:, p + s, :q] = layout.step_ids(_step_codes(layout, codes, frame_of[s], k, None))
    if sampling.guided:
        if not layout.uses_mulan:
            raise ValueError(f"cfg_scale={sampling.cfg_scale}: the delay stage has no MuLan tokens")
        ones = torch.ones(b, dtype=torch.bool, device=device)
        ids = torch.cat([ids, layout.drop_conditioning(ids, ones)])
    cache = model.new_cache(ids.shape[0], p + n_steps) if use_cache else None
    logits = _forward(model, ids[:, : p + first], cache)
    for s in range(first, n_steps):
        raw = logits.view(-1, q, size)
        if on_step is not None:
            on_step(raw, s)
        cond = guide(raw[:b], raw[b:], sampling.cfg_scale) if sampling.guided else raw
        token = sample(cond.reshape(b * q, size), sampling, generator).view(b, q)
        step = _step_codes(layout, codes, frame_of[s], k, token)
        if s + 1 == n_steps:
            break
        ids[:, p + s, :q] = layout.step_ids(step).repeat(ids.shape[0] // b, 1)
        at = slice(p + s, p + s + 1) if use_cache else slice(0, p + s + 1)
        logits = _forward(model, ids[:, at], cache)
    return codes[..., k:]


def _step_codes(
    layout: DelayLayout,
    codes: torch.Tensor,
    frames: torch.Tensor,
    k: int,
    token: torch.Tensor | None,
) -> torch.Tensor:
    """The codes ``(B, Q)`` of one step whose level ``q`` holds frame ``frames[q]``: the
    special id outside the window, the kept code of frames before ``k``, else ``token``
    (written into ``codes``)."""
    inside = frames >= 0
    at = frames.clamp_min(0).view(1, -1, 1).expand(codes.shape[0], -1, 1)
    known = codes.gather(2, at).squeeze(2)  # (B, Q)
    step = known if token is None else torch.where(frames < k, known, token)
    codes.scatter_(2, at, torch.where(inside, step, known).unsqueeze(2))
    return torch.where(inside, step, layout.special)


def _forward(model: TokenLM, ids: torch.Tensor, cache: object | None) -> torch.Tensor:
    """Logits ``(rows, Q * K)`` of the last of ``ids`` ``(rows, n, C)`` (appended to ``cache``
    when given)."""
    extra = ids[..., 1:] if ids.shape[-1] > 1 else None
    return model(ids[..., 0], cache=cache, frame_ids=extra)[:, -1]


def sliding_delay_generate(
    model: TokenLM,
    *,
    layout: DelayLayout,
    conditioning: DelayConditioning,
    total_frames: int,
    context_frames: int,
    prefix_frames: int,
    sampling: SamplingConfig,
    generator: torch.Generator | None = None,
    existing: torch.Tensor | None = None,
    batch: int | None = None,
    use_cache: bool = True,
    on_step: StepHook | None = None,
) -> torch.Tensor:
    """Codes ``(B, Q, total_frames)`` window by window: each window after the first keeps the
    last ``prefix_frames`` frames made and adds up to ``context_frames - prefix_frames``."""
    codes, spans = sliding_windows(
        layout,
        total_frames=total_frames,
        context_frames=context_frames,
        prefix_frames=prefix_frames,
        existing=existing,
        batch=batch,
    )
    for start, done, end in spans:
        new = generate_delay_window(
            model,
            layout,
            conditioning(start, end, done),
            end - start,
            kept=codes[..., start:done],
            sampling=sampling,
            generator=generator,
            use_cache=use_cache,
            on_step=on_step,
        )
        codes = torch.cat([codes, new.to(codes.device)], dim=-1)
    return codes
