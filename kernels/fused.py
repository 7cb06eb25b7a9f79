"""Fused kernels for the triton backend's block step, each beside its plain PyTorch reference.

(Why ~590 lines: each kernel sits beside the reference it is tested against, as in
flash-linear-attention's fla/ops; the three share the LayerNorm-on-load helper.)

A Rimer block step on the GPU used to be a few hundred small kernels (element-wise passes over the
[B, D] activations between linear maps). Here one block is four launches (three with 3 and 4 in
one, kernels/block_out.py, the default):

1. ``grouped_linear`` of the six interpolations: r, k, v and the four LoRA down maps (with their
   tanh / sigmoid) in one launch; every block of BLOCK_N output columns names its input plane. The
   planes are computed on load (``LayerNormIn``): LayerNorm 1 of the block's input rows, the token
   shift (the previous row's LayerNorm output, or the stored shift for a chunk's first patch) and
   RWKV-7's interpolation for that plane (0: the LayerNorm output; 1..6: xr, xw, xk, xv, xa, xg).
   In the one-patch pool step (``keep``) the first column block also writes the LayerNorm output
   into the pool's token shift at each series' slot, so no gather or scatter of it is left around.
   The four LoRA up maps run in the same launch (``down_up``): each LoRA's down map is one column
   block, whose program applies the up map to it from registers.
2. ``wkv7_fused_step``: one program per (series, head) with the whole head's state in registers:
   decay, in-context rate, kk = l2-normalise(k k_k), k = k (1 + (a - 1) k_a), the v_first mix, the
   recurrence, then GroupNorm per head, the bonus sum(r k r_k) v and the gate.
3. ``grouped_linear`` (o_proj) with the residual added in the epilogue.
4. ``grouped_linear`` (the channel-mix linear, bias) reading through LayerNorm 2, with the residual.

``ln_mix`` computes the same planes in a launch of its own ([7, M, D] in memory); with
``KernelSettings.fuse_ln`` off (RIMER_FUSE_LN=0; kernels/settings.py) the block uses it for both
LayerNorms and launches the up maps separately (seven launches), for comparison. (A model whose LoRA
ranks exceed BLOCK_N launches its up maps apart.)

Every reduction is a ``tl.sum`` over a fixed-shape tile inside one program (a row, or a head of one
series), and launch configurations are pinned: a series' results depend on that series alone, bit
for bit, whatever the batch and whichever slot it is in. Without CUDA they run under Triton's
interpreter (kernels/__init__ sets TRITON_INTERPRET=1); there ``tl.dot`` is replaced by an explicit
sum (NumPy's matmul is not row-invariant).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from kernels.linear import ACTIVATIONS, PRECISION, USE_DOT, matmul_tile
from kernels.pdl import wait_then_release
from kernels.settings import KernelSettings, or_default

# Launch settings come from a `KernelSettings` (kernels/settings.py; the environment's when none is
# given). settings.block_m: the grouped linears' row tile (16, 32 or 64), pinned per runner since a
# row's bits are promised under one configuration; the GPU benchmark times the whole step with each
# (a one-row step pays for the tile's padding rows; bench/gpu_check.sh). settings.fuse_ln: the
# block's LayerNorms inside the linear maps that read them (LayerNormIn) and the LoRA up maps in the
# down map's launch (down_up; runtime.pool.PoolStep), or as launches of their own. settings.wkv_warps:
# warps of the recurrence kernel (one program per series and head of 64), 4 or 8: at 4 the compiler
# spills about 440 bytes per thread for a 64 x 64 head (bench/compile_check.py); at 8 it does not, at
# twice the threads per program.
BLOCK_N, BLOCK_K = 64, 32
LINEAR_WARPS = 4
LN_ROWS = 8  # rows per program of ln_mix
ACT = ACTIVATIONS
DECAY_SCALE = math.exp(-0.5)  # w = -exp(-0.5) sigmoid(w_lora): log-decay in [-0.607, 0]


# ---- LayerNorm + token shift + interpolations as a launch of its own (RIMER_FUSE_LN=0) -----------

@triton.jit
def _ln_mix_kernel(h_ptr, shift_ptr, lw_ptr, lb_ptr, mix_ptr, out_ptr, M, T, stride_shift, stride_plane,
                   eps, keep_ptr, keep_slots_ptr, keep_flags_ptr, stride_keep,
                   D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_R: tl.constexpr, N_MIX: tl.constexpr,
                   KEEP: tl.constexpr, PDL: tl.constexpr):
    # BLOCK_R rows per program; each row's statistics are a sum over its own BLOCK_D lanes.
    # (Helpers are written out inline: a @triton.jit call costs much time under the interpreter.)
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.arange(0, BLOCK_D)
    rmask = rows < M
    m = rmask[:, None] & (cols < D)[None, :]
    lw = tl.load(lw_ptr + cols, mask=cols < D, other=0.0)[None, :]  # weights: before the wait
    lb = tl.load(lb_ptr + cols, mask=cols < D, other=0.0)[None, :]
    wait_then_release(PDL)
    x = tl.load(h_ptr + rows[:, None] * D + cols[None, :], mask=m, other=0.0)
    mean = tl.sum(x, axis=1) / D
    xc = tl.where(m, x - mean[:, None], 0.0)
    var = tl.sum(xc * xc, axis=1) / D
    y = xc / tl.sqrt(var + eps)[:, None] * lw + lb
    tl.store(out_ptr + rows[:, None] * D + cols[None, :], y, mask=m)
    if KEEP:  # (T = 1) the LayerNorm output is the series' next token shift: into the pool at its slot
        slot = tl.load(keep_slots_ptr + rows, mask=rmask, other=0).to(tl.int64)
        flag = tl.load(keep_flags_ptr + rows, mask=rmask, other=0) > 0
        tl.store(keep_ptr + slot[:, None] * stride_keep + cols[None, :], y, mask=m & flag[:, None])
    if N_MIX > 0:
        # the previous row's LayerNorm output, computed here again, or the stored shift at t = 0
        prev = tl.maximum(rows - 1, 0)
        xp = tl.load(h_ptr + prev[:, None] * D + cols[None, :], mask=m, other=0.0)
        mean_p = tl.sum(xp, axis=1) / D
        xpc = tl.where(m, xp - mean_p[:, None], 0.0)
        var_p = tl.sum(xpc * xpc, axis=1) / D
        yp = xpc / tl.sqrt(var_p + eps)[:, None] * lw + lb
        sh = tl.load(shift_ptr + (rows // T)[:, None] * stride_shift + cols[None, :], mask=m, other=0.0)
        yp = tl.where(((rows % T) == 0)[:, None], sh, yp)
        for j in tl.static_range(N_MIX):
            mj = tl.load(mix_ptr + j * D + cols, mask=cols < D, other=0.0)[None, :]
            tl.store(out_ptr + (j + 1) * stride_plane + rows[:, None] * D + cols[None, :], y + (yp - y) * mj,
                     mask=m)


def ln_mix(h: torch.Tensor, shift: torch.Tensor | None, t: int, weight: torch.Tensor,
           bias: torch.Tensor, eps: float, mix: torch.Tensor | None = None,
           keep: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
           settings: KernelSettings | None = None) -> torch.Tensor:
    """h [M = B T, D] rows (series-major), shift [B, D] (row stride free), mix [n, D] -> [1 + n, M, D]:
    plane 0 = LayerNorm(h), plane 1 + j = y + (y_prev - y) mix[j], y_prev the previous row's
    LayerNorm output within a series (shift[b] for t = 0). mix None: LayerNorm only ([1, M, D]).

    keep = (dest [slots, D] (row stride free), slots [B], flags [B]), only with t = 1: plane 0's row b is
    also written to dest[slots[b]] where flags[b] > 0 (the pool's token shift of one layer; rows with
    flag 0 may repeat a slot). dest must not be `shift`'s memory."""
    m, d = h.shape
    n_mix = 0 if mix is None else mix.shape[0]
    h = h.contiguous()
    out = torch.empty(1 + n_mix, m, d, device=h.device, dtype=torch.float32)
    _check_shift_keep(shift, t, keep)
    if m:
        if shift is None:
            shift = h  # unused
        dest, slots, flags = keep if keep is not None else (h, h, h)  # (unused without keep)
        _ln_mix_kernel[(triton.cdiv(m, LN_ROWS),)](
            h, shift, weight, bias, weight if mix is None else mix.contiguous(), out, m, t, shift.stride(0),
            out.stride(0), eps, dest, slots, flags, dest.stride(0), D=d, BLOCK_D=triton.next_power_of_2(d),
            BLOCK_R=LN_ROWS, N_MIX=n_mix, KEEP=keep is not None, num_warps=4, **or_default(settings).launch)
    return out


