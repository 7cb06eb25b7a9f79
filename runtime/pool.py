"""The triton backend: the Rimer network run by fused Triton kernels over a pool of states.

The pool is one `RimerState` of preallocated rows (slots) on the device. `PoolRunner(model)` holds
the network (model.rimer.Rimer, whose math and PyTorch reference path stay in model/) and updates
the states of some rows in place:

  * `append_slots(pool, slots, values)`: `Rimer.append` with `PoolStep` (below): the small fields
    are gathered and written back, the recurrence updates `pool.wkv[slots]` in place;
  * `forecast_slots(pool, slots, horizon, scratch)`: `Rimer.forecast` in scratch rows, the stored
    states unchanged;
  * `step_slots(pool, slots, values, counts)`: at most one patch per series, Triton launches only
    and no host synchronisation, so runtime/graphs.py captures it in CUDA graphs.

`PoolStep` is the `Step` (model/rimer.py) `Rimer.advance` takes: linear maps are batch-invariant
kernels (kernels/linear.py) and a block runs as three fused kernels (kernels/fused.py,
kernels/block_out.py), so a series' result is bit-identical whether it is stepped alone or with
others, in any slot.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

import kernels  # (first: it sets TRITON_INTERPRET without CUDA before Triton is imported)
from kernels import block_out, fused, step_io
from kernels.settings import KernelSettings, or_default
from model import calibration, normalisation
from model.lag import lag_copy
from model.realign import merge_rows
from model.rimer import Block, Rimer
from model.state import RimerState


class PoolStep:
    """The Triton step: batch-invariant linear maps; the recurrence updates the states
    `pool_wkv[slots]` ([slots, layers, H, N, N]) in place (slots distinct among live series).

    `settings` (kernels/settings.py; None: the environment's) says how the block's kernels are
    launched: fuse_ln, the block's LayerNorms inside the linear maps that read them and the LoRA up
    maps inside the down map's launch (three or four launches per block, see fuse_out), or ln_mix
    and up-map launches of their own (seven); fuse_out (with fuse_ln), o_proj and the channel mix in
    one launch (kernels/block_out.py; three per block) or two; the row tile, warps and PDL."""

    def __init__(self, pool_wkv: torch.Tensor, slots: torch.Tensor,
                 settings: KernelSettings | None = None):
        self.linear = kernels.linear
        self._kernel = kernels.wkv7_pool_step
        self.pool_wkv, self.slots = pool_wkv, slots
        self.settings = or_default(settings)

    def recurrence(self, layer: int, r, w, k, v, a, b, wkv: None, valid: torch.Tensor | None):
        lengths = valid.sum(1) if valid is not None else None
        return self._kernel(r, w, k, v, a, b, self.pool_wkv, self.slots, layer, lengths), None

    def block(self, block: Block, h: torch.Tensor, shift: torch.Tensor, v_first, valid: torch.Tensor | None):
        """`Block.forward` in three fused kernels (`block_rows`); h [B, T, D]."""
        bsz, t, d = h.shape
        lengths = valid.sum(1) if valid is not None else None
        h2, x_in, v_first = self.block_rows(block, h.reshape(bsz * t, d), t, shift, v_first, lengths)
        return h2.view(bsz, t, d), x_in.view(bsz, t, d), None, v_first

    def block_rows(self, block: Block, h2: torch.Tensor, t: int, shift: torch.Tensor, v_first,
                   lengths: torch.Tensor | None, keep: tuple | None = None, x_in: bool = True,
                   epilogue=None):
        """`Block.forward` on rows h2 [B T, D] in three fused kernels (kernels/fused.py,
        kernels/block_out.py): r, k, v and the LoRA down maps in one grouped linear, reading h2
        through LayerNorm 1, the token shift and the six interpolations, with the LoRA up maps in
        the same launch; the recurrence with the per-head work around it (decay, kk, k, v_first
        mix, GroupNorm, bonus, gate); o_proj + residual and then the channel-mix linear reading
        through LayerNorm 2, + residual. (With fuse_out False the last two are launches of their
        own: four. With fuse_ln False, the two LayerNorms are launches of their own,
        `fused.ln_mix`, and the up maps another: seven.)
        lengths [B]: real steps per series (None: all t). v_first here is (buffer, column offset) of the
        first layer's v, not a tensor. keep: `fused.ln_mix`'s (the one-patch step writes the new token
        shift into the pool there). epilogue: the one-patch step's `step_io.Epilogue`, for its last
        block: run on the block's output, in the block's last launch where o_proj and the channel
        mix share one. Returns (new h2, the LayerNorm-1 output [B T, D] (None with x_in False),
        v_first)."""
        pk = _packed(block)
        m, d = h2.shape
        n1, n2 = block.norm1, block.norm2
        s = self.settings
        if s.fuse_ln:
            ln_out = torch.empty(m, d, device=h2.device) if x_in else None
            ln1 = fused.LayerNormIn(n1.weight, n1.bias, n1.eps, shift, t, pk.mix7, ln_out, keep)
            if pk.up_maps is not None:  # the LoRA up maps in the same launch
                a, u = fused.down_up(h2, pk.down, pk.up_maps, ln=ln1, settings=s)
            else:
                a = fused.grouped_linear(h2, pk.down, ln=ln1, settings=s)
                u = fused.grouped_linear(a, pk.up, settings=s)
        else:
            mixed = fused.ln_mix(h2, shift, t, n1.weight, n1.bias, n1.eps, block.attn.x_x, keep,
                                 settings=s)
            a = fused.grouped_linear(mixed, pk.down, settings=s)
            ln_out = mixed[0]
            u = fused.grouped_linear(a, pk.up, settings=s)
        vf = None
        if v_first is not None:
            buf, col = v_first
            vf = buf[:, col: col + d]
        o = fused.wkv7_fused_step(a, pk.offs, u, vf, pk.heads, self.pool_wkv, self.slots,
                                  block.attn.layer, lengths, t, settings=s)
        if s.out_in_one:  # (the epilogue, if any, in the same launch)
            h2 = block_out.block_out(o, h2, block.attn.o_proj.weight, block.ffn.weight, block.ffn.bias,
                                     n2.weight, n2.bias, n2.eps, epilogue, settings=s)
        else:
            h2 = fused.grouped_linear(o, pk.o_proj, residual=h2, n=d, settings=s)
            if s.fuse_ln:
                ln2 = fused.LayerNormIn(n2.weight, n2.bias, n2.eps)
                h2 = fused.grouped_linear(h2, pk.ffn, residual=h2, n=d, ln=ln2, settings=s)
            else:
                x2 = fused.ln_mix(h2, None, t, n2.weight, n2.bias, n2.eps, settings=s)
                h2 = fused.grouped_linear(x2, pk.ffn, residual=h2, n=d, settings=s)
            if epilogue is not None:
                epilogue.run(h2)
        if block.attn.layer == 0:
            v_first = (a, pk.offs["v"])
        return h2, ln_out if x_in else None, v_first


class _Packed:
    """A block's weights in the fused kernels' layout (kernels/fused.py)."""

    def __init__(self, block: Block):
        att, dev = block.attn, block.ffn.weight.device
        d = att.x_x.shape[1]
        downs = [("w", att.w_lora, 2, "tanh"), ("a", att.a_lora, 5, None)]
        if att.layer > 0:
            downs.append(("vl", att.v_lora, 4, None))
        downs.append(("g", att.g_lora, 6, "sigmoid"))
        # Every LoRA's down map padded to the widest (so each up map reads a full-width slice).
        ranks = [lora.lora[0].weight.shape[0] for _, lora, _, _ in downs]
        width = fused.BLOCK_N * max(-(-rank // fused.BLOCK_N) for rank in ranks)

        def pad_rows(w):
            return F.pad(w, (0, 0, 0, width - w.shape[0]))

        # planes of ln_mix's output: 0 LayerNorm, 1 xr, 2 xw, 3 xk, 4 xv, 5 xa, 6 xg
        self.down = fused.pack_groups(
            [(att.r_proj.weight, None, (1, 0), None), (att.k_proj.weight, None, (3, 0), None),
             (att.v_proj.weight, None, (4, 0), None)]
            + [(pad_rows(lora.lora[0].weight), None, (plane, 0), act) for _, lora, plane, act in downs],
            d, dev)
        starts = self.down.starts
        self.offs = {"r": starts[0], "k": starts[1], "v": starts[2]}
        ups = [(lora.lora[2].weight, lora.lora[2].bias, (0, start), None)
               for (_, lora, _, _), start in zip(downs, starts[3:])]
        self.up = fused.pack_groups(ups, width, dev)
        for (name, _, _, _), start in zip(downs, self.up.starts):
            self.offs[name] = start
        # With every rank within one column block, each up map runs inside its down block's program.
        self.up_maps = fused.UpMaps(self.down, self.up) if width == fused.BLOCK_N else None
        self.mix7 = torch.cat([torch.zeros(1, d, device=dev), att.x_x]).contiguous()  # plane p: row p
        self.heads = fused.HeadParams(att.k_k, att.k_a, att.r_k, att.g_norm.weight, att.g_norm.bias,
                                      att.g_norm.eps)
        self.o_proj = fused.pack_groups([(att.o_proj.weight, None, (0, 0), None)], d, dev)
        self.ffn = fused.pack_groups([(block.ffn.weight, block.ffn.bias, (0, 0), None)], d, dev)


def _packed(block: Block) -> _Packed:
    """The block's packed weights, rebuilt when any parameter changed (in place or replaced)."""
    key = tuple((p.data_ptr(), p._version) for p in block.parameters())
    cached = block.__dict__.get("_fused_pack")
    if cached is None or cached[0] != key:
        with torch.no_grad():
            cached = (key, _Packed(block))
        block.__dict__["_fused_pack"] = cached
    return cached[1]


class PoolRunner:
    """Appends and forecasts for the states held in rows (slots) of a pool, in place, with the
    Triton kernels. `model` is the network (its weights are read at each call; packed once per
    block and repacked when a parameter changes). `settings`: how the kernels are launched
    (kernels/settings.py), fixed for the runner's lifetime (a series' bits are promised under one
    setting); None: `KernelSettings.from_env()`, read now."""

    def __init__(self, model: Rimer, settings: KernelSettings | None = None):
        self.model = model
        self.settings = or_default(settings)
        self._consts: torch.Tensor | None = None

    @torch.no_grad()
    def append_slots(self, pool: RimerState, slots: torch.Tensor, values: list[torch.Tensor]) -> None:
        """`Rimer.append` for the states in rows `slots` (distinct) of `pool`, written back in place.

        The small fields are gathered and scattered; the matrices are updated in place by the kernel.
        """
        if len(values) != len(slots):
            raise ValueError(f"{len(values)} value lists for {len(slots)} slots")
        step = PoolStep(pool.wkv, slots, self.settings)
        state = self.model.append(pool.select(slots, wkv=False), values, step)
        pool.write_(slots, state)

    @torch.no_grad()
    def step_slots(self, pool: RimerState, slots: torch.Tensor, values: torch.Tensor,
                   counts: torch.Tensor) -> None:
        """Append at most one patch per series, in place, with no host synchronisation (so a CUDA
        graph can capture it; the caller checks position limits).

        values [B, n] float32 (rows contiguous, n >= every count; the graphs pass 2P): the new points
        of each series, the first counts[b] (int64) real, with tail_len[b] + counts[b] < 2P. A series
        whose tail reaches P points completes a patch and steps the network; the others only extend
        their tail. Rows with counts 0 change nothing (padding may repeat one spare slot); the other
        rows' slots must be distinct.

        Triton launches only (kernels/step_io.py): a prologue (gather, tail join, causal statistics,
        normalisation, embedding), three per block (`PoolStep.block_rows`; the first writes the new
        token shift into the pool), the epilogue (head, de-normalisation, the small fields written
        into the pool) in the last block's last launch (a launch of its own with fuse_out off).
        Bit-identical for a series whatever its batch and slot; equal to `append_slots` to rounding
        (embed and head sum in another order), not bit for bit.
        """
        model, cfg = self.model, self.model.cfg
        consts = self._step_consts(values.device)
        heads = cfg.lag_window or cfg.quantiles
        patch = step_io.joined_patch(pool, slots, values, counts) if heads else None
        before = None
        if cfg.quantiles:  # the forecast the completing patch is checked against, and its age
            before = (model.next_quantiles(pool.select(slots, wkv=False)),
                      pool.n_patches.index_select(0, slots))
        io = step_io.prologue(pool, slots, values, counts, model.embed.weight,
                              model.pe if cfg.pos_emb == "sinusoidal" else None,
                              consts, cfg.norm == "causal", self.settings)
        step = PoolStep(pool.wkv, slots, self.settings)
        h, v_first = io.h, None
        last = step_io.Epilogue(pool, slots, counts, io, model.head.weight, model.head.bias, consts,
                                self.settings)
        for i, block in enumerate(model.blocks):
            h, _, v_first = step.block_rows(block, h, 1, io.shift[:, i], v_first, io.done,
                                            keep=(pool.shift[:, i], slots, io.done), x_in=False,
                                            epilogue=last if i == len(model.blocks) - 1 else None)
        if heads:
            self._pool_heads(pool, slots, patch, io, h, step.linear, before)

    def _pool_heads(self, pool: RimerState, slots, patch, io, h, linear, before) -> None:
        """After a one-patch pool step (its epilogue wrote the head's forecast), the extra heads:
        the lag head's mix into next_patch and the history, and the quantile offsets, for the rows
        whose patch completed (torch operators without host synchronisation: capturable)."""
        model, cfg = self.model, self.model.cfg
        done = (io.done > 0)[:, None]
        heads = model.extra_heads(h, linear)
        if cfg.lag_window:
            p = cfg.patch_len
            history = pool.history.index_select(0, slots)
            out = heads["lag"][:, None]
            mean = io.stats[:, 0:1]
            sd = normalisation.scale(io.stats[:, 1:2], cfg.norm_eps)
            logits, gate_logits, sharp, drift = model.lag_parts(out)
            copy, usable = lag_copy(history, patch[:, None], io.n_patches - io.done, logits, sharp,
                                    (sd ** 2).to(out.dtype), drift, **cfg.lag_match_options)
            copy = copy[:, 0]
            gate = torch.sigmoid(gate_logits[:, 0]) * usable
            preds = linear(h, model.head.weight, model.head.bias)
            mixed = preds + gate * (((copy.double() - mean) / sd).to(preds.dtype) - preds)
            forecast = (mixed.double() * sd + mean).to(pool.next_patch.dtype)
            pool.next_patch.index_copy_(0, slots, torch.where(done, forecast,
                                                               pool.next_patch.index_select(0, slots)))
            shifted = torch.cat([history[:, p:], patch], dim=1)
            pool.history.index_copy_(0, slots, torch.where(done, shifted, history))
        if cfg.quantiles:
            old = pool.quantile_offsets.index_select(0, slots)
            pool.quantile_offsets.index_copy_(0, slots, torch.where(done, heads["quantile"], old))
            predicted, n_before = before
            scores = calibration.abs_scores(patch, predicted, cfg.quantiles)
            calib = calibration.update(pool.calib.index_select(0, slots), scores,
                                       (io.done > 0) & (n_before >= 1))
            pool.calib.index_copy_(0, slots, calib)

    def _step_consts(self, device) -> torch.Tensor:
        """float64 [norm_eps, 1 / norm_window] on `device` for the step kernels (a float argument
        would reach them as float32); made once, before any graph capture (its warm-up)."""
        consts = self._consts
        if consts is None or consts.device != torch.device(device):
            cfg = self.model.cfg
            consts = torch.tensor([cfg.norm_eps, 1.0 / cfg.norm_window], dtype=torch.float64,
                                  device=device)
            self._consts = consts
        return consts

    @torch.no_grad()
    def forecast_slots(self, pool: RimerState, slots: torch.Tensor, horizon: int,
                       scratch: torch.Tensor, quantiles: bool = False):
        """`Rimer.forecast` for the states in rows `slots` of `pool` [len(slots), horizon].

        The matrices are copied into the rows `scratch` (as many, distinct, none of `slots`) and the
        rollout runs there, so the stored states never change. `scratch` may be `slots` itself when
        those states are temporaries (they are then consumed). The rows `Rimer.realign_mask`
        picks (inside a patch, or with stale statistics), on a model that `realigns`: from fresh
        states over `Rimer.realigned_windows`, appended in scratch rows after the other rows'
        rollouts there, as `Rimer.forecast` does.
        """
        rows = pool.select(slots, wkv=False)  # (read once: the mask and the rollout's state)
        if self.model.realigns:
            moved = self.model.realign_mask(rows)
            if bool(moved.any()):
                return self._forecast_realigned(pool, slots, rows, horizon, scratch, quantiles, moved)
        return self._rollout_slots(pool, slots, horizon, scratch, quantiles, rows)

    def _forecast_realigned(self, pool: RimerState, slots: torch.Tensor, rows: RimerState,
                            horizon: int, scratch: torch.Tensor, quantiles: bool,
                            inside: torch.Tensor):
        moved, kept = inside.nonzero()[:, 0], (~inside).nonzero()[:, 0]
        windows = self.model.realigned_windows(rows.select(moved))
        consumed = scratch is slots
        parts = []
        if len(kept):
            mine = slots[kept]
            parts.append((kept, self._rollout_slots(pool, mine, horizon,
                                                    mine if consumed else scratch[:len(kept)],
                                                    quantiles, rows.select(kept))))
        fresh = slots[moved] if consumed else scratch[:len(moved)]
        pool.write_(fresh, self.model.init_state(windows))
        self.append_slots(pool, fresh, windows)
        parts.append((moved, self._rollout_slots(pool, fresh, horizon, fresh, quantiles)))
        return merge_rows(parts, len(slots))

    def _rollout_slots(self, pool: RimerState, slots: torch.Tensor, horizon: int,
                       scratch: torch.Tensor, quantiles: bool, rows: RimerState | None = None):
        """The rollout of `slots` from their own states (`rows`: those states without the
        matrices, when the caller has them)."""
        if scratch is not slots:
            pool.wkv.index_copy_(0, scratch, pool.wkv.index_select(0, slots))
        return self.model.forecast(pool.select(slots, wkv=False) if rows is None else rows,
                                   horizon, quantiles,
                                   PoolStep(pool.wkv, scratch, self.settings))
