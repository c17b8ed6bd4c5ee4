"""The tracing pass on the tiny twin of each family: it finds the patterns with no per-model
code, and the accelerated model draws what the stock one draws."""

import pytest
import torch
from PIL import Image

from farm import acceleration as acc, models
from farm.acceleration import rewrite
from farm.errors import FarmError
from farm.media import probe


def _load(name):
    pipe = models.load_pipeline(models.resolve(name), "cpu")  # from_pretrained: eval mode, as renders
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _latents(pipe, steps=1):
    g = torch.Generator().manual_seed(0)
    if hasattr(pipe, "unet"):
        return pipe(prompt="a boat", num_inference_steps=steps, guidance_scale=4.5, width=32, height=32,
                    generator=g, output_type="latent").images
    im = Image.new("RGB", (32, 32), (200, 30, 30))
    return pipe(image=im, last_image=im, prompt="a boat", num_frames=5, num_inference_steps=steps, guidance_scale=5.0,
                width=32, height=32, generator=g, output_type="latent", max_sequence_length=64).frames


# What each tiny twin holds (its builder in farm/models/families/): the SD UNet has 8 resnet blocks (2 GroupNorm+SiLU
# each) plus the output norm, and 4 transformer blocks with GEGLU feed-forwards; the Wan DiT
# has 2 blocks, each with 2 modulated norms, 2 gated residuals, RoPE on q and k, and a
# GELU-tanh MLP, plus the modulated output norm and the GELU-tanh text projection.
EXPECTED = {
    "tiny": {"group_norm_silu": 17, "glu": 4},
    "tiny-video": {"adaln": 5, "gated_residual": 4, "rmsnorm_rope": 4, "gelu": 3},
}


@pytest.mark.parametrize("preset", ["tiny", "tiny-video"])
def test_kernels_match_stock(home_with_models, preset):
    pipe = _load(preset)
    stock = _latents(pipe)
    torch._dynamo.reset()
    report = acc.accelerate(pipe, kernels=True, compile=False, attention=True, cache=False)
    fast = _latents(pipe)
    replaced = {k: v for k, v in report.replaced.items() if v}
    assert replaced == EXPECTED[preset], report.text()
    assert report.attention == "native"  # the CPU has only PyTorch's SDPA
    # fp32 throughout; the fused ops round once where eager rounds per op.
    torch.testing.assert_close(fast, stock, atol=1e-4, rtol=1e-4)
    acc.reset(pipe)
    torch.testing.assert_close(_latents(pipe), stock, atol=0, rtol=0)


# The other families' twins (farm/models/families/), through farm's own call path. Each family writes
# the patterns its own way, and the pass follows them by their operations: LTX normalises with
# diffusers' RMSNorm module written out (pow, mean, rsqrt) and modulates per token; CogVideoX,
# and the output norms of SD3 and Flux (`AdaLayerNormContinuous`), index the scale after adding
# 1 (`(1 + scale)[:, None, :]`). LTX's gates are per token, and
# a per-token `x + y * gate` cannot be told from any other product and sum: left to Inductor.
EVERY_FAMILY = {
    "tiny-sdxl": {"group_norm_silu": 17, "glu": 8},
    "tiny-sd3": {"adaln": 8, "gated_residual": 6, "gelu": 3},
    "tiny-flux": {"adaln": 6, "gated_residual": 5, "gelu": 3},
    "tiny-wan22": {"adaln": 5, "gated_residual": 4, "rmsnorm_rope": 4, "gelu": 3},
    "tiny-ltx": {"adaln": 3, "gelu": 2},
    "tiny-cogvideox": {"adaln": 5, "gated_residual": 4, "gelu": 1},
    "tiny-skyreels-v2": {"adaln": 5, "gated_residual": 4, "rmsnorm_rope": 4, "gelu": 3},
    "tiny-wan22-5b": {"adaln": 5, "rmsnorm_rope": 4, "gelu": 3},
    # the later families' twins: 5 to 9 s each under the interpreter, so with the slow tests
    "tiny-flux2": {"adaln": 6, "gated_residual": 5},
    "tiny-framepack": {"adaln": 6, "gated_residual": 7, "gelu": 3},
    "tiny-ltx2": {"adaln": 18, "gated_residual": 8, "gelu": 6},
    "tiny-qwen-image": {"adaln": 18, "gated_residual": 16, "gelu": 8},
}
SLOW_TWINS = {"tiny-flux2", "tiny-framepack", "tiny-ltx2", "tiny-qwen-image"}


def test_every_family_has_its_twin_checked_here():
    """A new family's twin joins the check below (or `EXPECTED`'s), or this fails."""
    from farm.models import families, timing

    checked = {timing.family_of(models.resolve(twin)).name for twin in [*EVERY_FAMILY, *EXPECTED]}
    assert checked == {f.name for f in families.FAMILIES}


@pytest.mark.parametrize("twin", [pytest.param(t, marks=pytest.mark.slow) if t in SLOW_TWINS else t
                                  for t in EVERY_FAMILY])
def test_kernels_in_every_family_draw_what_stock_draws(home_with_models, twin):
    import numpy as np

    ref = models.resolve(twin)
    pipe = _load(twin)
    stock = probe.sample(pipe, ref, steps=1)  # every replaced module runs in each step's call
    torch._dynamo.reset()
    report = acc.accelerate(pipe, ["kernels"])
    fast = probe.sample(pipe, ref, steps=1)
    assert {k: v for k, v in report.replaced.items() if v} == EVERY_FAMILY[twin], report.text()
    assert len(fast) == len(stock)
    for a, b in zip(stock, fast):  # 8-bit frames: fp32 rounding differences stay below one level
        diff = np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16))
        assert diff.max() <= 1, (twin, int(diff.max()))


