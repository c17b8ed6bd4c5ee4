import pytest
import torch
from _check import DTYPES, PRIMES, assert_close, compiled_matches, nan_like, shapes, triton_required

from kernels import glu

# tanh is 2 * sigmoid(2u) - 1; for u < -44 numpy's exp overflows to inf inside the
# interpreter (the result, 1 / (1 + inf) = 0, is right; CUDA's exp saturates silently).
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("activation", glu.ACTIVATIONS)
def test_matches_reference(dtype, activation):
    triton_required()
    for b, l, f in shapes(5, 6, lambda r: (r.choice([1, 2, 3]), r.choice(PRIMES), r.choice([1, 7, 37, 131, 2053]))):
        x = (torch.randn(b, l, 2 * f) * 3).to(dtype)
        out = glu.launch(x, activation, out=nan_like(x, (b, l, f)))
        assert_close(out, glu.reference(x, activation), dtype, f"glu{(b, l, 2 * f)} {dtype} {activation}")


def test_reference_is_diffusers_geglu():
    from diffusers.models.activations import GEGLU

    layer = GEGLU(16, 24)
    x = torch.randn(2, 7, 16)
    with torch.no_grad():
        torch.testing.assert_close(torch.ops.farm.glu(layer.proj(x), "gelu"), layer(x), atol=1e-6, rtol=1e-5)


def test_traces_under_compile_fullgraph():
    compiled_matches(lambda x: torch.ops.farm.glu(x + 1, "silu") * 2, torch.randn(3, 5, 22))
