"""The end of a block in one launch: o_proj + residual, then the channel-mix linear reading through
LayerNorm 2, + residual, beside its plain PyTorch reference.

In kernels/fused.py these are two grouped linears (launches 3 and 4 of a block). A one-row step
pays each launch's latency and dependent loads in full, so here one program owns a tile of rows and
all of their D columns: it writes the o_proj sum (h mid) for its rows, waits for its own threads
(``tl.debug_barrier``), takes those rows' LayerNorm statistics, and computes the channel mix for
every column block. The arithmetic is the two linears' own, in the same order (``matmul_tile``'s
sums over K in blocks of BLOCK_K, ``_row_stats``' two passes, bias then residual), so a row's bits
depend on that row alone, and a block is three launches instead of four. In the one-patch step
the last block's launch also runs the step's epilogue (kernels/step_io.py: the head, the
de-normalisation and the pool's small fields), once its rows are final: one launch fewer again.
Every program reads each of its rows' h mid once per output block: from cache, D / BLOCK_N times.

With `KernelSettings.fuse_out` off (RIMER_FUSE_OUT=0 by default; kernels/settings.py) the pool
runner keeps the two launches, for the benchmark's comparison.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from kernels import step_io
from kernels.fused import BLOCK_K, BLOCK_N, _ln_tile, _row_stats
from kernels.linear import PRECISION, USE_DOT, matmul_tile
from kernels.pdl import wait_then_release
from kernels.settings import KernelSettings, or_default

# The row tile is the grouped linears' (settings.block_m), the warps pinned with it
# (settings.out_warps: where the compiler would spill).


@triton.jit
def _block_out_kernel(o_ptr, h_ptr, wo_ptr, wf_ptr, bf_ptr, lnw_ptr, lnb_ptr, eps, mid_ptr, y_ptr, M,
                      head_w_ptr, head_b_ptr, consts_ptr, counts_ptr, slots_ptr, stats_ptr,
                      new_tail_ptr, new_len_ptr, done_ptr, new_n_ptr,
                      next_patch_ptr, norm_ptr, n_patches_ptr, tail_ptr, tail_len_ptr,
                      D: tl.constexpr, PRECISION: tl.constexpr, USE_DOT: tl.constexpr,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                      HEAD: tl.constexpr, P: tl.constexpr, BLOCK_P: tl.constexpr, PDL: tl.constexpr):
    rm = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    rmask = rm < M
    wait_then_release(PDL)
    # 1. h mid = o Wo^T + h, every column block of this program's rows
    for n0 in range(0, D, BLOCK_N):  # (not unrolled: fewer tiles live, no spills)
        rn = n0 + tl.arange(0, BLOCK_N)
        acc = matmul_tile(o_ptr, D, wo_ptr, rm, rn, M, D, D, PRECISION, USE_DOT, BLOCK_M, BLOCK_N, BLOCK_K)
        at = rm[:, None] * D + rn[None, :]
        out_mask = rmask[:, None] & (rn < D)[None, :]
        acc += tl.load(h_ptr + at, mask=out_mask, other=0.0)
        tl.store(mid_ptr + at, acc, mask=out_mask)
    tl.debug_barrier()  # this program's writes of h mid, visible to all of its threads
    # 2. h mid + LayerNorm(h mid) Wf^T + bf, the input normalised on load
    mean, sd = _row_stats(mid_ptr, rm, D, rmask, eps, D, BLOCK_M, BLOCK_K)
    for n0 in range(0, D, BLOCK_N):  # (not unrolled: fewer tiles live, no spills)
        rn = n0 + tl.arange(0, BLOCK_N)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(0, D, BLOCK_K):
            rk = k0 + tl.arange(0, BLOCK_K)
            kmask = rk < D
            y, m2 = _ln_tile(mid_ptr, rm, D, rk, rmask, kmask, mean, sd, lnw_ptr, lnb_ptr)
            x = tl.where(m2, y, 0.0)
            w = tl.load(wf_ptr + rn[None, :] * D + rk[:, None], mask=(rn < D)[None, :] & kmask[:, None],
                        other=0.0)
            if USE_DOT:
                acc = tl.dot(x, w, acc, input_precision=PRECISION)
            else:
                acc += tl.sum(x[:, :, None] * w[None, :, :], axis=1)
        acc += tl.load(bf_ptr + rn, mask=rn < D, other=0.0)[None, :]
        at = rm[:, None] * D + rn[None, :]
        out_mask = rmask[:, None] & (rn < D)[None, :]
        acc += tl.load(mid_ptr + at, mask=out_mask, other=0.0)
        tl.store(y_ptr + at, acc, mask=out_mask)
    if HEAD:  # 3. the step's epilogue (kernels/step_io.py) on these rows, in the same launch
        tl.debug_barrier()  # this program's rows of y, visible to all of its threads
        rp = tl.arange(0, BLOCK_P)
        pm = rp < P
        pred = matmul_tile(y_ptr, D, head_w_ptr, rm, rp, M, P, D, PRECISION, USE_DOT, BLOCK_M, BLOCK_P,
                           BLOCK_K)
        pred += tl.load(head_b_ptr + rp, mask=pm, other=0.0)[None, :]
        slot = tl.load(slots_ptr + rm, mask=rmask, other=0).to(tl.int64)
        extend = rmask & (tl.load(counts_ptr + rm, mask=rmask, other=0) > 0)
        done = rmask & (tl.load(done_ptr + rm, mask=rmask, other=0) > 0)
        step_io._store_fields(rm, slot, extend, done, pred, rp, pm, consts_ptr, stats_ptr, new_tail_ptr,
                              new_len_ptr, new_n_ptr, next_patch_ptr, norm_ptr, n_patches_ptr, tail_ptr,
                              tail_len_ptr, P)


def block_out(o: torch.Tensor, h: torch.Tensor, o_weight: torch.Tensor, ffn_weight: torch.Tensor,
              ffn_bias: torch.Tensor, ln_weight: torch.Tensor, ln_bias: torch.Tensor, eps: float,
              epilogue: step_io.Epilogue | None = None,
              settings: KernelSettings | None = None) -> torch.Tensor:
    """o, h [M, D] (contiguous) -> h2 + LayerNorm(h2) Wf^T + bf with h2 = o Wo^T + h; every
    weight float32 and contiguous ([D, D] and [D]).

    epilogue: the one-patch step's last block (M = its B rows) also runs `step_io.epilogue` on the
    result, writing the pool's small fields, in the same launch (the head summed as a row-invariant
    tile product, so next_patch agrees with the separate epilogue to rounding). settings: the
    launch's row tile, warps and PDL (None: the environment's)."""
    settings = or_default(settings)
    m, d = o.shape
    if h.shape != (m, d) or not (o.is_contiguous() and h.is_contiguous()):
        raise ValueError("block_out needs contiguous o and h of one shape [M, D]")
    for name, w, shape in (("o_weight", o_weight, (d, d)), ("ffn_weight", ffn_weight, (d, d)),
                           ("ffn_bias", ffn_bias, (d,)), ("ln_weight", ln_weight, (d,)),
                           ("ln_bias", ln_bias, (d,))):
        if w.shape != shape or w.dtype != torch.float32 or not w.is_contiguous():
            raise ValueError(f"block_out: {name} must be a contiguous float32 {list(shape)}")
    y = torch.empty(m, d, device=h.device, dtype=torch.float32)
    p = 1
    if epilogue is not None:
        ep, pool, io = epilogue, epilogue.pool, epilogue.io
        p = ep.head_w.shape[0]
        if ep.head_w.shape != (p, d) or not ep.head_w.is_contiguous() or len(ep.slots) != m:
            raise ValueError(f"the epilogue needs a contiguous head [P, {d}] and one slot per row")
        if not (pool.next_patch.is_contiguous() and pool.tail.is_contiguous()):
            raise ValueError("the pool's next_patch and tail must be contiguous")
        head = (ep.head_w, ep.head_b, ep.consts, ep.counts, ep.slots, io.stats, io.tail, io.tail_len,
                io.done, io.n_patches, pool.next_patch, pool.norm, pool.n_patches, pool.tail, pool.tail_len)
    else:
        head = (y,) * 15  # (unused)
    if m:
        mid = torch.empty(m, d, device=h.device, dtype=torch.float32)
        _block_out_kernel[(triton.cdiv(m, settings.block_m),)](
            o, h, o_weight, ffn_weight, ffn_bias, ln_weight, ln_bias, eps, mid, y, m, *head, D=d,
            PRECISION=PRECISION, USE_DOT=USE_DOT, BLOCK_M=settings.block_m, BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K,
            HEAD=epilogue is not None, P=p, BLOCK_P=max(16, triton.next_power_of_2(p)),
            num_warps=settings.out_warps, **settings.launch)
    return y


def block_out_reference(o, h, o_weight, ffn_weight, ffn_bias, ln_weight, ln_bias, eps):
    h2 = F.linear(o, o_weight) + h
    return h2 + F.linear(F.layer_norm(h2, (h2.shape[1],), ln_weight, ln_bias, eps), ffn_weight, ffn_bias)
