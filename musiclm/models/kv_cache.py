"""The key/value cache of ``TokenLM`` and the incremental pass that fills it.

``TokenLM.forward(tokens, cache=...)`` runs here. x-transformers' own cache (2.31) stores keys
before the rotary rotation, concatenates the whole cache and rotates it again at every step;
at batch 1 on a CPU that bookkeeping, not arithmetic, sets the speed (numbers and the choice:
docs/decisions/one-network.md). This pass reads the network's parameters in place (one fused
q/k/v matrix per layer is the only copy, made when the cache is made), caches keys already
rotated in a preallocated buffer, and runs a token through about 15 tensor operations per
layer. Tests hold its logits equal to the network's full forward pass at every step.

Only the configuration ``TokenLM`` builds is supported (pre-norm, bias-free layer norm,
rotary positions on part of each head, GELU feed-forward); anything else is refused when a
cache is made, so a changed network fails loudly instead of silently diverging.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from x_transformers.x_transformers import Attention, FeedForward, LayerNorm


@dataclass
class _Layer:
    attn_gamma: torch.Tensor
    wqkv: torch.Tensor  # (3 * inner, dim)
    wo: torch.Tensor  # (dim, inner)
    ff_gamma: torch.Tensor
    w1: torch.Tensor
    b1: torch.Tensor | None
    w2: torch.Tensor
    b2: torch.Tensor | None


@dataclass
class _Weights:
    """The decoder's parameters as the incremental pass reads them."""

    emb: torch.Tensor
    out: torch.Tensor
    final_gamma: torch.Tensor
    layers: list[_Layer]
    heads: int
    dim_head: int
    inv_freq: torch.Tensor
    eps: float

    @property
    def dim(self) -> int:
        return self.emb.shape[1]

    @property
    def rot_dim(self) -> int:
        return 2 * self.inv_freq.numel()


