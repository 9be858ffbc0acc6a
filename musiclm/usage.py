"""User mistakes on the command line: one line naming what is wrong, exit 2, no traceback.

A command's ``main`` runs its work through :func:`run_command`, which turns the errors a
user can cause (a bad flag value, a missing or malformed file, an unknown plugin or plugin
argument) into ``musiclm <cmd>: error: <what>`` on stderr and exit status 2. Anything else
is a programming error and keeps its traceback. :func:`number` is an ``argparse`` type that
checks a numeric flag's range while the command line is parsed, so a bad value is refused
before any model is loaded.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable

from musiclm.registry import PluginError

# what a user can cause; a TypeError or KeyError from our own code is a bug and keeps its trace
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError, PluginError)


def one_line(exc: BaseException) -> str:
    """The error's message on one line (a multi-line message joined with ``; ``).

    An error re-raised from a DataLoader worker carries the worker's traceback in its
    message; its last line is the original message."""
    lines = [part.strip() for part in (str(exc) or type(exc).__name__).splitlines()]
    lines = [line for line in lines if line]
    if any(line.startswith("Original Traceback") for line in lines):
        lines = [lines[-1].removeprefix(f"{type(exc).__name__}: ")]
    return "; ".join(lines)


class SetupError(ValueError):
    """A run could not be set up from what the user gave (config, data folders)."""


def fail(prog: str, exc: BaseException | str) -> int:
    """Print ``<prog>: error: <message>`` to stderr; returns the exit status 2."""
    message = exc if isinstance(exc, str) else one_line(exc)
    print(f"{prog}: error: {message}", file=sys.stderr, flush=True)
    return 2


def run_command(prog: str, work: Callable[[], int | None]) -> int:
    """Run ``work``; a user error ends in one line on stderr and exit 2."""
    try:
        return int(work() or 0)
    except USER_ERRORS as exc:
        return fail(prog, exc)


def _bounds_text(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    parts = []
    if low is not None:
        parts.append(f"{'>' if low_open else '>='} {low:g}")
    if high is not None:
        parts.append(f"{'<' if high_open else '<='} {high:g}")
    return " and ".join(parts)


def check_number(
    flag: str,
    value: float,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    """Raise ``ValueError`` naming ``flag`` unless ``value`` is finite and in range."""
    bounds = _bounds_text(low, high, low_open, high_open)
    wanted = f"a finite number {bounds}".strip()
    ok = isinstance(value, int | float) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        raise ValueError(f"{flag} must be {wanted}, got {value!r}")


def number(
    kind: type = float,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> Callable[[str], float]:
    """An ``argparse`` type: parse ``kind`` and refuse NaN, infinities and values out of range
    (``argparse`` then names the flag and exits 2)."""

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {kind.__name__}") from None
        try:
            check_number("value", value, low=low, high=high, low_open=low_open, high_open=high_open)
        except ValueError:
            bounds = _bounds_text(low, high, low_open, high_open)
            raise argparse.ArgumentTypeError(
                f"must be a finite number {bounds}, got {text!r}".replace("  ", " ")
            ) from None
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse
