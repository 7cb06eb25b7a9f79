"""The recurrent state of a batch of series: constant size whatever the history length.

One layout, batch first in every field, is shared by the model, the service's cache and the
kernels: a pool of preallocated states on the GPU *is* a `RimerState` with B = slots, and the
Triton kernel (kernels/wkv7_pool.py) updates `pool.wkv[slots]` in place.

| field        | shape                     | dtype   | what it holds                                        |
| ------------ | ------------------------- | ------- | ---------------------------------------------------- |
| `wkv`        | [B, layers, H, hs, hs]    | float32 | RWKV-7 matrix per head, layout [value, key]          |
| `shift`      | [B, layers, D]            | float32 | token shift: last LayerNorm-1 output per layer       |
| `n_patches`  | [B]                       | int64   | complete patches consumed (position, norm warm-up)   |
| `tail`       | [B, P]                    | float32 | points of the incomplete last patch (first tail_len) |
| `tail_len`   | [B]                       | int64   | how many points of `tail` are real, 0 <= . < P       |
| `norm`       | [B, 2]                    | float64 | normalisation statistics: mean, variance             |
| `next_patch` | [B, P]                    | float32 | the model's forecast of the next patch, data units   |
| `history`    | [B, history_len]          | float32 | the last points of complete patches (lag models only)|
| `quantile_offsets` | [B, Q P]            | float32 | the quantile head's output at the last patch        |
| `calib`      | [B, tracked levels]       | float64 | interval calibration: alpha minus nominal per level  |

`next_patch` is kept because the forecast of patch n+1 is the output at patch n, which cannot
be recomputed from the recurrent matrices alone without re-reading patch n.

A state gathered from a pool for an in-place step (`select(..., wkv=False)`) has `wkv = None`:
its matrices stay in the pool, where the kernel reads and writes them.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from model import calibration
from model.config import RimerConfig

STATE_VERSION = 2  # 2: batch-first wkv and shift (1 had the layer dimension first)


@dataclass
class RimerState:
    wkv: torch.Tensor | None
    shift: torch.Tensor
    n_patches: torch.Tensor
    tail: torch.Tensor
    tail_len: torch.Tensor
    norm: torch.Tensor
    next_patch: torch.Tensor
    history: torch.Tensor | None = None  # only for a config with lag_window (None otherwise)
    quantile_offsets: torch.Tensor | None = None  # only for a config with quantiles (None otherwise)
    calib: torch.Tensor | None = None  # the intervals' calibration (model/calibration.py), likewise

    @classmethod
    def zeros(cls, cfg: RimerConfig, batch: int, device: torch.device | str = "cpu") -> RimerState:
        hs, nh, d, p, nl = cfg.head_size, cfg.n_heads, cfg.d_model, cfg.patch_len, cfg.n_layers
        return cls(
            wkv=torch.zeros(batch, nl, nh, hs, hs, device=device),
            shift=torch.zeros(batch, nl, d, device=device),
            n_patches=torch.zeros(batch, dtype=torch.int64, device=device),
            tail=torch.zeros(batch, p, device=device),
            tail_len=torch.zeros(batch, dtype=torch.int64, device=device),
            norm=torch.zeros(batch, 2, dtype=torch.float64, device=device),
            next_patch=torch.zeros(batch, p, device=device),
            history=torch.zeros(batch, cfg.history_len, device=device) if cfg.lag_window else None,
            quantile_offsets=(torch.zeros(batch, p * len(cfg.quantiles), device=device)
                              if cfg.quantiles else None),
            calib=(torch.zeros(batch, len(calibration.TRACKED), dtype=torch.float64, device=device)
                   if cfg.quantiles else None),
        )

    def tensors(self) -> dict[str, torch.Tensor]:
        """The fields that are held here (all but `wkv` when it stays in a pool)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}

    @property
    def batch(self) -> int:
        return self.n_patches.shape[0]

    @property
    def length(self) -> torch.Tensor:
        """Points seen per series."""
        return self.n_patches * self.tail.shape[1] + self.tail_len

    def clone(self) -> RimerState:
        return RimerState(**{**self._nones(), **{k: v.clone() for k, v in self.tensors().items()}})

    def to(self, device: torch.device | str) -> RimerState:
        return RimerState(**{**self._nones(), **{k: v.to(device) for k, v in self.tensors().items()}})

    def select(self, index: torch.Tensor | list[int], wkv: bool = True) -> RimerState:
        """The states of some series (rows) of the batch, as a new batch (copies).

        wkv=False leaves the matrices out (`wkv = None`): for steps that update them in place.
        """
        index = torch.as_tensor(index, dtype=torch.int64, device=self.n_patches.device)
        out = {name: t.index_select(0, index) for name, t in self.tensors().items()
               if wkv or name != "wkv"}
        return RimerState(**{**self._nones(), **out})

    def write_(self, index: torch.Tensor, other: RimerState) -> None:
        """In place: rows `index` of this batch take `other`'s values (fields other holds)."""
        for name, t in other.tensors().items():
            getattr(self, name).index_copy_(0, index, t)

    def copy_rows_(self, src: torch.Tensor, dst: torch.Tensor) -> None:
        """In place: rows `dst` become copies of rows `src` (distinct rows, src and dst disjoint)."""
        for t in self.tensors().values():
            t.index_copy_(0, dst, t.index_select(0, src))

    @classmethod
    def cat(cls, states: list[RimerState]) -> RimerState:
        return cls(**{f.name: None if getattr(states[0], f.name) is None
                      else torch.cat([getattr(s, f.name) for s in states]) for f in fields(cls)})

    # ---- the state's own rules (what an append or a forecast may do, without the network) ----

    def without_wkv(self) -> RimerState:
        """The same state without its matrices (`wkv = None`; the other fields shared, not copied):
        what an append that completes no patch, or a step that keeps the matrices in a pool, reads."""
        return RimerState(**{**self.tensors(), "wkv": None})

    def completes_patch(self, counts: torch.Tensor | list[int]) -> torch.Tensor:
        """[B] bool: whether appending counts[b] points to row b completes at least one patch
        (otherwise only its tail changes: `extend_tail`)."""
        counts = torch.as_tensor(counts, dtype=self.tail_len.dtype, device=self.tail_len.device)
        return self.tail_len + counts >= self.tail.shape[1]

    def extend_tail(self, values: list[torch.Tensor]) -> RimerState:
        """A new state with values[b] appended to row b's tail, for appends that complete no patch:
        the matrices, statistics and forecasts do not change then, so this gives the bits
        `Rimer.append` gives without running the network (the tail's unused points stay zero).
        Raises ValueError where a row's points would complete a patch."""
        if len(values) != self.batch:
            raise ValueError(f"{len(values)} value lists for a batch of {self.batch} series")
        counts = [len(v) for v in values]
        if bool(self.completes_patch(counts).any()):
            raise ValueError("an append completes a patch: it needs the network (Rimer.append)")
        tail, tail_len = self.tail.clone(), self.tail_len.clone()
        starts = self.tail_len.tolist()
        for b, (v, start) in enumerate(zip(values, starts)):
            if len(v):
                tail[b, start: start + len(v)] = torch.as_tensor(v, dtype=tail.dtype).to(tail.device)
        tail_len += torch.tensor(counts, dtype=tail_len.dtype, device=tail_len.device)
        return RimerState(**{**self._nones(), **self.tensors(), "tail": tail, "tail_len": tail_len})

    def forecastable(self, horizon: int, cfg: RimerConfig) -> torch.Tensor:
        """[B] bool: whether `Rimer.forecast(state, horizon)` may run for each row: at least one
        complete patch, and for a sinusoidal model a position for every patch its rollout feeds
        back (the table covers `cfg.max_positions` patches, history and forecast together)."""
        if horizon < 1:
            raise ValueError("horizon must be at least 1")
        ok = self.n_patches >= 1
        if cfg.pos_emb == "sinusoidal":
            p = self.tail.shape[1]
            rollout = (horizon + self.tail_len + p - 1) // p - 1  # patches fed back
            ok = ok & (self.n_patches + rollout <= cfg.max_positions)
        return ok

    def nbytes_per_series(self) -> int:
        """Bytes one series' state occupies; independent of its history length."""
        total = sum(t.numel() * t.element_size() for t in self.tensors().values())
        return total // self.batch

    def recent(self, row: int = 0) -> list[float]:
        """The last points row `row` still holds, oldest first: the incomplete patch, after up to
        `history_len` points of complete patches where the model keeps them (lag models)."""
        tail = self.tail[row, : int(self.tail_len[row])]
        if self.history is None:
            return tail.tolist()
        kept = min(int(self.n_patches[row]) * self.tail.shape[1], self.history.shape[1])
        held = self.history[row, self.history.shape[1] - kept:]
        return torch.cat([held.to(tail.dtype), tail]).tolist()

    def _nones(self) -> dict[str, None]:
        return {f.name: None for f in fields(self)}


class BatchRow(RimerState):
    """Row `b` of a batch state (`rows_of = (batch, b)`), its fields made as views of the
    batch's only when first read. A bulk ingest's series step together again every patch, on
    the batch they were split from (service/engine/resident.py `rows_of`), so their rows are
    seldom read one by one: splitting every field of every row after each step cost ~0.5 ms of
    a 1,000-series request. The batch must be contiguous and never change (states never do)."""

    def __init__(self, batch: RimerState, b: int):  # (no dataclass __init__: fields come later)
        self.rows_of = (batch, b)

    def _materialise(self) -> None:
        batch, b = self.rows_of
        held = self.__dict__
        for f in fields(RimerState):
            if f.name not in held:  # (a field set on the row stays as set)
                t = getattr(batch, f.name)
                held[f.name] = None if t is None else t[b: b + 1]


class _RowField:
    """A non-data descriptor: read while the row's `__dict__` lacks the field, so only once."""

    def __init__(self, name: str):
        self.name = name

    def __get__(self, row, owner=None):
        if row is None:
            return self
        row._materialise()
        return row.__dict__[self.name]


for _field in fields(RimerState):
    setattr(BatchRow, _field.name, _RowField(_field.name))

