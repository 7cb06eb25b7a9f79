"""The batch-invariant Triton linear map (kernels/linear.py) against torch.nn.functional.linear."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kernels import linear
from tests.conftest import rel_err

pytestmark = pytest.mark.gpu  # the Triton kernels (under TRITON_INTERPRET=1 on a CPU)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("activation", [None, "tanh", "sigmoid"])
def test_matches_torch(activation):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 40, generator=g).to(DEVICE)
    w = torch.randn(70, 40, generator=g).to(DEVICE) / 6
    b = torch.randn(70, generator=g).to(DEVICE)
    want = F.linear(x.double(), w.double(), b.double())
    want = {None: want, "tanh": torch.tanh(want), "sigmoid": torch.sigmoid(want)}[activation]
    got = linear(x, w, b, activation)
    assert got.shape == (3, 5, 70) and rel_err(got, want) <= 1e-5
    assert rel_err(linear(x, w), F.linear(x.double(), w.double())) <= 1e-5


def test_rows_do_not_depend_on_the_batch():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(150, 24, generator=g).to(DEVICE)
    w = torch.randn(16, 24, generator=g).to(DEVICE)
    full = linear(x, w, None, "sigmoid")
    for lo, hi in ((0, 1), (7, 8), (63, 65), (100, 150)):
        assert torch.equal(linear(x[lo:hi], w, None, "sigmoid"), full[lo:hi])
    assert linear(x[:0], w).shape == (0, 16)
