"""Conditioning tokens M: residual k-means over MuLan audio embeddings (MusicLM: 12 x 1024).

``ConditioningRVQ`` is fitted on the MuLan audio embeddings of the training set and saved as
safetensors (codebooks) with its configuration, quantisation error and fingerprint as JSON in
the header and in a ``.json`` sidecar; nothing is pickled. The MuLan RVQ also keeps the audio
embeddings it was fitted on (``audio_embeddings``, at most ``MAX_KEPT_EMBEDDINGS`` rows), so
generation can read a prompt through its nearest training clips (``text_neighbours``:
``docs/decisions/text-neighbours.md``); they are not part of the fingerprint, since the tokens
of an embedding do not depend on them. ``MulanConditioner`` pairs a joint
embedding (a MuLan checkpoint, or a plugin such as a pretrained CLAP) with its RVQ and is what
token preparation and generation call; what it shares with the melody conditioner
(``musiclm.conditioning.melody_tokens``) is ``RVQConditioner``.

    musiclm prepare mulan-rvq --checkpoint CKPT --audio SHARDS/train --out rvq.safetensors \
        --levels 12 --codebook-size 1024
    musiclm prepare mulan-rvq --joint-embedding clap --joint-embedding-args '{"model": DIR}' ...
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Self

import torch
import torch.nn.functional as F

from musiclm.datamodules.shards import atomic_write_json
from musiclm.tokenizers import joint

KIND = "mulan_rvq"
# 65,536 embeddings of 128 floats stored as fp16 are 16 MB: enough neighbours for any prompt
MAX_KEPT_EMBEDDINGS = 65536


class MissingEmbeddingsError(ValueError):
    """``text_neighbours`` asked of a MuLan RVQ that kept no audio embeddings."""


class ConditioningRVQ:
    """Residual k-means codebooks (levels, size, dim): level l quantises what levels < l left."""

    # The artifact kind written into saved files and fingerprints; subclasses name their own.
    kind: str = KIND

    def __init__(
        self,
        codebooks: torch.Tensor,
        meta: dict[str, Any] | None = None,
        audio_embeddings: torch.Tensor | None = None,
    ) -> None:
        if codebooks.dim() != 3:
            raise ValueError(f"codebooks must be (levels, size, dim), got {tuple(codebooks.shape)}")
        self.codebooks = codebooks.float().cpu()
        self.meta = {k: v for k, v in (meta or {}).items() if k != "fingerprint"}
        if audio_embeddings is not None and (
            audio_embeddings.dim() != 2 or audio_embeddings.shape[1] != self.dim
        ):
            raise ValueError(
                f"audio_embeddings must be (N, {self.dim}), got {tuple(audio_embeddings.shape)}"
            )
        # the embeddings the codebooks were fitted on (or a sample of them), or None
        self.audio_embeddings = None if audio_embeddings is None else audio_embeddings.float()

    @property
    def num_levels(self) -> int:
        return self.codebooks.shape[0]

    @property
    def codebook_size(self) -> int:
        return self.codebooks.shape[1]

    @property
    def dim(self) -> int:
        return self.codebooks.shape[2]

    @classmethod
    def fit(
        cls,
        emb: torch.Tensor,
        *,
        levels: int,
        codebook_size: int,
        iters: int = 20,
        seed: int = 0,
        meta: dict[str, Any] | None = None,
        keep_embeddings: int = 0,
    ) -> ConditioningRVQ:
        """Fit ``levels`` codebooks of ``codebook_size`` entries on embeddings (N, D); keep
        up to ``keep_embeddings`` of them (a seeded sample when there are more)."""
        from musiclm.tokenizers.kmeans import fit_residual_kmeans

        if levels < 1 or codebook_size < 1:
            raise ValueError(
                f"levels and codebook_size must be >= 1, got {levels}, {codebook_size}"
            )
        if emb.shape[0] < codebook_size:
            raise ValueError(
                f"conditioning RVQ: {emb.shape[0]} embeddings are fewer than codebook_size="
                f"{codebook_size}; use more clips or a smaller --codebook-size"
            )
        books = fit_residual_kmeans(
            emb.float().cpu(), levels, codebook_size, seed=seed, iters=iters
        )
        info = {**(meta or {}), "kind": cls.kind, "levels": levels, "codebook_size": codebook_size}
        info.update(dim=int(emb.shape[1]), fit_count=int(emb.shape[0]), seed=seed, iters=iters)
        kept = None
        if keep_embeddings > 0:
            kept = emb.float().cpu()
            if kept.shape[0] > keep_embeddings:
                gen = torch.Generator().manual_seed(seed)
                kept = kept[torch.randperm(kept.shape[0], generator=gen)[:keep_embeddings]]
        rvq = cls(books, info, kept)
        rvq.meta["quantization_mse"] = rvq.quantization_errors(emb)
        return rvq

    def tokens(self, emb: torch.Tensor) -> torch.Tensor:
        """Embeddings (B, D) -> tokens (B, num_levels) long, on ``emb``'s device."""
        from musiclm.tokenizers.kmeans import residual_encode

        if emb.dim() != 2 or emb.shape[1] != self.dim:
            raise ValueError(f"conditioning RVQ expects (B, {self.dim}), got {tuple(emb.shape)}")
        return residual_encode(emb.detach().float().cpu(), self.codebooks).to(emb.device)

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens (B, L'), L' <= num_levels -> the sum of their codewords (B, D)."""
        from musiclm.tokenizers.kmeans import residual_decode

        if tokens.dim() != 2:
            raise ValueError(f"conditioning RVQ decodes (B, L) tokens, got {tuple(tokens.shape)}")
        return residual_decode(tokens.cpu(), self.codebooks).to(tokens.device)

    def quantization_errors(self, emb: torch.Tensor) -> list[float]:
        """Mean squared error of ``emb`` rebuilt from the first 1, 2, ... num_levels levels."""
        emb = emb.detach().float().cpu()
        toks = self.tokens(emb)
        return [
            (emb - self.decode(toks[:, : n + 1])).pow(2).sum(1).mean().item()
            for n in range(self.num_levels)
        ]

    def fingerprint(self) -> str:
        """``<kind>:<16 hex>`` over the codebooks and their metadata."""
        from musiclm.tokenizers.artifacts import tensor_digest

        return f"{self.kind}:{tensor_digest({'codebooks': self.codebooks}, self.meta)[:16]}"

    def save(self, path: str | os.PathLike) -> None:
        """Atomically write ``path`` (safetensors) and ``path``.json (a readable copy of meta)."""
        from musiclm.tokenizers.artifacts import save_artifact

        tensors = {"codebooks": self.codebooks}
        if self.audio_embeddings is not None:
            tensors["audio_embeddings"] = self.audio_embeddings.half()
        save_artifact(path, tensors, self.meta)
        report = {**self.meta, "fingerprint": self.fingerprint()}
        atomic_write_json(Path(f"{path}.json"), report)

    @classmethod
    def load(cls, path: str | os.PathLike) -> ConditioningRVQ:
        """Read a file written by ``save``; a wrong kind or a corrupt file raises naming it."""
        from musiclm.tokenizers.artifacts import load_artifact

        tensors, meta = load_artifact(path, kind=cls.kind)
        if "codebooks" not in tensors:
            raise ValueError(f"{path}: {cls.kind} artifact lacks 'codebooks'")
        return cls(tensors["codebooks"], meta, tensors.get("audio_embeddings"))


def mulan_fingerprint(model: torch.nn.Module) -> str:
    """``mulan:<16 hex>`` over a MuLan network's weights and buffers."""
    from musiclm.tokenizers.artifacts import module_digest

    return f"mulan:{module_digest(model)[:16]}"


class RVQConditioner:
    """A pretrained network and the conditioning RVQ fitted over its embeddings: what the
    MuLan and melody conditioners share (the pair's fingerprint, refusing an RVQ fitted over
    another network or of another width, the device). ``kind`` names the conditioner in
    messages, the RVQ's metadata (``<kind>_fingerprint``) and its command
    (``musiclm prepare <kind>-rvq``); ``network`` says what the network is."""

    kind = ""
    network = "network"

    def __init__(self, net: torch.nn.Module, rvq: ConditioningRVQ, fingerprint: str) -> None:
        self.net = net.eval()
        self.rvq = rvq
        self._net_fp = fingerprint
        fitted_on = rvq.meta.get(f"{self.kind}_fingerprint")
        if fitted_on is not None and fitted_on != fingerprint:
            raise ValueError(
                f"{self.kind} RVQ was fitted on {self.network} {fitted_on}, but this one is "
                f"{fingerprint}: refit it with `musiclm prepare {self.kind}-rvq`"
            )
        if rvq.dim != net.embed_dim:
            raise ValueError(
                f"{self.kind} RVQ dim {rvq.dim} != {self.kind} embed_dim {net.embed_dim}"
            )

    @property
    def num_levels(self) -> int:
        return self.rvq.num_levels

    @property
    def codebook_size(self) -> int:
        return self.rvq.codebook_size

    def to(self, device: str | torch.device) -> Self:
        self.net.to(device)
        return self

    def fingerprint(self) -> str:
        return f"{self._net_fp}+{self.rvq.fingerprint()}"

    def _device(self) -> torch.device:
        return next(self.net.parameters()).device


class MulanConditioner(RVQConditioner):
    """A joint embedding (MuLan or CLAP) plus its conditioning RVQ: audio or text ->
    conditioning tokens."""

    kind, network = "mulan", "joint embedding"

    def __init__(
        self,
        mulan: torch.nn.Module,
        rvq: ConditioningRVQ,
        *,
        text_neighbours: int = 0,
        rvq_path: str = "the MuLan RVQ",
    ) -> None:
        super().__init__(mulan, rvq, mulan.fingerprint())
        if text_neighbours < 0:
            raise ValueError(f"text_neighbours must be >= 0, got {text_neighbours}")
        if text_neighbours and rvq.audio_embeddings is None:
            raise MissingEmbeddingsError(
                f"{rvq_path} holds no audio embeddings, which text_neighbours={text_neighbours} "
                "reads: refit it with `musiclm prepare mulan-rvq`"
            )
        self.text_neighbours = text_neighbours

    @classmethod
    def from_files(
        cls,
        mulan: str | joint.JointEmbeddingSpec,
        rvq: str,
        *,
        device: str = "cpu",
        text_neighbours: int = 0,
    ) -> MulanConditioner:
        """``mulan``: a MuLan checkpoint path or a joint-embedding plugin spec."""
        return cls(
            joint.load_joint_embedding(mulan, device=device),
            ConditioningRVQ.load(rvq),
            text_neighbours=text_neighbours,
            rvq_path=str(rvq),
        )

    @property
    def mulan(self) -> torch.nn.Module:
        """The joint embedding."""
        return self.net

    @property
    def sample_rate(self) -> int:
        return self.net.sample_rate

    @torch.no_grad()
    def embed_audio(self, wav: torch.Tensor) -> torch.Tensor:
        """wav (B, 1, T) or (B, T) at ``sample_rate`` -> mean of windowed embeddings (B, D)."""
        return self.net.embed_audio_windows(wav.to(self._device()))

    @torch.no_grad()
    def embed_text(self, texts: list[str]) -> torch.Tensor:
        return self.net.embed_text(texts)

    def audio_tokens(self, wav: torch.Tensor) -> torch.Tensor:
        """wav (B, 1, T) -> conditioning tokens (B, num_levels) long."""
        return self.rvq.tokens(self.embed_audio(wav))

    @torch.no_grad()
    def text_condition(self, texts: list[str]) -> torch.Tensor:
        """What a prompt is quantised from (B, D): its text embedding, or with
        ``text_neighbours`` = k the re-normalised mean of the k training audio embeddings
        nearest to it. The LMs are trained on audio embeddings' tokens, and a prompt's own
        embedding lies apart from them (the modality gap), the more so for wording unlike the
        captions'; its neighbours are audio the LMs have read."""
        emb = self.embed_text(texts)
        if not self.text_neighbours:
            return emb
        return neighbour_mean(emb, self.rvq.audio_embeddings, self.text_neighbours)

    def text_tokens(self, texts: list[str]) -> torch.Tensor:
        """Prompts -> conditioning tokens (B, num_levels) long (``text_condition``)."""
        return self.rvq.tokens(self.text_condition(texts))


def neighbour_mean(query: torch.Tensor, bank: torch.Tensor, k: int) -> torch.Tensor:
    """For each row of ``query`` (B, D), the unit-normalised mean of the ``k`` rows of ``bank``
    (N, D) with the highest cosine similarity to it (all N when k >= N)."""
    bank = bank.to(query.device, torch.float32)
    sim = F.normalize(query.float(), dim=-1) @ F.normalize(bank, dim=-1).T
    idx = sim.topk(min(k, bank.shape[0]), dim=-1).indices  # (B, k)
    return F.normalize(bank[idx].mean(1), dim=-1)


def _clip_batches(
    directory: str, sample_rate: int, batch_size: int, max_clips: int | None
) -> Iterator[torch.Tensor]:
    """Equal-length clips of an audio shard folder, resampled to ``sample_rate``, batched."""
    import torchaudio

    from musiclm.datamodules.shards import iter_audio_samples

    pending: list[torch.Tensor] = []
    seen = 0
    for sample in iter_audio_samples(directory):
        wav = torch.from_numpy(sample["audio"]).float()
        if sample["sample_rate"] != sample_rate:
            wav = torchaudio.functional.resample(wav, sample["sample_rate"], sample_rate)
        if pending and (len(pending) == batch_size or pending[0].shape != wav.shape):
            yield torch.stack(pending)
            pending = []
        pending.append(wav)
        seen += 1
        if max_clips is not None and seen >= max_clips:
            break
    if pending:
        yield torch.stack(pending)


@torch.no_grad()
def embed_audio_shards(
    conditioner_mulan: torch.nn.Module,
    directory: str,
    *,
    batch_size: int = 16,
    max_clips: int | None = None,
) -> torch.Tensor:
    """Mean-of-windows MuLan audio embeddings (N, D) of every clip in a shard folder."""
    device = next(conditioner_mulan.parameters()).device
    embs = [
        conditioner_mulan.embed_audio_windows(batch.to(device)).cpu()
        for batch in _clip_batches(directory, conditioner_mulan.sample_rate, batch_size, max_clips)
    ]
    if not embs:
        raise ValueError(f"no audio clips found in {directory}")
    return torch.cat(embs)
