"""How the triton backend's step kernels are launched: one frozen settings object, passed down.

The pool runner (runtime/pool.py) holds a `KernelSettings` and hands it to every launch function
(kernels/fused.py, block_out.py, step_io.py); a launch function given none uses
`KernelSettings.from_env()`, read when it is called. A row's bits are promised under one setting:
a runner keeps its settings for its lifetime.

The environment variables stay the default source (the GPU benchmark runs one process per
setting, bench/gpu_check.sh):

  RIMER_FUSE_LN=0          the block's LayerNorms and the LoRA up maps as launches of their own
                           (seven per block) instead of inside the linear maps that read them
  RIMER_FUSE_OUT=0         o_proj and the channel mix as two launches (kernels/block_out.py fuses
                           them, with the step's epilogue in the last block; needs fuse_ln)
  RIMER_LINEAR_BLOCK_M     the grouped linears' and block_out's row tile: 16, 32 or 64 (default)
  RIMER_WKV_WARPS          warps of the recurrence kernel for 64-wide heads: 4 (default) or 8
  RIMER_PDL=0              no programmatic dependent launch (kernels/pdl.py; used only where the
                           hardware supports it whatever this says)

kernels/linear.py's `USE_DOT` is not here: it follows TRITON_INTERPRET, which must be set before
Triton is imported (kernels/__init__.py), so it is fixed at import.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

BLOCK_MS = (16, 32, 64)
WKV_WARPS = (4, 8)


@dataclass(frozen=True)
class KernelSettings:
    fuse_ln: bool = True
    fuse_out: bool = True
    block_m: int = 64
    wkv_warps: int = 4
    pdl: bool = True

    def __post_init__(self):
        if self.block_m not in BLOCK_MS:
            raise ValueError(f"RIMER_LINEAR_BLOCK_M must be 16, 32 or 64, not {self.block_m}")
        if self.wkv_warps not in WKV_WARPS:
            raise ValueError(f"RIMER_WKV_WARPS must be 4 or 8, not {self.wkv_warps}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> KernelSettings:
        """The settings the RIMER_* variables of `environ` (default: os.environ, now) ask for."""
        env = os.environ if environ is None else environ
        return cls(fuse_ln=env.get("RIMER_FUSE_LN", "1") != "0",
                   fuse_out=env.get("RIMER_FUSE_OUT", "1") != "0",
                   block_m=int(env.get("RIMER_LINEAR_BLOCK_M", "64")),
                   wkv_warps=int(env.get("RIMER_WKV_WARPS", "4")),
                   pdl=env.get("RIMER_PDL", "1") != "0")

    @property
    def out_in_one(self) -> bool:
        """o_proj and the channel mix in one launch (block_out): fuse_out, with fuse_ln."""
        return self.fuse_ln and self.fuse_out

    @property
    def pdl_on(self) -> bool:
        """Whether the step's kernels use PDL: asked for, and supported here (kernels/pdl.py)."""
        from kernels import pdl

        return self.pdl and pdl.supported()

    @property
    def launch(self) -> dict:
        """What a step kernel's launch passes: its PDL flag (a constexpr, so the wait compiles away
        when off) with the launch attribute."""
        from kernels import pdl

        return pdl.kwargs(self.pdl_on)

    @property
    def out_warps(self) -> int:
        """block_out's warps per program, pinned with the row tile: at 64 rows and 4 warps the
        compiler spills (440 bytes per thread at D = 64, 56 at 32 rows; bench/compile_check.py);
        8 warps do not; at 16 rows 4 do not."""
        return 4 if self.block_m == 16 else 8

    def describe(self) -> dict:
        """The settings as the benchmarks record them (the effective PDL and fuse_out)."""
        return {"pdl": self.pdl_on, "linear_block_m": self.block_m, "fuse_ln": self.fuse_ln,
                "fuse_out": self.out_in_one, "wkv_warps": self.wkv_warps}


def or_default(settings: KernelSettings | None) -> KernelSettings:
    """`settings`, or the environment's when None (read now)."""
    return KernelSettings.from_env() if settings is None else settings
