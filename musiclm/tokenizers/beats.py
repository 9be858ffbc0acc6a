"""The beat clock: where each semantic frame sits in its beat, and the clip's tempo.

A semantic LM that must *count* frames to keep a beat does not, at demo scale: given a tempo
it moves its beat in the right direction but within 8 % of it for a third of clips, and the
audio's tempo stays at chance (docs/decisions/beat-clock.md). With ``beats`` the semantic
stage is instead conditioned on a clock, one phase id per semantic frame (``phase_bins``
per beat), as beat-conditioned text-to-music models are (Mustango predicts beats from the
text, Music ControlNet takes a rhythm control): placing notes on a given clock is a local
rule, not counting. Training reads the clock of the real audio (librosa's beat tracker);
generation builds it from a tempo, predicted from the MuLan text embedding
(``TempoPredictor``) or given by the user, or tracks it in the audio being continued.

Where a clip's metadata states its tempo (``bpm`` or ``attributes.bpm`` in its ``json``), the
tracker only places the beats at that tempo: the tracker's own tempo is off by an octave for
about a third of the demo's clips (within 8 % of the true BPM for 0.54), and a tempo
predictor trained on such labels learns little from the text (docs/decisions/beat-clock.md).

``prepare tokens --beats`` writes ``beat.npy`` [F_s] (phase ids, -1 where a clip has no
pulse) and ``tempo.npy`` [1] (tempo bin, -1 without a pulse) per clip, with ``--mulan`` also
``mulan_embedding.npy`` [D] (the MuLan embedding of its caption, or of its audio where it has
none: what the tempo predictor learns from), and the manifest's ``beats`` section
(``BeatSpec.to_manifest``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from musiclm.datamodules.token_spec import BeatSpec


def beat_index(
    onset: np.ndarray, frame_rate: float, bpm: float | None = None
) -> tuple[np.ndarray, float] | None:
    """Onset strength (F,) -> (beats elapsed at each frame (F,), beat period in frames).

    Beats come from ``librosa.beat.beat_track`` (at ``bpm`` when the tempo is known, which
    only places the beats); before the first and after the last the median beat period
    carries on, so the index grows by one per beat over the whole clip and its fraction is
    the phase. None without two beats (silence, a clip of a beat or two).
    """
    import librosa

    frames = len(onset)
    if frames < 4 or not np.any(onset > 0):
        return None
    _, beats = librosa.beat.beat_track(onset_envelope=onset, sr=frame_rate, hop_length=1, bpm=bpm)
    beats = np.unique(np.asarray(beats, dtype=np.float64))
    if len(beats) < 2:
        return None
    period = float(np.median(np.diff(beats)))
    before = np.arange(np.ceil(beats[0] / period), 0, -1) * -period + beats[0]
    after = beats[-1] + period * np.arange(1, np.ceil((frames - beats[-1]) / period) + 1)
    grid = np.concatenate([before, beats, after])
    index = np.interp(np.arange(frames), grid, np.arange(len(grid), dtype=np.float64))
    return index - index[0] // 1, period


class BeatTracker:
    """Audio -> the clock of each semantic frame (phase ids) and the tempo bin."""

    def __init__(self, spec: BeatSpec, *, sample_rate: int, frame_rate: float) -> None:
        self.spec, self.sample_rate, self.frame_rate = spec, sample_rate, frame_rate

    def index(
        self, wav: np.ndarray, frames: int, bpm: float | None = None
    ) -> tuple[np.ndarray, float] | None:
        """Mono audio (T,) -> (beats elapsed at each of ``frames`` frames, BPM), or None.
        ``bpm``: the known tempo (the tracker then only places the beats)."""
        import librosa

        hop = max(1, round(self.sample_rate / self.frame_rate))
        onset = librosa.onset.onset_strength(
            y=np.asarray(wav, dtype=np.float32), sr=self.sample_rate, hop_length=hop
        )
        rate = self.sample_rate / hop
        found = beat_index(onset.astype(np.float64), rate, bpm)
        if found is None:
            return None
        index, period = found
        # onset frames -> the tokenizer's frames (rates differ when sr / frame_rate is not whole)
        times = np.arange(frames) / self.frame_rate
        beats_per_second = rate / period
        last = (len(index) - 1) / rate
        inside = np.interp(np.minimum(times, last), np.arange(len(index)) / rate, index)
        index = inside + np.maximum(0.0, times - last) * beats_per_second
        return index, 60.0 * beats_per_second

    def track(
        self, wav: np.ndarray, frames: int, bpm: float | None = None
    ) -> tuple[np.ndarray, int]:
        """Mono audio (T,) -> (phase ids (frames,), tempo bin); -1 for both without a pulse.
        ``bpm``: the known tempo, if any: it is then the tempo bin as well (the tracked beats
        sit on whole frames, so their period is a few percent off, a bin's width)."""
        found = self.index(wav, frames, bpm)
        if found is None:
            return np.full(frames, -1, dtype=np.int64), -1
        index, tracked = found
        return self.spec.phase_ids(index), self.spec.tempo_bin(bpm or tracked)


def metadata_bpm(meta: dict[str, Any]) -> float | None:
    """The tempo a clip's metadata states (``bpm`` or ``attributes.bpm``), if any."""
    for value in (meta.get("bpm"), (meta.get("attributes") or {}).get("bpm")):
        if isinstance(value, int | float) and value > 0:
            return float(value)
    return None
