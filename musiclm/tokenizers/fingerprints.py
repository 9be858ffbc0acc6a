"""Refuse token shards whose producers differ from what a config asks for."""

from __future__ import annotations


def check_fingerprints(
    manifest: dict,
    *,
    codec: str | None = None,
    semantic: str | None = None,
    mulan: str | None = None,
    where: str,
) -> None:
    """Raise ``ValueError`` naming both fingerprints when ``manifest`` disagrees with any given.

    ``where`` names the shard folder (or config) in the message; ``None`` skips a check.
    """
    problems = []
    for section, expected in (("codec", codec), ("semantic", semantic), ("mulan", mulan)):
        if expected is None:
            continue
        block = manifest.get(section) or {}
        found = block.get("fingerprint") if isinstance(block, dict) else None
        if found != expected:
            problems.append(
                f"{section} fingerprint in the shards is {found!r} but the config gives "
                f"{expected!r}"
            )
    if problems:
        raise ValueError(
            f"{where}: token shards were made by different tokenizers: "
            + "; ".join(problems)
            + ". Re-run `musiclm prepare tokens` with this config, or point at matching shards."
        )
