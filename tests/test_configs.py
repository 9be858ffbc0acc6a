"""Every file in conf/ parses and prints through LightningCLI (`musiclm fit --print_config`)."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted(p.relative_to(ROOT) for p in (ROOT / "conf").rglob("*.yaml"))
STAGE_CONFIGS = [p for p in CONFIGS if "pipeline" not in p.name]


def test_there_are_stage_configs():
    names = {p.stem for p in STAGE_CONFIGS}
    assert {"mulan", "semantic", "coarse", "fine"} <= names, names


@pytest.mark.parametrize("config", STAGE_CONFIGS, ids=str)
def test_print_config(config):
    proc = subprocess.run(
        [sys.executable, "-m", "musiclm.cli", "fit", "--print_config", "--config", str(config)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "class_path" in proc.stdout
    assert "trainer:" in proc.stdout


@pytest.mark.parametrize("config", STAGE_CONFIGS, ids=str)
def test_config_opens_with_launch_command(config):
    head = (ROOT / config).read_text().splitlines()[:5]
    assert any(line.startswith("#") and "musiclm fit" in line for line in head), head


def test_fit_help_and_top_level_help():
    out = subprocess.run(
        [sys.executable, "-m", "musiclm.cli", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for cmd in ("fit", "plugins", "data", "prepare", "generate", "evaluate", "demo"):
        assert cmd in out
    proc = subprocess.run(
        [sys.executable, "-m", "musiclm.cli", "fit", "--help"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0 and "--trainer.max_steps" in proc.stdout
