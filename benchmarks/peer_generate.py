"""audiolm-pytorch 2.4.0 cached generation, timed the way ../shared/peer/bench_peer.py does.

Runs in the peer's own environment (``bash ../shared/peer/install.sh VENV``, the harness beside
the repository), started by ``bench_generate.py``; prints one JSON line per figure. Same
sizes as ours: SemanticTransformer d=256, 4 layers, 4 heads, 1024 tokens, fp32, CPU, 2
threads; EOS suppressed so every run generates exactly ``--tokens`` tokens.
"""

import argparse
import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TQDM_DISABLE", "1")

import torch  # noqa: E402
from audiolm_pytorch import SemanticTransformer, SemanticTransformerWrapper  # noqa: E402
from audiolm_pytorch import t5 as alm_t5  # noqa: E402
from transformers import T5Config  # noqa: E402

# constructing a transformer reads T5's config from the hub; give it the real width offline
alm_t5.T5_CONFIGS[alm_t5.DEFAULT_T5_NAME] = dict(config=T5Config(d_model=768))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--tokens", type=int, default=500)
    p.add_argument("--batches", default="1,8")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = SemanticTransformer(num_semantic_tokens=1024, dim=256, depth=4, heads=4)
    with torch.no_grad():
        model.to_logits.weight[model.eos_id].zero_()
        model.to_logits.bias[model.eos_id] = -1e4
    wrapper = SemanticTransformerWrapper(transformer=model).eval()
    for batch in (int(b) for b in args.batches.split(",")):
        torch.manual_seed(0)
        wrapper.generate(max_length=8, batch_size=batch, use_kv_cache=True)  # warm-up
        start = time.perf_counter()
        out = wrapper.generate(max_length=args.tokens, batch_size=batch, use_kv_cache=True)
        seconds = time.perf_counter() - start
        n = out.shape[-1]
        record = {
            "figure": "decode_tokens_per_s",
            "who": "audiolm-pytorch 2.4.0",
            "batch": batch,
            "cached": True,
            "tokens": n,
            "tokens_per_s": batch * n / seconds,
            "seconds": seconds,
        }
        print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
