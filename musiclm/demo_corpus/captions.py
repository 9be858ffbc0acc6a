"""Natural-language captions from a clip's ground-truth attributes, in varied templates."""

from __future__ import annotations

import numpy as np

# articles and descriptive phrases per instrument name from INSTRUMENTS
_INSTRUMENT_PHRASES = {
    "piano": ("a piano", "solo piano", "an acoustic piano"),
    "organ": ("an organ", "a church organ", "a pipe organ"),
    "flute": ("a flute", "a solo flute", "a breathy flute"),
    "violin": ("a violin", "a bowed violin", "a solo violin"),
    "acoustic guitar": (
        "an acoustic guitar",
        "a plucked acoustic guitar",
        "a nylon acoustic guitar",
    ),
    "square lead synth": (
        "a square lead synth",
        "a retro square lead synth",
        "a chiptune-like square lead synth",
    ),
    "marimba": ("a marimba", "a wooden marimba", "a mellow marimba"),
}


def tempo_word(bpm: int) -> str:
    """A tempo word that follows from the BPM (quarter notes per minute)."""
    if bpm < 76:
        return "slow"
    if bpm < 108:
        return "moderate"
    if bpm < 140:
        return "lively"
    return "fast"


def mood_words(mode: str, bpm: int) -> tuple[str, ...]:
    """Mood words that follow from mode and tempo."""
    fast = bpm >= 108
    if mode == "major":
        return ("cheerful", "bright", "upbeat") if fast else ("calm", "gentle", "warm")
    return ("driving", "restless", "urgent") if fast else ("melancholic", "sombre", "wistful")


def _a(phrase: str) -> str:
    """``phrase`` with its indefinite article."""
    return ("an " if phrase[:1].lower() in "aeiou" else "a ") + phrase


def make_caption(attrs: dict, rng: np.random.Generator) -> str:
    """One caption for ``attrs`` (instrument, bpm, key, mode, meter, source, register)."""
    phrases = _INSTRUMENT_PHRASES.get(attrs["instrument"], (f"a {attrs['instrument']}",))
    inst = phrases[rng.integers(len(phrases))]
    bpm = int(attrs["bpm"])
    tempo = tempo_word(bpm)
    moods = mood_words(attrs["mode"], bpm)
    mood = moods[rng.integers(len(moods))]
    key = f"{attrs['key']} {attrs['mode']}"
    source = attrs["source"]
    meter = attrs["meter"]
    register = attrs.get("register", "middle")
    perc = " with light percussion" if attrs.get("percussion") else ""
    templates = (
        f"{_a(mood).capitalize()} {source} played on {inst}{perc}, {tempo} at {bpm} BPM, in {key}.",
        f"{inst[0].upper() + inst[1:]} plays {_a(tempo)} {source} in {key}, {meter} time, "
        f"{bpm} BPM{perc}.",
        f"{tempo.capitalize()} {source} in {key} on {inst}, in a {register} register; "
        f"the mood is {mood}.",
        f"{source.capitalize()} performed on {inst}{perc}. Key of {key}, {meter} meter, "
        f"{bpm} beats per minute, {mood} and {tempo}.",
        f"{_a(tempo).capitalize()}, {mood} tune in {meter} time: {_a(source)} in {key} "
        f"played on {inst}.",
        f"Instrumental {source} on {inst}, {key}, around {bpm} BPM{perc}, {mood} feel.",
    )
    return templates[rng.integers(len(templates))]
