"""What the benchmarks share: where the repository and the peer harness are, the machine's
description printed with every run, and small demo inputs built from nothing.

The peer harness (audiolm-pytorch 2.4.0, ``bench_peer.py``, ``install.sh``, ``stubs/``) lives
beside the repository, in ``../shared/peer``; a benchmark that compares with it skips that
comparison, with a note, where the folder or the peer's environment is missing.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PEER_DIR = Path(__file__).resolve().parents[2] / "shared" / "peer"


def emit(**fields) -> None:
    """One JSON line per figure."""
    print(json.dumps(fields), flush=True)


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> str:
    """E.g. ``"AMD EPYC, 2 cores"``: recorded with every figure, since ratios differ by CPU."""
    return f"{cpu_model()}, {os.cpu_count()} cores"


def peer_python(venv: str | None) -> Path | None:
    """The peer environment's python, or None with a printed note saying why the peer
    comparison is skipped."""
    if not venv:
        note(
            "peer comparison skipped: pass --peer VENV or set MUSICLM_PEER "
            "(VENV made by ../shared/peer/install.sh VENV)"
        )
        return None
    if not PEER_DIR.is_dir():
        note(f"peer comparison skipped: no peer harness at {PEER_DIR} (../shared/peer)")
        return None
    python = Path(venv) / "bin" / "python"
    if not python.is_file():
        note(f"peer comparison skipped: no {python} (bash {PEER_DIR}/install.sh {venv})")
        return None
    return python


def note(text: str) -> None:
    print(f"note: {text}", file=sys.stderr, flush=True)


def musiclm(*args: str) -> None:
    """Run a ``musiclm`` command in this interpreter's environment, quietly unless it fails."""
    cmd = [sys.executable, "-m", "musiclm.cli", *args]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode:
        sys.stderr.write(out.stdout + out.stderr)
        raise SystemExit(f"failed ({out.returncode}): musiclm {' '.join(args)}")


def demo_shards(root: Path, *, clips: int, seconds: float, seed: int = 0) -> Path:
    """Render a demo corpus into ``root/corpus`` and its audio shards into ``root/audio``
    (split folders ``train``, ``valid``, ``test``); returns the shard folder."""
    musiclm("data", "demo", "--out", str(root / "corpus"), "--clips", str(clips),
            "--seconds", str(seconds), "--seed", str(seed), "--quiet")  # fmt: skip
    musiclm("prepare", "audio", "--source", "demo", "--input",
            str(root / "corpus" / "manifest.jsonl"), "--out", str(root / "audio"))  # fmt: skip
    return root / "audio"
