import os
import sys
import textwrap
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # helper modules, also for tests/faults
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture
def fake_distribution(tmp_path, monkeypatch):
    """Install a throwaway distribution (a ``.dist-info`` on ``sys.path``) with entry points.

    Call it with ``{group: {name: "module:attr"}}`` and ``{module_name: source}``.
    """

    def make(entry_points: dict[str, dict[str, str]], modules: dict[str, str], name="fakeplug"):
        root = tmp_path / f"site-{name}"
        info = root / f"{name}-0.1.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
        lines = []
        for group, eps in entry_points.items():
            lines.append(f"[{group}]")
            lines += [f"{k} = {v}" for k, v in eps.items()]
        (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
        for mod, src in modules.items():
            (root / f"{mod}.py").write_text(textwrap.dedent(src))
        monkeypatch.syspath_prepend(str(root))
        for mod in modules:
            sys.modules.pop(mod, None)
        return Path(root)

    return make
