import sys

import pytest

from musiclm import registry
from musiclm.tokenizers import base

CODEC_SRC = """
import torch

class TinyCodec:
    sample_rate = 8000
    frame_rate = 100.0
    num_quantizers = 2
    codebook_size = 16

    def __init__(self, scale: int = 1):
        self.scale = scale

    def encode(self, wav):
        return torch.zeros(wav.shape[0], 2, wav.shape[-1] // 80, dtype=torch.long)

    def decode(self, codes):
        return torch.zeros(codes.shape[0], 1, codes.shape[-1] * 80)

    def fingerprint(self):
        return f"tiny-{self.scale}"
"""


def test_third_party_codec_is_discovered_and_loaded(fake_distribution):
    fake_distribution(
        {"musiclm.codecs": {"tiny-codec": "tiny_codec_mod:TinyCodec"}},
        {"tiny_codec_mod": CODEC_SRC},
    )
    assert "tiny-codec" in registry.available("codecs")
    assert "tiny_codec_mod" not in sys.modules  # discovery imports nothing
    codec = base.build("codecs", "tiny-codec", scale=3)
    assert isinstance(codec, base.Codec)
    assert codec.fingerprint() == "tiny-3"
    assert "tiny_codec_mod" in sys.modules


def test_unknown_name_lists_available(fake_distribution):
    fake_distribution(
        {"musiclm.codecs": {"tiny-codec": "tiny_codec_mod:TinyCodec"}},
        {"tiny_codec_mod": CODEC_SRC},
    )
    with pytest.raises(registry.PluginError, match=r"no codecs plugin named 'nope'.*tiny-codec"):
        registry.load("codecs", "nope")


def test_duplicate_name_names_both_targets(fake_distribution):
    fake_distribution({"musiclm.codecs": {"clash": "mod_a:A"}}, {"mod_a": "A = 1"}, name="dista")
    fake_distribution({"musiclm.codecs": {"clash": "mod_b:B"}}, {"mod_b": "B = 2"}, name="distb")
    with pytest.raises(registry.PluginError, match=r"registered twice.*mod_(a|b):(A|B).*mod_(a|b)"):
        registry.discover("codecs")


def test_broken_plugin_names_entry_point_and_others_stay_usable(fake_distribution):
    fake_distribution(
        {"musiclm.codecs": {"broken": "broken_mod:X", "tiny-codec": "tiny_codec_mod:TinyCodec"}},
        {"broken_mod": "import not_a_real_module_xyz\nX = 1", "tiny_codec_mod": CODEC_SRC},
    )
    with pytest.raises(registry.PluginError, match=r"broken = broken_mod:X.*ModuleNotFoundError"):
        registry.load("codecs", "broken")
    assert registry.load("codecs", "tiny-codec").__name__ == "TinyCodec"


def test_protocol_mismatch_is_an_error(fake_distribution):
    fake_distribution(
        {"musiclm.codecs": {"notacodec": "nc_mod:make"}},
        {"nc_mod": "def make():\n    return object()\n"},
    )
    with pytest.raises(registry.PluginError, match="does not implement Codec"):
        base.build("codecs", "notacodec")


def test_plugins_command_prints_every_group(fake_distribution, capsys):
    from musiclm.cli import main

    fake_distribution({"musiclm.text_encoders": {"tiny-text": "tt_mod:T"}}, {"tt_mod": "T = 1"})
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    for group in registry.GROUPS.values():
        assert f"{group}:" in out
    assert "tiny-text -> tt_mod:T" in out


def test_unknown_kind():
    with pytest.raises(registry.PluginError, match="unknown plugin kind"):
        registry.available("vocoders")
