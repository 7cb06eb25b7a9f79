"""A batch-invariant linear map y = x W^T + b in Triton, for the triton backend's model step.

cuBLAS (and MKL on the CPU) pick a different algorithm, and so a different order of the sums over
the input dimension, for different numbers of rows; a series' output would then depend on how many
other series share its step. Here every output element is a sum over K in blocks of BLOCK_K, in the
same order for every row and every batch size, and the tile sizes are pinned (not autotuned): a row's
result depends on that row alone, bit for bit. (N and K are compile-time constants: a model has a
few shapes, and the interpreter cannot loop to a runtime bound.) On the GPU the products use
``tf32x3`` (three TF32 tensor-core products, about float32 accuracy; an MMA computes each output row
from that row alone).
Under the interpreter (CPU tests) ``tl.dot`` is NumPy's matmul, whose result for a row depends on its
position in the tile, so there the products are summed explicitly (slow, and invariant).

An activation (tanh or sigmoid, the LoRAs') can be applied in the epilogue: besides saving a pass over
memory this keeps it batch-invariant on the CPU too, where PyTorch computes transcendental functions
with vector code for whole vectors and scalar code for the remainder, which differ in the last bit.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

BLOCK_M, BLOCK_N, BLOCK_K = 64, 64, 32
NUM_WARPS = 4
PRECISION = "tf32x3"
# tl.dot, or an explicit sum under the interpreter (NumPy's matmul is not row-invariant). Fixed at
# import, unlike the launch settings (kernels/settings.py): it follows TRITON_INTERPRET, which must be
# set before Triton is imported (kernels/__init__ sets it before importing us) and cannot change after.
USE_DOT = os.environ.get("TRITON_INTERPRET") != "1"
ACTIVATIONS = {None: 0, "tanh": 1, "sigmoid": 2}


@triton.jit
def matmul_tile(x_ptr, stride_xm, w_ptr, rm, rn, M, N, K: tl.constexpr, PRECISION: tl.constexpr,
                USE_DOT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                BLOCK_K: tl.constexpr):
    """One output tile of x W^T (rows rm of x, with row stride stride_xm; rows rn of W [N, K]),
    summed over K in blocks of BLOCK_K in the same order for every row: row-invariant."""
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)
        x = tl.load(x_ptr + rm[:, None] * stride_xm + rk[None, :],
                    mask=(rm[:, None] < M) & (rk[None, :] < K), other=0.0)
        w = tl.load(w_ptr + rn[None, :] * K + rk[:, None], mask=(rn[None, :] < N) & (rk[:, None] < K),
                    other=0.0)
        if USE_DOT:
            acc = tl.dot(x, w, acc, input_precision=PRECISION)
        else:
            acc += tl.sum(x[:, :, None] * w[None, :, :], axis=1)
    return acc


@triton.jit
def _linear_kernel(x_ptr, w_ptr, b_ptr, y_ptr, M, N: tl.constexpr, K: tl.constexpr,
                   HAS_BIAS: tl.constexpr, ACT: tl.constexpr, PRECISION: tl.constexpr,
                   USE_DOT: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_m = tl.program_id(0).to(tl.int64)
    pid_n = tl.program_id(1)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = matmul_tile(x_ptr, K, w_ptr, rm, rn, M, N, K, PRECISION, USE_DOT, BLOCK_M, BLOCK_N, BLOCK_K)
    if HAS_BIAS:
        acc += tl.load(b_ptr + rn, mask=rn < N, other=0.0)[None, :]
    if ACT == 1:  # tanh(x) = 2 sigmoid(2x) - 1
        acc = 2.0 / (1.0 + tl.exp(-2.0 * acc)) - 1.0
    elif ACT == 2:
        acc = 1.0 / (1.0 + tl.exp(-acc))
    tl.store(y_ptr + rm[:, None] * N + rn[None, :], acc, mask=(rm[:, None] < M) & (rn[None, :] < N))


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
           activation: str | None = None) -> torch.Tensor:
    """``activation(torch.nn.functional.linear(x, weight, bias))`` for float32 (activation None,
    "tanh" or "sigmoid"), with results independent of the other rows."""
    *lead, k = x.shape
    n = weight.shape[0]
    if weight.shape != (n, k) or x.dtype != torch.float32 or weight.dtype != torch.float32:
        raise ValueError(f"linear: x {tuple(x.shape)} {x.dtype}, weight {tuple(weight.shape)} {weight.dtype}")
    x2 = x.reshape(-1, k).contiguous()
    m = x2.shape[0]
    y = torch.empty(m, n, device=x.device, dtype=torch.float32)
    if m:
        grid = (triton.cdiv(m, BLOCK_M), triton.cdiv(n, BLOCK_N))
        _linear_kernel[grid](x2, weight.contiguous(), bias if bias is not None else weight, y, m, n, k,
                             HAS_BIAS=bias is not None, ACT=ACTIVATIONS[activation], PRECISION=PRECISION,
                             USE_DOT=USE_DOT,
                             BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K, num_warps=NUM_WARPS)
    return y.view(*lead, n)