def _check_shift_keep(shift, t: int, keep) -> None:
    """What ln_mix and LayerNormIn need of the token shift and of `keep` (the shift's pool rows)."""
    if keep is not None and (t != 1 or keep[0].stride(-1) != 1):
        raise ValueError("keep needs one row per series (t = 1) and dest's rows contiguous")
    if shift is not None and shift.stride(-1) != 1:
        raise ValueError("shift's last dimension must be contiguous")


def ln_mix_reference(h, shift, t, weight, bias, eps, mix=None, keep=None):
    m, d = h.shape
    y = F.layer_norm(h, (d,), weight, bias, eps)
    if keep is not None:
        dest, slots, flags = keep
        dest[slots[flags > 0]] = y[flags > 0].to(dest.dtype)
    if mix is None:
        return y[None]
    y3 = y.view(m // t, t, d)
    prev = torch.cat([shift[:, None], y3[:, :-1]], dim=1).reshape(m, d)
    return torch.cat([y[None], y[None] + (prev[None] - y[None]) * mix[:, None]])


# ---- 1, 3, 4. Grouped, row-invariant linear maps (and ln_mix's planes on load) -------------------

@triton.jit
def _row_stats(x_ptr, rows, stride_xm, rmask, eps, K: tl.constexpr, BLOCK_M: tl.constexpr,
               BLOCK_K: tl.constexpr):
    """LayerNorm statistics (mean, sqrt(var + eps)) of rows [BLOCK_M] of x [*, K], summed in blocks
    of BLOCK_K, in two passes. (Loops, not unrolled: unrolled, the compiler keeps every block's loads
    live across them, and spills.)"""
    s = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)
        m2 = rmask[:, None] & (rk < K)[None, :]
        s += tl.sum(tl.load(x_ptr + rows[:, None] * stride_xm + rk[None, :], mask=m2, other=0.0), axis=1)
    mean = s / K
    q = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)
        m2 = rmask[:, None] & (rk < K)[None, :]
        xc = tl.where(m2, tl.load(x_ptr + rows[:, None] * stride_xm + rk[None, :], mask=m2, other=0.0)
                      - mean[:, None], 0.0)
        q += tl.sum(xc * xc, axis=1)
    return mean, tl.sqrt(q / K + eps)


