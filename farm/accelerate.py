"""Make a diffusers pipeline faster without per-model code: fused kernels, torch.compile,
the fastest attention backend the device has, and step caching.

`accelerate(pipe, ...)` works on the pipeline's denoiser (`pipe.transformer` or `pipe.unet`):

1. **attention**: picks the fastest *exact* backend of diffusers' attention dispatcher that
   this machine can run (FlashAttention 3, FlashAttention 2, cuDNN SDPA, PyTorch SDPA), trying
   each in turn. SageAttention is left out of the automatic choice: it quantises Q and K to
   int8, so it changes pixels beyond rounding, and task keys do not record the device.
2. **step caching**, one of two, both diffusers' own hooks on its `CacheMixin` models (Wan,
   Flux, SD3, LTX, ...; a UNet is reported as unsupported):
   - **cache**: First Block Cache (`FirstBlockCacheConfig`): when the first transformer
     block's residual changed by less than `threshold` (relative mean absolute difference)
     since the last computed step, the other blocks are skipped and their cached residual
     reused. Adaptive: how much it skips depends on the content.
   - **taylorseer**: TaylorSeer (`TaylorSeerCacheConfig`): the blocks' attention runs in full
     on the first TAYLORSEER_WARMUP steps and then every TAYLORSEER_INTERVAL-th step; in
     between its output is predicted from a first-order Taylor series of the last full ones.
     A fixed schedule: the same share of steps is skipped for any prompt.
3. **kernels** / **compile**: the denoiser is wrapped in `torch.compile` with farm's own
   backend. Dynamo hands it an FX graph of the model's forward (across every block, whatever
   the model); `rewrite` finds the patterns below in that graph by their operations, not by
   module names, and replaces each with one fused op from `kernels/` (`torch.ops.farm.*`).
   The graph then goes to Inductor (`compile=True`) or runs as is (`compile=False`).

   | pattern | graph shape | op |
   | --- | --- | --- |
   | `group_norm_silu` | `silu(group_norm(x))` | GroupNorm + SiLU (UNet resnets) |
   | `adaln` | `norm(x) * (1 + scale) + shift`, norm a layer/RMS norm (also written out as `x * rsqrt(mean(x²) + eps)`), scale per sample or per token, or `(1 + scale)[:, None]` | AdaLN modulation (DiT blocks) |
   | `gated_residual` | `x + y * gate`, gate broadcast over tokens | gated residual (DiT blocks) |
   | `rmsnorm_rope` | `rms_norm(q)` then interleaved rotary embedding | q/k norm + RoPE (Wan) |
   | `glu` | `a * act(b)` with `a, b = p.chunk(2, -1)` | GEGLU / SwiGLU |
   | `gelu` | `gelu(x, approximate="tanh")` | GELU-tanh (DiT MLPs) |

The report says what was chosen and, once the model has run, what was replaced (pattern →
count, summed over the distinct graphs compiled) and how many cached steps were skipped.
"""

from __future__ import annotations

import hashlib
import operator
import sys
import types
from dataclasses import dataclass, field

from .errors import FarmError

FEATURES = ("kernels", "compile", "attention", "cache", "taylorseer")
STEP_CACHES = {"cache": "first_block", "taylorseer": "taylorseer"}  # feature -> report's kind; at most one
TAYLORSEER_INTERVAL = 5  # diffusers' defaults (its docs show them on FLUX)
TAYLORSEER_WARMUP = 3
# The attention modules of transformer blocks, by name: diffusers' default patterns end in
# `attn`, which misses Wan's and LTX's `attn1` / `attn2`.
TAYLORSEER_MODULES = [r"(transformer_blocks|single_transformer_blocks|temporal_transformer_blocks|blocks)"
                      r"\.\d+\.attn\d*"]