def test_first_block_cache_skips_and_counts(home_with_models):
    pipe = _load("tiny-video")
    stock = _latents(pipe, steps=3)
    # Threshold 0: every step computes every block, so the output is the stock one.
    report = acc.accelerate(pipe, kernels=False, compile=False, attention=False, cache=True, cache_threshold=0.0)
    torch.testing.assert_close(_latents(pipe, steps=3), stock, atol=0, rtol=0)
    assert report.cache["supported"] and report.cache["skipped"] == 0
    assert report.cache["decisions"] == 6  # 3 steps x (conditional + unconditional call)
    acc.reset(pipe)
    # A huge threshold: after each context's first step, the later blocks are always skipped.
    report = acc.accelerate(pipe, kernels=False, compile=False, attention=False, cache=True, cache_threshold=1e9)
    cached = _latents(pipe, steps=3)
    assert report.cache["skipped"] == 4 and report.cache["decisions"] == 6, report.cache
    assert torch.isfinite(cached).all() and not torch.equal(cached, stock)
    assert "4 of 6 denoiser calls skipped" in report.text()
    torch.testing.assert_close(_latents(pipe, steps=3), cached, atol=0, rtol=0)  # warm pipeline: same again


def test_taylorseer_predicts_attention_on_its_schedule(home_with_models):
    pipe = _load("tiny-video")
    stock = _latents(pipe, steps=10)
    report = acc.accelerate(pipe, ["taylorseer"])
    cached = _latents(pipe, steps=10)
    # Per context (conditional, unconditional): steps 0-2 warm up, then full attention at
    # steps 4 and 9 only: 3 + 2 computed, 5 predicted, of 10.
    assert report.cache == {"kind": "taylorseer", "interval": 5, "warmup": 3, "supported": True,
                            "decisions": 20, "skipped": 10}, report.cache
    assert "10 of 20 denoiser calls predicted it" in report.text()
    assert torch.isfinite(cached).all() and not torch.equal(cached, stock)
    # A worker keeps the hooked pipeline warm for the next task: the hooks start afresh.
    torch.testing.assert_close(_latents(pipe, steps=10), cached, atol=0, rtol=0)
    acc.reset(pipe)
    torch.testing.assert_close(_latents(pipe, steps=10), stock, atol=0, rtol=0)  # reset: stock again
    report = acc.accelerate(pipe, ["taylorseer"])
    again = _latents(pipe, steps=10)
    torch.testing.assert_close(again, cached, atol=0, rtol=0)  # its state starts afresh on each call
    assert report.cache["decisions"] == 20


@pytest.mark.parametrize("twin, modules", [
    ("tiny-flux", ["transformer_blocks.0.attn", "single_transformer_blocks.0.attn"]),
    ("tiny-wan22", ["blocks.0.attn1", "blocks.0.attn2", "blocks.1.attn1", "blocks.1.attn2"]),
    ("tiny-ltx", ["transformer_blocks.0.attn1", "transformer_blocks.0.attn2"]),
    ("tiny-cogvideox", ["transformer_blocks.0.attn1"]),
])
def test_taylorseer_finds_the_attention_of_every_dit_family(home_with_models, twin, modules):
    from diffusers.hooks import HookRegistry

    pipe = _load(twin)
    report = acc.accelerate(pipe, ["taylorseer"])
    model = acc.denoiser(pipe)
    hooked = [n for n, m in model.named_modules() if isinstance(getattr(m, "_diffusers_hook", None), HookRegistry)
              and m._diffusers_hook.get_hook("taylorseer_cache") is not None]
    assert report.cache["supported"] and hooked == modules


def test_one_step_cache_at_a_time():
    with pytest.raises(FarmError, match="'cache' and 'taylorseer' are two step caches; choose one"):
        acc.check_features(["cache", "taylorseer"])


def test_cache_on_a_unet_is_reported_unsupported(home_with_models):
    pipe = _load("tiny")
    report = acc.accelerate(pipe, ["cache"])
    assert report.cache == {"kind": "first_block", "threshold": 0.05, "supported": False,
                            "reason": "diffusers has no cache hooks for UNet2DConditionModel"}
    assert not report.kernels and not report.compile


def test_check_features():
    assert acc.check_features(["compile", "kernels", "kernels"]) == ["kernels", "compile"]
    with pytest.raises(acc.FarmError, match="unknown 'fast'"):
        acc.check_features(["kernels", "fast"])
    with pytest.raises(acc.FarmError, match="expected a list"):
        acc.check_features("kernels")


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["tiny", "tiny-video"])
def test_kernels_and_inductor_match_stock(home_with_models, preset):
    """The full path: rewritten graphs compiled by Inductor (minutes of C++ compilation on a CPU)."""
    pipe = _load(preset)
    stock = _latents(pipe)
    torch._dynamo.reset()
    report = acc.accelerate(pipe, kernels=True, compile=True, attention=True)
    fast = _latents(pipe)
    assert {k: v for k, v in report.replaced.items() if v} == EXPECTED[preset]
    torch.testing.assert_close(fast, stock, atol=1e-3, rtol=1e-3)


def test_another_package_named_kernels_is_a_clear_error(monkeypatch):
    import sys
    import types

    impostor = types.ModuleType("kernels")  # what Hugging Face's kernel hub package would be
    impostor.__file__ = "/site-packages/kernels/__init__.py"
    monkeypatch.setitem(sys.modules, "kernels", impostor)
    with pytest.raises(FarmError, match="another package named `kernels`"):
        rewrite.load_kernels()
