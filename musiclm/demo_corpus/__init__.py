"""The embedded demo corpus: music21's real tunes rendered by a small synthesizer.

``build_demo_corpus(out, clips=, seconds=)`` writes ``out/audio/<id>.wav`` and
``out/manifest.jsonl``; ``render_notes`` renders any note list
``[(onset_beats, duration_beats, midi_pitch), ...]`` in one of ``INSTRUMENTS``;
``notes_for(attributes, seconds=)`` recovers the notes of a manifest entry.
"""

from musiclm.demo_corpus.builder import build_demo_corpus, notes_for
from musiclm.demo_corpus.synth import INSTRUMENTS, render_notes
from musiclm.demo_corpus.tunes import Tune, clip_notes, load_tunes

__all__ = [
    "INSTRUMENTS",
    "Tune",
    "build_demo_corpus",
    "clip_notes",
    "load_tunes",
    "notes_for",
    "render_notes",
]