PATTERNS = ("group_norm_silu", "adaln", "gated_residual", "rmsnorm_rope", "glu", "gelu")
# Exact attention backends of diffusers' dispatcher, fastest first on an H100 (FA3 is Hopper
# only; cuDNN SDPA beats PyTorch's flash SDPA on Hopper at head_dim 128).
ATTENTION_ORDER = ("_flash_3", "flash", "_native_cudnn", "native")
DEFAULT_CACHE_THRESHOLD = 0.05  # diffusers' default; ParaAttention uses 0.05-0.1 for Wan


def check_features(features, where: str = "accelerate") -> list[str]:
    """Validate a spec's or preset's `accelerate = [...]` list; return it sorted, deduplicated."""
    if not isinstance(features, list) or not all(isinstance(f, str) for f in features):
        raise FarmError(f"{where}: expected a list of strings from {', '.join(FEATURES)}, got {features!r}", code=2)
    unknown = [f for f in features if f not in FEATURES]
    if unknown:
        raise FarmError(f"{where}: unknown {', '.join(map(repr, unknown))} (allowed: {', '.join(FEATURES)})", code=2)
    caches = [f for f in STEP_CACHES if f in features]
    if len(caches) > 1:
        raise FarmError(f"{where}: {' and '.join(map(repr, caches))} are two step caches; choose one", code=2)
    return sorted(set(features), key=FEATURES.index)


def check_threshold(value, where: str = "cache_threshold") -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 10:
        raise FarmError(f"{where}: expected a number >= 0 and <= 10 (relative change of the first block's "
                        f"residual), got {value!r}", code=2)
    return float(value)


@dataclass
class Report:
    model: str = ""
    kernels: bool = False
    kernel_backend: str = ""
    compile: bool = False
    attention: str | None = None
    attention_skipped: dict = field(default_factory=dict)  # backend -> why it was not used
    cache: dict | None = None
    graphs: dict = field(default_factory=dict)  # digest of a graph's code -> its pattern counts

    @property
    def replaced(self) -> dict:
        total = {p: 0 for p in PATTERNS}
        for counts in self.graphs.values():
            for p, n in counts.items():
                total[p] += n
        return total

    def to_json(self) -> dict:
        return {"model": self.model, "kernels": self.kernels, "kernel_backend": self.kernel_backend,
                "compile": self.compile, "attention": self.attention, "attention_skipped": self.attention_skipped,
                "cache": self.cache, "graphs": len(self.graphs), "replaced": self.replaced}

    def text(self) -> str:
        lines = [f"model: {self.model}"]
        lines.append(f"kernels: {'on (' + self.kernel_backend + ')' if self.kernels else 'off'}")
        lines.append(f"compile: {'inductor' if self.compile else 'off'}")
        if self.attention:
            skipped = "; ".join(f"{k}: {v}" for k, v in self.attention_skipped.items())
            lines.append(f"attention: {self.attention}" + (f" (not available: {skipped})" if skipped else ""))
        else:
            lines.append("attention: unchanged")
        if self.cache:
            c = self.cache
            if c.get("supported") and c["kind"] == "taylorseer":
                lines.append(f"cache: taylorseer, full attention on the first {c['warmup']} steps then every "
                             f"{c['interval']}: {c['skipped']} of {c['decisions']} denoiser calls predicted it")
            elif c.get("supported"):
                lines.append(f"cache: {c['kind']} threshold {c['threshold']}: {c['skipped']} of {c['decisions']} "
                             f"denoiser calls skipped the blocks after the first")
            else:
                lines.append(f"cache: not used ({c['reason']})")
        else:
            lines.append("cache: off")
        if self.kernels:
            n = len(self.graphs)
            lines.append(f"replaced (in {n} graph{'s' if n != 1 else ''}" + ("; a graph Dynamo reuses for "
                         "identical blocks counts once" if n > 1 else "") + "):")
            width = max(map(len, PATTERNS))
            lines += [f"  {p:<{width}}  {n}" for p, n in self.replaced.items()]
        return "\n".join(lines)


