"""The block's last launch (kernels/block_out.py: o_proj + residual, then the channel mix through
LayerNorm 2 + residual) against float64 and against the two grouped linears it replaces."""

from __future__ import annotations

import pytest
import torch

from kernels import block_out, fused
from kernels.settings import KernelSettings
from tests.conftest import rel_err

pytestmark = pytest.mark.gpu  # the Triton kernels (under TRITON_INTERPRET=1 on a CPU)

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BM = KernelSettings.from_env().block_m  # the row tile block_out launches with (RIMER_LINEAR_BLOCK_M)


def inputs(m: int, d: int, seed: int):
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0, shift=0.0):
        return (shift + scale * torch.randn(*shape, generator=g)).to(DEVICE)

    return (rnd(m, d), rnd(m, d, shift=0.5), rnd(d, d, scale=d ** -0.5), rnd(d, d, scale=d ** -0.5),
            rnd(d, scale=0.1), rnd(d, scale=0.2, shift=1.0), rnd(d, scale=0.2))


@pytest.mark.parametrize("d", [32, 80])  # under one column block, and over one with a partial one
def test_block_out_matches_float64_and_the_two_launches_it_replaces(d):
    m = BM + 5  # two row tiles, the second mostly padding
    o, h, wo, wf, bf, lw, lb = inputs(m, d, d)
    got = block_out.block_out(o, h, wo, wf, bf, lw, lb, 1e-5)
    want = block_out.block_out_reference(*(x.double() for x in (o, h, wo, wf, bf, lw, lb)), 1e-5)
    assert rel_err(got, want) <= 1e-5
    o_proj = fused.pack_groups([(wo, None, (0, 0), None)], d, DEVICE)
    ffn = fused.pack_groups([(wf, bf, (0, 0), None)], d, DEVICE)
    h2 = fused.grouped_linear(o, o_proj, residual=h, n=d)
    two = fused.grouped_linear(h2, ffn, residual=h2, n=d, ln=fused.LayerNormIn(lw, lb, 1e-5))
    if DEVICE == "cpu":  # the same sums in the same order: the same bits
        assert torch.equal(got, two)
    else:  # (another kernel: the compiler may schedule the tensor-core products otherwise)
        assert rel_err(got, two) <= 1e-6


def test_block_out_rows_do_not_depend_on_the_batch():
    d = 48
    o, h, *weights = inputs(2 * BM + 3, d, 7)
    got = block_out.block_out(o, h, *weights, 1e-5)
    bm = BM
    for lo, hi in ((0, 1), (bm - 1, bm + 2), (2 * bm + 2, 2 * bm + 3)):  # alone, across tiles, last
        part = block_out.block_out(o[lo:hi].contiguous(), h[lo:hi].contiguous(), *weights, 1e-5)
        assert torch.equal(part, got[lo:hi])
    assert block_out.block_out(o[:0], h[:0], *weights, 1e-5).shape == (0, d)


def test_block_out_refuses_misshapen_inputs_by_name():
    o, h, wo, wf, bf, lw, lb = inputs(3, 32, 1)
    with pytest.raises(ValueError, match="ffn_bias"):
        block_out.block_out(o, h, wo, wf, bf[:16], lw, lb, 1e-5)
    with pytest.raises(ValueError, match="contiguous o and h"):
        block_out.block_out(o.t(), h, wo, wf, bf, lw, lb, 1e-5)
