"""One LightningModule trains every token LM; a stage differs only by its ``TokenLayout``.

What goes in: a token batch from ``TokenDataModule``. What comes out: next-token cross
entropy over the stage's target tokens (conditioning positions are context, not loss).

Sizes come from the token-shard manifest at ``setup`` (the datamodule's ``spec``), are
checked against the tokenizers this config names, and are stored in the hyper-parameters as
plain values, so ``TokenLMStage.load_from_checkpoint(path)`` (or ``load_network``) rebuilds
the network from the checkpoint alone.
"""

from __future__ import annotations

import math
import os
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule

from musiclm.checkpoint_file import read_checkpoint
from musiclm.datamodules.token_spec import TokenSpec
from musiclm.models.tempo import TempoPredictor
from musiclm.models.token_lm import TokenLM
from musiclm.stage_names import DELAY
from musiclm.stages.delay_layout import DelayLayout
from musiclm.stages.token_layout import IGNORE, LMSequence, TokenLayout
from musiclm.usage import SetupError, one_line

TEMPO_LR_SCALE = 10.0


def _check_arguments(
    own: str, stage: str | None, *, cond_dropout: float, target_noise: float
) -> None:
    """Refuse the abstract stage, another stage's checkpoint and rates outside [0, 1)."""
    if not own:
        raise TypeError("use a concrete stage: SemanticStage, CoarseStage, FineStage, DelayStage")
    if stage not in (None, own):
        raise ValueError(f"a {stage} stage checkpoint given to the {own} stage")
    for name, value in (("cond_dropout", cond_dropout), ("target_noise", target_noise)):
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {value}")