def denoiser(pipe):
    for name in ("transformer", "unet"):
        module = getattr(pipe, name, None)
        if module is not None:
            return module
    raise FarmError(f"{type(pipe).__name__} has neither a `transformer` nor a `unet` to accelerate.", code=2)


def accelerate(pipe, features=None, *, kernels: bool = True, compile: bool = True, attention: bool | str = True,
               cache: bool | str = False, cache_threshold: float = DEFAULT_CACHE_THRESHOLD) -> Report:
    """Accelerate `pipe` in place and return a Report (filled in further as the model runs).

    `features` (a spec's list, e.g. ["kernels", "compile"]) overrides the keyword switches.
    `attention` may name a diffusers backend to use instead of choosing one. `cache` is
    False, True / "cache" (First Block Cache) or "taylorseer"."""
    if features is not None:
        chosen = check_features(list(features))
        kernels, compile = "kernels" in chosen, "compile" in chosen
        cache = next((f for f in STEP_CACHES if f in chosen), False)
        attention = "attention" in chosen
    model = denoiser(pipe)
    report = Report(model=type(model).__name__, kernels=kernels, compile=compile)
    if attention:
        _choose_attention(model, report, None if attention is True else attention)
    if cache:
        _enable_cache(model, report, "cache" if cache is True else cache, cache_threshold)
    if kernels or compile:
        import torch

        if kernels:
            report.kernel_backend = _kernels().backend()
        model.compile(backend=_backend(report, kernels, compile), fullgraph=False, dynamic=False)
        # Each block class is traced once per input shape; CFG and cache branches add a few.
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    pipe._farm_acceleration = report
    return report


def probe(name: str, features=None, *, cache_threshold: float | None = None, dev: str | None = None) -> Report:
    """Load a model (a preset, folder or hub id), accelerate it with `features` (default: its
    preset's `accelerate` list, else kernels and attention) and run one small denoising call,
    so the report holds what the pass replaced. What `farm accelerate --report` prints."""
    from . import models

    ref = models.resolve(name)
    if ref.is_ffmpeg:
        raise FarmError(f"{name!r} runs ffmpeg, not a model: there is nothing to accelerate.", code=2)
    features = check_features(list(features) if features is not None
                              else ref.defaults.get("accelerate") or ["kernels", "attention"])
    threshold = cache_threshold if cache_threshold is not None else ref.defaults.get("cache_threshold",
                                                                                     DEFAULT_CACHE_THRESHOLD)
    pipe = models.load_pipeline(ref, dev)
    pipe.set_progress_bar_config(disable=True)
    report = accelerate(pipe, features, cache_threshold=threshold)
    sample(pipe, ref)
    return report


