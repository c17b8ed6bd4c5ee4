"""Step caching, one of two, both diffusers' own hooks on its `CacheMixin` models (Wan, Flux,
SD3, LTX, ...; a UNet is reported as unsupported):

- **cache**: First Block Cache (`FirstBlockCacheConfig`): when the first transformer block's
  residual changed by less than `threshold` (relative mean absolute difference) since the
  last computed step, the other blocks are skipped and their cached residual reused.
  Adaptive: how much it skips depends on the content.
- **taylorseer**: TaylorSeer (`TaylorSeerCacheConfig`): the blocks' attention runs in full
  on the first TAYLORSEER_WARMUP steps and then every TAYLORSEER_INTERVAL-th step; in
  between its output is predicted from a first-order Taylor series of the last full ones.
  A fixed schedule: the same share of steps is skipped for any prompt.
"""

from __future__ import annotations

from .settings import STEP_CACHES, TAYLORSEER_INTERVAL, TAYLORSEER_WARMUP

# The attention modules of transformer blocks, by name: diffusers' default patterns end in
# `attn`, which misses Wan's and LTX's `attn1` / `attn2`.
TAYLORSEER_MODULES = [r"(transformer_blocks|single_transformer_blocks|temporal_transformer_blocks|blocks)"
                      r"\.\d+\.attn\d*"]


def enable(model, report, feature: str, threshold: float):
    """Turn on the step cache `feature` ("cache" or "taylorseer"); count its decisions in `report.cache`."""
    from diffusers.hooks import FirstBlockCacheConfig, HookRegistry, TaylorSeerCacheConfig
    from diffusers.models.cache_utils import CacheMixin

    kind = STEP_CACHES[feature]
    if kind == "taylorseer":
        report.cache = {"kind": kind, "interval": TAYLORSEER_INTERVAL, "warmup": TAYLORSEER_WARMUP, "supported": False}
        dtype = next(model.parameters()).dtype  # its Taylor factors in the model's precision
        config, hook_name, decider = (TaylorSeerCacheConfig(cache_interval=TAYLORSEER_INTERVAL,
                                                            disable_cache_before_step=TAYLORSEER_WARMUP,
                                                            taylor_factors_dtype=dtype,
                                                            cache_identifiers=TAYLORSEER_MODULES),
                                      "taylorseer_cache", "_measure_should_compute")
    else:
        report.cache = {"kind": kind, "threshold": threshold, "supported": False}
        config, hook_name, decider = (FirstBlockCacheConfig(threshold=threshold), "fbc_leader_block_hook",
                                      "_should_compute_remaining_blocks")
    if not isinstance(model, CacheMixin):
        report.cache["reason"] = f"diffusers has no cache hooks for {type(model).__name__}"
        return
    try:
        model.enable_cache(config)
    except (ValueError, TypeError, AttributeError) as e:
        report.cache["reason"] = str(e)
        return
    registries = (getattr(m, "_diffusers_hook", None) for m in model.modules())
    hook = next((h for r in registries if isinstance(r, HookRegistry) and (h := r.get_hook(hook_name))), None)
    if hook is None:
        model.disable_cache()
        report.cache["reason"] = f"no module of {type(model).__name__} matched the {kind} hooks' names"
        return
    report.cache.update(supported=True, decisions=0, skipped=0)
    decide = getattr(hook, decider)  # count the first hook's decisions: every hook keeps the same schedule

    def counted(*args):
        answer = decide(*args)
        compute = answer[0] if isinstance(answer, tuple) else answer  # TaylorSeer's: (compute, state)
        report.cache["decisions"] += 1
        report.cache["skipped"] += 0 if compute else 1
        return answer

    setattr(hook, decider, counted)  # diffusers marks the decision compiler-disabled
