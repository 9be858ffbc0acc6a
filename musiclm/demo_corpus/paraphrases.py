"""Prompts in other words: held-out wording that the caption templates never use.

The demo's captions (``captions.make_caption``) come from six templates with fixed phrases per
instrument and a BPM number. A text side that only learned those templates fails on a user's
own words; these prompts test that. Each names the instrument with words no caption uses
(synonyms, brand-free descriptions), describes the tempo with words instead of a number, puts
the parts in another order, and keeps the key and mode in a plainer phrase or drops them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from musiclm.demo_corpus.captions import tempo_word

# At least four descriptions per instrument, none of them a phrase of the caption templates.
INSTRUMENT_WORDS: dict[str, tuple[str, ...]] = {
    "piano": ("a grand piano", "an upright piano", "piano keys", "a concert pianoforte"),
    "organ": (
        "a cathedral organ",
        "organ pipes",
        "a big church-hall organ",
        "a harmonium-like organ",
    ),
    "flute": ("a wooden flute", "a transverse flute", "a fife", "an airy concert flute"),
    "violin": ("a fiddle", "a bowed fiddle", "a lone fiddler", "a classical violinist"),
    "acoustic guitar": (
        "a classical guitar",
        "a fingerpicked guitar",
        "a six-string acoustic",
        "a steel-string guitar",
    ),
    "square lead synth": (
        "an 8-bit synthesizer",
        "a video-game synth lead",
        "a pulse-wave synthesizer",
        "a chiptune synth",
    ),
    "marimba": (
        "mallet percussion",
        "wooden mallets on a marimba",
        "a xylophone-like marimba",
        "a tuned mallet instrument",
    ),  # fmt: skip
}
TEMPO_WORDS = {
    "slow": ("unhurried", "leisurely", "very slow", "drowsy"),
    "moderate": ("medium-paced", "at a walking pace", "relaxed but steady", "mid-tempo"),
    "lively": ("brisk", "energetic", "bouncy", "spirited"),
    "fast": ("rapid", "quick", "racing", "breakneck"),
}
_TEMPLATES = (
    "{tempo_cap} {source} with {inst} carrying the tune",
    "Listen to {inst}: {mode} tonality, {tempo}",
    "{inst_cap} alone, {tempo}, something in {key}",
    "Solo {source} -- instrument: {inst}; pace: {tempo}",
    "Give me {inst} playing {tempo}, {mode} key",
    "{tempo_cap} and {mode}, {inst} only",
)


def paraphrase(attrs: dict[str, Any], rng: np.random.Generator) -> str:
    """A prompt for ``attrs`` (instrument, bpm, key, mode, source) in other words."""
    instrument = attrs["instrument"]
    words = INSTRUMENT_WORDS.get(instrument)
    if words is None:
        raise ValueError(f"no other wording for instrument {instrument!r}")
    inst = words[rng.integers(len(words))]
    tempos = TEMPO_WORDS[tempo_word(int(attrs["bpm"]))]
    tempo = tempos[rng.integers(len(tempos))]
    template = _TEMPLATES[rng.integers(len(_TEMPLATES))]
    return template.format(
        inst=inst,
        inst_cap=inst[0].upper() + inst[1:],
        tempo=tempo,
        tempo_cap=tempo[0].upper() + tempo[1:],
        source=str(attrs.get("source", "tune")),
        mode=str(attrs["mode"]),
        key=f"{attrs['key']} {attrs['mode']}",
    )


def other_wording_rows(
    rows: list[dict[str, Any]], *, per_instrument: int, seed: int = 0
) -> list[dict[str, Any]]:
    """``per_instrument`` held-out rows of each instrument (in the rows' order), each with a
    prompt in other words: {"id", "prompt", "attributes"}."""
    rng = np.random.default_rng(seed)
    taken: dict[str, int] = {}
    out = []
    for row in rows:
        inst = row["attributes"]["instrument"]
        if taken.get(inst, 0) >= per_instrument:
            continue
        taken[inst] = taken.get(inst, 0) + 1
        out.append(
            {"id": row["id"], "prompt": paraphrase(row["attributes"], rng),
             "attributes": row["attributes"]}
        )  # fmt: skip
    return out
