"""The graph rewrite on hand-written modules that belong to no diffusers family: patterns are
recognised by their operations, and everything else in the graph is left as it was."""

import torch
import torch.nn.functional as F

from farm import acceleration as acc


class Block(torch.nn.Module):
    """A DiT-style block written from scratch: AdaLN, a gated residual, a SwiGLU MLP, and
    an in-place op whose result is used only through the mutation."""

    def __init__(self, d=12):
        super().__init__()
        self.up = torch.nn.Linear(d, 4 * d)
        self.down = torch.nn.Linear(2 * d, d)
        self.norm = torch.nn.GroupNorm(3, 6)

    def forward(self, x, mod, image):
        shift, scale, gate = mod.chunk(3, dim=1)
        h = F.layer_norm(x, (x.shape[-1],), eps=1e-6) * (1 + scale) + shift
        a, b = self.up(h).chunk(2, dim=-1)
        x = x + self.down(a * F.silu(b)) * gate
        acc_ = torch.zeros_like(x)
        acc_.add_(x)  # in place: must survive the rewrite's clean-up
        return acc_, F.silu(self.norm(image))


class Pipe:
    def __init__(self, model):
        self.transformer = model


def test_patterns_in_a_model_of_no_family():
    model = Block().eval()
    x, mod, image = torch.randn(2, 7, 12), torch.randn(2, 3, 12), torch.randn(2, 6, 5, 3)
    with torch.no_grad():
        want = model(x, mod, image)
        torch._dynamo.reset()
        report = acc.accelerate(Pipe(model), kernels=True, compile=False, attention=False)
        got = model(x, mod, image)
    assert {k: v for k, v in report.replaced.items() if v} == {
        "adaln": 1, "gated_residual": 1, "glu": 1, "group_norm_silu": 1}, report.text()
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_near_misses_are_left_alone():
    """Not the patterns: a norm over two dims, a residual whose gate is as large as y, a
    GELU that is not tanh, a chunk along another dim."""

    class Near(torch.nn.Module):
        def forward(self, x, scale, shift, y, g):
            a = F.layer_norm(x, x.shape[-2:]) * (1 + scale) + shift
            b = x + y * g
            c = F.gelu(x)
            p, q = x.chunk(2, dim=1)
            return a, b, c, p * F.gelu(q)

    model = Near()
    x = torch.randn(2, 6, 8)
    args = (x, torch.randn(2, 1, 8), torch.randn(2, 1, 8), torch.randn(2, 6, 8), torch.randn(2, 6, 8))
    want = model(*args)
    torch._dynamo.reset()
    report = acc.accelerate(Pipe(model), kernels=True, compile=False, attention=False)
    got = model(*args)
    assert not any(report.replaced.values()), report.text()
    torch.testing.assert_close(got, want)


class WrittenOut(torch.nn.Module):
    """The forms diffusers' modules write: its `RMSNorm` spelled out (LTX), with and without a
    weight, modulated per token; and `(1 + scale)[:, None, :]` (CogVideoX, SD3's and Flux's
    output norms)."""

    def __init__(self, d=16):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.rand(d) + 0.5)

    @staticmethod
    def rms(x, eps=1e-6):
        dtype = x.dtype
        variance = x.to(torch.float32).pow(2).mean(-1, keepdim=True)
        return (x * torch.rsqrt(variance + eps)).to(dtype)

    def forward(self, x, scale, shift, s2, t2):
        a = self.rms(x) * (1 + scale) + shift  # per token: scale is (B, L, D)
        v = x.to(torch.float32).pow(2).mean(-1, keepdim=True)
        w = (x * torch.rsqrt(v + 1e-5)).to(self.weight.dtype) * self.weight
        b = w * (1 + scale) + shift
        c = F.layer_norm(x, (x.shape[-1],)) * (1 + s2)[:, None, :] + t2[:, None, :]
        return a, b, c


def test_patterns_as_diffusers_writes_them():
    for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 2e-2)):
        model = WrittenOut().to(dtype)
        x = torch.randn(2, 5, 16, dtype=dtype)
        args = (x, torch.randn(2, 5, 16, dtype=dtype), torch.randn(2, 5, 16, dtype=dtype),
                torch.randn(2, 16, dtype=dtype), torch.randn(2, 16, dtype=dtype))
        with torch.no_grad():
            want = model(*args)
            torch._dynamo.reset()
            report = acc.accelerate(Pipe(model), kernels=True, compile=False, attention=False)
            got = model(*args)
        assert {k: v for k, v in report.replaced.items() if v} == {"adaln": 3}, report.text()
        for g, w in zip(got, want):
            assert g.dtype == w.dtype
            torch.testing.assert_close(g, w, atol=tol, rtol=tol)
        acc.reset(Pipe(model))
