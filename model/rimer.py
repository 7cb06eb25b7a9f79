"""The Rimer network: RWKV-7 time mix inside Timer's decoder-only patch model.

One module, three forms of the same function:
  * `whole(x)`: all patches of a batch of series at once (training, parity with the original);
  * `append(state, values)`: consume any number of new points per series from a state and
    return the new state (constant memory per series, whatever the history length);
  * `forecast(state, horizon)`: roll the next `horizon` points out patch by patch from a copy,
    never changing the stored state.
All three run `advance`, so they cannot drift apart.

Why one file of ~620 lines: the network is read top to bottom as one function (blocks, heads,
the advance, the rollout), as nanoGPT keeps its model; split, the shared `advance` would be
three files away from the forms that must agree with it.

`advance` takes a `Step`: how the linear maps and the RWKV-7 recurrence are computed. Here only
`TorchStep`, PyTorch, functional (states in, new states out): the reference. The triton backend's
`PoolStep` (runtime/pool.py) runs the same `append` and `forecast` with Triton kernels on states
held in a preallocated pool, updated in place; runtime/ also has the pool's one-patch step, which
does not go through `advance` at all. Nothing here imports runtime/ or kernels/.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from model import calibration, normalisation, realign
from model.config import RimerConfig
from model.lag import lag_copy
from model.state import RimerState
from model.wkv import wkv7_recurrent

# Patches run through the network per call when consuming a long history: bounds memory.
MAX_CHUNK_PATCHES = 1024
HORIZON_SPREAD_PATCHES = 64  # entries of a quantile model's horizon_spread table
class PositionLimitError(ValueError):
    """The sinusoidal position table has no row for a patch this far into a series."""


class LoRA(nn.Module):
    """Low-rank map D -> rank -> D with an optional activation in between (RWKV-7's LoRAs)."""

    def __init__(self, dim: int, rank: int, activation: nn.Module | None, bias: bool):
        super().__init__()
        self.lora = nn.Sequential(nn.Linear(dim, rank, bias=False),
                                  activation or nn.Identity(),
                                  nn.Linear(rank, dim, bias=bias))

    def forward(self, x: torch.Tensor, linear=None) -> torch.Tensor:
        linear = linear or TorchStep.linear
        down, act, up = self.lora
        activation = {nn.Tanh: "tanh", nn.Sigmoid: "sigmoid"}.get(type(act))
        return linear(linear(x, down.weight, activation=activation), up.weight, up.bias)


def _torch_linear(x, weight, bias=None, activation: str | None = None):
    y = F.linear(x, weight, bias)
    if activation == "tanh":
        return torch.tanh(y)
    if activation == "sigmoid":
        return torch.sigmoid(y)
    return y


class Step(Protocol):
    """How `Rimer.advance` computes the linear maps and the recurrence (duck-typed; `TorchStep` is
    the reference, runtime.pool.PoolStep and training.losses.ChunkStep are others). A step that
    also has `block(block, h, shift, v_first, valid)` runs whole blocks itself (`Block.forward`)."""

    def linear(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
               activation: str | None = None) -> torch.Tensor: ...

    def recurrence(self, layer: int, r, w, k, v, a, b, wkv: torch.Tensor | None,
                   valid: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]: ...


class TorchStep:
    """The reference step: PyTorch linear maps and recurrence; functional (new states returned).

    `linear(x, weight, bias=None, activation=None)`: activation None, "tanh" or "sigmoid" (the
    LoRAs'; fused into the kernel by the Triton step)."""

    linear = staticmethod(_torch_linear)

    @staticmethod
    def recurrence(layer: int, r, w, k, v, a, b, wkv: torch.Tensor, valid: torch.Tensor | None):
        return wkv7_recurrent(r, w, k, v, a, b, wkv, valid)


class TimeMix(nn.Module):
    """RWKV-7 attention; the first layer's value is the `v_first` later layers mix in."""

    def __init__(self, cfg: RimerConfig, layer: int):
        super().__init__()
        d, h, n = cfg.d_model, cfg.n_heads, cfg.head_size
        self.n_heads, self.head_size, self.layer = h, n, layer
        self.x_x = nn.Parameter(torch.zeros(6, d))
        self.k_k = nn.Parameter(torch.full((d,), 0.85))
        self.k_a = nn.Parameter(torch.ones(d))
        self.r_k = nn.Parameter(torch.zeros(h, n))
        self.r_proj = nn.Linear(d, d, bias=False)
        self.k_proj = nn.Linear(d, d, bias=False)
        self.v_proj = nn.Linear(d, d, bias=False)
        self.o_proj = nn.Linear(d, d, bias=False)
        self.w_lora = LoRA(d, cfg.w_rank, nn.Tanh(), bias=True)
        self.a_lora = LoRA(d, cfg.a_rank, None, bias=True)
        if layer > 0:
            self.v_lora = LoRA(d, cfg.v_rank, None, bias=True)
        self.g_lora = LoRA(d, cfg.g_rank, nn.Sigmoid(), bias=False)
        self.g_norm = nn.GroupNorm(h, d, eps=n * 1e-5)

    def forward(self, x: torch.Tensor, shift: torch.Tensor, wkv: torch.Tensor | None,
                v_first: torch.Tensor | None, valid: torch.Tensor | None,
                step: Step = TorchStep):
        """x [B, T, D] (after LayerNorm 1); shift [B, D]; wkv [B, H, N, N] (None with a step that
        keeps the states in a pool). Linear maps and the recurrence come from `step`.

        Returns output [B, T, D], v_first, and the new wkv state (None with a pool's step).
        """
        lin = step.linear
        bsz, t, d = x.shape
        h, n = self.n_heads, self.head_size
        x_prev = torch.cat([shift[:, None], x[:, :-1]], dim=1)
        xr, xw, xk, xv, xa, xg = (x + (x_prev - x) * self.x_x[:, None, None]).unbind(0)
        r = lin(xr, self.r_proj.weight)
        w = -math.exp(-0.5) * torch.sigmoid(self.w_lora(xw, lin))
        k = lin(xk, self.k_proj.weight)
        v = lin(xv, self.v_proj.weight)
        if self.layer == 0:
            v_first = v
        else:
            v = v + (v_first - v) * torch.sigmoid(self.v_lora(xv, lin))
        a = torch.sigmoid(self.a_lora(xa, lin))
        g = self.g_lora(xg, lin)
        kk = F.normalize((k * self.k_k).view(bsz, t, h, n), dim=-1, p=2.0)
        k = k * (1 + (a - 1) * self.k_a)

        def heads(z):
            return z.view(bsz, t, h, n)

        o, wkv = step.recurrence(self.layer, heads(r), heads(w), heads(k), heads(v), -kk,
                                 kk * heads(a), wkv, valid)
        o = self.g_norm(o.reshape(bsz * t, d)).view(bsz, t, d)
        bonus = (heads(r) * heads(k) * self.r_k).sum(-1, keepdim=True) * heads(v)
        o = o + bonus.reshape(bsz, t, d)
        return lin(o * g, self.o_proj.weight), v_first, wkv


class Block(nn.Module):
    """h + TimeMix(LN1 h), then h + Linear(LN2 h): the original's "channel mix" is one linear map.

    `dropout` (set by the trainer through `Rimer.set_dropout`; not a weight, not saved) drops
    elements of both residual branches in training mode only, so inference never sees it."""

    dropout = 0.0

    def __init__(self, cfg: RimerConfig, layer: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.d_model)
        self.attn = TimeMix(cfg, layer)
        self.norm2 = nn.LayerNorm(cfg.d_model)
        self.ffn = nn.Linear(cfg.d_model, cfg.d_model)

    def forward(self, h, shift, wkv, v_first, valid, step=TorchStep):
        if hasattr(step, "block"):  # the triton backend: the same function in fused kernels
            return step.block(self, h, shift, v_first, valid)
        x = self.norm1(h)
        out, v_first, wkv = self.attn(x, shift, wkv, v_first, valid, step)
        h = h + self._drop(out)
        h = h + self._drop(step.linear(self.norm2(h), self.ffn.weight, self.ffn.bias))
        return h, x, wkv, v_first

    def _drop(self, branch: torch.Tensor) -> torch.Tensor:
        if self.dropout > 0.0 and self.training:
            return F.dropout(branch, self.dropout, training=True)
        return branch


def sinusoidal_table(positions: int, dim: int) -> torch.Tensor:
    """The classic sin/cos position table [positions, dim] (Transformer, Timer)."""
    pos = torch.arange(positions, dtype=torch.float32)[:, None]
    div = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * -(math.log(10000.0) / dim))
    table = torch.zeros(positions, dim)
    table[:, 0::2] = torch.sin(pos * div)
    table[:, 1::2] = torch.cos(pos * div)
    return table


