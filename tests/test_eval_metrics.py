import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg

sys.path.insert(0, str(Path(__file__).parent))
from eval_synth import synth_clip  # noqa: E402

from musiclm.evaluation import fad, mcc, memorization  # noqa: E402


def _random_cov(rng, d, rank=None):
    a = rng.standard_normal((d, rank or d))
    return a @ a.T / d


# ----------------------------------------------------------------------------- FAD


def test_frechet_identical_gaussians_is_zero():
    rng = np.random.default_rng(0)
    mu, sigma = rng.standard_normal(8), _random_cov(rng, 8)
    assert fad.frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-8)


def test_frechet_shifted_mean_is_squared_shift():
    rng = np.random.default_rng(1)
    mu, sigma = rng.standard_normal(6), _random_cov(rng, 6)
    shift = rng.standard_normal(6)
    d = fad.frechet_distance(mu, sigma, mu + shift, sigma)
    assert d == pytest.approx(float(shift @ shift), rel=1e-6)


def test_frechet_isotropic_closed_form():
    # N(0, a I) vs N(0, b I) in d dims: d (sqrt(a) - sqrt(b))^2
    d = fad.frechet_distance(np.zeros(5), 4 * np.eye(5), np.zeros(5), np.eye(5))
    assert d == pytest.approx(5 * (2 - 1) ** 2)


def test_trace_sqrt_matches_scipy_sqrtm_and_survives_singular():
    rng = np.random.default_rng(2)
    s1, s2 = _random_cov(rng, 7), _random_cov(rng, 7)
    ref = np.trace(scipy.linalg.sqrtm(s1 @ s2)).real
    assert fad.trace_sqrt_product(s1, s2) == pytest.approx(ref, rel=1e-6)
    low1, low2 = _random_cov(rng, 32, rank=3), _random_cov(rng, 32, rank=3)
    value = fad.frechet_distance(np.zeros(32), low1, np.zeros(32), low2)
    assert np.isfinite(value) and value >= 0
    assert fad.frechet_distance(np.zeros(32), low1, np.zeros(32), low1) == pytest.approx(
        0, abs=1e-6
    )


def test_frechet_dimension_mismatch_is_an_error():
    with pytest.raises(ValueError, match="differ in dimension"):
        fad.frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def test_fad_orders_audio_by_similarity():
    clips = lambda inst, seed: [  # noqa: E731
        (
            f"{inst}{i}",
            synth_clip(
                instrument=inst, bpm=100, key=i % 12, mode="major", seconds=2.0, seed=seed + i
            ),
            16000,
        )
        for i in range(4)
    ]
    ref = fad.embed_clips(fad.logmel_frames, clips("sine", 0))
    same = fad.embed_clips(fad.logmel_frames, clips("sine", 100))
    other = fad.embed_clips(fad.logmel_frames, clips("square", 200))
    assert fad.frechet_audio_distance(same, ref) < fad.frechet_audio_distance(other, ref)


def test_resolve_embedding_by_module_path_and_errors():
    embed = fad.resolve_embedding("musiclm.evaluation.fad:logmel_frames")
    assert embed(np.zeros(16000, dtype=np.float32) + 0.1, 16000).shape[1] == 64
    with pytest.raises(ValueError, match="needs a MuLan checkpoint"):
        fad.resolve_embedding("mulan")
    with pytest.raises(ValueError, match="has no attribute"):
        fad.resolve_embedding("musiclm.evaluation.fad:nope")
    with pytest.raises(ValueError, match="cannot import"):
        fad.resolve_embedding("no_such_module_xyz:f")


def test_embed_clips_names_a_bad_clip():
    with pytest.raises(ValueError, match="clip 'b'"):
        fad.embed_clips(
            lambda a, sr: np.full((2, 3), np.nan) if a[0] else np.ones((2, 3)),
            [("a", np.zeros(4), 16000), ("b", np.ones(4), 16000)],
        )


# ----------------------------------------------------------------------------- MCC


