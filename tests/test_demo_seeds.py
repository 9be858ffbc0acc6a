"""research/demo_seeds.py: per-run figures, mean and sample spread over seeds."""

import json

from research_script import load_research_script


def _module():
    return load_research_script("demo_seeds")


def _metrics(motion: float, instrument: float) -> dict:
    structure = {
        k: {"generated_median": motion, "ratio": motion / 0.5} for k in _module().STRUCTURE
    }
    structure["static_share"] = {"generated": 0.0}
    attrs = ("instrument", "bpm_within_8pct", "tempo_word")
    return {
        "structure": {"summary": structure},
        "adherence": {
            "generated": {a: {"accuracy": instrument, "n": 100} for a in attrs},
            "chance": {a: {"prior": 0.1} for a in attrs},
            "shuffled": {a: {"p": 0.01} for a in attrs},
        },
        "mcc": {"generated": {"mean": 0.4}, "generated_mismatched": {"mean": 0.05}},
    }


def test_mean_and_spread_over_runs(tmp_path, capsys):
    module = _module()
    runs = []
    for i, (motion, inst) in enumerate([(0.3, 0.5), (0.5, 0.6)]):
        (tmp_path / f"s{i}" / "eval").mkdir(parents=True)
        (tmp_path / f"s{i}" / "eval" / "metrics.json").write_text(
            json.dumps(_metrics(motion, inst))
        )
        runs.append(str(tmp_path / f"s{i}"))
    figs = module.figures(_metrics(0.3, 0.5))
    assert figs["note_motion (ratio to real)"] == 0.6
    assert figs["instrument binomial p"] < 1e-20  # 50 of 100 against a prior of 0.1
    import sys

    sys.argv = ["demo_seeds.py", *runs]
    assert module.main() == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("| note_motion (gen"))
    assert row.split("|")[2:6] == [" 0.3 ", " 0.5 ", " 0.4 ", " 0.14 "]
