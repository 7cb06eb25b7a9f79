"""Programmatic dependent launch (PDL) for the one-patch step's kernels, on Hopper and newer.

A small step is a chain of 16 short kernels; between two of them the GPU normally drains the first
grid before it starts launching the next. With PDL (a launch attribute, kept in CUDA graphs) the
next kernel is launched while the current one runs, and ``griddepcontrol.wait``, before a kernel's
first read of anything the step writes, holds it until the previous grid has finished and its
writes are visible. A kernel reads its weights (and what only earlier launches write, such as the
recurrent state) before the wait, so launch latency and those loads overlap the previous kernel,
while every kernel still sees all of its predecessors' results: results are bit for bit those
without PDL (the same loads and arithmetic, in another order in time).

Off under Triton's interpreter (no inline PTX there), before sm_90, and where the launch settings
say so (`KernelSettings.pdl`, kernels/settings.py; ``RIMER_PDL=0`` by default; the benchmark runs
both settings side by side).
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl


@functools.cache
def supported() -> bool:
    """PDL can be used here: CUDA, compiled kernels (not the interpreter), sm_90 or newer."""
    return (torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET", "0") != "1"
            and torch.cuda.get_device_capability() >= (9, 0))


def kwargs(enabled: bool) -> dict:
    """Everything a step kernel's launch passes: its PDL flag (a constexpr, so the wait compiles
    away when off) with the launch attribute. `enabled` must imply `supported()`."""
    return {"PDL": True, "launch_pdl": True} if enabled else {"PDL": False}


@triton.jit
def wait_then_release(PDL: tl.constexpr):
    """Wait for the previous grid, then let the next one launch.

    Called before a kernel's first read of anything a kernel of the step writes. Reads before it
    overlap the previous kernel, so they are kept to what no such kernel can be writing: the
    model's weights, the step's inputs (written before the graph), and what only a launch at least
    two back writes: a kernel launches only once every program of the one before it has passed
    this wait, so all earlier grids are complete by then. (A launch without PDL, such as a PyTorch
    op, starts after its predecessor completes, and the next PDL launch after it.)"""
    if PDL:
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()