class RandomProjectionEmbedder:
    """Test stand-in for a joint embedding: captions and audio map to one space by a fixed
    random projection of (caption word -> frequency band) so matching pairs agree."""

    def __init__(self, words: list[str], dim: int = 16, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.words = words
        self.proj = rng.standard_normal((len(words), dim))

    def text(self, texts):
        return np.stack([np.array([w in t for w in self.words], float) @ self.proj for t in texts])

    def audio(self, wav, sr):
        spec = np.abs(np.fft.rfft(wav))
        freqs = np.fft.rfftfreq(wav.size, 1 / sr)
        bands = np.array([spec[(freqs >= f * 0.97) & (freqs <= f * 1.03)].sum() for f in FREQS])
        return (bands / bands.sum()) @ self.proj


FREQS = [220.0, 330.0, 440.0, 660.0]
WORDS = ["low", "mid", "high", "top"]


def _tone(f, seed):
    t = np.arange(8000) / 8000
    return np.sin(2 * np.pi * f * t) + 0.01 * np.random.default_rng(seed).standard_normal(t.size)


def test_mcc_matched_above_mismatched():
    emb = RandomProjectionEmbedder(WORDS)
    prompts = [f"a {w} tone" for w in WORDS]
    audios = [(_tone(f, i), 8000) for i, f in enumerate(FREQS)]
    report = mcc.mcc_report(
        emb.text, emb.audio, generated=(prompts, audios), reference=(prompts, audios[::-1])
    )
    assert report["generated"]["mean"] > 0.95
    assert report["generated"]["mean"] > report["generated_mismatched"]["mean"] + 0.3
    assert report["generated_pairwise_win_rate"]["mean"] == 1.0
    # reversed audio: only mismatched pairs on the diagonal
    assert report["real"]["mean"] < report["generated"]["mean"]


def test_cycle_consistency_closed_form():
    text = np.eye(3)
    audio = np.array([[1.0, 0, 0], [0, 1.0, 0], [0, 0, -1.0]])
    out = mcc.cycle_consistency(text, audio)
    assert out["matched"]["mean"] == pytest.approx(1 / 3)
    assert out["mismatched"]["mean"] == pytest.approx(0.0)


def test_mcc_length_mismatch_is_an_error():
    emb = RandomProjectionEmbedder(WORDS)
    with pytest.raises(ValueError, match="2 prompts but 1 clips"):
        mcc.embed_pairs(emb.text, emb.audio, ["a", "b"], [(_tone(220, 0), 8000)])


# ----------------------------------------------------------------------------- memorization


def test_ot_distance_closed_forms():
    centroids = np.array([[0.0], [1.0], [3.0]])
    cost = memorization.centroid_cost(centroids)
    h = lambda *v: np.array(v, float)  # noqa: E731
    assert memorization.ot_distance(h(1, 0, 0), h(0, 0, 1), cost) == pytest.approx(3.0)
    assert memorization.ot_distance(h(0.5, 0.5, 0), h(0.5, 0.5, 0), cost) == pytest.approx(0)
    # 1-D: EMD = integral of |CDF difference|
    a, b = h(0.5, 0.5, 0), h(0, 0.5, 0.5)
    cdf = np.abs(np.cumsum(a) - np.cumsum(b))[:-1]
    assert memorization.ot_distance(a, b, cost) == pytest.approx(float(cdf @ np.diff([0, 1, 3])))


def test_token_histogram_checks_range():
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        memorization.token_histogram(np.array([0, 5]), 4)


def _examples(n=8, length=60, k=16, seed=0):
    rng = np.random.default_rng(seed)
    return [
        memorization.MemorizationExample(f"clip{i}", rng.integers(0, k, length), conditioning=i)
        for i in range(n)
    ]


def test_memorizing_model_matches_and_random_model_does_not():
    k, examples = 16, _examples()
    centroids = np.random.default_rng(1).standard_normal((k, 4))
    table = {e.conditioning: e.semantic for e in examples}

    def memorizer(prefix, cond, n):  # looks the training clip up: perfect memorization
        return table[cond][len(prefix) : len(prefix) + n]

    rng = np.random.default_rng(3)

    def random_model(prefix, cond, n):
        return rng.integers(0, k, n)

    kw = dict(centroids=centroids, frame_rate=5.0, prompt_seconds=(0, 2), continuation_seconds=4)
    mem = memorization.memorization_study(memorizer, examples, **kw)
    rnd = memorization.memorization_study(random_model, examples, **kw)
    for row in mem["by_prompt_length"]:
        assert row["n"] == 8 and row["exact_match_rate"] == 1.0
        assert row["approximate_match_rate"] == 1.0
    for row in rnd["by_prompt_length"]:
        assert row["exact_match_rate"] == 0.0 and row["approximate_match_rate"] <= 0.25
    assert mem["mismatched_match_rate"] <= 0.1


def test_memorization_rejects_wrong_length_continuation():
    with pytest.raises(ValueError, match="returned 3 tokens, asked for 20"):
        memorization.memorization_study(
            lambda p, c, n: np.zeros(3, int),
            _examples(),
            centroids=np.eye(16),
            frame_rate=5.0,
            prompt_seconds=(0,),
            continuation_seconds=4,
        )


# ----------------------------------------------------------------------------- clip folders


def test_write_generated_round_trips_through_load_folder(tmp_path):
    from musiclm.evaluation.clips import load_folder, write_generated

    audio = synth_clip(instrument="sine", bpm=90, key=0, mode="major", seconds=0.5)
    write_generated(tmp_path, "a0", audio, 16000, prompt="calm piano", attributes={"bpm": 90})
    write_generated(tmp_path, "a1", audio, 16000, prompt="fast flute")
    clips, bare = load_folder(tmp_path)
    assert [c.name for c in clips] == ["a0", "a1"] and bare == []
    assert clips[0].text == "calm piano" and clips[0].attributes == {"bpm": 90}
    assert clips[0].sample_rate == 16000 and clips[0].audio.size == audio.size
    np.testing.assert_allclose(clips[0].audio, audio, atol=1e-4)
    assert not list(tmp_path.glob(".*"))  # no temporary files left
    with pytest.raises(ValueError, match="plain file stem"):
        write_generated(tmp_path, "../x", audio, 16000, prompt="p")


def test_logmel_frames_agree_across_sample_rates():
    import librosa

    y = synth_clip(instrument="square", bpm=100, key=3, mode="minor", seconds=2.0)
    y24 = librosa.resample(y, orig_sr=16000, target_sr=24000)
    a, b = fad.logmel_frames(y, 16000), fad.logmel_frames(y24, 24000)
    assert a.shape == b.shape
    assert np.abs(a - b).mean() < 0.2 * np.abs(a).mean()