@dataclass
class KVCache:
    """Rotated keys and values ``(layers, B, H, capacity, dim_head)`` of the positions seen so
    far (``length``), with the weights and rotary tables of the network that made it."""

    k: torch.Tensor
    v: torch.Tensor
    weights: _Weights
    length: int = 0
    cos: torch.Tensor = field(default_factory=lambda: torch.empty(0))
    sin: torch.Tensor = field(default_factory=lambda: torch.empty(0))

    @property
    def capacity(self) -> int:
        return self.k.shape[3]

    @property
    def batch(self) -> int:
        return self.k.shape[1]

    def tables(self, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotary ``cos`` and signed ``sin`` (>= length, dim_head); identity past ``rot_dim``."""
        if self.cos.shape[0] < length:
            w = self.weights
            n, device = max(length, 2 * self.cos.shape[0], 256), w.emb.device
            pos = torch.arange(n, device=device, dtype=torch.float32)
            freqs = torch.outer(pos, w.inv_freq.float()).repeat_interleave(2, dim=-1)
            sign = torch.tensor([-1.0, 1.0], device=device).repeat(w.rot_dim // 2)
            cos = torch.ones(n, w.dim_head, device=device)
            sin = torch.zeros(n, w.dim_head, device=device)
            cos[:, : w.rot_dim] = freqs.cos()
            sin[:, : w.rot_dim] = freqs.sin() * sign
            self.cos, self.sin = cos.to(w.emb.dtype), sin.to(w.emb.dtype)
        return self.cos, self.sin


@torch.inference_mode()
def new_cache(net: nn.Module, batch: int, capacity: int) -> KVCache:
    """An empty cache for ``net`` (a ``TokenLM``), ``batch`` rows, up to ``capacity`` positions."""
    w = read_weights(net)
    shape = (len(w.layers), batch, w.heads, capacity, w.dim_head)
    kw = {"device": w.emb.device, "dtype": w.emb.dtype}
    cache = KVCache(torch.empty(shape, **kw), torch.empty(shape, **kw), w)
    cache.tables(capacity)
    return cache


@torch.inference_mode()
def cached_forward(
    cache: KVCache,
    tokens: torch.Tensor,
    positions: torch.Tensor | None = None,
    extra: torch.Tensor | None = None,
) -> torch.Tensor:
    """Append ``tokens`` (B, n) to ``cache``; logits of every new position (B, n, targets).

    ``positions`` (n,): their rotary positions (default: the next ``n`` slots); the cache
    stores keys already rotated, so later steps may use any positions too. ``extra``
    (B, n, D): embeddings added to the inputs (frame conditioning).
    """
    b, n = tokens.shape
    start, w = cache.length, cache.weights
    if b != cache.batch:
        raise ValueError(f"tokens have batch {b}, cache was made for {cache.batch}")
    if start + n > cache.capacity:
        raise ValueError(f"cache holds {cache.capacity} positions, asked for {start + n}")
    if n == 1:
        pos = start if positions is None else int(positions[0])
        return _step(cache, tokens[:, 0], pos, None if extra is None else extra[:, 0]).unsqueeze(1)
    if positions is None:
        cos, sin = cache.tables(start + n)
        cos, sin = cos[start : start + n], sin[start : start + n]  # (n, Dh)
    else:
        cos, sin = cache.tables(int(positions.max()) + 1)
        cos, sin = cos[positions], sin[positions]
    h = _embed(w, tokens, extra)  # (B, n, D)
    end = start + n
    mask = None
    if start:  # queries start..end-1 see keys 0..their own position
        q_pos = torch.arange(start, end, device=h.device).view(-1, 1)
        mask = torch.arange(end, device=h.device).view(1, -1) <= q_pos
    for i, layer in enumerate(w.layers):
        y = F.layer_norm(h, (w.dim,), layer.attn_gamma, None, w.eps)
        qkv = F.linear(y, layer.wqkv).view(b, n, 3, w.heads, w.dim_head)
        qkv = qkv.permute(2, 0, 3, 1, 4)  # (3, B, H, n, Dh)
        qk = qkv[:2] * cos + _swap_pairs(qkv[:2]) * sin
        cache.k[i, :, :, start:end] = qk[1]
        cache.v[i, :, :, start:end] = qkv[2]
        att = F.scaled_dot_product_attention(
            qk[0],
            cache.k[i, :, :, :end],
            cache.v[i, :, :, :end],
            attn_mask=mask,
            is_causal=mask is None,
        )  # (B, H, n, Dh)
        h = h + F.linear(att.transpose(1, 2).reshape(b, n, -1), layer.wo)
        h = h + _ff(w, h, layer)
    cache.length = end
    return F.linear(F.layer_norm(h, (w.dim,), w.final_gamma, None, w.eps), w.out)


def _step(
    cache: KVCache, token: torch.Tensor, position: int, extra: torch.Tensor | None
) -> torch.Tensor:
    """One new position per row: ``token`` (B,) at rotary ``position`` -> logits (B, V)."""
    pos, w = cache.length, cache.weights
    b = token.shape[0]
    cos, sin = cache.tables(position + 1)
    cos, sin = cos[position], sin[position]
    h = _embed(w, token, extra)  # (B, D)
    for i, layer in enumerate(w.layers):
        y = F.layer_norm(h, (w.dim,), layer.attn_gamma, None, w.eps)
        qkv = F.linear(y, layer.wqkv).view(b, 3, w.heads, w.dim_head)
        qk = torch.addcmul(qkv[:, :2] * cos, _swap_pairs(qkv[:, :2]), sin)
        cache.k[i, :, :, pos] = qk[:, 1]
        cache.v[i, :, :, pos] = qkv[:, 2]
        att = F.scaled_dot_product_attention(
            qk[:, 0].unsqueeze(2), cache.k[i, :, :, : pos + 1], cache.v[i, :, :, : pos + 1]
        )  # (B, H, 1, Dh)
        h = h + F.linear(att.view(b, -1), layer.wo)
        h = h + _ff(w, h, layer)
    cache.length = pos + 1
    return F.linear(F.layer_norm(h, (w.dim,), w.final_gamma, None, w.eps), w.out)


def _embed(w: _Weights, tokens: torch.Tensor, extra: torch.Tensor | None) -> torch.Tensor:
    h = F.embedding(tokens, w.emb)
    return h if extra is None else h + extra


def _ff(w: _Weights, h: torch.Tensor, layer: _Layer) -> torch.Tensor:
    y = F.layer_norm(h, (w.dim,), layer.ff_gamma, None, w.eps)
    return F.linear(F.gelu(F.linear(y, layer.w1, layer.b1)), layer.w2, layer.b2)


def weight_bytes(cache: KVCache) -> int:
    """Bytes of weights read per decoded token (the embedding contributes one row)."""
    w = cache.weights
    mats = [w.out, *(t for L in w.layers for t in (L.wqkv, L.wo, L.w1, L.w2))]
    return sum(t.numel() * t.element_size() for t in mats)


def read_weights(net: nn.Module) -> _Weights:
    """``net``'s parameters in the incremental pass's form; refuses any other configuration."""
    wrapper = net.net
    layers = wrapper.attn_layers
    where = f"{type(net).__name__} (x-transformers Decoder)"
    if not layers.pre_norm or layers.sandwich_norm or layers.residual_attn:
        raise NotImplementedError(f"{where}: only pre-norm decoders are supported")
    if wrapper.token_emb.l2norm_embed or type(wrapper.post_emb_norm).__name__ != "Identity":
        raise NotImplementedError(f"{where}: unsupported embedding options")
    if layers.rotary_pos_emb is None or layers.rotary_pos_emb.scale is not None:
        raise NotImplementedError(f"{where}: needs rotary positions without xpos")
    if "".join(layers.layer_types) != "af" * (len(layers.layer_types) // 2):
        raise NotImplementedError(f"{where}: layer types {layers.layer_types} unsupported")
    blocks = list(layers.layers)
    out: list[_Layer] = []
    eps = None
    for i in range(0, len(blocks), 2):
        (norm_a, *_), attn, _ = blocks[i]
        (norm_f, *_), ff, _ = blocks[i + 1]
        if not isinstance(attn, Attention) or not isinstance(ff, FeedForward):
            raise NotImplementedError(f"{where}: layer {i} is not attention + feed-forward")
        if attn.to_q.bias is not None or attn.num_mem_kv or attn.qk_norm:
            raise NotImplementedError(f"{where}: unsupported attention options")
        lin1, act = ff.ff[0][0], ff.ff[0][1]
        if not isinstance(act, nn.GELU) or act.approximate != "none":
            raise NotImplementedError(f"{where}: feed-forward must use exact GELU")
        (attn_gamma, eps), (ff_gamma, _) = _norm(norm_a, where), _norm(norm_f, where)
        wqkv = torch.cat([attn.to_q.weight, attn.to_k.weight, attn.to_v.weight])
        out.append(
            _Layer(
                attn_gamma,
                wqkv,
                attn.to_out.weight,
                ff_gamma,
                lin1.weight,
                lin1.bias,
                ff.ff[2].weight,
                ff.ff[2].bias,
            )  # fmt: skip
        )
    first = blocks[0][1]
    rotary = layers.rotary_pos_emb
    final_gamma, _ = _norm(layers.final_norm, where)
    return _Weights(
        emb=wrapper.token_emb.emb.weight,
        out=wrapper.to_logits.weight,
        final_gamma=final_gamma,
        layers=out,
        heads=first.heads,
        dim_head=first.to_q.weight.shape[0] // first.heads,
        inv_freq=rotary.inv_freq / rotary.interpolation_factor,
        eps=eps,
    )


def _swap_pairs(x: torch.Tensor) -> torch.Tensor:
    """(x0, x1, x2, x3, ..) -> (x1, x0, x3, x2, ..): x-transformers' interleaved rotate_half,
    its sign folded into the ``sin`` table."""
    return x.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)


def _norm(norm: nn.Module, where: str) -> tuple[torch.Tensor, float]:
    """A bias-free x-transformers LayerNorm's scale and eps."""
    if not isinstance(norm, LayerNorm):
        raise NotImplementedError(f"{where}: expected LayerNorm, found {type(norm).__name__}")
    return norm.gamma + float(norm.unit_offset), float(norm.ln.eps)
