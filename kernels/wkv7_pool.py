"""RWKV-7 state update, in place, on a preallocated pool of recurrent states.

``pool`` is a float32 tensor [slots, layers, H, N(value), N(key)]: the same [value, key] layout per head
as ``model.wkv``'s state [B, H, N, N]. A step batch names, per series, the slot that holds its state;
the kernel reads that slot's matrix for one layer, runs T steps and writes it back where it was, so
there is no gather of the batch's states into a temporary and no scatter back.

Design (what makes it fast on a GPU):

* One program per (series, head, block of BLOCK_V value rows). Given the step's vectors w, k, a, b
  (all over the key dimension) the rows of S evolve independently:
  ``S_t[i] = S_{t-1}[i] * exp(w_t) + (S_{t-1}[i] . a_t) b_t + v_t[i] k_t``, ``o_t[i] = S_t[i] . r_t``.
  So a program needs only its own BLOCK_V x N tile and no communication with other programs.
* The tile stays in registers across all T steps: the state is read from the pool once and written
  back once per call, whatever T is. Decode (T = 1) is then a pure streaming pass over the state
  (2 x 4 N^2 bytes per head) and should run near the copy bandwidth; prefill reads and writes the
  state once for the whole chunk and is bound by the per-step vector loads and the two reductions.
* BLOCK_V rows per program: N / BLOCK_V programs per head. Pinned at 64 rows and 4 warps (for N = 64
  the whole head, a 64 x 64 fp32 tile, 32 registers per thread): the fastest of the sweep
  (bench/kernels.py --sweep; figures in bench/RESULTS.md).
* The next step's vectors are loaded before this step's arithmetic (software pipelining by hand), so
  their latency overlaps the dependent chain (bench/RESULTS.md, "Moved from code comments").
* The output is not pre-zeroed: the kernel writes zeros for steps past a series' length itself, so
  a call is one kernel, with no memset before it. Without lengths no lengths array is built.
* Both reductions (S a and S r) are ``tl.sum`` over the full key axis of a fixed-shape tile, no atomics,
  and the launch configuration is pinned (no autotune). A series' result depends only on its own
  inputs and state: it is bit-identical whether it runs alone or in a batch, in any slot.

Slots in one call must be distinct (two programs writing the same slot would race).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# Pinned launch configuration: one config for all batch sizes and step counts keeps results bit-identical
# however the steps are batched or chunked. (For N < BLOCK_V the block is N rows.)
BLOCK_V = 64
NUM_WARPS = 4


@triton.jit
def _load_step(w_ptr, k_ptr, a_ptr, b_ptr, r_ptr, v_ptr, off, cols, rows, mask):
    """One step's vectors at offset `off` (w, k, a, b, r over keys; v over this tile's values)."""
    return (tl.load(w_ptr + off + cols, mask=mask, other=0.0),
            tl.load(k_ptr + off + cols, mask=mask, other=0.0),
            tl.load(a_ptr + off + cols, mask=mask, other=0.0),
            tl.load(b_ptr + off + cols, mask=mask, other=0.0),
            tl.load(r_ptr + off + cols, mask=mask, other=0.0),
            tl.load(v_ptr + off + rows, mask=mask, other=0.0))


@triton.jit
def _wkv7_pool_kernel(
    r_ptr, w_ptr, k_ptr, v_ptr, a_ptr, b_ptr, o_ptr,
    pool_ptr, slots_ptr, lengths_ptr,
    layer, T,
    stride_xb, stride_xt, stride_xh,
    stride_ps, stride_pl, stride_ph, stride_pv,
    N: tl.constexpr, BLOCK_V: tl.constexpr, PREFETCH: tl.constexpr, HAS_LENGTHS: tl.constexpr,
):
    pid_b = tl.program_id(0).to(tl.int64)
    pid_h = tl.program_id(1).to(tl.int64)
    pid_v = tl.program_id(2)

    rows = pid_v * BLOCK_V + tl.arange(0, BLOCK_V)  # value index, this program's tile
    cols = tl.arange(0, N)                          # key index

    if HAS_LENGTHS:
        n_steps = tl.minimum(tl.load(lengths_ptr + pid_b).to(tl.int32), T)
    else:
        n_steps = T
    live = n_steps > 0
    slot = tl.load(slots_ptr + pid_b).to(tl.int64)

    s_ptrs = (pool_ptr + slot * stride_ps + layer * stride_pl + pid_h * stride_ph
              + rows[:, None].to(tl.int64) * stride_pv + cols[None, :])
    s = tl.load(s_ptrs, mask=live, other=0.0)

    x_base = pid_b * stride_xb + pid_h * stride_xh
    w, k, a, b, r, v = _load_step(w_ptr, k_ptr, a_ptr, b_ptr, r_ptr, v_ptr, x_base, cols, rows, live)
    # A while loop to the series' own length: the valid steps are a prefix, so steps past it are
    # not computed (their outputs are written as zeros below). (A `for` over a
    # runtime bound does not run under Triton 3.6's interpreter with NumPy >= 2.4.)
    # With PREFETCH the next step's vectors are loaded before this step's arithmetic, so their memory
    # latency overlaps the dependent chain (reduce, update, reduce) instead of adding to it each step;
    # Triton does not software-pipeline a while loop by itself.
    # (No straight-line T = 1 path: it would not be bit-equal to one pass of this loop at 64 rows x
    # 4 warps, which would make results depend on the batch; bench/RESULTS.md.)
    t = 0
    while t < n_steps:
        off = x_base + t * stride_xt
        if PREFETCH:
            nxt = off + stride_xt
            w_n, k_n, a_n, b_n, r_n, v_n = _load_step(w_ptr, k_ptr, a_ptr, b_ptr, r_ptr, v_ptr, nxt,
                                                      cols, rows, t + 1 < n_steps)
        else:
            w, k, a, b, r, v = _load_step(w_ptr, k_ptr, a_ptr, b_ptr, r_ptr, v_ptr, off, cols, rows,
                                          True)
        sa = tl.sum(s * a[None, :], axis=1)
        s = s * tl.exp(w)[None, :] + sa[:, None] * b[None, :] + v[:, None] * k[None, :]
        o = tl.sum(s * r[None, :], axis=1)
        tl.store(o_ptr + off + rows, o)
        if PREFETCH:
            w, k, a, b, r, v = w_n, k_n, a_n, b_n, r_n, v_n
        t += 1
    while t < T:  # steps past the series' length: zeros (the output is not pre-zeroed: no memset)
        tl.store(o_ptr + x_base + t * stride_xt + rows, tl.zeros((BLOCK_V,), dtype=tl.float32))
        t += 1

    tl.store(s_ptrs, s, mask=live)


def wkv7_pool_step(r: torch.Tensor, w: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                   a: torch.Tensor, b: torch.Tensor, pool: torch.Tensor, slots: torch.Tensor,
                   layer: int, lengths: torch.Tensor | None = None, *,
                   block_v: int = BLOCK_V, num_warps: int = NUM_WARPS,
                   prefetch: bool = True) -> torch.Tensor:
    """Run T steps of RWKV-7 for B series whose states live in ``pool[slots, layer]``, in place.

    r, w, k, v, a, b: float32 [B, T, H, N] (w is the log-decay, <= 0); pool: float32
    [slots, layers, H, N, N], last dim contiguous; slots: int [B], distinct; layer: int;
    lengths: int [B], valid steps per series (the first lengths[i] steps; 0 leaves that state alone;
    None means all T). Returns o [B, T, H, N]; outputs of steps past a series' length are zero.
    block_v, num_warps, prefetch: launch configuration, for benchmarks only; keep the defaults in the
    service, since results are reproducible bit for bit only under one fixed configuration.

    Equal (to float32 rounding) to ``model.wkv.wkv7_recurrent`` on ``pool[slots, layer]`` with
    ``valid = arange(T) < lengths[:, None]``, whose final state is written back into the pool.
    """
    if r.dim() != 4:
        raise ValueError(f"r must be [B, T, H, N], got {tuple(r.shape)}")
    bsz, t, h, n = r.shape
    for name, x in (("w", w), ("k", k), ("v", v), ("a", a), ("b", b)):
        if x.shape != r.shape:
            raise ValueError(f"{name} has shape {tuple(x.shape)}, expected {tuple(r.shape)}")
    xs = [x.contiguous() for x in (r, w, k, v, a, b)]
    if any(x.dtype != torch.float32 for x in xs) or pool.dtype != torch.float32:
        raise TypeError("wkv7_pool_step works in float32 only")
    if pool.dim() != 5 or tuple(pool.shape[2:]) != (h, n, n):
        raise ValueError(f"pool must be [slots, layers, {h}, {n}, {n}], got {tuple(pool.shape)}")
    if pool.stride(4) != 1:
        raise ValueError("pool's last dimension must be contiguous")
    if not 0 <= layer < pool.shape[1]:
        raise IndexError(f"layer {layer} out of range for {pool.shape[1]} layers")
    if n & (n - 1) or n < 16 or block_v & (block_v - 1):
        raise ValueError(f"head size must be a power of two >= 16, got {n} (block_v {block_v})")
    block_v = min(block_v, n)
    if slots.shape != (bsz,):
        raise ValueError(f"slots must be [{bsz}], got {tuple(slots.shape)}")
    if lengths is not None and lengths.shape != (bsz,):
        raise ValueError(f"lengths must be [{bsz}], got {tuple(lengths.shape)}")
    devices = {x.device for x in (*xs, pool, slots, *(() if lengths is None else (lengths,)))}
    if len(devices) != 1:
        raise ValueError(f"all tensors must be on one device, got {devices}")
    slots = slots.to(torch.int64).contiguous()
    has_lengths = lengths is not None  # (None: every series runs all T steps, no lengths array)
    lengths = lengths.to(torch.int32).contiguous() if has_lengths else slots

    o = torch.empty_like(xs[0])  # every element is written by the kernel
    if bsz == 0 or t == 0:
        return o
    grid = (bsz, h, n // block_v)
    _wkv7_pool_kernel[grid](
        *xs, o, pool, slots, lengths,
        layer, t,
        xs[0].stride(0), xs[0].stride(1), xs[0].stride(2),
        pool.stride(0), pool.stride(1), pool.stride(2), pool.stride(3),
        N=n, BLOCK_V=block_v, PREFETCH=prefetch, HAS_LENGTHS=has_lengths, num_warps=num_warps,
    )
    return o