class TokenLMStage(LightningModule):
    """Decoder-only LM over one stage's token layout (``stage`` chosen by the subclass)."""

    stage: str = ""

    def __init__(
        self,
        *,
        dim: int = 1024,
        depth: int = 24,
        heads: int = 16,
        ff_mult: int = 4,
        dropout: float = 0.0,
        coarse_levels: int = 4,
        fine_levels: int | None = None,
        fine_sees_mulan: bool = False,
        melody: bool = False,
        aligned_positions: bool = False,
        frame_conditioning: bool = False,
        beats: bool = False,
        conditioning: list[Any] | None = None,
        cond_dropout: float = 0.0,
        target_noise: float = 0.0,
        lr: float = 3e-4,
        weight_decay: float = 0.01,
        warmup_steps: int = 1000,
        decay_steps: int = 0,
        codec: str | None = None,
        semantic_tokenizer: str | None = None,
        mulan: str | None = None,
        spec: dict[str, Any] | None = None,
        compile: bool = False,
        stage: str | None = None,
    ) -> None:
        """
        Args:
            dim, depth, heads, ff_mult, dropout: the decoder (paper: 1024, 24, 16).
            coarse_levels: codec levels predicted by the coarse stage (paper: 4).
            fine_levels: levels predicted by the fine stage (None: all remaining).
            fine_sees_mulan: whether the fine stage is conditioned on MuLan tokens too.
            melody: condition on melody tokens too (semantic and coarse stages; the shards
                must carry them, and so must every batch and generation request).
            aligned_positions: rotary positions of the timed conditioning (semantic tokens
                for coarse, coarse levels for fine) on the targets' clock, so a target sees
                the conditioning of its own moment at a fixed distance (``TokenLayout``).
            frame_conditioning: the input predicting each target also embeds the timed
                conditioning of that target's frame (SoundStorm-style sum; coarse and fine
                stages), and for the semantic stage its beat clock id (with ``beats``) or
                else the MuLan tokens. Not in the paper, which conditions by prefix only.
            beats: semantic stage only: condition on the shards' beat clock and train a
                ``TempoPredictor`` for it (not in MusicLM; ``musiclm.tokenizers.beats``).
            conditioning: the streams the stage reads and how it fuses each, in order, e.g.
                ``[{stream: mulan, fuse: prefix}, {stream: beat, fuse: [frame_sum, aligned]}]``
                (streams by name from ``musiclm.conditioning_streams``; fuse modes ``prefix``,
                ``frame_sum``, ``aligned``: ``musiclm.conditioning.stream``). None: the list
                that ``fine_sees_mulan``, ``melody``, ``beats``, ``frame_conditioning`` and
                ``aligned_positions`` describe (older configs and checkpoints); set one or
                the other.
            cond_dropout: probability of replacing a sample's MuLan tokens by NULL in
                training, for classifier-free guidance at sampling.
            target_noise: probability of replacing each target token *input* (not its label)
                by the token another sample of the batch has at the same position in
                training, so that a small LM cannot just continue the previous frame. Not in
                the paper (docs/decisions/target-noise.md).
            lr, weight_decay: AdamW; warmup_steps: linear warm-up; decay_steps: cosine decay
                to 10% over that many steps after warm-up (0: constant).
            codec, semantic_tokenizer, mulan: expected name or fingerprint of what made the
                shards (None: accept any). Shards made otherwise are refused.
            spec: resolved manifest values (filled in at setup; set in checkpoints).
            compile: wrap the network with ``torch.compile``.
            stage: the stage name checkpoints record (given back by ``fit --ckpt_path``).
        """
        super().__init__()
        _check_arguments(self.stage, stage, cond_dropout=cond_dropout, target_noise=target_noise)
        self.save_hyperparameters()
        self.hparams["stage"] = self.stage  # so a checkpoint alone says which layout it uses
        self.layout: TokenLayout | None = None
        self.net: TokenLM | None = None
        self.tempo: TempoPredictor | None = None
        self.skipped = 0
        self.last_batch_tokens = 0  # read by the throughput callback (no device sync)
        self.last_context = 0
        if spec is not None:
            self._build(TokenSpec.from_dict(spec))

    # --- construction --------------------------------------------------------------------

    def _layout(self, spec: TokenSpec) -> TokenLayout:
        """This config's layout over ``spec``; raises ``ValueError`` when they disagree."""
        hp = self.hparams
        return TokenLayout(
            stage=self.stage,
            spec=spec,
            coarse_levels=hp.coarse_levels,
            fine_levels=hp.fine_levels,
            fine_sees_mulan=hp.fine_sees_mulan,
            melody=hp.melody,
            aligned_positions=hp.aligned_positions,
            frame_conditioning=hp.frame_conditioning,
            beats=hp.get("beats", False),
            conditioning=hp.get("conditioning"),
        )

    def _build(self, spec: TokenSpec) -> None:
        hp = self.hparams
        self.layout = self._layout(spec)
        self.tempo = tempo_predictor(self.layout)
        self.net = TokenLM(
            num_tokens=self.layout.num_tokens,
            num_targets=self.layout.num_targets,
            dim=hp.dim,
            depth=hp.depth,
            heads=hp.heads,
            ff_mult=hp.ff_mult,
            dropout=hp.dropout,
        )
        # kept outside the module tree so the compiled wrapper adds no state-dict keys
        object.__setattr__(self, "_forward", torch.compile(self.net) if hp.compile else self.net)

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        spec = getattr(datamodule, "spec", None)
        if spec is None:
            if self.layout is None:
                raise SetupError(
                    f"{self.stage} stage needs a TokenDataModule (its manifest gives vocabulary "
                    "sizes) or a checkpoint's spec"
                )
            return
        where = getattr(datamodule.hparams, "train_dir", "the token shards")
        # the config and the shards' manifest must agree before anything is built: a
        # mismatch is the user's to fix (one line from ``musiclm fit``), not a traceback
        try:
            check_tokenizers(spec, self.hparams, where, self.stage)
            if self.layout is not None and self.layout.spec != spec:
                raise ValueError(
                    f"{self.stage} stage was built for {self.layout.spec} but {where} holds {spec}"
                )
            # the network itself is built in configure_model
            layout = self.layout if self.layout is not None else self._layout(spec)
        except ValueError as exc:
            raise SetupError(f"{self.stage} stage config vs {where}: {one_line(exc)}") from exc
        if hasattr(datamodule, "set_readers"):
            # each conditioning stream reads its own part of a sample (the manifest's streams
            # are read by the datamodule itself: their readers add nothing)
            streams = getattr(layout, "conditioning_streams", ())  # the delay layout has none
            datamodule.set_readers([s.read for s in streams])
        self.hparams["spec"] = spec.to_dict()

    def configure_model(self) -> None:
        if self.net is None:
            self._build(TokenSpec.from_dict(self.hparams["spec"]))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # flush TensorBoard with every checkpoint: a run killed later loses no logged step
        # that the checkpoint covers
        for logger in self.loggers:
            logger.save()

    # --- training ------------------------------------------------------------------------

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # RNG state is not in checkpoints: reseed dropout and conditioning dropout from the
        # step (and rank), so a resumed run draws what an uninterrupted one would
        base = int(os.environ.get("PL_GLOBAL_SEED", "0"))
        # Lightning 2.6 restores its logging step one too far after resuming from a checkpoint
        # saved at a train-epoch end (the CLI's default), which would shift every logged step
        # of the resumed run; with one optimizer it must equal the global step.
        loop = self.trainer.fit_loop.epoch_loop
        if loop._batches_that_stepped != self.global_step:
            loop._batches_that_stepped = self.global_step
        torch.manual_seed((base * 1_000_003 + self.global_step) * 1_009 + self.global_rank)

    def _loss(self, batch: dict[str, Any], *, train: bool) -> tuple[torch.Tensor, Any, LMSequence]:
        assert self.layout is not None
        seq = self.layout.sequence(batch)
        tokens = seq.tokens
        if train and self.hparams.cond_dropout > 0:
            tokens = self._drop_conditioning(tokens, seq.prefix_len)
        if train and self.hparams.target_noise > 0:
            tokens = corrupt_targets(tokens, seq, self.hparams.target_noise)
        logits = target_logits(self._forward, self.layout, tokens, seq.prefix_len)
        loss = target_loss(logits, seq.labels, self.layout)
        self.last_batch_tokens = tokens.shape[0] * (tokens.shape[1] - 1)
        self.last_context = tokens.shape[1] - 1
        return loss, logits, seq

    def _drop_conditioning(self, tokens: torch.Tensor, prefix_len: int) -> torch.Tensor:
        """Conditioning dropout: a share ``cond_dropout`` of rows lose every guided stream;
        with streams guided by their entry (the beat clock), another such share loses the
        text only, so that guidance toward the text and toward those streams can be composed
        (``musiclm.generation.sampling``)."""
        p = self.hparams.cond_dropout
        draw = torch.rand(tokens.shape[0], device=tokens.device)
        tokens = self.layout.drop_conditioning(tokens, draw < p, prefix_len)
        if getattr(self.layout, "guided_streams", ()):
            text = (draw >= p) & (draw < 2 * p)
            tokens = self.layout.drop_conditioning(tokens, text, prefix_len, text_only=True)
        return tokens

    def _tempo_loss(self, batch: dict[str, Any], split: str) -> torch.Tensor | None:
        """The loss of the network a conditioning stream trains beside the LM (the beat
        clock's tempo predictor), its metrics logged; None without one."""
        if self.tempo is None:
            return None
        stream = auxiliary_stream(self.layout)
        loss, metrics = stream.auxiliary_loss(self.tempo, batch)
        for name, value in metrics.items():
            self.log(f"{split}/{name}", value, sync_dist=split == "val")
        return loss

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss, logits, seq = self._loss(batch, train=True)
        self.log("train/loss", loss, prog_bar=True)
        t_loss = self._tempo_loss(batch, "train")
        if "skipped" in batch:
            # a running host-side total: batch["skipped"] is a CPU count from the loader
            self.skipped += int(batch["skipped"])
            self.log("train/skipped_samples", float(self.skipped))
        if self.global_step % max(1, self.trainer.log_every_n_steps) == 0:
            # metrics that need an argmax or exp only on logging steps
            with torch.no_grad():
                self.log("train/perplexity", loss.detach().exp())
                for name, value in self._level_accuracy(logits, seq).items():
                    self.log(f"train/{name}", value)
        # its own small network: adding its loss does not weigh on the LM's gradients
        return loss if t_loss is None else loss + t_loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        loss, logits, seq = self._loss(batch, train=False)
        self.log("val/loss", loss, prog_bar=True, sync_dist=True)
        self._tempo_loss(batch, "val")
        self.log("val/perplexity", loss.exp(), sync_dist=True)
        for name, value in self._level_accuracy(logits, seq).items():
            self.log(f"val/{name}", value, sync_dist=True)

    def _level_accuracy(self, logits: torch.Tensor, seq: LMSequence) -> dict[str, torch.Tensor]:
        """Next-token accuracy per target level (per-level logits: argmax within the level)."""
        assert self.layout is not None
        n = seq.labels.shape[1]
        pred = logits.detach().argmax(-1)
        valid = seq.labels != IGNORE
        hit = (pred == seq.labels % self.layout.target_level_size) & valid
        levels = self.layout.target_levels(n, device=logits.device)
        out = {}
        for level in range(self.layout.target_level_count):
            sel = levels == level
            count = valid[:, sel].sum().clamp_min(1)
            out[f"accuracy_level{level}"] = hit[:, sel].sum() / count
        return out

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        decay, no_decay, tempo = [], [], []
        for name, p in self.named_parameters():
            if name.startswith("tempo."):
                tempo.append(p)
            else:
                (decay if p.dim() >= 2 and "token_emb" not in name else no_decay).append(p)
        groups = [
            {"params": decay, "weight_decay": hp.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        if tempo:
            # the tempo predictor sees each clip a few times in a semantic LM's run; a higher
            # rate fits it within that budget (docs/decisions/beat-clock.md)
            groups.append({"params": tempo, "weight_decay": 0.1, "lr": hp.lr * TEMPO_LR_SCALE})
        optimizer = torch.optim.AdamW(groups, lr=hp.lr, betas=(0.9, 0.95))
        warmup, decay_steps = max(1, hp.warmup_steps), hp.decay_steps

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            if decay_steps <= 0:
                return 1.0
            t = min(1.0, (step - warmup) / decay_steps)
            return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * t))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    def flops_per_batch(self) -> float:
        """Model FLOPs of the last training batch (forward + backward)."""
        if self.net is None or not self.last_batch_tokens:
            return 0.0
        levels = self.layout.target_level_count if self.layout else 1
        return self.net.flops_per_token(self.last_context, levels) * self.last_batch_tokens


