"""Cached incremental decoding equals the network's full forward pass; sliding windows;
sampling filters and classifier-free guidance."""

import pytest
import torch
from generation_helpers import random_input, tiny_spec, tiny_stage, window_checker

from musiclm.generation import sampling as sampling_mod
from musiclm.generation.decode import generate_window, sliding_generate, targets_to_codes
from musiclm.generation.delay_decode import sliding_delay_generate
from musiclm.generation.sampling import SamplingConfig, filter_logits, guide, sample
from musiclm.stages.delay import DelayStage

TOL = 1e-4


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models on a shared 2-core machine: one thread avoids waiting on a busy sibling."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("stage", ["semantic", "coarse", "fine"])
def test_incremental_logits_equal_full_forward_at_every_step(stage):
    module = tiny_stage(stage)
    x = random_input(module.layout, batch=3, frames=6)
    with torch.no_grad():
        full = module.net(x)
    net = module.net
    cache = net.new_cache(3, x.shape[1])
    prefill = net(x[:, :5], cache=cache)
    assert (prefill - full[:, :5]).abs().max() <= TOL
    chunk = net(x[:, 5:9], cache=cache)  # several new positions at once
    assert (chunk - full[:, 5:9]).abs().max() <= TOL
    for i in range(9, x.shape[1]):
        step = net(x[:, i : i + 1], cache=cache)
        assert (step[:, 0] - full[:, i]).abs().max() <= TOL, (stage, i)
    assert cache.length == x.shape[1]
    with pytest.raises(ValueError, match="cache holds"):
        net(x[:, :1], cache=cache)
    with pytest.raises(ValueError, match="full forward pass"):
        net(x[:, :1], cache=net.new_cache(3, 4), levels=2)


@pytest.mark.parametrize("stage", ["semantic", "coarse", "fine"])
@pytest.mark.parametrize("cfg_scale", [1.0, 3.0])
def test_generated_window_logits_equal_full_forward(stage, cfg_scale):
    module = tiny_stage(stage, fine_sees_mulan=True)  # so guidance has tokens to drop
    layout = module.layout
    prompt = layout.prefix(
        {
            "mulan": torch.randint(0, 8, (2, 3)),
            "semantic": torch.randint(0, 16, (2, 4)),
            "acoustic": torch.randint(0, 8, (2, 4, 8)),
        }
    )
    records = []
    n = 6 * layout.target_level_count
    out = generate_window(
        module.net,
        prompt,
        n,
        layout=layout,
        sampling=SamplingConfig(temperature=1.0, cfg_scale=cfg_scale),
        generator=torch.Generator().manual_seed(0),
        on_window=window_checker(module.net, layout, records),
    )
    assert out.shape == (2, n)
    assert records[0][0] <= TOL
    # every sampled id belongs to its position's codebook level
    allowed = layout.allowed_targets(n)
    assert allowed.gather(1, out.t()).all()


def test_sliding_windows_rebuild_the_cache_from_the_kept_prefix():
    module = tiny_stage("coarse")
    layout = module.layout
    semantic = torch.randint(0, 16, (2, 20))
    mulan = torch.randint(0, 8, (2, 3))
    spans = []

    def conditioning(f0, f1, new):
        spans.append((f0, f1))
        assert new == (0 if f0 == 0 else f0 + 2)
        s0, s1 = f0 // 2, -(-f1 // 2)  # semantic at 5 Hz, acoustic at 10 Hz
        return layout.prefix({"mulan": mulan, "semantic": semantic[:, s0:s1]})

    records = []
    codes = sliding_generate(
        module.net,
        layout=layout,
        conditioning=conditioning,
        total_frames=11,
        context_frames=5,
        prefix_frames=2,
        sampling=SamplingConfig(temperature=1.0),
        generator=torch.Generator().manual_seed(0),
        batch=2,
        on_window=window_checker(module.net, layout, records),
    )
    assert codes.shape == (2, 2, 11)
    assert spans == [(0, 5), (3, 8), (6, 11)]  # stride = context - prefix
    assert all(diff <= TOL for diff, _, _ in records)
    # each later window's prompt ends with the codes it keeps from before
    for (f0, _), (_, tokens, prompt_len) in zip(spans[1:], records[1:], strict=True):
        kept = targets_to_codes(
            layout, tokens[:, prompt_len - 4 : prompt_len] - layout.offsets()["coarse"]
        )
        assert torch.equal(kept, codes[..., f0 : f0 + 2])


