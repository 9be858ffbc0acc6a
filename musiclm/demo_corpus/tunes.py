"""Real tunes from music21's bundled score corpus, reduced to note lists and cached as JSON.

Note representation (used by :func:`musiclm.demo_corpus.render_notes` too): a list of
``(onset, duration, pitch)`` triples, onset and duration in quarter-note beats from the start,
pitch a MIDI number. Several notes may sound at once (Bach chorales keep all four voices).

Parsing the corpus is slow (music21 spends about 0.05 s per folk tune, 0.1 s per chorale), so
:func:`load_tunes` parses a fixed selection of a few hundred pieces once, in parallel, and
caches the result in ``$MUSICLM_CACHE`` (default ``~/.cache/musiclm``).
"""

from __future__ import annotations

import json
import os
import re
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

TUNES_VERSION = 1
# how many pieces each family contributes (the first ones in sorted path order)
FAMILY_LIMITS = {"chorale": 90, "dance": 120, "air": 50, "folk": 110}
METERS = {"2/4", "3/4", "4/4", "6/8", "9/8", "12/8", "3/8", "2/2", "3/2", "4/2", "6/4"}
MAX_BEATS = 256.0  # enough for a 30 s clip at slow tempi; tunes loop when shorter
_MODE_TO_MAJMIN = {
    "major": "major", "ionian": "major", "mixolydian": "major", "lydian": "major",
    "minor": "minor", "aeolian": "minor", "dorian": "minor", "phrygian": "minor",
    "locrian": "minor",
}  # fmt: skip


@dataclass(frozen=True)
class Tune:
    """One source piece: ``notes`` as (onset, duration, pitch) in quarter beats / MIDI."""

    id: str
    title: str
    source: str  # "Bach chorale", "Irish reel", "German folk song", ...
    tonic_pc: int  # pitch class of the tonic, 0 = C
    mode: str  # "major" | "minor"
    meter: str  # "4/4", "6/8", ...
    length: float  # beats, from 0 to the end of the last note
    notes: list[tuple[float, float, int]]


def cache_dir() -> Path:
    """Folder of musiclm's caches (``$MUSICLM_CACHE`` or ``~/.cache/musiclm``)."""
    return Path(os.environ.get("MUSICLM_CACHE", Path.home() / ".cache" / "musiclm"))