def target_logits(
    net: Any, layout: TokenLayout, tokens: torch.Tensor, prefix_len: int
) -> torch.Tensor:
    """Teacher-forced logits ``(B, T, K)`` of a whole sequence's ``T`` targets, each over its
    own level's ``K`` ids; the one definition training, validation and benchmarks share.

    ``net``: a ``TokenLM`` (or its compiled wrapper); ``tokens`` ``(B, N)`` with its
    ``[BOS] + conditioning`` in the first ``prefix_len``. Input ``P-1`` predicts the first
    target and the last token predicts nothing.
    """
    inputs = tokens[:, :-1]
    n = inputs.shape[1]
    pos = (
        layout.positions(prefix_len, n, device=tokens.device) if layout.aligned_positions else None
    )
    return net(
        inputs,
        start=prefix_len - 1,
        pos=pos,
        frame_ids=layout.frame_ids(inputs, prefix_len),
        levels=layout.target_level_count,
    )


def corrupt_targets(tokens: torch.Tensor, seq: LMSequence, p: float) -> torch.Tensor:
    """Replace each target input token with probability ``p`` by the token at the same
    position of the next sample in the batch (same position, so the same codec level and a
    valid id for it); labels are untouched and padding is never mixed in. A batch of one
    sample has no donor and is returned as it is."""
    b, n = tokens.shape
    if b < 2 or p <= 0:
        return tokens
    start = seq.prefix_len
    valid = seq.labels != IGNORE  # (B, T): target t is input at position start + t
    width = min(valid.shape[1], n - start)
    valid = valid[:, :width]
    pick = (torch.rand(valid.shape, device=tokens.device) < p) & valid & valid.roll(1, 0)
    out = tokens.clone()
    target = out[:, start : start + width]
    target[pick] = tokens.roll(1, 0)[:, start : start + width][pick]
    return out


