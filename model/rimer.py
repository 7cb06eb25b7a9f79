"""The Rimer network: RWKV-7 time mix inside Timer's decoder-only patch model.

One module, three forms of the same function:
  * `whole(x)`: all patches of a batch of series at once (training, parity with the original);
  * `append(state, values)`: consume any number of new points per series from a state and
    return the new state (constant memory per series, whatever the history length);
  * `forecast(state, horizon)`: roll the next `horizon` points out patch by patch from a copy,
    never changing the stored state.
All three run `_advance`, so they cannot drift apart.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from model import normalisation
from model.config import RimerConfig
from model.state import RimerState
from model.wkv import wkv7_recurrent

# Patches run through the network per call when consuming a long history: bounds memory.
MAX_CHUNK_PATCHES = 1024


class PositionLimitError(ValueError):
    """The sinusoidal position table has no row for a patch this far into a series."""


class LoRA(nn.Module):
    """Low-rank map D -> rank -> D with an optional activation in between (RWKV-7's LoRAs)."""

    def __init__(self, dim: int, rank: int, activation: nn.Module | None, bias: bool):
        super().__init__()
        self.lora = nn.Sequential(nn.Linear(dim, rank, bias=False),
                                  activation or nn.Identity(),
                                  nn.Linear(rank, dim, bias=bias))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lora(x)


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

    def forward(self, x: torch.Tensor, shift: torch.Tensor, wkv: torch.Tensor,
                v_first: torch.Tensor | None, valid: torch.Tensor | None):
        """x [B, T, D] (after LayerNorm 1); shift [B, D]; wkv [B, H, N, N].

        Returns output [B, T, D], v_first, and the new wkv state.
        """
        bsz, t, d = x.shape
        h, n = self.n_heads, self.head_size
        x_prev = torch.cat([shift[:, None], x[:, :-1]], dim=1)
        xr, xw, xk, xv, xa, xg = (x + (x_prev - x) * self.x_x[:, None, None]).unbind(0)
        r = self.r_proj(xr)
        w = -math.exp(-0.5) * torch.sigmoid(self.w_lora(xw))
        k = self.k_proj(xk)
        v = self.v_proj(xv)
        if self.layer == 0:
            v_first = v
        else:
            v = v + (v_first - v) * torch.sigmoid(self.v_lora(xv))
        a = torch.sigmoid(self.a_lora(xa))
        g = self.g_lora(xg)
        kk = F.normalize((k * self.k_k).view(bsz, t, h, n), dim=-1, p=2.0)
        k = k * (1 + (a - 1) * self.k_a)

        def heads(z):
            return z.view(bsz, t, h, n)

        o, wkv = wkv7_recurrent(heads(r), heads(w), heads(k), heads(v), -kk, kk * heads(a),
                                wkv, valid)
        o = self.g_norm(o.reshape(bsz * t, d)).view(bsz, t, d)
        bonus = (heads(r) * heads(k) * self.r_k).sum(-1, keepdim=True) * heads(v)
        o = o + bonus.reshape(bsz, t, d)
        return self.o_proj(o * g), v_first, wkv


class Block(nn.Module):
    """h + TimeMix(LN1 h), then h + Linear(LN2 h): the original's "channel mix" is one linear map."""

    def __init__(self, cfg: RimerConfig, layer: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.d_model)
        self.attn = TimeMix(cfg, layer)
        self.norm2 = nn.LayerNorm(cfg.d_model)
        self.ffn = nn.Linear(cfg.d_model, cfg.d_model)

    def forward(self, h, shift, wkv, v_first, valid):
        x = self.norm1(h)
        out, v_first, wkv = self.attn(x, shift, wkv, v_first, valid)
        h = h + out
        h = h + self.ffn(self.norm2(h))
        return h, x, wkv, v_first


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
    """What `_advance` returns: the new state and, per patch, the normalised outputs and stats."""

    state: RimerState
    preds: torch.Tensor  # [B, T, P] normalised forecast of the patch after each patch
    stats: torch.Tensor  # [B, T, 2] float64 mean, variance used for each patch


class Rimer(nn.Module):
    def __init__(self, cfg: RimerConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Linear(cfg.patch_len, cfg.d_model, bias=False)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.head = nn.Linear(cfg.d_model, cfg.patch_len)
        if cfg.pos_emb == "sinusoidal":
            self.register_buffer("pe", sinusoidal_table(cfg.max_positions, cfg.d_model),
                                 persistent=False)

    # ---- the network on normalised patches -------------------------------------------------

    def _network(self, xn: torch.Tensor, state: RimerState, valid: torch.Tensor | None):
        """xn [B, T, P] normalised patches -> (outputs [B, T, P], new wkv, new shift)."""
        cfg = self.cfg
        bsz, t, _ = xn.shape
        h = self.embed(xn)
        if cfg.pos_emb == "sinusoidal":
            last = int(state.n_patches.max()) + t if bsz else 0
            if last > cfg.max_positions:
                raise PositionLimitError(
                    f"this model's sinusoidal position embedding covers {cfg.max_positions} "
                    f"patches ({cfg.max_positions * cfg.patch_len} points, forecast included); "
                    f"the input needs {last}")
            pos = state.n_patches[:, None] + torch.arange(t, device=xn.device)[None]
            h = h + self.pe[pos]
        counts = valid.sum(1) if valid is not None else torch.full((bsz,), t, device=xn.device)
        last_idx = (counts - 1).clamp(min=0)
        wkv_out, shift_out = [], []
        v_first = None
        for i, block in enumerate(self.blocks):
            h, x_in, wkv, v_first = block(h, state.shift[i], state.wkv[i], v_first, valid)
            last_in = x_in[torch.arange(bsz, device=xn.device), last_idx]
            shift_out.append(torch.where((counts > 0)[:, None], last_in, state.shift[i]))
            wkv_out.append(wkv)
        return self.head(h), torch.stack(wkv_out), torch.stack(shift_out)

    def _advance(self, state: RimerState, patches: torch.Tensor,
                 valid: torch.Tensor | None = None) -> Advance:
        """Consume complete patches [B, T, P] (data units); valid [B, T] marks real ones, a prefix.

        Normalises (causal statistics are updated patch by patch), runs the network, and returns
        the new state with `next_patch` de-normalised; `tail` is left for the caller to set.
        """
        cfg = self.cfg
        bsz, t, _ = patches.shape
        mask = valid if valid is not None else torch.ones(bsz, t, dtype=torch.bool,
                                                          device=patches.device)
        if cfg.norm == "causal":
            stats = normalisation.causal_update(state.norm, patches, state.n_patches, mask,
                                                cfg.norm_window)
        else:
            stats = state.norm[:, None, :].expand(bsz, t, 2)
        mean = stats[..., 0:1]
        sd = normalisation.scale(stats[..., 1:2], cfg.norm_eps)
        xn = ((patches.double() - mean) / sd).to(patches.dtype)
        preds, wkv, shift = self._network(xn, state, valid)
        counts = mask.sum(1)
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
        )
        return Advance(new_state, preds, stats)

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
        return self._advance(state, x.view(bsz, length // p, p))

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
    def append(self, state: RimerState, values: list[torch.Tensor]) -> RimerState:
        """Consume new points (any number per series, 0 allowed); return the new state.

        Cost is O(new points) and memory is bounded by MAX_CHUNK_PATCHES per call, whatever
        the history. The input state is not modified.
        """
        p = self.cfg.patch_len
        device = state.tail.device
        if len(values) != state.batch:
            raise ValueError(f"{len(values)} value lists for a batch of {state.batch} series")
        joined = [torch.cat([state.tail[b, : int(state.tail_len[b])],
                             values[b].to(device=device, dtype=state.tail.dtype)])
                  for b in range(state.batch)]
        n_complete = torch.tensor([len(j) // p for j in joined], device=device)
        new_tail = torch.zeros_like(state.tail)
        tail_len = torch.tensor([len(j) % p for j in joined], device=device)
        for b, j in enumerate(joined):
            r = int(tail_len[b])
            new_tail[b, :r] = j[len(j) - r:]
        total = int(n_complete.max()) if state.batch else 0
        for start in range(0, total, MAX_CHUNK_PATCHES):
            t = min(MAX_CHUNK_PATCHES, total - start)
            patches = torch.zeros(state.batch, t, p, device=device, dtype=state.tail.dtype)
            for b, j in enumerate(joined):
                lo, hi = start, min(start + t, int(n_complete[b]))
                if hi > lo:
                    patches[b, : hi - lo] = j[lo * p: hi * p].view(-1, p)
            counts = (n_complete - start).clamp(min=0, max=t)
            valid = torch.arange(t, device=device)[None] < counts[:, None]
            state = self._advance(state, patches, None if bool(valid.all()) else valid).state
        return RimerState(wkv=state.wkv, shift=state.shift, n_patches=state.n_patches,
                          tail=new_tail, tail_len=tail_len, norm=state.norm,
                          next_patch=state.next_patch)

    # ---- form 3: forecast rollout ----------------------------------------------------------

    @torch.no_grad()
    def forecast(self, state: RimerState, horizon: int) -> torch.Tensor:
        """The next `horizon` points of each series [B, horizon], autoregressively.

        The model's forecast of the current patch is used for its points not yet seen; the
        completed patch is fed back, and so on. Works on copies: `state` is unchanged.
        """
        p = self.cfg.patch_len
        if horizon < 1:
            raise ValueError("horizon must be at least 1")
        if bool((state.n_patches < 1).any()):
            raise ValueError(f"a forecast needs at least one complete patch ({p} points)")
        r = state.tail_len
        steps = int(((horizon + r + p - 1) // p).max())
        pieces = [state.next_patch]
        cols = torch.arange(p, device=r.device)[None]
        patch = torch.where(cols < r[:, None], state.tail, state.next_patch)
        for _ in range(steps - 1):
            state = self._advance(state, patch[:, None]).state
            patch = state.next_patch
            pieces.append(patch)
        flat = torch.cat(pieces, dim=1)
        idx = r[:, None] + torch.arange(horizon, device=r.device)[None]
        return flat.gather(1, idx)


def _pad(values: list[torch.Tensor], device) -> torch.Tensor:
    longest = max((len(v) for v in values), default=0)
    out = torch.zeros(len(values), longest, device=device)
    for b, v in enumerate(values):
        out[b, : len(v)] = v.to(device=device, dtype=out.dtype)
    return out