def _corpus_selection() -> list[tuple[str, str]]:
    """(family, path or path#tune-number) pairs of the pieces to parse, in a fixed order."""
    from music21 import corpus

    paths = sorted(str(p) for p in corpus.getCorePaths())
    chorales = [p for p in paths if "/bach/bwv" in p and p.endswith((".mxl", ".xml"))]
    dances = [p for p in paths if "/ryansMammoth/" in p]
    out: list[tuple[str, str]] = [("chorale", p) for p in chorales[: FAMILY_LIMITS["chorale"]]]
    wanted = ("reel", "jig", "hornpipe", "strathspey")
    dance_items = []
    for p in dances:
        rhythm = _abc_header(Path(p).read_text(errors="replace"), "R").lower()
        if rhythm in wanted:
            dance_items.append(("dance", p))
    # spread the dance selection across rhythms rather than taking the alphabetical head
    step = max(1, len(dance_items) // FAMILY_LIMITS["dance"])
    out += dance_items[::step][: FAMILY_LIMITS["dance"]]
    airs = [p for p in paths if "/oneills1850/" in p]
    out += [("air", f"{p}#{i}") for p in airs[:2] for i in range(1, 41)][: FAMILY_LIMITS["air"]]
    folk = [p for p in paths if "/essenFolksong/" in p and Path(p).stem[:3] in ("alt", "erk")]
    per_file = FAMILY_LIMITS["folk"] // max(1, len(folk)) + 1
    out += [("folk", f"{p}#{i}") for p in folk for i in range(1, per_file + 1)][
        : FAMILY_LIMITS["folk"]
    ]
    return out


def _abc_header(text: str, field: str) -> str:
    m = re.search(rf"^{field}:\s*(.*)$", text, flags=re.MULTILINE)
    return m.group(1).strip() if m else ""


def _abc_tune(path: str, number: int) -> str:
    """The ``number``-th tune (1-based, in file order) of a multi-tune ABC file."""
    text = Path(path).read_text(errors="replace")
    chunks = [c.strip() for c in re.split(r"\n(?=X:)", text) if c.strip().startswith("X:")]
    if not 1 <= number <= len(chunks):
        raise KeyError(f"{path} holds {len(chunks)} tunes, not {number}")
    return chunks[number - 1] + "\n"


def _source_label(family: str, abc: str) -> str:
    if family == "chorale":
        return "Bach chorale"
    if family == "air":
        return "Irish air"
    if family == "folk":
        return "German folk song"
    rhythm = _abc_header(abc, "R").lower()
    country = "Scottish" if rhythm == "strathspey" else "Irish"
    return f"{country} {rhythm}"


def _meter_of(abc: str, score) -> str:
    raw = _abc_header(abc, "M") if abc else ""
    if raw in ("C", "c"):
        return "4/4"
    if raw in ("C|", "c|"):
        return "2/2"
    if raw:
        return raw.replace(" ", "")
    sigs = score.recurse().getElementsByClass("TimeSignature")
    return sigs[0].ratioString if sigs else ""


def parse_piece(item: tuple[str, str]) -> dict | None:
    """Parse one selected piece into a :class:`Tune` dict, or None when it is unusable."""
    from music21 import converter

    family, ref = item
    path, _, number = ref.partition("#")
    try:
        abc = _abc_tune(path, int(number)) if number else ""
        if path.endswith(".abc") and not number:
            abc = Path(path).read_text(errors="replace")
        score = converter.parse(abc, format="abc") if abc else converter.parse(path)
        meter = _meter_of(abc, score)
        score.stripTies(inPlace=True)  # a copying stripTies costs most of the parse time
        flat = score.flatten()
        keys = flat.getElementsByClass("Key")
        k = keys[0] if keys else score.analyze("key")
        mode = _MODE_TO_MAJMIN.get(str(k.mode).lower())
        notes = []
        for el in flat.notes:
            dur = float(el.quarterLength)
            onset = float(el.offset)
            if dur <= 0 or onset >= MAX_BEATS:
                continue
            for p in el.pitches:
                notes.append((round(onset, 4), round(dur, 4), int(p.midi)))
    except Exception:  # one malformed score in the corpus must not stop the selection
        return None
    if meter not in METERS or mode is None or len(notes) < 16:
        return None
    notes.sort()
    length = max(o + d for o, d, _ in notes)
    stem = Path(path).stem.replace(".", "_")
    title = (score.metadata.title if score.metadata and score.metadata.title else stem) or stem
    tonic = k.getTonic() if hasattr(k, "getTonic") else k.tonic
    return asdict(
        Tune(
            id=f"{family}-{stem}{'-' + number if number else ''}".replace(" ", "_"),
            title=str(title),
            source=_source_label(family, abc),
            tonic_pc=int(tonic.pitchClass),
            mode=mode,
            meter=meter,
            length=round(length, 4),
            notes=notes,
        )
    )


def load_tunes(*, workers: int = 1, refresh: bool = False) -> list[Tune]:
    """The cached tune selection, parsing (with ``workers`` processes) when there is no cache."""
    from importlib.metadata import version

    from musiclm.datamodules.shards import atomic_write_json

    # reading the version from metadata avoids importing music21 (1.5 s) on a cache hit
    path = cache_dir() / f"tunes-v{TUNES_VERSION}-music21-{version('music21')}.json"
    if path.is_file() and not refresh:
        try:
            return [_tune(d) for d in json.loads(path.read_text())["tunes"]]
        except (json.JSONDecodeError, KeyError, TypeError):
            pass  # a damaged cache is rebuilt below
    items = _corpus_selection()
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            parsed = list(pool.map(parse_piece, items, chunksize=8))
    else:
        parsed = [parse_piece(it) for it in items]
    tunes = [d for d in parsed if d is not None]
    if not tunes:
        raise RuntimeError("no usable tunes found in music21's corpus (is music21 installed?)")
    atomic_write_json(path, {"version": TUNES_VERSION, "tunes": tunes})
    return [_tune(d) for d in tunes]


def _tune(d: dict) -> Tune:
    return Tune(**{**d, "notes": [tuple(n) for n in d["notes"]]})


def clip_notes(
    tune: Tune, *, start: float, beats: float, transpose: int = 0
) -> list[tuple[float, float, int]]:
    """Notes sounding in ``[start, start + beats)`` beats of the tune (looped when shorter),
    shifted to start at 0 and transposed by ``transpose`` semitones."""
    out = []
    loop = 0.0
    while loop < start + beats:
        for onset, dur, pitch in tune.notes:
            t = onset + loop - start
            if t >= beats:
                break
            if t >= 0:
                out.append((t, min(dur, beats - t), pitch + transpose))
        loop += max(tune.length, 1.0)
    return out
