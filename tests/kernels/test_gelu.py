import pytest
import torch
from _check import DTYPES, PRIMES, assert_close, compiled_matches, nan_like, shapes, triton_required

from kernels import gelu

# tanh is 2 * sigmoid(2u) - 1; for u < -44 numpy's exp overflows to inf inside the
# interpreter (the result, 1 / (1 + inf) = 0, is right; CUDA's exp saturates silently).
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning")


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