@triton.jit
def _ln_tile(x_ptr, rows, stride_xm, rk, rmask, kmask, mean, sd, lnw_ptr, lnb_ptr):
    """LayerNorm(x)[rows, rk] from its rows' statistics (`_row_stats`): a [rows, BLOCK_K] tile, and
    its mask. (Masked lanes hold the bias; callers that sum over them mask them out.)"""
    m2 = rmask[:, None] & kmask[None, :]
    lw = tl.load(lnw_ptr + rk, mask=kmask, other=0.0)[None, :]
    lb = tl.load(lnb_ptr + rk, mask=kmask, other=0.0)[None, :]
    xc = tl.where(m2, tl.load(x_ptr + rows[:, None] * stride_xm + rk[None, :], mask=m2, other=0.0)
                  - mean[:, None], 0.0)
    return xc / sd[:, None] * lw + lb, m2


# Long (~90 lines): a Triton kernel is one function (the prologue, the tiled product and the
# epilogues share registers); its pieces are named by the comments inside.
@triton.jit
def _grouped_linear_kernel(x_ptr, w_ptr, b_ptr, res_ptr, y_ptr, plane_ptr, col_ptr, act_ptr, M, N,
                           stride_xp, stride_xm, stride_ym, stride_rm,
                           lnw_ptr, lnb_ptr, eps, shift_ptr, stride_shift, T, mix_ptr, ln_out_ptr,
                           keep_ptr, keep_slots_ptr, keep_flags_ptr, stride_keep,
                           up_row_ptr, up_w_ptr, up_b_ptr, u_ptr, stride_um,
                           K: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_RES: tl.constexpr,
                           UP: tl.constexpr, N_UP: tl.constexpr,
                           LN: tl.constexpr, SHIFT_ONLY: tl.constexpr, WRITE_LN: tl.constexpr,
                           KEEP: tl.constexpr, PRECISION: tl.constexpr, USE_DOT: tl.constexpr,
                           BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                           PDL: tl.constexpr):
    pid_m = tl.program_id(0).to(tl.int64)
    pid_n = tl.program_id(1)
    # The group table and the bias are the model's: read before the wait (see wait_then_release).
    plane = tl.load(plane_ptr + pid_n)
    xoff = plane * stride_xp + tl.load(col_ptr + pid_n)  # this block's input
    act = tl.load(act_ptr + pid_n)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    if HAS_BIAS:
        bias = tl.load(b_ptr + rn, mask=rn < N, other=0.0)
    if UP:
        up_row = tl.load(up_row_ptr + pid_n)
    wait_then_release(PDL)
    if LN == 0:
        acc = matmul_tile(x_ptr + xoff, stride_xm, w_ptr, rm, rn, M, N, K, PRECISION, USE_DOT,
                          BLOCK_M, BLOCK_N, BLOCK_K)
    else:  # the input LayerNorm'd on load, and with LN == 2 token-shift mixed (see LayerNormIn)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        rmask = rm < M
        prev = tl.maximum(rm - 1, 0)
        first = (rm % T) == 0
        # Each row's statistics (and, in a chunk, the row before's), summed in blocks of BLOCK_K.
        mean, sd = _row_stats(x_ptr, rm, stride_xm, rmask, eps, K, BLOCK_M, BLOCK_K)
        if LN == 2:
            if not SHIFT_ONLY:  # (nested: a constexpr test, so the names reach the loop below)
                mean_p, sd_p = _row_stats(x_ptr, prev, stride_xm, rmask, eps, K, BLOCK_M, BLOCK_K)
        if WRITE_LN or KEEP:
            if pid_n == 0:  # the first column block writes the LayerNorm output (and the shift)
                if KEEP:
                    slot = tl.load(keep_slots_ptr + rm, mask=rmask, other=0).to(tl.int64)
                    flag = tl.load(keep_flags_ptr + rm, mask=rmask, other=0) > 0
                for k0 in range(0, K, BLOCK_K):  # (a pass of its own: fewer tiles live at once)
                    rk = k0 + tl.arange(0, BLOCK_K)
                    y, m2 = _ln_tile(x_ptr, rm, stride_xm, rk, rmask, rk < K, mean, sd, lnw_ptr, lnb_ptr)
                    if WRITE_LN:
                        tl.store(ln_out_ptr + rm[:, None] * K + rk[None, :], y, mask=m2)
                    if KEEP:
                        tl.store(keep_ptr + slot[:, None] * stride_keep + rk[None, :], y,
                                 mask=m2 & flag[:, None])
        for k0 in range(0, K, BLOCK_K):
            rk = k0 + tl.arange(0, BLOCK_K)
            kmask = rk < K
            y, m2 = _ln_tile(x_ptr, rm, stride_xm, rk, rmask, kmask, mean, sd, lnw_ptr, lnb_ptr)
            if LN == 2:
                yp = tl.load(shift_ptr + (rm // T)[:, None] * stride_shift + rk[None, :], mask=m2, other=0.0)
                if not SHIFT_ONLY:
                    y_prev, _ = _ln_tile(x_ptr, prev, stride_xm, rk, rmask, kmask, mean_p, sd_p, lnw_ptr,
                                         lnb_ptr)
                    yp = tl.where(first[:, None], yp, y_prev)
                mj = tl.load(mix_ptr + plane * K + rk, mask=kmask, other=0.0)[None, :]
                y = y + (yp - y) * mj
            x = tl.where(m2, y, 0.0)
            w = tl.load(w_ptr + rn[None, :] * K + rk[:, None], mask=(rn[None, :] < N) & kmask[:, None],
                        other=0.0)
            if USE_DOT:
                acc = tl.dot(x, w, acc, input_precision=PRECISION)
            else:
                acc += tl.sum(x[:, :, None] * w[None, :, :], axis=1)
    if HAS_BIAS:
        acc += bias[None, :]
    acc = tl.where(act == 1, 2.0 / (1.0 + tl.exp(-2.0 * acc)) - 1.0, acc)  # tanh(x) = 2 sigmoid(2x) - 1
    acc = tl.where(act == 2, 1.0 / (1.0 + tl.exp(-acc)), acc)
    if UP:
        # A LoRA's down block also applies its up map, from the block in registers: u[:, up_row + c] =
        # acc W_up[up_row + c]^T + b_up (the map's N_UP outputs in chunks of BLOCK_N; K = BLOCK_N).
        if up_row >= 0:
            rku = tl.arange(0, BLOCK_N)
            for n0 in tl.static_range(0, N_UP, BLOCK_N):
                rnu = up_row + n0 + tl.arange(0, BLOCK_N)
                wu = tl.load(up_w_ptr + rnu[None, :] * BLOCK_N + rku[:, None])
                if USE_DOT:
                    ou = tl.dot(acc, wu, input_precision=PRECISION)
                else:
                    ou = tl.sum(acc[:, :, None] * wu[None, :, :], axis=1)
                ou += tl.load(up_b_ptr + rnu)[None, :]
                tl.store(u_ptr + rm[:, None] * stride_um + rnu[None, :], ou, mask=(rm < M)[:, None])
    out_mask = (rm[:, None] < M) & (rn[None, :] < N)
    if HAS_RES:
        acc += tl.load(res_ptr + rm[:, None] * stride_rm + rn[None, :], mask=out_mask, other=0.0)
    tl.store(y_ptr + rm[:, None] * stride_ym + rn[None, :], acc, mask=out_mask)


class Groups:
    """A packed grouped linear map: output columns in groups, each group from its own input
    (a plane and a column offset of x) and with its own activation; groups start at multiples of
    BLOCK_N.

    weight [N, K] (rows and columns of padding are zero), bias [N] or None; per block of BLOCK_N
    output columns: plane and col (int64: the input is x[plane, :, col: col + K]) and act (int32);
    starts: the first output column of each group."""

    def __init__(self, weight, bias, plane, col, act, starts):
        self.weight, self.bias, self.plane, self.col, self.act = weight, bias, plane, col, act
        self.starts = starts
        self.col_max = int(col.max()) if len(col) else 0  # (host-side, so the step never syncs)


def pack_groups(groups: list[tuple], k: int, device) -> Groups:
    """groups: (weight [n_g, k_g <= k], bias [n_g] or None, (plane, column) of the input, activation)."""
    blocks = [triton.cdiv(g[0].shape[0], BLOCK_N) for g in groups]
    n = BLOCK_N * sum(blocks)
    weight = torch.zeros(n, k, device=device)
    bias = torch.zeros(n, device=device) if any(g[1] is not None for g in groups) else None
    planes, cols, act, starts = [], [], [], []
    out = 0
    for (w, b, (plane, col), activation), nb in zip(groups, blocks):
        weight[out: out + w.shape[0], : w.shape[1]] = w
        if b is not None:
            bias[out: out + w.shape[0]] = b
        starts.append(out)
        planes += [plane] * nb
        cols += [col] * nb
        act += [ACT[activation]] * nb
        out += nb * BLOCK_N
    return Groups(weight, bias, torch.tensor(planes, dtype=torch.int64, device=device),
                  torch.tensor(cols, dtype=torch.int64, device=device),
                  torch.tensor(act, dtype=torch.int32, device=device), starts)


class LayerNormIn:
    """A grouped linear's input LayerNorm'd on load, which saves the launch (and the [7, M, D]
    planes) of a separate ``ln_mix``: the map reads rows h [M, D] and uses y = LayerNorm(h) or, with
    ``mix`` ([7, D], row 0 zeros; plane p of a block picks row p), ln_mix's planes
    y + (y_prev - y) mix[p], y_prev the previous row's y within a series of t rows (shift[b] for its
    first). Every column block computes its rows' statistics itself (a sum in blocks of BLOCK_K,
    within the program: row-invariant). ``out`` [M, D] receives y; ``keep`` is ln_mix's (t = 1)."""

    def __init__(self, weight, bias, eps: float, shift=None, t: int = 1, mix=None, out=None, keep=None):
        if (mix is None) != (shift is None):
            raise ValueError("the token-shift mix needs both mix and shift")
        _check_shift_keep(shift, t, keep)
        self.weight, self.bias, self.eps, self.shift, self.t = weight, bias, eps, shift, t
        self.mix, self.out, self.keep = mix, out, keep


class UpMaps:
    """Maps applied to single column blocks of a grouped linear's output, inside its kernel: the
    LoRA up maps after their down maps (``down_up``), which saves a launch and the down outputs'
    round trip through memory. ``maps`` is the up maps' packed ``Groups`` (K = BLOCK_N, every group
    reading one whole block of the down map's output); rows [down blocks]: the first row of the up
    group that reads that block, -1 for none (host-side list and a device tensor)."""

    def __init__(self, down: Groups, maps: Groups):
        if maps.weight.shape[1] != BLOCK_N or maps.bias is None:
            raise ValueError("up maps need K = BLOCK_N (a rank of at most BLOCK_N) and a bias")
        ends = maps.starts[1:] + [maps.weight.shape[0]]
        widths = {e - s for s, e in zip(maps.starts, ends)}
        if len(widths) != 1:
            raise ValueError("up maps must have one padded width")
        self.width = widths.pop()
        cols = maps.col.tolist()
        rows = [-1] * len(down.plane)
        for start in maps.starts:
            col = cols[start // BLOCK_N]
            if col % BLOCK_N:
                raise ValueError("an up map must read one whole block of the down map's output")
            rows[col // BLOCK_N] = start
        self.maps = maps
        self.rows = torch.tensor(rows, dtype=torch.int64, device=maps.weight.device)


def grouped_linear(x: torch.Tensor, g: Groups, residual: torch.Tensor | None = None,
                   n: int | None = None, *, ln: LayerNormIn | None = None, block_m: int | None = None,
                   num_warps: int = LINEAR_WARPS, settings: KernelSettings | None = None) -> torch.Tensor:
    """x [planes, M, C] or [M, C] (rows contiguous) -> y [M, n] with, for output block j,
    y[:, j] = act_j(x[plane_j, :, col_j: col_j + K] W_j^T + b_j) (+ residual). n defaults to the
    packed width (groups padded to BLOCK_N); a single-group map may give its true width.
    ln: x is rows h [M, K] normalised (and mixed) on load, every block at column 0 (LayerNormIn).
    settings: the launch settings (None: the environment's); block_m, num_warps: the row tile (default
    settings.block_m) and warps, for benchmarks (bench/linear_tiles.py); the model keeps its
    settings' ones, since a row's bits are only promised under one configuration."""
    return _grouped(x, g, residual, n, ln, None, block_m, num_warps, or_default(settings))[0]


def down_up(x: torch.Tensor, g: Groups, up: UpMaps, *, ln: LayerNormIn | None = None,
            block_m: int | None = None, num_warps: int = LINEAR_WARPS,
            settings: KernelSettings | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``grouped_linear(x, g, ln=ln)`` and, in the same launch, the up maps on its blocks: returns
    (y, u), u [M, up width] as ``grouped_linear(y, up.maps)`` (to rounding: each up map sums its
    K = BLOCK_N inputs in one block)."""
    return _grouped(x, g, None, None, ln, up, block_m, num_warps, or_default(settings))


def _grouped(x, g: Groups, residual, n, ln: LayerNormIn | None, up: UpMaps | None, block_m: int | None,
             num_warps: int, settings: KernelSettings) -> tuple[torch.Tensor, torch.Tensor | None]:
    block_m = settings.block_m if block_m is None else block_m
    x3 = x if x.dim() == 3 else x[None]
    if x3.stride(2) != 1:
        raise ValueError("x's rows must be contiguous")
    m, stride_xp, stride_xm = x3.shape[1], x3.stride(0), x3.stride(1)
    k = g.weight.shape[1]
    n = g.weight.shape[0] if n is None else n
    y = torch.empty(m, n, device=x.device, dtype=torch.float32)
    if residual is not None and (residual.shape != (m, n) or residual.stride(1) != 1):
        raise ValueError(f"residual must be [{m}, {n}] with contiguous rows")
    if ln is not None:
        if x.dim() != 2 or x.shape[1] != k or g.col_max != 0:
            raise ValueError("a LayerNorm'd input is rows [M, K] that every block reads from column 0")
        if ln.out is not None and (ln.out.shape != (m, k) or not ln.out.is_contiguous()):
            raise ValueError(f"ln.out must be a contiguous [{m}, {k}]")
    u = None
    if up is not None:
        if n != g.weight.shape[0] or len(up.rows) != triton.cdiv(n, BLOCK_N):
            raise ValueError("up maps need the down map's full packed width")
        u = torch.empty(m, up.maps.weight.shape[0], device=x.device, dtype=torch.float32)
    if m:
        grid = (triton.cdiv(m, block_m), triton.cdiv(n, BLOCK_N))
        none = LayerNormIn(y, y, 0.0)  # (placeholders: unused without ln)
        use = ln if ln is not None else none
        shift = use.shift if use.shift is not None else y
        keep = use.keep if use.keep is not None else (y, y, y)
        up_args = ((up.rows, up.maps.weight, up.maps.bias, u, u.stride(0)) if up is not None
                   else (y, y, y, y, 0))
        _grouped_linear_kernel[grid](
            x, g.weight, g.bias if g.bias is not None else g.weight,
            residual if residual is not None else y, y, g.plane, g.col, g.act, m, n,
            stride_xp, stride_xm, y.stride(0), residual.stride(0) if residual is not None else 0,
            use.weight, use.bias, use.eps, shift, shift.stride(0), use.t,
            use.mix if use.mix is not None else y, use.out if use.out is not None else y,
            keep[0], keep[1], keep[2], keep[0].stride(0),
            *up_args,
            K=k, HAS_BIAS=g.bias is not None, HAS_RES=residual is not None,
            UP=up is not None, N_UP=up.width if up is not None else BLOCK_N,
            LN=0 if ln is None else 1 if ln.mix is None else 2,
            SHIFT_ONLY=ln is not None and ln.t == 1, WRITE_LN=ln is not None and ln.out is not None,
            KEEP=ln is not None and ln.keep is not None, PRECISION=PRECISION,
            USE_DOT=USE_DOT, BLOCK_M=block_m, BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K, num_warps=num_warps,
            **settings.launch)
    return y, u


def grouped_linear_reference(x, g: Groups, residual=None, n=None, ln: LayerNormIn | None = None):
    if ln is not None:  # ln_mix's planes (its reference writes ln.keep), then the map
        x = ln_mix_reference(x, ln.shift, ln.t, ln.weight, ln.bias, ln.eps,
                             None if ln.mix is None else ln.mix[1:], keep=ln.keep)
        if ln.out is not None:
            ln.out.copy_(x[0])
    x3 = x if x.dim() == 3 else x[None]
    k = g.weight.shape[1]
    n = g.weight.shape[0] if n is None else n
    out = []
    for j in range(triton.cdiv(n, BLOCK_N)):
        lo, hi = j * BLOCK_N, min(n, (j + 1) * BLOCK_N)
        plane, col = int(g.plane[j]), int(g.col[j])
        inp = F.pad(x3[plane, :, col: col + k], (0, max(0, col + k - x3.shape[2])))
        y = F.linear(inp, g.weight[lo:hi], None if g.bias is None else g.bias[lo:hi])
        y = {0: y, 1: torch.tanh(y), 2: torch.sigmoid(y)}[int(g.act[j])]
        out.append(y)
    y = torch.cat(out, dim=1)
    return y + residual if residual is not None else y


# ---- 2. The recurrence with the per-head work fused in -------------------------------------------

@triton.jit
def _wkv7_fused_kernel(
    a_ptr, u_ptr, vf_ptr, o_ptr, pool_ptr, slots_ptr, lengths_ptr,
    kk_ptr, ka_ptr, rk_ptr, gw_ptr, gb_ptr,
    layer, T, stride_a, stride_u, stride_vf, stride_o,
    off_r, off_k, off_v, off_w, off_al, off_vl, off_g,
    stride_ps, stride_pl, stride_ph, stride_pv,
    decay_scale, eps,
    N: tl.constexpr, HAS_VF: tl.constexpr, PDL: tl.constexpr,
):
    pid_b = tl.program_id(0).to(tl.int64)
    pid_h = tl.program_id(1).to(tl.int64)
    rows = tl.arange(0, N)  # value index
    cols = tl.arange(0, N)  # key index
    hoff = pid_h * N

    # Before the wait (it overlaps the previous kernel, the LoRA up maps): the state, the lengths and
    # the head's parameters. No kernel of the step that reaches here can still be writing them: the
    # state is written only by this layer's recurrence, the lengths at least two launches back (see
    # wait_then_release).
    n_steps = tl.minimum(tl.load(lengths_ptr + pid_b).to(tl.int32), T)
    live = n_steps > 0
    slot = tl.load(slots_ptr + pid_b).to(tl.int64)
    s_ptrs = (pool_ptr + slot * stride_ps + layer * stride_pl + pid_h * stride_ph
              + rows[:, None].to(tl.int64) * stride_pv + cols[None, :])
    s = tl.load(s_ptrs, mask=live, other=0.0)

    k_k = tl.load(kk_ptr + hoff + cols)
    k_a = tl.load(ka_ptr + hoff + cols)
    r_k = tl.load(rk_ptr + hoff + cols)
    g_w = tl.load(gw_ptr + hoff + rows)
    g_b = tl.load(gb_ptr + hoff + rows)
    wait_then_release(PDL)

    t = 0
    while t < n_steps:  # (a `for` to a runtime bound does not run under the 3.6 interpreter)
        row = pid_b * T + t
        pa = a_ptr + row * stride_a + hoff
        pu = u_ptr + row * stride_u + hoff
        r = tl.load(pa + off_r + cols)
        k = tl.load(pa + off_k + cols)
        v = tl.load(pa + off_v + rows)
        w_raw = tl.load(pu + off_w + cols)
        a_raw = tl.load(pu + off_al + cols)
        g = tl.load(pu + off_g + rows)
        if HAS_VF:
            vf = tl.load(vf_ptr + row * stride_vf + hoff + rows)
            v_mix = 1.0 / (1.0 + tl.exp(-tl.load(pu + off_vl + rows)))
            v = v + (vf - v) * v_mix
        decay = tl.exp(-decay_scale / (1.0 + tl.exp(-w_raw)))
        alpha = 1.0 / (1.0 + tl.exp(-a_raw))
        kx = k * k_k
        kk = kx / tl.maximum(tl.sqrt(tl.sum(kx * kx, axis=0)), 1e-12)
        k = k * (1.0 + (alpha - 1.0) * k_a)
        sa = tl.sum(s * (-kk)[None, :], axis=1)
        s = s * decay[None, :] + sa[:, None] * (kk * alpha)[None, :] + v[:, None] * k[None, :]
        o = tl.sum(s * r[None, :], axis=1)
        mean = tl.sum(o, axis=0) / N
        oc = o - mean
        var = tl.sum(oc * oc, axis=0) / N
        o = oc / tl.sqrt(var + eps) * g_w + g_b
        o = (o + tl.sum(r * k * r_k, axis=0) * v) * g
        tl.store(o_ptr + row * stride_o + hoff + rows, o)
        t += 1
    while t < T:  # steps past the series' length: zeros
        tl.store(o_ptr + (pid_b * T + t) * stride_o + hoff + rows, tl.zeros((N,), dtype=tl.float32))
        t += 1
    tl.store(s_ptrs, s, mask=live)


class HeadParams:
    """The per-channel parameters the fused recurrence uses (all float32, contiguous, [D])."""

    def __init__(self, k_k, k_a, r_k, g_weight, g_bias, eps: float):
        self.k_k, self.k_a = k_k.contiguous(), k_a.contiguous()
        self.r_k = r_k.reshape(-1).contiguous()
        self.g_weight, self.g_bias, self.eps = g_weight.contiguous(), g_bias.contiguous(), eps


def wkv7_fused_step(a: torch.Tensor, offs: dict, u: torch.Tensor, v_first: torch.Tensor | None,
                    prm: HeadParams, pool: torch.Tensor, slots: torch.Tensor, layer: int,
                    lengths: torch.Tensor | None, t: int,
                    settings: KernelSettings | None = None) -> torch.Tensor:
    """One RWKV-7 time-mix core for B series of T steps (rows b T + t), states in pool[slots, layer].

    a [M, *] holds r, k, v (raw projections) at column offsets offs["r"|"k"|"v"]; u [M, *] the LoRA
    outputs w, a, g and (with v_first) vl at offs["w"|"a"|"g"|"vl"]; v_first [M, D] (row stride
    free) or None (the first layer). Returns the gated, normalised output [M, D] (zeros past a
    series' length) for o_proj; the pool's matrices are updated in place. Slots must be distinct.
    """
    h, n = pool.shape[2], pool.shape[3]
    d = h * n
    m = a.shape[0]
    bsz = m // t if t else 0
    if pool.dtype != torch.float32 or pool.stride(4) != 1 or n & (n - 1):
        raise ValueError("pool must be float32 [slots, layers, H, N, N], N a power of two, rows contiguous")
    if lengths is None:
        lengths = torch.full((bsz,), t, dtype=torch.int32, device=a.device)
    o = torch.empty(m, d, device=a.device, dtype=torch.float32)
    if bsz == 0:
        return o
    vf = v_first if v_first is not None else a
    settings = or_default(settings)
    _wkv7_fused_kernel[(bsz, h)](
        a, u, vf, o, pool, slots, lengths,
        prm.k_k, prm.k_a, prm.r_k, prm.g_weight, prm.g_bias,
        layer, t, a.stride(0), u.stride(0), vf.stride(0), o.stride(0),
        offs["r"], offs["k"], offs["v"], offs["w"], offs["a"], offs.get("vl", 0), offs["g"],
        pool.stride(0), pool.stride(1), pool.stride(2), pool.stride(3),
        DECAY_SCALE, prm.eps, N=n, HAS_VF=v_first is not None,
        num_warps=settings.wkv_warps if n >= 64 else 2, **settings.launch,
    )
    return o


def wkv7_fused_reference(a, offs, u, v_first, prm: HeadParams, pool, slots, layer, lengths, t):
    """The same in PyTorch (model.wkv's recurrence); returns (o, new states [B, H, N, N])."""
    from model.wkv import wkv7_recurrent

    h, n = pool.shape[2], pool.shape[3]
    d = h * n
    m = a.shape[0]
    bsz = m // t

    def col(x, name):
        return x[:, offs[name]: offs[name] + d].reshape(bsz, t, h, n)

    r, k, v = col(a, "r"), col(a, "k"), col(a, "v")
    w = -DECAY_SCALE * torch.sigmoid(col(u, "w"))
    alpha = torch.sigmoid(col(u, "a"))
    g = col(u, "g")
    if v_first is not None:
        v = v + (v_first.reshape(bsz, t, h, n) - v) * torch.sigmoid(col(u, "vl"))
    kk = F.normalize(k * prm.k_k.view(h, n), dim=-1, p=2.0)
    k = k * (1 + (alpha - 1) * prm.k_a.view(h, n))
    valid = torch.arange(t, device=a.device)[None] < lengths[:, None] if lengths is not None else None
    o, s = wkv7_recurrent(r, w, k, v, -kk, kk * alpha, pool[slots, layer], valid)
    o = F.group_norm(o.reshape(m, d), h, prm.g_weight, prm.g_bias, prm.eps).view(bsz, t, h, n)
    o = (o + (r * k * prm.r_k.view(h, n)).sum(-1, keepdim=True) * v) * g
    return o.reshape(m, d), s
