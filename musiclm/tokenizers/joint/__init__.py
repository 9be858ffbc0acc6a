"""Joint embeddings (MuLan's role) chosen by name: our own MuLan, or a pretrained CLAP.

Plugins of the ``musiclm.joint_embeddings`` group meet ``tokenizers.base.JointEmbedding``.
Wherever a command takes a MuLan checkpoint, it takes a plugin by name and JSON arguments in
its place (``--joint-embedding clap --joint-embedding-args '{"model": "DIR"}'``); PIPELINE.yaml
and token manifests name one as ``mulan: {name: clap, args: {...}, rvq: ...}``. A bare
checkpoint path is the ``mulan`` plugin with ``{"checkpoint": PATH}`` and is written as before.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass, field
from typing import Any

from musiclm import registry

KIND = "joint_embeddings"


@dataclass(frozen=True)
class JointEmbeddingSpec:
    """A joint-embedding plugin by registry name and constructor arguments."""

    name: str
    args: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, source: str | os.PathLike | JointEmbeddingSpec) -> JointEmbeddingSpec:
        """A spec as given, or a MuLan checkpoint path as the ``mulan`` plugin."""
        if isinstance(source, JointEmbeddingSpec):
            return source
        return cls("mulan", {"checkpoint": str(source)})

    @property
    def checkpoint(self) -> str | None:
        """The checkpoint when this is our own MuLan named by its file alone."""
        if self.name == "mulan" and set(self.args) == {"checkpoint"}:
            return str(self.args["checkpoint"])
        return None

    def check(self) -> None:
        """Refuse an unknown name or argument before anything is built (``PluginError``)."""
        registry.check_arguments(KIND, self.name, **self.args)

    def build(self, device: Any = "cpu") -> Any:
        """The plugin, checked against the protocol, on ``device`` in eval mode."""
        from musiclm.tokenizers.base import build

        return build(KIND, self.name, **self.args).to(device).eval()

    def to_block(self) -> dict[str, Any]:
        """The manifest / pipeline-file form: ``{checkpoint}`` for a MuLan file, else
        ``{name, args}``."""
        ckpt = self.checkpoint
        return {"checkpoint": ckpt} if ckpt else {"name": self.name, "args": dict(self.args)}

    def describe(self) -> str:
        return self.checkpoint or f"{self.name} {json.dumps(self.args, sort_keys=True)}"


def load_joint_embedding(
    source: str | os.PathLike | JointEmbeddingSpec, *, device: Any = "cpu"
) -> Any:
    """A MuLan checkpoint path or a ``JointEmbeddingSpec`` -> the joint embedding, eval mode."""
    return JointEmbeddingSpec.of(source).build(device)


def add_arguments(p: argparse.ArgumentParser, *, instead_of: str) -> None:
    """``--joint-embedding NAME`` and ``--joint-embedding-args JSON``, an alternative to the
    command's MuLan checkpoint flag ``instead_of``."""
    p.add_argument(
        "--joint-embedding",
        metavar="NAME",
        help=f"joint-embedding plugin in place of {instead_of} (`musiclm plugins`): "
        "mulan (our own, args {checkpoint}) or clap (a pretrained CLAP, args {model})",
    )
    p.add_argument(
        "--joint-embedding-args",
        metavar="JSON",
        help='its arguments as a JSON object, e.g. \'{"model": "laion/larger_clap_music"}\'',
    )


def from_flags(
    checkpoint: str | None, name: str | None, args_text: str | None, *, flag: str
) -> str | JointEmbeddingSpec | None:
    """The MuLan checkpoint given by ``flag``, or the spec ``--joint-embedding`` names (a
    ``ValueError`` when both, or malformed JSON, are given)."""
    if name is None:
        if args_text is not None:
            raise ValueError("--joint-embedding-args needs --joint-embedding")
        return checkpoint
    if checkpoint:
        raise ValueError(f"give {flag} or --joint-embedding, not both")
    try:
        args = json.loads(args_text) if args_text is not None else {}
    except json.JSONDecodeError as exc:
        raise ValueError(f"--joint-embedding-args is not valid JSON: {exc}") from None
    if not isinstance(args, dict):
        raise ValueError("--joint-embedding-args must be a JSON object")
    return JointEmbeddingSpec(name, args)


def from_arguments(
    p: argparse.ArgumentParser, checkpoint: str | None, a: argparse.Namespace, *, flag: str
) -> str | JointEmbeddingSpec | None:
    """``from_flags`` over parsed arguments; a mistake is a usage error through ``p``."""
    try:
        return from_flags(checkpoint, a.joint_embedding, a.joint_embedding_args, flag=flag)
    except ValueError as exc:
        p.error(str(exc))
