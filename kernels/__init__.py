"""Fused kernels for the Rimer model.

Without CUDA the Triton kernels run under Triton's interpreter (numpy on the CPU): correct but slow,
for tests only. The variable must be set before ``triton.jit`` decorates anything, so it is set here,
before any kernel module is imported.
"""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from kernels.linear import linear  # noqa: E402
from kernels.wkv7_pool import BLOCK_V, NUM_WARPS, wkv7_pool_step  # noqa: E402

__all__ = ["BLOCK_V", "NUM_WARPS", "linear", "wkv7_pool_step"]
