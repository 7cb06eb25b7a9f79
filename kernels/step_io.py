"""The one-patch pool step's two ends, each one Triton launch beside its plain PyTorch reference.

`PoolRunner.step_slots` (runtime/pool.py) appends at most one patch per series to states held in a
pool (a `RimerState` of preallocated rows). Between the network's kernels it used to run about a
hundred small PyTorch ops (gathers of the small fields, the tail join, the float64 causal statistics,
normalisation, `where`s, scatters), which dominated a single series' step on a GPU. Here they are two
kernels, one program per series row:

* ``prologue``: reads the slot's small fields (tail, tail_len, n_patches, norm, the token shifts),
  joins the tail with the new values, decides whether a patch completes, updates the causal statistics
  (float64, by the same pairwise sums and the same expression as model/normalisation.py), normalises
  the patch and embeds it (``h = embed(xn)``, plus the sinusoidal position when the model has one).
  It writes only scratch buffers (`StepIO`): the pool is not written, so no program reads a location
  another program (or a thread of its own) writes in the same launch.
* ``epilogue``: the head linear (d_model -> patch_len), de-normalisation, and the new small fields
  written straight into the pool at the slot: next_patch, norm and n_patches for rows whose patch
  completed; tail and tail_len for every row with new points. Rows with no new points (padding rows,
  which may all name one spare slot) write nothing. By default it runs inside the last block's
  launch (kernels/block_out.py, given an `Epilogue`); this launch of its own with fuse_out off
  (kernels/settings.py).

The token shift of each layer is written by that layer's first ``ln_mix`` (kernels/fused.py), the
matrices by the recurrence kernel: nothing else of the pool changes.

Every sum is over a fixed-shape tile inside one program and launch configurations are pinned, so a
series' result depends on that series alone, bit for bit, whatever its batch and slot. The float order
differs from the unfused path's (`kernels.linear` for embed and head), so results agree with
`append_slots` to rounding, not bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from kernels.pdl import wait_then_release
from kernels.settings import KernelSettings, or_default

NUM_WARPS = 4
# No fused multiply-adds: each float64 operation of the statistics and the de-normalisation rounds as
# PyTorch's element-wise ops do, so the statistics equal model/normalisation's bit for bit on a GPU too.
FP_FUSION = False


@dataclass
class StepIO:
    """What the prologue hands the network and the epilogue (one row per series of the step).

    h [B, D] f32 the embedded patch; shift [B, layers, D] f32 the slot's token shifts; stats [B, 2] f64
    the statistics the patch was normalised with (the slot's own where no patch completes); tail [B, P]
    f32 and tail_len [B] i64 the new tail; done [B] i64 1 where a patch completes (the recurrence's
    length); n_patches [B] i64 the new patch count."""

    h: torch.Tensor
    shift: torch.Tensor
    stats: torch.Tensor
    tail: torch.Tensor
    tail_len: torch.Tensor
    done: torch.Tensor
    n_patches: torch.Tensor


# ---- prologue ---------------------------------------------------------------------------------

@triton.jit
def _prologue_kernel(values_ptr, counts_ptr, slots_ptr,
                     tail_ptr, tail_len_ptr, n_patches_ptr, norm_ptr, shift_ptr,
                     embed_ptr, pe_ptr, consts_ptr,
                     h_ptr, shift_out_ptr, stats_ptr, new_tail_ptr, new_len_ptr, done_ptr, new_n_ptr,
                     stride_v,
                     P: tl.constexpr, D: tl.constexpr, S: tl.constexpr, LOG_P: tl.constexpr,
                     BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_S: tl.constexpr,
                     CAUSAL: tl.constexpr, HAS_PE: tl.constexpr, PDL: tl.constexpr):
    # (Written out inline: a @triton.jit helper call costs much time under the interpreter.)
    j = tl.arange(0, BLOCK_P)
    jm = j < P
    d = tl.arange(0, BLOCK_D)
    dm = d < D
    # The embedding's weights before the wait (the model's; the pool's fields only after it).
    w = tl.load(embed_ptr + d[:, None] * P + j[None, :], mask=dm[:, None] & jm[None, :], other=0.0)
    wait_then_release(PDL)
    b = tl.program_id(0).to(tl.int64)
    slot = tl.load(slots_ptr + b).to(tl.int64)
    count = tl.load(counts_ptr + b)
    tail_len = tl.load(tail_len_ptr + slot)
    n_before = tl.load(n_patches_ptr + slot)
    total = tail_len + count
    done = total >= P

    # The tail joined with the new values: points j of the first patch and P + j of the second.
    old = tl.load(tail_ptr + slot * P + j, mask=jm & (j < tail_len), other=0.0)
    new = tl.load(values_ptr + b * stride_v + tl.maximum(j - tail_len, 0),
                  mask=jm & (j >= tail_len) & (j < total), other=0.0)
    first = tl.where(j < tail_len, old, new)
    second = tl.load(values_ptr + b * stride_v + tl.maximum(j + P - tail_len, 0),
                     mask=jm & (j + P < total), other=0.0)
    tl.store(new_tail_ptr + b * P + j, tl.where(done, second, first), mask=jm)
    tl.store(new_len_ptr + b, total - P * done.to(tl.int64))
    tl.store(done_ptr + b, done.to(tl.int64))
    tl.store(new_n_ptr + b, n_before + done.to(tl.int64))

    # Statistics: model/normalisation.causal_update for one patch, in float64 (pairwise sums as its
    # _tree_sum for a power-of-two P), kept where no patch completes.
    mean = tl.load(norm_ptr + slot * 2)
    var = tl.load(norm_ptr + slot * 2 + 1)
    x = first.to(tl.float64)
    if CAUSAL:
        s = x
        for lvl in tl.static_range(LOG_P):
            s = tl.sum(tl.reshape(s, (2, BLOCK_P >> (lvl + 1))), axis=0)
        m = tl.sum(s, axis=0) / P
        c = tl.where(jm, x - m, 0.0)
        s = c * c
        for lvl in tl.static_range(LOG_P):
            s = tl.sum(tl.reshape(s, (2, BLOCK_P >> (lvl + 1))), axis=0)
        v = tl.sum(s, axis=0) / P
        floor = tl.load(consts_ptr + 1)
        alpha = tl.maximum(1.0 / (n_before + 1).to(tl.float64), floor)
        diff = m - mean
        new_mean = mean + alpha * diff
        new_var = (1 - alpha) * var + alpha * v + alpha * (1 - alpha) * diff * diff
        mean = tl.where(done, new_mean, mean)
        var = tl.where(done, new_var, var)
    tl.store(stats_ptr + b * 2, mean)
    tl.store(stats_ptr + b * 2 + 1, var)

    # Normalise and embed: h = embed(xn) (+ the position's row).
    sd = tl.sqrt(var + tl.load(consts_ptr))
    xn = tl.where(jm, ((x - mean) / sd).to(tl.float32), 0.0)
    h = tl.sum(w * xn[None, :], axis=1)
    if HAS_PE:
        # (only a completed patch has a position: a series at the table's end may still fill
        # its tail, and its row must not read past the table)
        h += tl.load(pe_ptr + n_before * D + d, mask=dm & done, other=0.0)
    tl.store(h_ptr + b * D + d, h, mask=dm)

    # The slot's token shifts (all layers), for the layers' ln_mix.
    k = tl.arange(0, BLOCK_S)
    tl.store(shift_out_ptr + b * S + k, tl.load(shift_ptr + slot * S + k, mask=k < S), mask=k < S)


def _log2_exact(n: int) -> int:
    return n.bit_length() - 1


def prologue(pool, slots: torch.Tensor, values: torch.Tensor, counts: torch.Tensor,
             embed: torch.Tensor, pe: torch.Tensor | None, consts: torch.Tensor, causal: bool,
             settings: KernelSettings | None = None) -> StepIO:
    """pool: a RimerState of slots (small fields contiguous); values [B, n] f32 (n >= every count; only
    the first counts[b] are read), counts [B] i64 with tail_len + counts < 2P; embed [D, P]; pe
    [positions, D] or None; consts f64 [eps, 1 / norm_window]; settings: the launch's (PDL)."""
    bsz, p = len(slots), pool.tail.shape[1]
    layers, d = pool.shift.shape[1], pool.shift.shape[2]
    dev = values.device
    for t in (pool.tail, pool.norm, pool.shift, embed):
        if not t.is_contiguous():
            raise ValueError("the pool's small fields and the embedding must be contiguous")
    if values.stride(1) != 1 or values.dtype != torch.float32 or counts.dtype != torch.int64:
        raise ValueError("values must be float32 with contiguous rows, counts int64")
    def ints():
        return torch.empty(bsz, dtype=torch.int64, device=dev)

    io = StepIO(h=torch.empty(bsz, d, device=dev), shift=torch.empty(bsz, layers, d, device=dev),
                stats=torch.empty(bsz, 2, dtype=torch.float64, device=dev),
                tail=torch.empty(bsz, p, device=dev), tail_len=ints(), done=ints(), n_patches=ints())
    if bsz:
        block_p = triton.next_power_of_2(p)
        _prologue_kernel[(bsz,)](
            values, counts, slots, pool.tail, pool.tail_len, pool.n_patches, pool.norm, pool.shift,
            embed, pe if pe is not None else embed, consts,
            io.h, io.shift, io.stats, io.tail, io.tail_len, io.done, io.n_patches, values.stride(0),
            P=p, D=d, S=layers * d, LOG_P=_log2_exact(block_p), BLOCK_P=block_p,
            BLOCK_D=triton.next_power_of_2(d), BLOCK_S=triton.next_power_of_2(layers * d),
            CAUSAL=causal, HAS_PE=pe is not None, num_warps=NUM_WARPS,
            enable_fp_fusion=FP_FUSION, **or_default(settings).launch)
    return io


def joined_patch(pool, slots, values, counts) -> torch.Tensor:
    """The points [B, P] of the patch each row's tail and new values make (the first P of them;
    meaningful where that patch completes), before the step changes the tail: what the lag head
    appends to a series' history. Torch operators, no host synchronisation."""
    p = pool.tail.shape[1]
    tail, tail_len = pool.tail.index_select(0, slots), pool.tail_len.index_select(0, slots)
    j = torch.arange(p, device=values.device)[None]
    rel = (j - tail_len[:, None]).clamp(min=0)
    if values.shape[1] < p:
        values = F.pad(values, (0, p - values.shape[1]))
    return torch.where(j < tail_len[:, None], tail, values[:, :p].gather(1, rel))


def prologue_reference(pool, slots, values, counts, embed, pe, consts, causal: bool) -> StepIO:
    """The same in PyTorch: the unfused step_slots' join and model/normalisation's statistics."""
    from model import normalisation

    p = pool.tail.shape[1]
    tail, tail_len = pool.tail[slots], pool.tail_len[slots]
    n_before, norm = pool.n_patches[slots], pool.norm[slots]
    total = tail_len + counts
    j = torch.arange(2 * p, device=values.device)[None]
    rel = (j - tail_len[:, None]).clamp(min=0)
    joined = torch.where(j < tail_len[:, None], F.pad(tail, (0, p)), values[:, : 2 * p].gather(1, rel))
    joined = torch.where(j < total[:, None], joined, torch.zeros_like(joined))
    done = total >= p
    patch = joined[:, :p]
    eps, floor = float(consts[0]), float(consts[1])
    if causal:
        stats = normalisation.causal_update(norm, patch[:, None], n_before, done[:, None],
                                            round(1 / floor))[:, 0]
    else:
        stats = norm
    xn = ((patch.double() - stats[:, :1]) / normalisation.scale(stats[:, 1:], eps)).float()
    h = F.linear(xn, embed)
    if pe is not None:  # (a completed patch's position only: see the kernel)
        h = h + torch.where(done[:, None], pe[n_before.clamp(max=len(pe) - 1)], 0.0)
    return StepIO(h=h, shift=pool.shift[slots], stats=stats,
                  tail=torch.where(done[:, None], joined[:, p:], patch), tail_len=total - p * done,
                  done=done.long(), n_patches=n_before + done)


# ---- epilogue ---------------------------------------------------------------------------------

@triton.jit
def _store_fields(rows, slot, extend, done, pred, rp, pm, consts_ptr, stats_ptr, new_tail_ptr,
                  new_len_ptr, new_n_ptr, next_patch_ptr, norm_ptr, n_patches_ptr, tail_ptr, tail_len_ptr,
                  P: tl.constexpr):
    """The epilogue's writes into the pool for step rows `rows` [R] at their slots: every row with new
    points (`extend`) its tail; a completed patch (`done`) the head's output pred [R, BLOCK_P] (columns
    rp, pm the real ones) de-normalised as the next patch, the statistics and the count. Shared by
    the epilogue's own launch and the last block's (kernels/block_out.py)."""
    m_ext = extend[:, None] & pm[None, :]
    tail = tl.load(new_tail_ptr + rows[:, None] * P + rp[None, :], mask=m_ext, other=0.0)
    tl.store(tail_ptr + slot[:, None] * P + rp[None, :], tail, mask=m_ext)
    tl.store(tail_len_ptr + slot, tl.load(new_len_ptr + rows, mask=extend, other=0), mask=extend)
    mean = tl.load(stats_ptr + rows * 2, mask=done, other=0.0)
    var = tl.load(stats_ptr + rows * 2 + 1, mask=done, other=1.0)
    sd = tl.sqrt(var + tl.load(consts_ptr))
    tl.store(next_patch_ptr + slot[:, None] * P + rp[None, :],
             (pred.to(tl.float64) * sd[:, None] + mean[:, None]).to(tl.float32),
             mask=done[:, None] & pm[None, :])
    tl.store(norm_ptr + slot * 2, mean, mask=done)
    tl.store(norm_ptr + slot * 2 + 1, var, mask=done)
    tl.store(n_patches_ptr + slot, tl.load(new_n_ptr + rows, mask=done, other=0), mask=done)


@triton.jit
def _epilogue_kernel(h_ptr, head_w_ptr, head_b_ptr, consts_ptr, counts_ptr, slots_ptr,
                     stats_ptr, new_tail_ptr, new_len_ptr, done_ptr, new_n_ptr,
                     next_patch_ptr, norm_ptr, n_patches_ptr, tail_ptr, tail_len_ptr,
                     stride_h,
                     P: tl.constexpr, D: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr,
                     PDL: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    row = b + tl.arange(0, 1)  # this program's row, as a vector of one for _store_fields
    j = tl.arange(0, BLOCK_P)
    jm = j < P
    d = tl.arange(0, BLOCK_D)
    dm = d < D
    # The head's weights and the step's inputs (slots, counts: written before the graph) before the wait.
    w = tl.load(head_w_ptr + j[:, None] * D + d[None, :], mask=jm[:, None] & dm[None, :], other=0.0)
    head_b = tl.load(head_b_ptr + j, mask=jm, other=0.0)
    slot = tl.load(slots_ptr + row).to(tl.int64)
    extend = tl.load(counts_ptr + row) > 0
    wait_then_release(PDL)
    done = tl.load(done_ptr + row) > 0
    h = tl.load(h_ptr + b * stride_h + d, mask=dm, other=0.0)
    y = tl.sum(w * h[None, :], axis=1) + head_b  # the head's forecast of the next patch
    _store_fields(row, slot, extend, done, y[None, :], j, jm, consts_ptr, stats_ptr, new_tail_ptr,
                  new_len_ptr, new_n_ptr, next_patch_ptr, norm_ptr, n_patches_ptr, tail_ptr, tail_len_ptr, P)


def epilogue(pool, slots: torch.Tensor, counts: torch.Tensor, h: torch.Tensor, io: StepIO,
             head_w: torch.Tensor, head_b: torch.Tensor, consts: torch.Tensor,
             settings: KernelSettings | None = None) -> None:
    """In place on `pool` at `slots`: next_patch = head(h) de-normalised, norm and n_patches where a
    patch completed; tail and tail_len where counts > 0. h [B, D] the network's last hidden rows."""
    bsz, p = len(slots), pool.tail.shape[1]
    d = h.shape[1]
    if h.stride(1) != 1 or not (head_w.is_contiguous() and pool.next_patch.is_contiguous()):
        raise ValueError("h's rows, the head's weight and the pool's fields must be contiguous")
    if bsz:
        _epilogue_kernel[(bsz,)](
            h, head_w, head_b, consts, counts, slots, io.stats, io.tail, io.tail_len, io.done, io.n_patches,
            pool.next_patch, pool.norm, pool.n_patches, pool.tail, pool.tail_len, h.stride(0),
            P=p, D=d, BLOCK_P=triton.next_power_of_2(p), BLOCK_D=triton.next_power_of_2(d),
            num_warps=NUM_WARPS, enable_fp_fusion=FP_FUSION, **or_default(settings).launch)


@dataclass
class Epilogue:
    """`epilogue`'s arguments but the network's last hidden rows h: what the last block's launch
    needs to run the epilogue itself (kernels/block_out.py), or `run(h)` after it."""

    pool: object  # model.state.RimerState
    slots: torch.Tensor
    counts: torch.Tensor
    io: StepIO
    head_w: torch.Tensor
    head_b: torch.Tensor
    consts: torch.Tensor
    settings: KernelSettings | None = None

    def run(self, h: torch.Tensor) -> None:
        epilogue(self.pool, self.slots, self.counts, h, self.io, self.head_w, self.head_b, self.consts,
                 self.settings)


def epilogue_reference(pool, slots, counts, h, io: StepIO, head_w, head_b, consts) -> None:
    """The same in PyTorch (index_put_ of the rows that change)."""
    from model import normalisation

    done, extend = io.done > 0, counts > 0
    sd = normalisation.scale(io.stats[:, 1:], float(consts[0]))
    pred = (F.linear(h, head_w, head_b).double() * sd + io.stats[:, :1]).float()
    pool.tail[slots[extend]] = io.tail[extend]
    pool.tail_len[slots[extend]] = io.tail_len[extend]
    pool.next_patch[slots[done]] = pred[done]
    pool.norm[slots[done]] = io.stats[done]
    pool.n_patches[slots[done]] = io.n_patches[done]
