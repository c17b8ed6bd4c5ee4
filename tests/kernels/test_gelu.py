import pytest
import torch
from _check import DTYPES, PRIMES, assert_close, compiled_matches, nan_like, shapes, triton_required

from kernels import gelu


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("approximate", ["tanh", "none"])
def test_matches_reference(dtype, approximate):
    triton_required()
    for shape in shapes(4, 6, lambda r: (r.choice(PRIMES), r.choice(PRIMES), r.choice([1, 7, 131, 1031]))):
        x = (torch.randn(shape) * 4).to(dtype)  # +-12: both tails, where tanh saturates
        out = gelu.launch(x, approximate, out=nan_like(x))
        assert_close(out, gelu.reference(x, approximate), dtype, f"gelu{shape} {dtype} {approximate}")


def test_reference_is_torch_gelu():
    x = torch.randn(3, 17)
    torch.testing.assert_close(torch.ops.farm.gelu(x, "tanh"), torch.nn.functional.gelu(x, approximate="tanh"))


def test_traces_under_compile_fullgraph():
    compiled_matches(lambda x: torch.ops.farm.gelu(x * 3, "tanh") + x, torch.randn(5, 11))
