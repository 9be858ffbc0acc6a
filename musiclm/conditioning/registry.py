"""Conditioning streams by name: the ``musiclm.conditioning_streams`` entry points (the
built-ins register there, as a third-party package would) and, for code that cannot install
a distribution (a notebook, a test), ``register_stream`` in the running process.

A name registered both ways to different classes is an error, not a silent overwrite; an
unknown name lists the known ones; what is loaded is checked against ``ConditioningStream``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from musiclm import registry
from musiclm.conditioning.stream import ConditioningStream
from musiclm.datamodules.token_spec import TokenSpec

KIND = "conditioning_streams"
_IN_PROCESS: dict[str, type] = {}


def _target(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def register_stream(name: str) -> Callable[[type], type]:
    """Class decorator: make a stream class available as ``name`` in this process."""

    def add(cls: type) -> type:
        prev = _IN_PROCESS.get(name)
        entry = registry.discover(KIND).get(name)
        for other in ([_target(prev)] if prev else []) + ([entry.target] if entry else []):
            if other != _target(cls):
                raise registry.PluginError(
                    f"conditioning stream {name!r} is already present ({other}); "
                    f"cannot register {_target(cls)}"
                )
        _IN_PROCESS[name] = cls
        return cls

    return add


def available_streams() -> list[str]:
    return sorted(set(registry.available(KIND)) | set(_IN_PROCESS))


def stream_class(name: str) -> type:
    """The class registered as ``name`` (imported only now)."""
    if name in _IN_PROCESS:
        return _IN_PROCESS[name]
    found = registry.discover(KIND)
    if name not in found:
        hint = (
            ""
            if found
            else " (no built-in stream is registered: the package's entry points predate "
            "them; reinstall it, e.g. `pip install -e .`)"
        )
        names = ", ".join(available_streams()) or "none"
        raise registry.PluginError(
            f"no conditioning stream named {name!r}; available: {names}{hint}"
        )
    return registry.load(KIND, name)


def build_stream(name: str, spec: TokenSpec, *, coarse_levels: int = 4) -> ConditioningStream:
    """Stream ``name`` over the shards' ``spec`` (``coarse_levels``: the layout's split of
    codec levels, which the upstream coarse stream needs)."""
    stream: Any = stream_class(name)(spec, coarse_levels=coarse_levels)
    if not isinstance(stream, ConditioningStream):
        raise registry.PluginError(
            f"conditioning stream {name!r} ({type(stream).__qualname__}) lacks part of the "
            "ConditioningStream protocol (name, levels, codebook, rate, guided, "
            "manifest_section, check, codes, read, window_codes)"
        )
    if stream.name != name:
        raise registry.PluginError(
            f"conditioning stream registered as {name!r} calls itself {stream.name!r}"
        )
    return stream
