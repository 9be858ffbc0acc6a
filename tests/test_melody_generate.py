"""``musiclm generate --melody``: tiny random stages trained "with melody" follow the clip's
melody tokens; clips shorter or longer than the output work; bad clips give clear errors."""

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml
from generation_helpers import TINY_DAC, save_checkpoint, tiny_spec, tiny_stage, with_streams

from musiclm.commands.generate import main as generate_main
from musiclm.conditioning.melody_tokens import (
    MelodyConditioner,
    MelodyRVQ,
    melody_fingerprint,
    tokens_at,
)
from musiclm.datamodules.token_spec import MelodySpec
from musiclm.generation.pipeline import Pipeline

SR = 8000
MELODY = dict(
    sample_rate=SR, n_fft=1024, hop_length=160, min_midi=36, max_midi=96, patch_frames=4,
    dim=32, depth=1, heads=2, embed_dim=16, window_s=1.0, hop_s=1.0, input_s=2.0,
)  # fmt: skip


def write_melody(tmp):
    import lightning as L

    from musiclm.stages.melody import MelodyStage

    torch.manual_seed(0)
    stage = MelodyStage(**MELODY)
    trainer = L.Trainer(accelerator="cpu", logger=False, max_steps=0)
    trainer.strategy.connect(stage)
    trainer.save_checkpoint(tmp / "melody.ckpt")
    net = stage.melody.eval()
    emb = net.embed_windows(torch.randn(16, 1, 2 * SR)).flatten(0, 1)
    meta = {"melody_fingerprint": melody_fingerprint(net)}
    MelodyRVQ.fit(emb, levels=3, codebook_size=8, iters=5, meta=meta).save(
        tmp / "melody_rvq.safetensors"
    )
    return MelodyConditioner.from_files(
        str(tmp / "melody.ckpt"), str(tmp / "melody_rvq.safetensors")
    )


@pytest.fixture(scope="module")
def pipeline_file(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("melody_pipe")
    cond = write_melody(tmp)
    melody = MelodySpec(windows=2, levels=3, codebook=8, hop=1.0, fingerprint=cond.fingerprint())
    spec = with_streams(tiny_spec(mulan_levels=0), melody=melody)
    stages = {}
    for seed, (name, seconds) in enumerate((("semantic", 4.0), ("coarse", 2.0), ("fine", 1.0))):
        module = tiny_stage(name, spec, seed=seed, cond_dropout=0.0, melody=name != "fine")
        save_checkpoint(module, tmp / f"{name}.ckpt", seconds=seconds)
        stages[name] = {"checkpoint": f"{name}.ckpt"}
    data = {
        "codec": {"name": "dac", "args": {"config": TINY_DAC}},
        "melody": {"checkpoint": "melody.ckpt", "rvq": "melody_rvq.safetensors"},
        "stages": stages,
    }
    path = tmp / "PIPELINE.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def tone_melody(pitches, seconds_each=0.25, rate=SR):
    t = np.arange(int(seconds_each * rate)) / rate
    return torch.from_numpy(
        np.concatenate([0.3 * np.sin(2 * np.pi * 440 * 2 ** ((p - 69) / 12) * t) for p in pitches])
    ).float()


def test_tokens_at_picks_windows_and_pads():
    tokens = torch.arange(12).view(1, 4, 3)
    assert tokens_at(tokens, 1.0, 1.0, 2).tolist() == [[3, 4, 5, 6, 7, 8]]
    assert tokens_at(tokens, 3.0, 1.0, 2).tolist() == [[9, 10, 11, -1, -1, -1]]


def test_generation_follows_the_melody_clip(pipeline_file):
    pipe = Pipeline.from_file(str(pipeline_file))
    assert pipe.uses_melody
    up = (tone_melody([60, 62, 64, 65, 67, 69, 71, 72]), SR)  # 2 s
    down = (tone_melody([84, 79, 76, 72, 67, 64, 60, 55]), SR)
    short = (tone_melody([60, 64]), SR)  # 0.5 s: looped
    longer = (tone_melody([60, 62, 64, 65] * 6), 16000)  # 3 s at another rate: cut
    runs = {}
    for name, clip in {"up": up, "down": down, "short": short, "long": longer}.items():
        out = pipe.generate([[(0.0, "")]], seconds=6.0, seed=0, melody_audio=clip)
        assert out.audio.shape[-1] == round(6.0 * pipe.codec.sample_rate)
        runs[name] = out.codes["semantic"]
    again = pipe.generate([[(0.0, "")]], seconds=6.0, seed=0, melody_audio=up).codes["semantic"]
    assert torch.equal(again, runs["up"])  # same melody, same seed: same music
    # a different melody changes the conditioning and so the sampled tokens
    assert not torch.equal(runs["up"], runs["down"])
    with pytest.raises(ValueError, match="trained with melody conditioning: give a melody clip"):
        pipe.generate([[(0.0, "")]], seconds=2.0)


def test_pipeline_without_melody_stages_refuses_a_melody(tmp_path):
    from generation_helpers import write_pipeline

    pipe = Pipeline.from_file(str(write_pipeline(tmp_path)))
    assert not pipe.uses_melody
    with pytest.raises(ValueError, match="no stage was trained with melody"):
        pipe.generate([[(0.0, "")]], seconds=1.0, melody_audio=(torch.zeros(800), SR))


def test_melody_flag_errors_are_clear(pipeline_file, tmp_path, capsys):
    args = ["a solo violin", "--pipeline", str(pipeline_file), "--out", str(tmp_path / "o")]
    assert generate_main([*args, "--melody", str(tmp_path / "missing.wav")]) == 2
    err = capsys.readouterr().err
    assert "--melody:" in err and "does not exist" in err
    bad = tmp_path / "hum.wav"
    bad.write_text("not audio at all")
    assert generate_main([*args, "--melody", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "--melody: cannot read" in err and "hum.wav" in err


def test_melody_flag_end_to_end(pipeline_file, tmp_path):
    hum = tmp_path / "hum.wav"
    sf.write(hum, tone_melody([67, 69, 71, 72]).numpy(), SR)
    out = tmp_path / "out"
    args = ["a solo violin", "--pipeline", str(pipeline_file), "--out", str(out)]
    assert generate_main([*args, "--melody", str(hum), "--seconds", "3"]) == 0
    sidecar = next(out.glob("*.json")).read_text()
    assert "hum.wav" in sidecar
    assert len(list(out.glob("*.wav"))) == 1