def sample(pipe, ref) -> list:
    """One small call of a loaded pipeline through farm's own call path (2 steps, a few latent
    tokens, 8 frames for a video model); its images."""
    from PIL import Image

    from . import models, pipeline, timing

    side = 2 * models.PIPELINES.get(ref.pipeline, {}).get("multiple_of", 16)
    params = {"prompt": "a lighthouse", "negative_prompt": "", "steps": 2, "guidance": 5.0, "width": side,
              "height": side, "seed": 0, "frames": 1 if ref.role == "keyframes" else 8, "fps": 8,
              "model_fps": 8, "model": {"pipeline": ref.pipeline, "options": ref.options()}}
    if ref.role == "keyframes":
        return [pipeline.keyframe(pipe, params)]
    im = Image.new("RGB", (side, side), (90, 120, 200))
    rule = timing.shape(ref)
    frames = rule.offset + rule.step * -(-8 // rule.step)  # the first valid count past 8: 9 for every family
    return pipeline.clip(pipe, params, im, im, frames, 0)


def reset(pipe):
    """Undo `accelerate`: plain forward, default attention, no cache."""
    model = denoiser(pipe)
    model._compiled_call_impl = None
    if getattr(pipe, "_farm_acceleration", None) is not None:
        r = pipe._farm_acceleration
        if r.attention and hasattr(model, "reset_attention_backend"):
            import logging

            from diffusers.utils import logging as dlog

            level = dlog.get_verbosity()
            dlog.set_verbosity(logging.ERROR)
            try:
                model.reset_attention_backend()
            finally:
                dlog.set_verbosity(level)
        if r.cache and r.cache.get("supported"):
            model.disable_cache()
        pipe._farm_acceleration = None


# --- attention ------------------------------------------------------------------------------


def _choose_attention(model, report: Report, wanted: str | None):
    import logging

    if not hasattr(model, "set_attention_backend"):
        report.attention_skipped["all"] = f"{type(model).__name__} has no diffusers attention dispatcher"
        return
    import torch
    from diffusers.utils import logging as dlog

    level = dlog.get_verbosity()
    dlog.set_verbosity(logging.ERROR)  # "Attention backends are an experimental feature" on every call
    try:
        for name in ((wanted,) if wanted else ATTENTION_ORDER):
            if name != "native" and not torch.cuda.is_available():
                report.attention_skipped[name] = "no CUDA device"
                continue
            if name == "_flash_3" and torch.cuda.get_device_capability()[0] != 9:
                report.attention_skipped[name] = "FlashAttention 3 needs a Hopper GPU (sm_90)"
                continue
            try:
                model.set_attention_backend(name)
            except (RuntimeError, ValueError, ImportError) as e:
                report.attention_skipped[name] = str(e).split(". ")[0]
                continue
            report.attention = name
            return
    finally:
        dlog.set_verbosity(level)
    if wanted:
        raise FarmError(f"attention backend {wanted!r} is not usable here: {report.attention_skipped[wanted]}", code=2)


# --- step caching ---------------------------------------------------------------------------


def _enable_cache(model, report: Report, feature: str, threshold: float):
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


# --- kernels: the graph rewrite -------------------------------------------------------------


def _backend(report: Report, kernels: bool, compile: bool):
    def backend(gm, example_inputs):
        if kernels:
            counts = rewrite(gm)
            digest = hashlib.sha1(gm.code.encode()).hexdigest()[:12]
            report.graphs[digest] = counts
        if compile:
            from torch._inductor.compile_fx import compile_fx

            return compile_fx(gm, example_inputs)
        return gm.forward

    return backend


def _kernels():
    """farm's `kernels` package; a clear error if another package of that name (Hugging Face's
    kernel hub is also called `kernels`) comes first on the path."""
    import kernels

    if not hasattr(kernels, "OPS"):
        raise FarmError(f"`import kernels` found {getattr(kernels, '__file__', None) or 'another package'}, not "
                        "farm's fused kernels: another package named `kernels` (Hugging Face's kernel hub?) shadows "
                        "farm's. Uninstall one, or run without the `kernels` acceleration.", code=2)
    return kernels


def rewrite(gm) -> dict:
    """Replace every pattern found in a Dynamo FX graph with its fused op; return the counts."""
    _kernels()  # registers torch.ops.farm.*

    counts = {p: 0 for p in PATTERNS}
    g = gm.graph
    for name, match in (("rmsnorm_rope", _rmsnorm_rope), ("adaln", _adaln), ("gated_residual", _gated_residual),
                        ("group_norm_silu", _group_norm_silu), ("glu", _glu), ("gelu", _gelu)):
        for node in list(g.nodes):
            if node.graph is g and match(g, node):
                counts[name] += 1
    _drop_dead(g)
    g.lint()
    gm.recompile()
    return counts


_PURE_METHODS = {"float", "to", "type_as", "type", "unflatten", "unbind", "chunk", "reshape", "add", "sub", "mul",
                 "pow", "mean"}


def _drop_dead(g):
    """Remove what the replacements left unused, but only nodes of the kinds the patterns are
    made of. Not `graph.eliminate_dead_code()`: it counts every `call_method` as pure, so it
    would drop an unused in-place `x.add_(y)` from a Dynamo graph, and with it the mutation."""
    pure = {fn for kind in ("layer_norm", "rms_norm", "group_norm", "silu", "gelu", "add", "sub", "mul",
                            "empty_like", "getitem") for fn in _fns()[kind]} | {_rsqrt()}
    changed = True
    while changed:
        changed = False
        for node in reversed(list(g.nodes)):
            if node.users or node.op not in ("call_function", "call_method"):
                continue
            if (node.op == "call_function" and node.target in pure) or (
                    node.op == "call_method" and node.target in _PURE_METHODS):
                g.erase_node(node)
                changed = True


def _fns():
    import torch
    import torch.nn.functional as F

    return {
        "layer_norm": (F.layer_norm, torch.layer_norm),
        "rms_norm": (F.rms_norm, torch.rms_norm),
        "group_norm": (F.group_norm, torch.group_norm),
        "silu": (F.silu,),
        "gelu": (F.gelu, torch._C._nn.gelu),
        "add": (operator.add, torch.add),
        "sub": (operator.sub, torch.sub),
        "mul": (operator.mul, torch.mul),
        "empty_like": (torch.empty_like,),
        "setitem": (operator.setitem,),
        "getitem": (operator.getitem,),
    }


_FN = None


def _is(node, kind: str) -> bool:
    global _FN
    if _FN is None:
        _FN = _fns()
    import torch.fx as fx

    if not isinstance(node, fx.Node):
        return False
    if node.op == "call_function":
        return node.target in _FN[kind]
    return node.op == "call_method" and node.target == kind and kind in ("add", "sub", "mul")


def _val(node):
    """The fake tensor Dynamo recorded for a node (None for non-tensors)."""
    import torch
    import torch.fx as fx

    v = node.meta.get("example_value") if isinstance(node, fx.Node) else None
    return v if isinstance(v, torch.Tensor) else None


def _arg(node, i: int, name: str, default=None):
    return node.args[i] if len(node.args) > i else node.kwargs.get(name, default)


def _only_user(node, user) -> bool:
    return list(node.users) == [user]


def _strip_casts(node):
    """Skip dtype casts that change nothing (`.float()` of an fp32 tensor, Wan's habit)."""
    while node.op == "call_method" and node.target in ("float", "to", "type_as", "type"):
        src = node.args[0]
        a, b = _val(node), _val(src)
        if a is None or b is None or a.dtype != b.dtype or a.device != b.device or a.shape != b.shape:
            break
        node = src
    return node


def _operands(node, kind: str):
    """(a, b) of a binary `kind` node, else None."""
    if not _is(node, kind) or len(node.args) != 2 or node.kwargs:
        return None
    return node.args


def _replace(g, node, op, args, erase=()):
    with g.inserting_before(node):
        new = g.call_function(op, tuple(args))
    new.meta = dict(node.meta)
    node.replace_all_uses_with(new)
    g.erase_node(node)
    for dead in erase:
        if not dead.users:
            g.erase_node(dead)
    return new


def _group_norm_silu(g, node) -> bool:
    import torch

    if not _is(node, "silu") or _arg(node, 1, "inplace", False):
        return False
    gn = node.args[0]
    if not _is(gn, "group_norm") or not _only_user(gn, node) or _val(gn) is None:
        return False
    x = gn.args[0]
    args = (x, _arg(gn, 1, "num_groups"), _arg(gn, 2, "weight"), _arg(gn, 3, "bias"), _arg(gn, 4, "eps", 1e-5))
    _replace(g, node, torch.ops.farm.group_norm_silu.default, (args[0], args[2], args[3], args[1], float(args[4]), True),
             erase=(gn,))
    return True


def _broadcast_rows(t, x) -> bool:
    """t is (B|1, 1|L, D) against x (B, L, D): per-sample or per-token modulation."""
    return (t is not None and t.ndim == 3 and t.shape[-1] == x.shape[-1] and t.shape[0] in (1, x.shape[0])
            and t.shape[1] in (1, x.shape[1]))


def _adaln(g, node) -> bool:
    import torch

    pair = _operands(node, "add")
    if pair is None:
        return False
    for prod, shift in (pair, pair[::-1]):
        mul = _operands(prod, "mul")
        if mul is None or not _only_user(prod, node):
            continue
        for normed, one_plus in (mul, mul[::-1]):
            index = indexed = None
            if _is(one_plus, "getitem") and _only_user(one_plus, prod):  # CogVideoX: (1 + scale)[:, None, :]
                index, indexed, one_plus = one_plus.args[1], one_plus, one_plus.args[0]
            op = _operands(one_plus, "add")
            if op is None or not hasattr(normed, "op"):
                continue
            scale = op[1] if op[0] == 1 else op[0] if op[1] == 1 else None
            norm = _strip_casts(normed)
            if scale is None:
                continue
            if _is(norm, "rms_norm") or _is(norm, "layer_norm"):
                rms, x_node = _is(norm, "rms_norm"), norm.args[0]
                xv = _val(x_node)
                if xv is None or tuple(_arg(norm, 1, "normalized_shape")) != (xv.shape[-1],):
                    continue
                weight = _arg(norm, 2, "weight")
                bias = None if rms else _arg(norm, 3, "bias")
                eps = _arg(norm, 3 if rms else 4, "eps", None if rms else 1e-5)
            else:  # diffusers' RMSNorm module, written out (LTX)
                chain = _rms_chain(normed)
                if chain is None:
                    continue
                rms, bias, (x_node, weight, eps) = True, None, chain
            x, out = _val(x_node), _val(node)
            if x is None or out is None or x.ndim != 3 or out.shape != x.shape:
                continue
            sc, sh = _val(indexed if index is not None else scale), _val(shift)
            if not (_broadcast_rows(sc, x) and _broadcast_rows(sh, x)) or (index is not None and _val(scale) is None):
                continue
            if torch.promote_types(torch.promote_types(x.dtype, sc.dtype), sh.dtype) != out.dtype:
                continue
            if eps is None:
                eps = torch.finfo(x.dtype).eps
            if index is not None:  # the op takes scale[:, None, :] itself
                with g.inserting_before(node):
                    scale = g.call_function(operator.getitem, (scale, index))
                scale.meta["example_value"] = sc
            _replace(g, node, torch.ops.farm.adaln.default, (x_node, weight, bias, scale, shift, float(eps), rms),
                     erase=(prod,))
            return True
    return False


def _rms_chain(node):
    """(x, weight or None, eps) if `node` ends an RMSNorm written out as diffusers' `RMSNorm`
    module does it: `x * rsqrt(x.to(float32).pow(2).mean(-1, keepdim=True) + eps)`, cast back
    to x's dtype or times a weight over the last dim; else None."""
    def uncast(n):
        while hasattr(n, "op") and n.op == "call_method" and n.target in ("to", "float", "type_as", "type"):
            n = n.args[0]
        return n

    def normalized(n):  # x * rsqrt(mean(x.float() ** 2, -1, keepdim=True) + eps) -> (x, eps)
        pair = _operands(n, "mul")
        for x, r in (pair, pair[::-1]) if pair else ():
            if not (hasattr(r, "op") and r.op == "call_function" and r.target is _rsqrt()):
                continue
            added = _operands(r.args[0], "add")
            if added is None or not isinstance(added[1], float):
                continue
            mean = added[0]
            if not (hasattr(mean, "op") and mean.op == "call_method" and mean.target == "mean"
                    and tuple(mean.args[1:]) in ((-1,), ((-1,),)) and mean.kwargs == {"keepdim": True}):
                continue
            power = mean.args[0]
            if (hasattr(power, "op") and power.op == "call_method" and power.target == "pow"
                    and power.args[1:] == (2,) and uncast(power.args[0]) is x):
                return x, added[1]
        return None

    n = uncast(node)
    found = normalized(n)
    if found is not None:
        return found[0], None, found[1]
    pair = _operands(n, "mul")
    for h, w in (pair, pair[::-1]) if pair else ():
        found, wv, hv = normalized(uncast(h)), _val(w), _val(h)
        if found is not None and wv is not None and hv is not None and wv.shape == (hv.shape[-1],):
            return found[0], w, found[1]
    return None


def _rsqrt():
    import torch

    return torch.rsqrt


def _gated_residual(g, node) -> bool:
    import torch

    pair = _operands(node, "add")
    if pair is None:
        return False
    for x, prod in (pair, pair[::-1]):
        mul = _operands(prod, "mul")
        if mul is None or not _only_user(prod, node):
            continue
        for y, gate in (mul, mul[::-1]):
            xv, yv, gv, out = _val(x), _val(y), _val(gate), _val(node)
            if xv is None or yv is None or out is None or xv.ndim != 3 or yv.shape != xv.shape:
                continue
            # A gate per sample, broadcast over tokens. A per-token gate (Wan 2.2 TI2V) has y's
            # shape and cannot be told from any a + b * c; the op takes it, the pass leaves it.
            if gv is None or not _broadcast_rows(gv, xv) or gv.shape[1] != 1 or xv.shape[1] == 1:
                continue
            dtype = torch.promote_types(torch.promote_types(xv.dtype, yv.dtype), gv.dtype)
            if out.shape != xv.shape or out.dtype != dtype:
                continue
            _replace(g, node, torch.ops.farm.gated_residual.default, (x, y, gate), erase=(prod,))
            return True
    return False


def _glu(g, node) -> bool:
    import torch

    pair = _operands(node, "mul")
    if pair is None:
        return False
    for a, act in (pair, pair[::-1]):
        if _is(act, "gelu"):
            approx = _arg(act, 1, "approximate", "none")
            activation = "gelu_tanh" if approx == "tanh" else "gelu"
        elif _is(act, "silu") and not _arg(act, 1, "inplace", False):
            activation = "silu"
        else:
            continue
        b = act.args[0]
        if not (_is(a, "getitem") and _is(b, "getitem") and a.args[0] is b.args[0] and a.args[1] == 0
                and b.args[1] == 1 and _only_user(act, node)):
            continue
        chunk = a.args[0]
        if not (chunk.op == "call_method" and chunk.target == "chunk" and _arg(chunk, 1, "chunks") == 2):
            continue
        src = chunk.args[0]
        sv = _val(src)
        if sv is None or _arg(chunk, 2, "dim", 0) not in (-1, sv.ndim - 1) or sv.shape[-1] % 2:
            continue
        if len(chunk.users) != 2:
            continue
        _replace(g, node, torch.ops.farm.glu.default, (src, activation), erase=(act, a, b))
        if not chunk.users:
            g.erase_node(chunk)
        return True
    return False


def _gelu(g, node) -> bool:
    import torch

    if not _is(node, "gelu") or _arg(node, 1, "approximate", "none") != "tanh" or _val(node) is None:
        return False
    _replace(g, node, torch.ops.farm.gelu.default, (node.args[0], "tanh"))
    return True


def _rmsnorm_rope(g, node) -> bool:
    """Wan's rotary embedding after its q/k RMSNorm, as Dynamo records it:

        t = unflatten(rms_norm(q, (H*Dh,), w, eps), 2, (H, -1))      # or rms_norm per head
        x1, x2 = unbind(unflatten(t, -1, (-1, 2)), -1)
        out = empty_like(t)
        out[..., 0::2] = x1 * cos - x2 * sin
        out[..., 1::2] = x1 * sin + x2 * cos
    """
    import torch

    if not _is(node, "empty_like"):
        return False
    t = node.args[0]
    tv = _val(t)
    if tv is None or tv.ndim != 4:
        return False
    B, L, H, Dh = tv.shape
    sets = [u for u in node.users if _is(u, "setitem")]
    if len(sets) != 2:
        return False
    halves = {}
    for s in sets:
        idx = s.args[1]
        if not (isinstance(idx, tuple) and len(idx) == 2 and idx[0] is Ellipsis and isinstance(idx[1], slice)
                and idx[1].step == 2 and idx[1].stop is None and idx[1].start in (0, 1)):
            return False
        halves[idx[1].start] = s
    if set(halves) != {0, 1}:
        return False
    # out[0::2] = x1*cos - x2*sin ; out[1::2] = x1*sin + x2*cos
    first, second = halves[0].args[2], halves[1].args[2]
    sub, add = _operands(first, "sub"), _operands(second, "add")
    if sub is None or add is None:
        return False

    def factors(n):
        p = _operands(n, "mul")
        return None if p is None else p

    f = [factors(sub[0]), factors(sub[1]), factors(add[0]), factors(add[1])]
    if any(x is None for x in f):
        return False
    x1 = x2 = cos = sin = None
    for a, b in (f[0], f[0][::-1]):
        if _is(a, "getitem") and a.args[1] == 0:
            x1, cos = a, b
    for a, b in (f[1], f[1][::-1]):
        if _is(a, "getitem") and a.args[1] == 1:
            x2, sin = a, b
    if x1 is None or x2 is None or x1.args[0] is not x2.args[0]:
        return False
    if {id(v) for v in f[2]} != {id(x1), id(sin)} or {id(v) for v in f[3]} != {id(x2), id(cos)}:
        return False
    unbind = x1.args[0]
    if not (unbind.op == "call_method" and unbind.target == "unbind" and _arg(unbind, 1, "dim", 0) in (-1, 4)):
        return False
    pairs = unbind.args[0]
    if not (pairs.op == "call_method" and pairs.target == "unflatten" and pairs.args[0] is t
            and pairs.args[1] in (-1, 3) and tuple(pairs.args[2]) == (-1, 2)):
        return False
    cv, sv = _val(cos), _val(sin)
    if cv is None or sv is None or cv.numel() != L * Dh // 2 or sv.numel() != L * Dh // 2 or cv.ndim != 4:
        return False
    if tuple(cv.shape) != (1, L, 1, Dh // 2) or tuple(sv.shape) != (1, L, 1, Dh // 2):
        return False
    # Where the norm is: across heads before the unflatten, or per head after it.
    if t.op == "call_method" and t.target == "unflatten" and _is(t.args[0], "rms_norm"):
        norm, per_head = t.args[0], False
        if tuple(_arg(norm, 1, "normalized_shape")) != (H * Dh,):
            return False
        q = norm.args[0]
    elif _is(t, "rms_norm") and t.args[0].op == "call_method" and t.args[0].target == "unflatten":
        norm, per_head = t, True
        if tuple(_arg(norm, 1, "normalized_shape")) != (Dh,):
            return False
        q = t.args[0].args[0]
    else:
        return False
    qv = _val(q)
    if qv is None or tuple(qv.shape) != (B, L, H * Dh) or qv.dtype != tv.dtype:
        return False
    eps = _arg(norm, 3, "eps", None)
    eps = torch.finfo(qv.dtype).eps if eps is None else float(eps)
    others = [u for u in node.users if u not in sets]
    with g.inserting_before(halves[0]):
        c2 = g.call_method("reshape", (cos, L, Dh // 2))
        s2 = g.call_method("reshape", (sin, L, Dh // 2))
        new = g.call_function(torch.ops.farm.rmsnorm_rope.default,
                              (q, _arg(norm, 2, "weight"), c2, s2, H, eps, per_head))
    new.meta = dict(node.meta)
    for u in others:
        u.replace_input_with(node, new)
    for s in sets:
        g.erase_node(s)
    for dead in (first, second, *sub, *add):
        if not dead.users:
            g.erase_node(dead)
    g.erase_node(node)
    return True


class _CallableModule(types.ModuleType):
    """`farm.accelerate(pipe, ...)` calls `accelerate`; `farm.accelerate.reset(pipe)` still works."""

    def __call__(self, *args, **kwargs):
        return accelerate(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
