"""A tiny randomly initialised CLAP saved like a hub model (``save_pretrained``), offline.

The folder holds what ``laion/larger_clap_music`` holds: ``config.json`` and weights of a
``ClapModel``, a Roberta BPE tokenizer (here a 57-token vocabulary of single characters, no
merges) and a ``ClapFeatureExtractor`` config (here 8 kHz, 16 mel bins, 1 s windows, so the
clips of ``mulan_helpers`` need no resampling).
"""

from __future__ import annotations

import json
import string
from pathlib import Path

import torch

CLAP_DIM = 8
CLAP_SAMPLE_RATE = 8000


def write_tiny_clap(directory: Path, *, seed: int = 0) -> Path:
    """Write the tiny CLAP into ``directory`` (created) and return it."""
    from transformers import ClapConfig, ClapFeatureExtractor, ClapModel, RobertaTokenizer

    directory.mkdir(parents=True, exist_ok=True)
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "<mask>": 4}
    for c in string.ascii_lowercase:  # "Ġ" marks a character that follows a space
        vocab[c], vocab[f"\u0120{c}"] = len(vocab), len(vocab) + 1
    (directory / "vocab.json").write_text(json.dumps(vocab))
    (directory / "merges.txt").write_text("#version: 0.2\n")
    RobertaTokenizer.from_pretrained(directory).save_pretrained(directory)
    text = dict(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1,
                num_attention_heads=2, intermediate_size=32, max_position_embeddings=66,
                projection_dim=CLAP_DIM)  # fmt: skip
    audio = dict(spec_size=64, num_mel_bins=16, window_size=4, patch_size=4,
                 patch_stride=(4, 4), hidden_size=32, patch_embeds_hidden_size=16,
                 depths=[1, 1], num_attention_heads=[2, 2], num_hidden_layers=2,
                 projection_dim=CLAP_DIM)  # fmt: skip
    torch.manual_seed(seed)
    config = ClapConfig(text_config=text, audio_config=audio, projection_dim=CLAP_DIM)
    ClapModel(config).save_pretrained(directory)
    ClapFeatureExtractor(
        feature_size=16, sampling_rate=CLAP_SAMPLE_RATE, hop_length=80, max_length_s=1,
        fft_window_size=256, frequency_max=4000, truncation="rand_trunc",
    ).save_pretrained(directory)  # fmt: skip
    return directory