@dataclass
class Advance:
    """What `advance` returns: the new state and, per patch, the normalised outputs and stats."""

    state: RimerState
    preds: torch.Tensor  # [B, T, P] normalised forecast of the patch after each patch
    stats: torch.Tensor  # [B, T, 2] float64 mean, variance used for each patch
    quantiles: torch.Tensor | None = None  # [B, T, Q, P] normalised, when asked for


def quantile_values(mean: torch.Tensor, offsets: torch.Tensor, levels: tuple[float, ...]) -> torch.Tensor:
    """Quantiles [..., Q, P] that never cross, from the mean [..., P] and the head's raw offsets
    [..., Q, P]: the level nearest 0.5 is the mean plus its offset; each level above adds a
    positive step (softplus) to the one below it, each level below subtracts one."""
    mid = min(range(len(levels)), key=lambda j: abs(levels[j] - 0.5))
    steps = F.softplus(offsets)
    centre = mean + offsets[..., mid, :]
    up = centre[..., None, :] + torch.cumsum(steps[..., mid + 1:, :], dim=-2)
    down = centre[..., None, :] - torch.cumsum(steps[..., :mid, :].flip(-2), dim=-2)
    return torch.cat([down.flip(-2), centre[..., None, :], up], dim=-2)


class Rimer(nn.Module):
    # Runs `_network` in place of the PyTorch modules when set: the onnx backend's
    # model.onnx_network.OnnxNetwork (same signature; inference only, no gradients).
    network_runtime = None
    realign = True  # whether a forecast from inside a patch may start afresh (`realigns`)

    def __init__(self, cfg: RimerConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Linear(cfg.patch_len, cfg.d_model, bias=False)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.head = nn.Linear(cfg.d_model, cfg.patch_len)
        if cfg.forecast_flag:  # added to the embedding of the patches the model forecast itself
            self.forecast_embed = nn.Parameter(torch.zeros(cfg.d_model))
        if cfg.quantiles:  # per level, the offsets that quantiles.from_offsets orders
            self.quantile_head = nn.Linear(cfg.d_model, cfg.patch_len * len(cfg.quantiles))
            # How much wider than the quantile head says each forecast patch's quantiles are
            # drawn, by its place in a rollout (the head predicts one patch ahead from what it is
            # fed; later patches are fed forecasts, not data): fitted on validation series
            # (training/spread.py), the last entry for every later patch. Ones: as predicted.
            self.register_buffer("horizon_spread", torch.ones(HORIZON_SPREAD_PATCHES))
            # How much of the spread reached by the end of one forecast patch the next carries
            # on (model/calibration.py widen_by_horizon; fitted with the spread). 0: none.
            self.register_buffer("horizon_carry", torch.zeros(()))
        if cfg.lag_window:  # a logit per lag (1 patch .. lag_window points), a gate per point, a
            # sharpness of the match (model/rimer.py lag_copy)
            self.lag_head = nn.Linear(cfg.d_model, cfg.lag_window - cfg.patch_len + 1 + cfg.patch_len + 1)
            if cfg.lag_drift:  # how much of each lag's level change the copy carries on; zeros
                # at first, so a model fine-tuned from one without it starts where that one was
                self.lag_drift_head = nn.Linear(cfg.d_model, 1)
                nn.init.zeros_(self.lag_drift_head.weight)
                nn.init.zeros_(self.lag_drift_head.bias)
        if cfg.pos_emb == "sinusoidal":
            self.register_buffer("pe", sinusoidal_table(cfg.max_positions, cfg.d_model),
                                 persistent=False)

    def check_positions(self, n_patches: torch.Tensor, t: int,
                        counts: torch.Tensor | None = None) -> None:
        """A sinusoidal model's table must cover the `t` patches after `n_patches` [B] (or each
        row's `counts` [B], where a batch's rows have fewer real patches than `t`: padding
        never needs a position, so a batch is refused only where one of its series would be)."""
        ends = n_patches + (t if counts is None else counts)
        last = int(ends.max()) if len(n_patches) else 0
        if last > self.cfg.max_positions:
            raise PositionLimitError(self.cfg.position_limit(last, "the input"))

    def set_dropout(self, p: float) -> None:
        """Residual-branch dropout for training (see `Block`); eval mode ignores it."""
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {p}")
        for block in self.blocks:
            block.dropout = p

    # ---- the network on normalised patches -------------------------------------------------

    def _network(self, xn: torch.Tensor, state: RimerState, valid: torch.Tensor | None,
                 step: Step, check_positions: bool = True, forecast: bool = False):
        """xn [B, T, P] normalised patches -> (outputs [B, T, P], new wkv or None, new shift).

        check_positions=False skips the (host-synchronising) position-table check: the caller's job.
        forecast: the patches are the model's own forecasts (a rollout); told to the network where
        its config has `forecast_flag`.
        """
        preds, wkv, shift, _ = self._network_full(xn, state, valid, step, check_positions, forecast)
        return preds, wkv, shift

    def _network_full(self, xn, state, valid, step, check_positions=True, forecast=False):
        """`_network`, and the extra heads' raw outputs read off the last block's output:
        {"lag": [B, T, lags + P + 1 (+ 1)] (lag logits, gate logits, sharpness, drift), "quantile":
        [B, T, Q P] (offsets)}
        for the heads the config has (an empty dict for a model with neither)."""
        cfg = self.cfg
        bsz, t, _ = xn.shape
        h = step.linear(xn, self.embed.weight)
        if cfg.forecast_flag and isinstance(forecast, torch.Tensor):  # [B] 0/1 (the ONNX graphs)
            h = h + forecast.to(h.dtype)[:, None, None] * self.forecast_embed
        elif cfg.forecast_flag and forecast:
            h = h + self.forecast_embed
        if cfg.pos_emb == "sinusoidal":
            if check_positions:
                self.check_positions(state.n_patches, t, valid.sum(1) if valid is not None else None)
            # (clamped: past the table only padding, or rollout steps a row does not use)
            pos = (state.n_patches[:, None] + torch.arange(t, device=xn.device)[None]).clamp(
                max=cfg.max_positions - 1)
            h = h + self.pe[pos]
        counts = valid.sum(1) if valid is not None else torch.full((bsz,), t, device=xn.device)
        last_idx = (counts - 1).clamp(min=0)
        wkv_out, shift_out = [], []
        v_first = None
        for i, block in enumerate(self.blocks):
            wkv = state.wkv[:, i] if state.wkv is not None else None
            h, x_in, wkv, v_first = block(h, state.shift[:, i], wkv, v_first, valid, step)
            last_in = x_in[torch.arange(bsz, device=xn.device), last_idx]
            shift_out.append(torch.where((counts > 0)[:, None], last_in, state.shift[:, i]))
            wkv_out.append(wkv)
        new_wkv = torch.stack(wkv_out, dim=1) if state.wkv is not None else None
        preds = step.linear(h, self.head.weight, self.head.bias)
        return preds, new_wkv, torch.stack(shift_out, dim=1), self.extra_heads(h, step.linear)

    def extra_heads(self, h: torch.Tensor, linear=TorchStep.linear) -> dict[str, torch.Tensor]:
        """The lag and quantile heads' raw outputs from the last block's output h [..., D], for the
        heads the config has ({"lag": ..., "quantile": ...}; empty for a model with neither)."""
        out = {}
        if self.cfg.lag_window:
            out["lag"] = linear(h, self.lag_head.weight, self.lag_head.bias)
            if self.cfg.lag_drift:  # one more column: the drift
                drift = linear(h, self.lag_drift_head.weight, self.lag_drift_head.bias)
                out["lag"] = torch.cat([out["lag"], drift.to(out["lag"].dtype)], -1)
        if self.cfg.quantiles:
            out["quantile"] = linear(h, self.quantile_head.weight, self.quantile_head.bias)
        return out

    # Long (~85 lines, 30 of them the docstring): the one step every form uses; the two ways of
    # building the new state (every patch real, or gathers for padded rows) end it.
    def advance(self, state: RimerState, patches: torch.Tensor,
                 valid: torch.Tensor | None = None, step: Step = TorchStep,
                 check_positions: bool = True, forecast: bool = False,
                 quantiles: bool = False) -> Advance:
        """Run complete patches through the network from `state`: the one step every form uses.

        `whole`, `append` and `forecast` are built on it, and training calls it directly for the
        per-patch outputs (teacher forcing, truncated BPTT, rollouts fed their own forecasts).

        Args:
            state: the states before the patches, batch first (`RimerState`).
            patches: [B, T, P] complete patches in data units.
            valid: [B, T] bool, which patches are real; a prefix per row (None: all of them).
                Padding patches change nothing in their row's state.
            step: how the linear maps and the recurrence are computed (`Step`): `TorchStep` (the
                default, functional: the matrices are read from `state.wkv` and returned anew),
                or another of the same interface (runtime.pool.PoolStep updates the matrices in
                place in its pool, `state.wkv` and the new state's being None;
                training.losses.ChunkStep runs the recurrence 16 patches at a time).
            check_positions: refuse patches past the sinusoidal position table (per row).
            forecast: the patches are the model's own forecasts (a rollout), not data: the
                calibration is not updated, and models trained with `forecast_flag` are told so.
            quantiles: also return the quantile head's normalised quantiles for every patch.

        Returns:
            `Advance`: the new state (causal statistics updated patch by patch, `next_patch`
            de-normalised; `tail` and `tail_len` as they were, for the caller to set), the
            normalised forecast after each patch [B, T, P], the statistics used for each patch
            [B, T, 2] (float64), and the quantiles [B, T, Q, P] when asked for.
        """
        cfg = self.cfg
        bsz, t, _ = patches.shape
        if cfg.norm == "causal":
            stats = normalisation.causal_update(state.norm, patches, state.n_patches, valid,
                                                cfg.norm_window)
        else:
            stats = state.norm[:, None, :].expand(bsz, t, 2)
        mean = stats[..., 0:1]
        sd = normalisation.scale(stats[..., 1:2], cfg.norm_eps)
        xn = ((patches.double() - mean) / sd).to(patches.dtype)
        quants = None
        if self.network_runtime is not None and step is TorchStep:  # the onnx backend
            kw = {"forecast": True} if forecast and cfg.forecast_flag else {}
            preds, wkv, shift, *rest = self.network_runtime(xn, state, valid, check_positions, **kw)
            heads = rest[0] if rest else {}
        else:
            preds, wkv, shift, heads = self._network_full(xn, state, valid, step, check_positions,
                                                          forecast)
        history = state.history
        if cfg.lag_window:
            preds, history = self._lag_mix(preds, heads["lag"], patches, state, valid, mean, sd)
        offsets = heads.get("quantile")
        calib = state.calib
        if cfg.quantiles and (quantiles or not forecast):
            shaped = offsets.view(bsz, t, len(cfg.quantiles), cfg.patch_len)
            if quantiles:
                quants = quantile_values(preds, shaped, cfg.quantiles)
            if not forecast:  # observed patches: each checks the forecast made before it (the
                # last patch's quantiles are checked by the next call: from the state's offsets)
                before = (quants[:, :-1] if quants is not None
                          else quantile_values(preds[:, :-1], shaped[:, :-1], cfg.quantiles))
                calib = self._calibrate(state, patches, before, stats, valid)
        if valid is None and t > 0:  # every patch real (rollouts, uniform appends): no gathers
            last_pred = preds[:, -1].double() * sd[:, -1] + mean[:, -1]
            return Advance(RimerState(wkv=wkv, shift=shift, n_patches=state.n_patches + t,
                                      tail=state.tail, tail_len=state.tail_len,
                                      norm=stats[:, -1].clone(),
                                      next_patch=last_pred.to(state.next_patch.dtype), history=history,
                                      quantile_offsets=offsets[:, -1] if cfg.quantiles else None,
                                      calib=calib),
                           preds, stats, quants)
        counts = valid.sum(1) if valid is not None else torch.zeros(bsz, dtype=torch.int64,
                                                                    device=patches.device)
        last_idx = (counts - 1).clamp(min=0)
        rows = torch.arange(bsz, device=patches.device)
        last_pred = (preds[rows, last_idx].double() * sd[rows, last_idx] + mean[rows, last_idx])
        has_new = (counts > 0)[:, None]
        new_state = RimerState(
            wkv=wkv, shift=shift,
            n_patches=state.n_patches + counts,
            tail=state.tail, tail_len=state.tail_len,
            norm=torch.where(has_new, stats[rows, last_idx], state.norm),
            next_patch=torch.where(has_new, last_pred.to(state.next_patch.dtype),
                                   state.next_patch),
            history=history,
            quantile_offsets=(torch.where(has_new, offsets[rows, last_idx], state.quantile_offsets)
                              if cfg.quantiles else None),
            calib=calib,
        )
        return Advance(new_state, preds, stats, quants)

    def _calibrate(self, state: RimerState, patches, before, stats, valid) -> torch.Tensor:
        """The calibration state after the chunk: one update per observed patch, against the
        quantiles the step before it forecast (the state's for the first patch; a series' first
        patch has no forecast and changes nothing). `before`: the normalised quantiles forecast
        after each patch but the last [B, T - 1, Q, P] (with one patch, none: an append's step
        computes no quantiles it does not check)."""
        first = self.next_quantiles(state)[:, None]
        if patches.shape[1] > 1:
            stats = stats[:, :-1]
            sd = normalisation.scale(stats[..., 1:2], self.cfg.norm_eps)[:, :, None]
            q = (before.double() * sd + stats[..., None, 0:1]).to(patches.dtype)  # data units
            predicted = torch.cat([first, q], dim=1)
        else:
            predicted = first
        scores = calibration.abs_scores(patches, predicted, self.cfg.quantiles)  # [B, T, P]
        calib = state.calib
        for n in range(patches.shape[1]):
            step = state.n_patches + n >= 1
            if valid is not None:
                step = step & valid[:, n]
            calib = calibration.update(calib, scores[:, n], step)
        return calib

    def lag_columns(self) -> tuple[slice, slice, int, int | None]:
        """Where each part sits in the lag head's output [..., lags + P + 1 (+ 1)]: the lag
        logits, the gate logits, the match's sharpness and the drift (None without `lag_drift`).
        The one place that knows the layout (`lag_parts` and training/tune_gate.py read it)."""
        p = self.cfg.patch_len
        n_lags = self.cfg.lag_window - p + 1
        return (slice(0, n_lags), slice(n_lags, n_lags + p), n_lags + p,
                n_lags + p + 1 if self.cfg.lag_drift else None)

    def lag_parts(self, out: torch.Tensor):
        """The lag head's raw output in its parts (`lag_columns`): the lag logits, the gate logits
        [..., P], the match's sharpness (softplus) and the drift (None without `lag_drift`);
        `_lag_mix` and the pool read it."""
        lags, gates, sharpness, drift = self.lag_columns()
        return (out[..., lags], out[..., gates], F.softplus(out[..., sharpness]),
                None if drift is None else out[..., drift])

    def _lag_mix(self, preds, out, patches, state: RimerState, valid, mean, sd):
        """The lag head: each patch's forecast of the next becomes a per-point gated mix of the
        network's output and a weighted sum of the points 1 patch to lag_window points back (the
        weights a softmax over those lags, from the last block's output; lags reaching before the
        series' first point excluded). Returns the mixed forecasts (normalised units) and the
        history after the chunk (its last lag_window points of complete patches). `out` is the lag
        head's raw output [B, T, lags + P + 1], and the drift after them with `lag_drift`."""
        p = self.cfg.patch_len
        logits, gate_logits, sharp, drift = self.lag_parts(out)
        copy, usable = lag_copy(state.history, patches, state.n_patches, logits, sharp,
                                (sd[..., 0] ** 2).to(out.dtype), drift, **self.cfg.lag_match_options)
        gate = torch.sigmoid(gate_logits) * usable[..., None]
        copy_n = ((copy.double() - mean) / sd).to(preds.dtype)
        mixed = preds + gate * (copy_n - preds)
        bsz, t, _ = patches.shape
        ext = torch.cat([state.history, patches.reshape(bsz, t * p).to(state.history.dtype)], dim=1)
        if valid is None:
            history = ext[:, t * p:].contiguous()  # (a state's tensors are kept contiguous)
        else:
            start = valid.sum(1) * p
            keep = state.history.shape[1]
            history = ext.gather(1, start[:, None] + torch.arange(keep, device=ext.device)[None])
        return mixed, history

    # ---- form 1: whole history -------------------------------------------------------------

    def whole(self, x: torch.Tensor) -> torch.Tensor:
        """The original's forecast task on [B, L] (L a multiple of patch_len) -> [B, L].

        The output at patch n is the forecast of patch n + 1, in data units.
        """
        adv = self.whole_normalised(x)
        sd = normalisation.scale(adv.stats[..., 1:2], self.cfg.norm_eps)
        y = adv.preds.double() * sd + adv.stats[..., 0:1]
        return y.to(x.dtype).reshape(x.shape)

    def whole_normalised(self, x: torch.Tensor) -> Advance:
        """Like `whole` but returns normalised outputs and the statistics (for training)."""
        bsz, length = x.shape
        p = self.cfg.patch_len
        if length % p:
            raise ValueError(f"length {length} is not a multiple of patch_len {p}")
        state = RimerState.zeros(self.cfg, bsz, x.device)
        if self.cfg.norm == "window":
            state.norm = normalisation.window_stats(x, torch.full((bsz,), length, device=x.device))
        return self.advance(state, x.view(bsz, length // p, p))

    # ---- form 2: recurrent step ------------------------------------------------------------

    def init_state(self, values: list[torch.Tensor]) -> RimerState:
        """A fresh state for new series; window normalisation takes its statistics from
        `values` (the whole window), causal normalisation needs nothing."""
        device = self.head.weight.device
        state = RimerState.zeros(self.cfg, len(values), device)
        if self.cfg.norm == "window":
            lengths = torch.tensor([len(v) for v in values], device=device)
            padded = _pad(values, device)
            state.norm = normalisation.window_stats(padded, lengths)
        return state

    @torch.no_grad()
    def append(self, state: RimerState, values: list[torch.Tensor],
               step: Step = TorchStep) -> RimerState:
        """Consume new points (any number per series, 0 allowed); return the new state.

        Cost is O(new points) and memory is bounded by MAX_CHUNK_PATCHES per call, whatever
        the history. The input state is not modified (with a step that keeps the matrices in a
        pool, `state.wkv` is None and the step updates them there: runtime.pool).
        """
        if len(values) != state.batch:
            raise ValueError(f"{len(values)} value lists for a batch of {state.batch} series")
        split = _Split(state.tail, state.tail_len, values, self.cfg.patch_len)
        for patches, valid in split.chunks(state.tail.device):
            state = self.advance(state, patches, valid, step).state
        return RimerState(wkv=state.wkv, shift=state.shift, n_patches=state.n_patches,
                          tail=split.tail.to(state.tail.device),
                          tail_len=split.tail_len.to(state.tail.device), norm=state.norm,
                          next_patch=state.next_patch, history=state.history,
                          quantile_offsets=state.quantile_offsets, calib=state.calib)

    # ---- form 3: forecast rollout ----------------------------------------------------------

    @torch.no_grad()
    def forecast(self, state: RimerState, horizon: int, quantiles: bool = False,
                 step: Step = TorchStep):
        """The next `horizon` points of each series [B, horizon], autoregressively; with
        `quantiles` (a model with a quantile head) also their quantiles [B, Q, horizon] at the
        config's levels, each forecast patch's from the step that forecast it.

        A series whose newest points end a patch: from its state (its whole history). One whose
        newest points are an unfinished patch, on a model that `realigns`: from a fresh state
        over its last (up to 16) whole patches ending at its newest point (model/realign.py; the
        state keeps them), so that the newest points inform the first forecast step; from its own
        state they would only from the forecast's second patch on (on the zero-shot benchmark's
        origins that cost a quarter of the accuracy); likewise one whose statistics are stale.
        Otherwise the model's forecast of the current patch is
        used for its points not yet seen; the completed patch is fed back, and so on. Works on
        copies: `state` is unchanged (a step that keeps the matrices in a pool updates its own
        rows there: runtime.pool rolls out in scratch rows)."""
        if self.realigns and step is TorchStep:
            moved = self.realign_mask(state)
            if bool(moved.any()):
                return self._forecast_realigned(state, horizon, quantiles, moved)
        return self._forecast_own(state, horizon, quantiles, step)

    def _forecast_own(self, state: RimerState, horizon: int, quantiles: bool, step: Step = TorchStep):
        """`forecast` from each row's own state."""
        return self._rollout(state, horizon,
                             lambda s, patch: self.advance(s, patch, None, step, check_positions=False,
                                                            forecast=True, quantiles=quantiles),
                             quantiles)

    @property
    def realigns(self) -> bool:
        """Whether a forecast from inside a patch starts afresh at the newest point (`forecast`):
        a model that keeps the last points of complete patches (a lag head) and whose patches
        carry no position (a fresh state's would restart at 0) and normalise causally, unless
        `realign` is turned off (the service's --no-realign-forecasts: it reads 16 patches afresh
        per such forecast, ~13x the compute of one from a patch boundary)."""
        cfg = self.cfg
        return (self.realign and bool(cfg.lag_window) and cfg.pos_emb == "none"
                and cfg.norm == "causal")

    def realign_mask(self, state: RimerState) -> torch.Tensor:
        """[B] bool: the rows `forecast` starts afresh (model/realign.py `mask`)."""
        return realign.mask(self.cfg, state)

    def realigned_windows(self, state: RimerState) -> list[torch.Tensor]:
        """Per row, the points its fresh state is made of (model/realign.py `windows`)."""
        return realign.windows(self.cfg, state)

    def _forecast_realigned(self, state: RimerState, horizon: int, quantiles: bool,
                            mask: torch.Tensor):
        """`forecast` where some rows (`realign_mask`) start afresh: those from fresh states over
        `realigned_windows`, the rest from their states; each row's result its own."""
        moved = mask.nonzero()[:, 0]
        windows = self.realigned_windows(state.select(moved, wkv=False))
        fresh = self.append(self.init_state(windows), windows)
        parts = [(moved, self._forecast_own(fresh, horizon, quantiles))]
        kept = (~mask).nonzero()[:, 0]
        if len(kept):
            parts.append((kept, self._forecast_own(state.select(kept), horizon, quantiles)))
        return realign.merge_rows(parts, state.batch)

    def next_quantiles(self, state: RimerState) -> torch.Tensor:
        """Quantiles [B, Q, P] (data units) of the next patch: what the quantile head said at the
        last step (the state keeps its offsets), around the state's forecast of that patch."""
        mean, var = state.norm[:, 0:1], state.norm[:, 1:2]
        sd = normalisation.scale(var, self.cfg.norm_eps)
        centre = ((state.next_patch.double() - mean) / sd).float()
        offsets = state.quantile_offsets.view(-1, len(self.cfg.quantiles), self.cfg.patch_len)
        q = quantile_values(centre, offsets, self.cfg.quantiles)
        return (q.double() * sd[:, None] + mean[:, None]).float()

    def _rollout(self, state: RimerState, horizon: int, advance, quantiles: bool = False):
        p = self.cfg.patch_len
        if horizon < 1:
            raise ValueError("horizon must be at least 1")
        if bool((state.n_patches < 1).any()):
            raise ValueError(f"a forecast needs at least one complete patch ({p} points)")
        if quantiles and not self.cfg.quantiles:
            raise ValueError("this model has no quantile head")
        r = state.tail_len
        need = (horizon + r + p - 1) // p  # patches of output each row uses
        steps = int(need.max())
        if self.cfg.pos_emb == "sinusoidal":  # each row's own steps (the others' are discarded)
            self.check_positions(state.n_patches, 0, need - 1)
        pieces = [state.next_patch]
        qpieces = [self.next_quantiles(state)] if quantiles else []
        cols = torch.arange(p, device=r.device)[None]
        patch = torch.where(cols < r[:, None], state.tail, state.next_patch)
        for _ in range(steps - 1):
            adv = advance(state, patch[:, None])
            state = adv.state
            patch = state.next_patch
            pieces.append(patch)
            if quantiles:
                stats = adv.stats[:, -1]
                sd = normalisation.scale(stats[:, 1:2], self.cfg.norm_eps)
                qpieces.append((adv.quantiles[:, -1].double() * sd[:, None]
                                + stats[:, None, 0:1]).float())
        flat = torch.cat(pieces, dim=1)
        idx = r[:, None] + torch.arange(horizon, device=r.device)[None]
        mean = flat.gather(1, idx)
        if not quantiles:
            return mean
        qflat = calibration.widen_by_horizon(flat, torch.cat(qpieces, dim=2), p, self.horizon_spread,
                                             float(self.horizon_carry))
        return mean, qflat.gather(2, idx[:, None].expand(-1, qflat.shape[1], -1))


class _Split:
    """New points joined to each series' tail and cut into complete patches (in chunks of at most
    MAX_CHUNK_PATCHES) and a new tail; built on the host, whatever the state's device. The
    per-series slicing is done in NumPy views of torch-allocated buffers, not small torch ops per
    series (bench/RESULTS.md has the timing); where no series reaches a second patch (a bulk
    ingest's few points per series), in a handful of array operations for the whole batch.
    `short=False` takes the per-series path always (tests compare the two)."""

    def __init__(self, tail: torch.Tensor, tail_len: torch.Tensor, values: list[torch.Tensor], p: int,
                 short: bool = True):
        tail = tail.cpu()
        self.p, self.dtype, self.one = p, tail.dtype, None
        lens = tail_len.cpu().numpy().astype(np.int64)
        sizes = np.fromiter(map(len, values), np.int64, len(values))
        if short and len(values) and int((lens + sizes).max()) < 2 * p:
            self._short(tail, lens, sizes, values)
            return
        old = tail.numpy()
        lens = lens.tolist()
        self.joined = [np.concatenate([old[b, : lens[b]], v.to("cpu", tail.dtype).numpy()])
                       for b, v in enumerate(values)]
        self.counts = [len(j) // p for j in self.joined]  # complete patches per series
        rest = [len(j) % p for j in self.joined]
        self.n_complete = torch.tensor(self.counts, dtype=torch.int64)
        self.tail_len = torch.tensor(rest, dtype=torch.int64)
        self.tail = torch.zeros_like(tail)
        new = self.tail.numpy()  # (a view: filled in place)
        for b, (j, r) in enumerate(zip(self.joined, rest)):
            if r:
                new[b, :r] = j[len(j) - r:]

    def _short(self, tail: torch.Tensor, lens: np.ndarray, sizes: np.ndarray,
               values: list[torch.Tensor]) -> None:
        """Every series' tail and new points in one row of 2P (fewer than 2P each): its first P
        the patch, where complete, and the rest the new tail: the same arrays as the per-series
        path, from one concatenation and one scatter."""
        p, bsz = self.p, len(values)
        flat = torch.cat(values).to("cpu", tail.dtype).numpy()
        joined = np.zeros((bsz, 2 * p), dtype=flat.dtype)
        joined[:, :p] = np.where(np.arange(p) < lens[:, None], tail.numpy(), 0)
        rows = np.repeat(np.arange(bsz), sizes)
        starts = np.cumsum(sizes) - sizes
        joined[rows, lens[rows] + np.arange(len(flat)) - starts[rows]] = flat
        total = lens + sizes
        counts = total // p  # (0 or 1)
        full = counts[:, None] == 1
        self.joined = None
        self.counts = counts.tolist()
        self.n_complete = torch.from_numpy(counts)
        self.tail_len = torch.from_numpy(total - counts * p)
        self.tail = torch.from_numpy(np.where(full, joined[:, p:], joined[:, :p]))
        self.one = np.where(full, joined[:, :p], 0)[:, None]  # [B, 1, P]: no patch, zeros

    def chunks(self, device):
        """(patches [B, t, P], valid [B, t] or None when all are real) per chunk, on `device`."""
        p, bsz = self.p, len(self.counts)
        total = max(self.counts, default=0)
        if self.one is not None:
            if total:
                valid = self.n_complete[:, None] > 0
                yield (torch.from_numpy(self.one).to(device),
                       None if bool(valid.all()) else valid.to(device))
            return
        for start in range(0, total, MAX_CHUNK_PATCHES):
            t = min(MAX_CHUNK_PATCHES, total - start)
            patches = torch.zeros(bsz, t, p, dtype=self.dtype)
            view = patches.numpy()
            for b, (j, n) in enumerate(zip(self.joined, self.counts)):
                hi = min(start + t, n)
                if hi > start:
                    view[b, : hi - start] = j[start * p: hi * p].reshape(-1, p)
            counts = (self.n_complete - start).clamp(min=0, max=t)
            valid = torch.arange(t)[None] < counts[:, None]
            yield patches.to(device), None if bool(valid.all()) else valid.to(device)


def _pad(values: list[torch.Tensor], device) -> torch.Tensor:
    longest = max((len(v) for v in values), default=0)
    out = torch.zeros(len(values), longest, device=device)
    for b, v in enumerate(values):
        out[b, : len(v)] = v.to(device=device, dtype=out.dtype)
    return out
