"""Where the instrument is lost, MuLan's text side or after it (research/text_side.py)."""

import json

import pytest
import torch
import torch.nn.functional as F
from mulan_helpers import TINY
from research_script import load_research_script

from musiclm.models.mulan import MuLan


@pytest.fixture(scope="module")
def text_side():
    return load_research_script("text_side")


def test_adherence_is_split_by_what_mulan_reads(text_side, tmp_path):
    torch.manual_seed(0)
    mulan = MuLan(**TINY).eval()
    names = ["flute", "piano"]
    with torch.inference_mode():
        cents = F.normalize(mulan.embed_text(["a flute melody", "a piano melody"]), dim=-1)
        harp = F.normalize(mulan.embed_text(["a harp melody"]), dim=-1)
    # the third prompt is labelled with the instrument MuLan does not read from it
    unread = names[1 - int((harp @ cents.T).argmax())]
    prompts = [("a piano melody", "piano"), ("a flute melody", "flute"), ("a harp melody", unread)]
    rows = [{"prompt": p, "attributes": {"instrument": i}} for p, i in prompts]
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    made = {"000-a-piano": "piano", "001-a-flute": "piano", "002-a-harp": unread}
    preds = [{"name": n, "predicted": {"instrument": i}} for n, i in reversed(made.items())]
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "metrics.json").write_text(
        json.dumps({"adherence": {"predictions": preds}})
    )

    got = text_side.prompt_set(tmp_path, "prompts.jsonl", "eval", names, cents, mulan)
    assert got["n"] == 3
    assert got["mulan_zero_shot"] == pytest.approx(2 / 3, abs=1e-3)
    assert got["generated"] == pytest.approx(2 / 3, abs=1e-3)
    assert got["generated_where_mulan_right"] == 0.5  # piano kept, flute lost
    assert got["generated_where_mulan_wrong"] == 1.0  # the harp prompt's label kept anyway

    preds.pop()
    (tmp_path / "eval" / "metrics.json").write_text(
        json.dumps({"adherence": {"predictions": preds}})
    )
    with pytest.raises(SystemExit, match="2 predictions for 3 prompts"):
        text_side.prompt_set(tmp_path, "prompts.jsonl", "eval", names, cents, mulan)