def test_sliding_generation_continues_existing_codes_and_validates():
    module = tiny_stage("semantic")
    layout = module.layout
    mulan = torch.randint(0, 8, (1, 3))
    existing = torch.randint(0, 16, (1, 1, 3))
    codes = sliding_generate(
        module.net,
        layout=layout,
        conditioning=lambda f0, f1, new: layout.prefix({"mulan": mulan}),
        total_frames=8,
        context_frames=6,
        prefix_frames=3,
        sampling=SamplingConfig(),
        existing=existing,
    )
    assert torch.equal(codes[..., :3], existing) and codes.shape == (1, 1, 8)
    with pytest.raises(ValueError, match="prefix_frames"):
        sliding_generate(
            module.net,
            layout=layout,
            conditioning=lambda f0, f1, new: layout.prefix({"mulan": mulan}),
            total_frames=8,
            context_frames=3,
            prefix_frames=3,
            sampling=SamplingConfig(),
            batch=1,
        )


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (
            {"context_frames": 3, "prefix_frames": 3, "batch": 1},
            "{stage}: prefix_frames=3 must be in 0..context_frames-1 (context_frames=3)",
        ),
        (
            {"context_frames": 6, "prefix_frames": 2},
            "give `batch` when there are no existing codes",
        ),
        (
            {"context_frames": 6, "prefix_frames": 2, "existing": torch.zeros(1, 5, 3).long()},
            "{stage}: existing codes must be (B, {levels}, F), got (1, 5, 3)",
        ),
    ],
)
def test_both_sliding_paths_refuse_bad_windows_alike(bad, message):
    """The cascade's and the delay stage's sliding generation check their arguments with one
    function: the same error, naming the stage."""
    cascade = tiny_stage("coarse")
    delay = DelayStage(spec=tiny_spec().to_dict(), dim=32, depth=2, heads=4).eval()
    for module, generate in ((cascade, sliding_generate), (delay, sliding_delay_generate)):
        layout = module.layout
        with pytest.raises(ValueError) as raised:
            generate(
                module.net,
                layout=layout,
                conditioning=lambda f0, f1, new: pytest.fail("no window before the checks"),
                total_frames=8,
                sampling=SamplingConfig(),
                **bad,
            )
        levels = layout.target_level_count
        assert str(raised.value) == message.format(stage=layout.stage, levels=levels)


def _generate(module, sampling, seed, prompt):
    return generate_window(
        module.net,
        prompt,
        12,
        layout=module.layout,
        sampling=sampling,
        generator=torch.Generator().manual_seed(seed),
    )


def test_same_seed_same_output_and_cache_equals_no_cache():
    module = tiny_stage("coarse")
    prompt = module.layout.prefix(
        {"mulan": torch.randint(0, 8, (3, 3)), "semantic": torch.randint(0, 16, (3, 4))}
    )
    cfg = SamplingConfig(temperature=0.95, top_k=5)
    a, b = _generate(module, cfg, 7, prompt), _generate(module, cfg, 7, prompt)
    assert torch.equal(a, b)
    assert not torch.equal(a, _generate(module, cfg, 8, prompt))
    uncached = generate_window(
        module.net,
        prompt,
        12,
        layout=module.layout,
        sampling=SamplingConfig(temperature=0),
        use_cache=False,
    )
    assert torch.equal(uncached, _generate(module, SamplingConfig(temperature=0), 0, prompt))


def test_cfg_scale_one_through_the_batched_path_equals_plain_sampling(monkeypatch):
    module = tiny_stage("semantic")
    prompt = module.layout.prefix({"mulan": torch.randint(0, 8, (4, 3))})
    plain = _generate(module, SamplingConfig(cfg_scale=1.0), 3, prompt)
    monkeypatch.setattr(sampling_mod.SamplingConfig, "guided", property(lambda self: True))
    batched = _generate(module, SamplingConfig(cfg_scale=1.0), 3, prompt)
    assert torch.equal(plain, batched)
    monkeypatch.undo()
    guided = _generate(module, SamplingConfig(cfg_scale=4.0), 3, prompt)
    assert not torch.equal(plain, guided)


def test_cfg_needs_mulan_conditioning():
    from generation_helpers import tiny_spec

    module = tiny_stage("semantic", tiny_spec(mulan_levels=0))
    prompt = module.layout.prefix({"semantic": torch.zeros(1, 1, dtype=torch.long)})
    with pytest.raises(ValueError, match="no MuLan conditioning"):
        _generate(module, SamplingConfig(cfg_scale=2.0), 0, prompt)


def test_guidance_formula():
    cond, uncond = torch.randn(2, 5), torch.randn(2, 5)
    assert torch.equal(guide(cond, uncond, 1.0), cond)
    torch.testing.assert_close(guide(cond, uncond, 3.0), uncond + 3.0 * (cond - uncond))


def test_top_k_top_p_and_greedy():
    logits = torch.log(torch.tensor([[0.5, 0.25, 0.15, 0.1]]))
    kept = filter_logits(logits, top_k=2).isfinite()
    assert kept.tolist() == [[True, True, False, False]]
    kept = filter_logits(logits, top_p=0.7).isfinite()  # 0.5 + 0.25 reaches 0.7
    assert kept.tolist() == [[True, True, False, False]]
    kept = filter_logits(logits, top_p=0.5).isfinite()
    assert kept.tolist() == [[True, False, False, False]]
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([sample(logits, SamplingConfig(top_k=2), g) for _ in range(200)])
    assert set(draws.flatten().tolist()) == {0, 1}
    assert sample(logits, SamplingConfig(temperature=0)).item() == 0
    with pytest.raises(ValueError, match="top_p"):
        SamplingConfig(top_p=1.5)
    with pytest.raises(ValueError, match="unknown sampling key"):
        SamplingConfig.from_dict({"temprature": 1.0}, where="PIPELINE.yaml: stages.coarse")