def target_loss(logits: torch.Tensor, labels: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
    """Cross entropy of per-level logits against target ids (``IGNORE`` at padding)."""
    k = layout.target_level_size
    labels = torch.where(labels == IGNORE, IGNORE, labels % k)
    return F.cross_entropy(logits.reshape(-1, k), labels.reshape(-1), ignore_index=IGNORE)


def check_tokenizers(spec: TokenSpec, expected: Any, where: str, stage: str) -> None:
    """Refuse shards whose codec / semantic tokenizer / MuLan differ from the config's."""
    checks = [
        ("codec", expected.get("codec"), spec.codec_name, spec.codec_fingerprint),
        (
            "semantic tokenizer",
            expected.get("semantic_tokenizer"),
            spec.semantic_name,
            spec.semantic_fingerprint,
        ),
        ("mulan", expected.get("mulan"), "", getattr(spec.streams.get("mulan"), "fingerprint", "")),
    ]
    for what, want, name, fingerprint in checks:
        if want and want not in (name, fingerprint):
            raise ValueError(
                f"{stage} stage expects {what} {want!r} but {where} was made by "
                f"{name or 'none'!r} (fingerprint {fingerprint or 'none'!r}); re-run `musiclm "
                "prepare tokens` with that tokenizer or change the config"
            )


def load_network(
    checkpoint: str, map_location: str = "cpu"
) -> tuple[TokenLM, TokenLayout | DelayLayout]:
    """Network (eval mode) and layout of a stage checkpoint, loaded with ``weights_only``."""
    ckpt = read_checkpoint(checkpoint, what="token-LM stage", map_location=map_location)
    hp = ckpt.get("hyper_parameters") or {}
    if not hp.get("spec"):
        raise ValueError(f"{checkpoint} holds no token-LM spec in its hyper-parameters")
    layout = layout_from_hparams(hp)
    net = TokenLM(
        num_tokens=layout.num_tokens,
        num_targets=layout.num_targets,
        dim=hp["dim"],
        depth=hp["depth"],
        heads=hp["heads"],
        ff_mult=hp["ff_mult"],
    )
    state = {
        k.removeprefix("net."): v for k, v in ckpt["state_dict"].items() if k.startswith("net.")
    }
    net.load_state_dict(state)
    return net.eval(), layout


def layout_from_hparams(hp: dict[str, Any]) -> TokenLayout | DelayLayout:
    """The sequence layout a stage checkpoint's hyper-parameters describe."""
    if hp["stage"] == DELAY:
        return DelayLayout.from_hparams(TokenSpec.from_dict(hp["spec"]), hp)
    return TokenLayout(
        stage=hp["stage"],
        spec=TokenSpec.from_dict(hp["spec"]),
        coarse_levels=hp["coarse_levels"],
        fine_levels=hp["fine_levels"],
        fine_sees_mulan=hp["fine_sees_mulan"],
        melody=hp.get("melody", False),
        aligned_positions=hp.get("aligned_positions", False),
        frame_conditioning=hp.get("frame_conditioning", False),
        beats=hp.get("beats", False),
        conditioning=hp.get("conditioning"),
    )


def auxiliary_stream(layout: Any) -> Any:
    """The conditioning stream that trains a network beside the LM (``auxiliary()`` and
    ``auxiliary_loss(net, batch)``: the beat clock's tempo predictor), or None. Its network
    keeps the ``tempo.`` prefix in checkpoints."""
    streams = getattr(layout, "conditioning_streams", ())
    return next((s for s in streams if hasattr(s, "auxiliary")), None)


def tempo_predictor(layout: TokenLayout) -> TempoPredictor | None:
    """The network a layout trains beside its LM (a beat-conditioned semantic stage over
    shards with MuLan embeddings: the tempo predictor)."""
    stream = auxiliary_stream(layout)
    return None if stream is None else stream.auxiliary()


def load_tempo(checkpoint: str, layout: TokenLayout) -> TempoPredictor | None:
    """The checkpoint's ``TempoPredictor`` (eval mode), None when its layout has none."""
    model = tempo_predictor(layout)
    if model is None:
        return None
    ckpt = read_checkpoint(checkpoint, what="token-LM stage")
    state = {
        k.removeprefix("tempo."): v for k, v in ckpt["state_dict"].items() if k.startswith("tempo.")
    }
    model.load_state_dict(state)
    return model.eval()
