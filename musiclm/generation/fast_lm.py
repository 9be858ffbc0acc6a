"""A lean incremental forward pass over a ``TokenLM``'s own weights, for sampling.

x-transformers caches keys *before* the rotary rotation and re-rotates the whole cache at
every step, and its per-layer bookkeeping costs hundreds of small tensor operations per token;
at batch 1 on a CPU that overhead, not arithmetic, sets the speed. ``FastTokenLM`` reads the
same parameters (no copy except one fused q/k/v matrix per layer), caches keys already
rotated in a preallocated buffer, and runs one token through about 15 tensor operations per
layer. It computes the same function as ``TokenLM.forward``: tests compare its logits with
the network's full forward pass at every step.

Only the configuration ``TokenLM`` builds is supported (pre-norm, bias-free layer norm,
rotary positions on part of each head, GELU feed-forward); anything else is refused at
construction, so a changed network fails loudly instead of silently diverging.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from musiclm.models.token_lm import summed_embedding


@dataclass
class KVCache:
    """Preallocated rotated keys and values: ``(layers, B, H, capacity, dim_head)``."""

    k: torch.Tensor
    v: torch.Tensor
    length: int = 0

    @property
    def capacity(self) -> int:
        return self.k.shape[3]

    @property
    def batch(self) -> int:
        return self.k.shape[1]


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


class FastTokenLM:
    """Incremental decoding over ``net`` (a ``musiclm.models.token_lm.TokenLM``)."""

    @torch.no_grad()
    def __init__(self, net: nn.Module) -> None:
        from x_transformers.x_transformers import Attention, FeedForward, LayerNorm

        wrapper = net.net
        layers = wrapper.attn_layers
        self.net = net
        where = f"{type(net).__name__} (x-transformers Decoder)"
        if not layers.pre_norm or layers.sandwich_norm or layers.residual_attn:
            raise NotImplementedError(f"{where}: only pre-norm decoders are supported")
        if wrapper.token_emb.l2norm_embed or type(wrapper.post_emb_norm).__name__ != "Identity":
            raise NotImplementedError(f"{where}: unsupported embedding options")
        if layers.rotary_pos_emb is None or layers.rotary_pos_emb.scale is not None:
            raise NotImplementedError(f"{where}: needs rotary positions without xpos")
        if "".join(layers.layer_types) != "af" * (len(layers.layer_types) // 2):
            raise NotImplementedError(f"{where}: layer types {layers.layer_types} unsupported")
        self.emb = wrapper.token_emb.emb.weight
        self.out = wrapper.to_logits.weight
        self.final_gamma = _gamma(layers.final_norm, LayerNorm, where)
        self.layers: list[_Layer] = []
        attn_ff = list(layers.layers)
        for i in range(0, len(attn_ff), 2):
            (norm_a, *_), attn, _ = attn_ff[i]
            (norm_f, *_), ff, _ = attn_ff[i + 1]
            if not isinstance(attn, Attention) or not isinstance(ff, FeedForward):
                raise NotImplementedError(f"{where}: layer {i} is not attention + feed-forward")
            if attn.to_q.bias is not None or attn.num_mem_kv or attn.qk_norm:
                raise NotImplementedError(f"{where}: unsupported attention options")
            lin1, act = ff.ff[0][0], ff.ff[0][1]
            if not isinstance(act, nn.GELU) or act.approximate != "none":
                raise NotImplementedError(f"{where}: feed-forward must use exact GELU")
            self.layers.append(
                _Layer(
                    attn_gamma=_gamma(norm_a, LayerNorm, where),
                    wqkv=torch.cat([attn.to_q.weight, attn.to_k.weight, attn.to_v.weight]),
                    wo=attn.to_out.weight,
                    ff_gamma=_gamma(norm_f, LayerNorm, where),
                    w1=lin1.weight,
                    b1=lin1.bias,
                    w2=ff.ff[2].weight,
                    b2=ff.ff[2].bias,
                )
            )
        first = attn_ff[0][1]
        self.heads = first.heads
        self.dim_head = first.to_q.weight.shape[0] // self.heads
        self.dim = self.emb.shape[1]
        rotary = layers.rotary_pos_emb
        self.inv_freq = rotary.inv_freq / rotary.interpolation_factor
        self.rot_dim = 2 * self.inv_freq.numel()
        self._cos = self._sin = torch.empty(0)
        self.eps = 1e-5

    # --- tables and buffers --------------------------------------------------------------

    def _tables(self, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotary ``cos`` and signed ``sin`` (length, dim_head); identity past ``rot_dim``."""
        if self._cos.shape[0] < length:
            n = max(length, 2 * self._cos.shape[0], 256)
            pos = torch.arange(n, device=self.emb.device, dtype=torch.float32)
            freqs = torch.outer(pos, self.inv_freq.float()).repeat_interleave(2, dim=-1)
            sign = torch.tensor([-1.0, 1.0], device=self.emb.device).repeat(self.rot_dim // 2)
            cos = torch.ones(n, self.dim_head, device=self.emb.device)
            sin = torch.zeros(n, self.dim_head, device=self.emb.device)
            cos[:, : self.rot_dim] = freqs.cos()
            sin[:, : self.rot_dim] = freqs.sin() * sign
            self._cos, self._sin = cos.to(self.emb.dtype), sin.to(self.emb.dtype)
        return self._cos, self._sin

    @torch.inference_mode()
    def new_cache(self, batch: int, capacity: int) -> KVCache:
        """Empty cache for ``batch`` rows and up to ``capacity`` positions."""
        shape = (len(self.layers), batch, self.heads, capacity, self.dim_head)
        self._tables(capacity)
        kw = {"device": self.emb.device, "dtype": self.emb.dtype}
        return KVCache(torch.empty(shape, **kw), torch.empty(shape, **kw))

    # --- forward -------------------------------------------------------------------------

    @torch.inference_mode()
    def forward(
        self,
        tokens: torch.Tensor,
        cache: KVCache,
        *,
        all_logits: bool = False,
        positions: torch.Tensor | None = None,
        frame_ids: torch.Tensor | None = None,
    ):
        """Append ``tokens`` (B, n) to ``cache``; logits of the last (or every) new position.

        ``positions`` (n,): their rotary positions (default: the next ``n`` slots); the
        cache stores keys already rotated, so later steps may use any positions too.
        ``frame_ids`` (B, n, C): ids whose embeddings are added to the inputs (``-1``: none).
        """
        b, n = tokens.shape
        start = cache.length
        if b != cache.batch:
            raise ValueError(f"tokens have batch {b}, cache was made for {cache.batch}")
        if start + n > cache.capacity:
            raise ValueError(f"cache holds {cache.capacity} positions, asked for {start + n}")
        if n == 1:
            return self.step(
                tokens[:, 0],
                cache,
                None if positions is None else positions[0],
                frame_ids=None if frame_ids is None else frame_ids[:, 0],
            )
        if positions is None:
            cos, sin = self._tables(start + n)
            cos, sin = cos[start : start + n], sin[start : start + n]  # (n, Dh)
        else:
            cos, sin = self._tables(int(positions.max()) + 1)
            cos, sin = cos[positions], sin[positions]
        h = self._embed(tokens, frame_ids)  # (B, n, D)
        end = start + n
        mask = None
        if start:  # queries start..end-1 see keys 0..their own position
            q_pos = torch.arange(start, end, device=h.device).view(-1, 1)
            mask = torch.arange(end, device=h.device).view(1, -1) <= q_pos
        for i, layer in enumerate(self.layers):
            y = F.layer_norm(h, (self.dim,), layer.attn_gamma, None, self.eps)
            qkv = F.linear(y, layer.wqkv).view(b, n, 3, self.heads, self.dim_head)
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
            h = h + self._ff(h, layer)
        cache.length = end
        h = F.layer_norm(
            h if all_logits else h[:, -1], (self.dim,), self.final_gamma, None, self.eps
        )
        return F.linear(h, self.out)

    @torch.inference_mode()
    def step(
        self,
        token: torch.Tensor,
        cache: KVCache,
        position: int | torch.Tensor | None = None,
        *,
        frame_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One new position per row: ``token`` (B,) -> logits (B, num_targets); ``position``
        is its rotary position (default: its slot in the cache); ``frame_ids`` (B, C) ids
        whose embeddings are added to its input."""
        pos = cache.length
        b = token.shape[0]
        if pos >= cache.capacity:
            raise ValueError(f"cache holds {cache.capacity} positions, asked for {pos + 1}")
        rot = pos if position is None else int(position)
        cos, sin = self._tables(rot + 1)
        cos, sin = cos[rot], sin[rot]
        h = self._embed(token, frame_ids)  # (B, D)
        for i, layer in enumerate(self.layers):
            y = F.layer_norm(h, (self.dim,), layer.attn_gamma, None, self.eps)
            qkv = F.linear(y, layer.wqkv).view(b, 3, self.heads, self.dim_head)
            qk = torch.addcmul(qkv[:, :2] * cos, _swap_pairs(qkv[:, :2]), sin)
            cache.k[i, :, :, pos] = qk[:, 1]
            cache.v[i, :, :, pos] = qkv[:, 2]
            att = F.scaled_dot_product_attention(
                qk[:, 0].unsqueeze(2), cache.k[i, :, :, : pos + 1], cache.v[i, :, :, : pos + 1]
            )  # (B, H, 1, Dh)
            h = h + F.linear(att.view(b, -1), layer.wo)
            h = h + self._ff(h, layer)
        cache.length = pos + 1
        return F.linear(F.layer_norm(h, (self.dim,), self.final_gamma, None, self.eps), self.out)

    def _embed(self, tokens: torch.Tensor, frame_ids: torch.Tensor | None) -> torch.Tensor:
        h = F.embedding(tokens, self.emb)
        return h if frame_ids is None else h + summed_embedding(self.emb, frame_ids)

    def _ff(self, h: torch.Tensor, layer: _Layer) -> torch.Tensor:
        y = F.layer_norm(h, (self.dim,), layer.ff_gamma, None, self.eps)
        return F.linear(F.gelu(F.linear(y, layer.w1, layer.b1)), layer.w2, layer.b2)

    def weight_bytes(self) -> int:
        """Bytes of weights read per decoded token (the embedding contributes one row)."""
        mats = [self.out, *(t for L in self.layers for t in (L.wqkv, L.wo, L.w1, L.w2))]
        return sum(t.numel() * t.element_size() for t in mats)


def _swap_pairs(x: torch.Tensor) -> torch.Tensor:
    """(x0, x1, x2, x3, ..) -> (x1, x0, x3, x2, ..): x-transformers' interleaved rotate_half,
    its sign folded into the ``sin`` table."""
    return x.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)


def _gamma(norm: nn.Module, layer_norm_type: type, where: str) -> torch.Tensor:
    if not isinstance(norm, layer_norm_type):
        raise NotImplementedError(f"{where}: expected LayerNorm, found {type(norm).__name__}")
    return norm.gamma + float(norm.unit_offset)
