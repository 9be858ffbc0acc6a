"""audiolm-pytorch 2.4.0's training step, timed; run in the peer's own venv by bench_train.py.

Set up as ../shared/peer/bench_peer.py does (same classes, sizes, wrapper defaults, AdamW,
T5 config stub so nothing is downloaded), training only, so that bench_train.py can run it
between two runs of ours. Usage: peer_train_step.py semantic|coarse WARMUP STEPS THREADS [FLASH 0|1]
"""

import json
import os
import statistics
import sys
import time
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
warnings.filterwarnings("ignore")

import torch  # noqa: E402
from audiolm_pytorch import (  # noqa: E402
    CoarseTransformer,
    CoarseTransformerWrapper,
    SemanticTransformer,
    SemanticTransformerWrapper,
    SoundStream,
)
from audiolm_pytorch import t5 as alm_t5  # noqa: E402
from transformers import T5Config  # noqa: E402

alm_t5.T5_CONFIGS[alm_t5.DEFAULT_T5_NAME] = dict(config=T5Config(d_model=768))
which, warmup, steps, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
flash = len(sys.argv) > 5 and sys.argv[5] == "1"
torch.manual_seed(0)
torch.set_num_threads(threads)
gen = torch.Generator().manual_seed(0)
B, N = 8, 512


def ids(b: int, n: int) -> torch.Tensor:
    """Ids without consecutive repeats (the wrapper's unique_consecutive keeps the length)."""
    first = torch.randint(0, 1024, (b, 1), generator=gen)
    steps_ = torch.randint(1, 1024, (b, n - 1), generator=gen).cumsum(-1)
    return torch.cat((first, (first + steps_) % 1024), -1)


if which == "semantic":
    model = SemanticTransformer(
        num_semantic_tokens=1024, dim=256, depth=4, heads=4, flash_attn=flash
    )
    wrapper = SemanticTransformerWrapper(transformer=model)
    kw, tok = dict(semantic_token_ids=ids(B, N)), B * N
else:
    model = CoarseTransformer(
        codebook_size=1024,
        num_coarse_quantizers=4,
        num_semantic_tokens=1024,
        dim=256,
        depth=4,
        heads=4,
        flash_attn=flash,
    )
    codec = SoundStream(codebook_size=1024, rq_num_quantizers=8)  # only for .rq_groups
    wrapper = CoarseTransformerWrapper(transformer=model, codec=codec)
    coarse = torch.randint(0, 1024, (B, 128, 4), generator=gen)
    kw = dict(semantic_token_ids=ids(B, 128), coarse_token_ids=coarse)
    tok = B * (128 + 128 * 4)
opt = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=1e-2)
wrapper.train()
times = []
for i in range(warmup + steps):
    t0 = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    loss = wrapper(**kw, return_loss=True)
    loss.backward()
    opt.step()
    loss.item()
    if i >= warmup:
        times.append(time.perf_counter() - t0)
result = dict(
    tokens_per_s=tok * len(times) / sum(times),
    tokens_per_s_median_step=tok / statistics.median(times),
    steps=len(times),
    flash_attn=flash,
)
print(json.dumps(result))
