"""One writer per output folder: a lock file created with ``O_EXCL`` that holds the pid.

``prepare audio``, ``prepare tokens`` and ``generate`` hold :func:`folder_lock` on their
output folder while they write, so a second command into the same folder is refused at once
(exit 2, naming the folder and the pid holding it) instead of racing on temp names and
progress records. The ranks of one multi-rank job write into one folder by design: each
takes its own ``slot`` (its rank), so only two writers of the same rank collide.

A lock whose process is gone (killed, crashed machine) is stale: it is taken over with a
warning. A lock written on another host cannot be checked from here and is always honoured.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOCK_PREFIX = ".musiclm-lock"  # hidden: folder readers (evaluate) skip hidden files
# a lock file is created, then written: one still empty this long after its creation was
# left by a process killed in between
EMPTY_LOCK_GRACE_S = 10.0


class FolderLocked(OSError):
    """Another live process is writing into the folder."""


def lock_path(folder: str | Path, slot: str = "") -> Path:
    """The lock file of ``folder`` for ``slot`` (a rank; ``""``: the only writer)."""
    return Path(folder) / (f"{LOCK_PREFIX}-{slot}" if slot else LOCK_PREFIX)


def env_slot() -> str:
    """This process's rank under torchrun or Lightning's launcher (``""`` when alone)."""
    env = os.environ
    if "RANK" in env:
        return f"rank{env['RANK']}"
    if "LOCAL_RANK" in env or "NODE_RANK" in env:
        return f"node{env.get('NODE_RANK', '0')}-local{env.get('LOCAL_RANK', '0')}"
    return ""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _holder(path: Path) -> dict | None:
    """The lock's record, ``{}`` when it holds none yet, ``None`` when it is gone."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        record = json.loads(text)
    except json.JSONDecodeError:
        return {}
    return record if isinstance(record, dict) else {}


def _stale(path: Path, holder: dict) -> bool:
    if not holder:  # created but never written: the writer died in between, or is writing
        try:
            return time.time() - path.stat().st_mtime > EMPTY_LOCK_GRACE_S
        except FileNotFoundError:
            return False
    if holder.get("host") != socket.gethostname():
        return False
    pid = holder.get("pid")
    return isinstance(pid, int) and not _alive(pid)


def _take_over(path: Path, holder: dict) -> None:
    """Remove a stale lock unless another process replaced it since it was read: move it
    aside (one mover wins), check it is the stale one, else put it back."""
    aside = path.with_name(f"{path.name}.stale.{os.getpid()}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return  # someone else took it over; try again
    if _holder(aside) != holder:
        try:
            os.link(aside, path)  # a live lock moved by mistake goes back, never over another
        except FileExistsError:
            pass
    aside.unlink(missing_ok=True)


def _acquire(path: Path) -> None:
    record = {"pid": os.getpid(), "host": socket.gethostname(), "command": sys.argv[:8]}
    while True:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            holder = _holder(path)
            if holder is None:
                continue  # released between our open and our read
            if not _stale(path, holder):
                who = f"pid {holder.get('pid', '?')}"
                if holder.get("host") not in (None, socket.gethostname()):
                    who += f" on {holder['host']}"
                raise FolderLocked(
                    f"{path.parent} is being written by another process ({who}, lock file "
                    f"{path.name}): wait for it to finish or write to another folder"
                ) from None
            warnings.warn(
                f"taking over the stale lock {path} of pid {holder.get('pid', '?')}, which is "
                "no longer running (a killed earlier run)",
                stacklevel=3,
            )
            _take_over(path, holder)
            continue
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(record, f)
        return


@contextmanager
def folder_lock(folder: str | Path, *, slot: str = "") -> Iterator[Path]:
    """Hold ``folder``'s lock for ``slot`` while the block runs (the folder is created).

    Raises :class:`FolderLocked` naming the folder and the pid when a live process holds it.
    A folder this call created and that is still empty afterwards is removed again, so a
    command that fails early leaves nothing behind."""
    folder = Path(folder)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    path = lock_path(folder, slot)
    _acquire(path)
    try:
        yield path
    finally:
        if (_holder(path) or {}).get("pid") == os.getpid():
            path.unlink(missing_ok=True)
        if created and not any(folder.iterdir()):
            folder.rmdir()
