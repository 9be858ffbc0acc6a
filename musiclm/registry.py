"""Plugin registry over ``importlib.metadata`` entry points.

Built-in codecs, semantic tokenizers, text encoders, joint embeddings and conditioning streams
register through the same ``pyproject.toml`` entry points as third-party plugins, so there is
no if/elif chain here.
Discovery reads names only; a plugin module is imported when it is chosen.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Any

GROUPS: dict[str, str] = {
    "codecs": "musiclm.codecs",
    "semantic_tokenizers": "musiclm.semantic_tokenizers",
    "text_encoders": "musiclm.text_encoders",
    "joint_embeddings": "musiclm.joint_embeddings",
    "conditioning_streams": "musiclm.conditioning_streams",
}


class PluginError(RuntimeError):
    """A plugin could not be found, was registered twice, or failed to import."""


@dataclass(frozen=True)
class PluginSpec:
    name: str
    target: str
    distribution: str


def _group(kind: str) -> str:
    if kind in GROUPS:
        return GROUPS[kind]
    if kind in GROUPS.values():
        return kind
    raise PluginError(f"unknown plugin kind {kind!r}; kinds: {', '.join(GROUPS)}")


def _dist_name(ep: EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    return dist.metadata["Name"] if dist is not None else "?"


def discover(kind: str) -> dict[str, PluginSpec]:
    """Names and targets of one group's plugins, without importing any of them.

    Two distributions that register different targets under one name are an error naming
    both; the same target seen twice (e.g. an editable install listed twice) is one plugin.
    """
    group = _group(kind)
    found: dict[str, PluginSpec] = {}
    for ep in entry_points(group=group):
        spec = PluginSpec(ep.name, ep.value, _dist_name(ep))
        prev = found.get(ep.name)
        if prev is not None and prev.target != spec.target:
            raise PluginError(
                f"plugin name {ep.name!r} in group {group!r} is registered twice: "
                f"{prev.target} (from {prev.distribution}) and {spec.target} "
                f"(from {spec.distribution})"
            )
        found[ep.name] = spec
    return dict(sorted(found.items()))


def available(kind: str) -> list[str]:
    return list(discover(kind))


def load(kind: str, name: str) -> Any:
    """Import and return the object registered as ``name`` in ``kind``'s group."""
    plugins = discover(kind)
    if name not in plugins:
        names = ", ".join(plugins) or "none"
        raise PluginError(f"no {kind} plugin named {name!r}; available: {names}")
    spec = plugins[name]
    module, _, attr = spec.target.partition(":")
    try:
        obj: Any = __import__(module, fromlist=["_"])
        for part in attr.split(".") if attr else []:
            obj = getattr(obj, part)
    except Exception as exc:  # any failure inside third-party code
        raise PluginError(
            f"{kind} plugin {name!r} (entry point {name} = {spec.target}, from "
            f"{spec.distribution}) failed to load: {type(exc).__name__}: {exc}"
        ) from exc
    return obj


def create(kind: str, name: str, /, **kwargs: Any) -> Any:
    """Load plugin ``name`` and call it with ``kwargs`` (plugins are classes or factories).

    Arguments the plugin does not take (a misspelled key) are a :class:`PluginError` naming
    them and the accepted ones; a ``TypeError`` raised inside the plugin stays a bug.
    """
    return check_arguments(kind, name, **kwargs)(**kwargs)


def check_arguments(kind: str, name: str, /, **kwargs: Any) -> Any:
    """Load plugin ``name`` and check that it takes ``kwargs`` without building it (a
    command checks every plugin before building any); returns the factory."""
    factory = load(kind, name)
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # a builtin or C callable: nothing to check against
        signature = None
    if signature is not None:
        params = signature.parameters.values()
        named = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        takes_any = any(p.kind == p.VAR_KEYWORD for p in params)
        unknown = [] if takes_any else sorted(set(kwargs) - set(named))
        try:
            if unknown:  # named first: a misspelled key also leaves a required one missing
                raise TypeError(f"unknown argument(s) {', '.join(map(repr, unknown))}")
            signature.bind(**kwargs)
        except TypeError as exc:
            raise PluginError(
                f"{kind} plugin {name!r}: {exc}; it takes {', '.join(named) or 'no arguments'}"
            ) from None
    return factory


def describe() -> str:
    """Every group with name -> target, for ``musiclm plugins``."""
    lines = []
    for kind, group in GROUPS.items():
        lines.append(f"{group}:")
        try:
            specs = discover(kind)
        except PluginError as exc:
            lines.append(f"  error: {exc}")
            continue
        if not specs:
            lines.append("  (none)")
        for spec in specs.values():
            lines.append(f"  {spec.name} -> {spec.target}  [{spec.distribution}]")
    return "\n".join(lines)
