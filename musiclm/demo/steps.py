"""A resumable list of steps: each runs once, leaves a marker, and is skipped when complete.

A step is complete when its ``.done`` marker exists (written atomically after the step's own
outputs, so a kill in the middle leaves no marker) and its ``check`` still finds the outputs.
A rerun after a kill therefore skips finished steps and reruns only the interrupted one, which
may pick up its own partial work (``musiclm fit --ckpt_path last``, resumable shard jobs).
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from musiclm.datamodules.shards import atomic_write_json


@dataclass
class Step:
    """One unit of a run.

    ``run(step)`` does the work; ``check()`` returns the missing outputs (empty when the step's
    outputs are all there), so a marker left beside deleted outputs does not count as done.
    ``commands()`` are the ``musiclm`` command lines (without ``musiclm``) that ``run`` runs,
    for ``--print-commands``.
    """

    name: str
    describe: str
    run: Callable[[Step], None]
    check: Callable[[], list[str]] = field(default=lambda: [])
    commands: Callable[[], list[list[str]]] = field(default=lambda: [])


class StepFailed(RuntimeError):
    """A step raised or a command it ran exited non-zero."""


class StepRunner:
    """Runs steps in order under ``out``; markers live in ``out/steps/<name>.done``."""

    def __init__(self, out: str | Path, *, force: Sequence[str] = (), log=print) -> None:
        self.out = Path(out)
        self.markers = self.out / "steps"
        self.logs = self.out / "logs"
        self.force = set(force)
        self.log = log

    def marker(self, name: str) -> Path:
        return self.markers / f"{name}.done"

    def is_done(self, step: Step) -> bool:
        """The marker exists and the outputs it vouches for are still there."""
        return self.marker(step.name).is_file() and not step.check()

    def run(self, steps: Sequence[Step]) -> dict[str, float]:
        """Run every step not yet complete; return seconds per step (0 for skipped ones)."""
        names = [s.name for s in steps]
        unknown = self.force - set(names) - {"all"}
        if unknown:
            raise ValueError(f"--force {sorted(unknown)}: no such step; steps are {names}")
        forcing = False
        times: dict[str, float] = {}
        for i, step in enumerate(steps, 1):
            # Forcing a step also reruns everything after it, which depends on its outputs.
            forcing = forcing or "all" in self.force or step.name in self.force
            head = f"[{i}/{len(steps)}] {step.name}: {step.describe}"
            if forcing:
                self.marker(step.name).unlink(missing_ok=True)
            elif self.is_done(step):
                self.log(f"{head} (done, skipped)")
                times[step.name] = 0.0
                continue
            self.log(head)
            start = time.perf_counter()
            try:
                step.run(step)
            except StepFailed:
                raise
            except Exception as exc:
                raise StepFailed(f"step {step.name!r} failed: {exc}") from exc
            missing = step.check()
            if missing:
                raise StepFailed(f"step {step.name!r} finished but left no {', '.join(missing)}")
            took = time.perf_counter() - start
            atomic_write_json(self.marker(step.name), {"step": step.name, "seconds": took})
            self.log(f"[{i}/{len(steps)}] {step.name}: done in {took:.1f} s")
            times[step.name] = took
        return times

    def step_seconds(self) -> dict[str, float]:
        """Seconds each finished step took when it ran (from the markers)."""
        out = {}
        for m in sorted(self.markers.glob("*.done")):
            out[m.stem] = float(json.loads(m.read_text())["seconds"])
        return out

    def call(self, step: Step, args: Sequence[str], work: Callable[[list[str]], None]) -> None:
        """Run the ``musiclm`` command line ``args`` in this process as ``work(args)`` (a job
        too small to pay for an interpreter start), logged like :meth:`command`."""
        self.logs.mkdir(parents=True, exist_ok=True)
        shown = shlex.join(["musiclm", *args])
        self.log(f"  $ {shown}")
        with open(self.logs / f"{step.name}.log", "ab") as log:
            log.write(f"$ {shown}\n".encode())
        work(list(args))

    def command(self, step: Step, argv: Sequence[str], *, env: dict | None = None) -> None:
        """Run ``argv``; its output goes to the console and to ``logs/<step>.log``."""
        self.logs.mkdir(parents=True, exist_ok=True)
        shown = " ".join(str(a) for a in argv)
        self.log(f"  $ {shown}")
        log_path = self.logs / f"{step.name}.log"
        with open(log_path, "ab") as log:
            log.write(f"$ {shown}\n".encode())
            proc = subprocess.Popen(
                [str(a) for a in argv],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                # Unbuffered, so a child's progress shows as it happens, not at exit.
                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            )
            assert proc.stdout is not None
            # Raw chunks, not lines, so progress bars (carriage returns) stay live.
            while chunk := proc.stdout.read1(4096):
                log.write(chunk)
                sys.stdout.buffer.write(chunk)
                sys.stdout.buffer.flush()
            code = proc.wait()
        if code != 0:
            raise StepFailed(
                f"step {step.name!r}: command exited with status {code} (log: {log_path}): {shown}"
            )


def musiclm_argv(*args: str) -> list[str]:
    """The ``musiclm`` console command, run by this interpreter."""
    return [sys.executable, "-m", "musiclm.cli", *args]
