"""The recurrent state of a batch of series: constant size whatever the history length.

One layout is shared by the model, the service's cache and (later) the kernels and snapshots:

| field        | shape                     | dtype   | what it holds                                        |
| ------------ | ------------------------- | ------- | ---------------------------------------------------- |
| `wkv`        | [layers, B, H, hs, hs]    | float32 | RWKV-7 matrix per head, layout [value, key]          |
| `shift`      | [layers, B, D]            | float32 | token shift: last LayerNorm-1 output per layer       |
| `n_patches`  | [B]                       | int64   | complete patches consumed (position, norm warm-up)   |
| `tail`       | [B, P]                    | float32 | points of the incomplete last patch (first tail_len) |
| `tail_len`   | [B]                       | int64   | how many points of `tail` are real, 0 <= . < P       |
| `norm`       | [B, 2]                    | float64 | normalisation statistics: mean, variance             |
| `next_patch` | [B, P]                    | float32 | the model's forecast of the next patch, data units   |

`next_patch` is kept because the forecast of patch n+1 is the output at patch n, which cannot
be recomputed from the recurrent matrices alone without re-reading patch n.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from model.config import RimerConfig

STATE_VERSION = 1


@dataclass
class RimerState:
    wkv: torch.Tensor
    shift: torch.Tensor
    n_patches: torch.Tensor
    tail: torch.Tensor
    tail_len: torch.Tensor
    norm: torch.Tensor
    next_patch: torch.Tensor

    # Fields whose batch dimension is not the first.
    _LAYERED = ("wkv", "shift")

    @classmethod
    def zeros(cls, cfg: RimerConfig, batch: int, device: torch.device | str = "cpu") -> RimerState:
        hs, nh, d, p, nl = cfg.head_size, cfg.n_heads, cfg.d_model, cfg.patch_len, cfg.n_layers
        return cls(
            wkv=torch.zeros(nl, batch, nh, hs, hs, device=device),
            shift=torch.zeros(nl, batch, d, device=device),
            n_patches=torch.zeros(batch, dtype=torch.int64, device=device),
            tail=torch.zeros(batch, p, device=device),
            tail_len=torch.zeros(batch, dtype=torch.int64, device=device),
            norm=torch.zeros(batch, 2, dtype=torch.float64, device=device),
            next_patch=torch.zeros(batch, p, device=device),
        )

    def tensors(self) -> dict[str, torch.Tensor]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @property
    def batch(self) -> int:
        return self.n_patches.shape[0]

    @property
    def length(self) -> torch.Tensor:
        """Points seen per series."""
        return self.n_patches * self.tail.shape[1] + self.tail_len

    def clone(self) -> RimerState:
        return RimerState(**{k: v.clone() for k, v in self.tensors().items()})

    def to(self, device: torch.device | str) -> RimerState:
        return RimerState(**{k: v.to(device) for k, v in self.tensors().items()})

    def select(self, index: torch.Tensor | list[int]) -> RimerState:
        """The states of some series of the batch, as a new batch (copies)."""
        index = torch.as_tensor(index, dtype=torch.int64, device=self.n_patches.device)
        out = {}
        for name, t in self.tensors().items():
            out[name] = t.index_select(1 if name in self._LAYERED else 0, index)
        return RimerState(**out)

    @classmethod
    def cat(cls, states: list[RimerState]) -> RimerState:
        out = {}
        for f in fields(cls):
            dim = 1 if f.name in cls._LAYERED else 0
            out[f.name] = torch.cat([getattr(s, f.name) for s in states], dim=dim)
        return cls(**out)

    def nbytes_per_series(self) -> int:
        """Bytes one series' state occupies; independent of its history length."""
        total = sum(t.numel() * t.element_size() for t in self.tensors().values())
        return total // self.batch
