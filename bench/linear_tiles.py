"""The grouped linear kernel by row tile: is a smaller tile faster for one-row steps, and does it
keep every row's bits?

    python -m bench.linear_tiles [--out bench/out/linear_tiles.json]

Why: at one series the step's eight grouped linears take 35 of its 51 µs of kernel time on an H100
(bench/RESULTS.md), each running a 64-row `tl.dot` tile for one row. A smaller tile could be
faster, but it may only be pinned if a row's result is the same bits whatever the tile and
whatever the batch (the backend's bit-identity promise). This measures both, for maps shaped like
the shipped general models' (K = 64 and 128 inputs, four 64-column groups with tanh, sigmoid and
no activation): time per call at M = 1, 16, 256, 4096, 32768 rows for tiles of 16, 32 and 64
rows, and whether the first rows' outputs are bit-equal across tiles and to a one-row call.

On a GPU: triton.testing.do_bench medians. Without CUDA: a tiny smoke run under Triton's
interpreter (times meaningless; the bit checks still run). Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import platform
from pathlib import Path

import torch

import kernels  # noqa: F401  (sets TRITON_INTERPRET without CUDA, before triton is imported)
from bench.common import timer, write_json
from kernels.fused import grouped_linear, pack_groups
from kernels.settings import KernelSettings

TILES = (16, 32, 64)


def make_groups(k: int, device: str):
    g = torch.Generator(device="cpu").manual_seed(k)
    groups = [(torch.randn(64, k, generator=g) / k ** 0.5, torch.randn(64, generator=g), (0, 0), act)
              for act in (None, "tanh", "sigmoid", None)]
    return pack_groups([(w.to(device), b.to(device), pc, act) for w, b, pc, act in groups], k, device)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="bench/out/linear_tiles.json")
    args = ap.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    sizes = (1, 16, 256, 4096, 32768) if device == "cuda" else (1, 3)
    measure = timer(device, warmup=10, rep=50, cpu_reps=1)
    pinned_m = KernelSettings.from_env().block_m  # the pinned tile (RIMER_LINEAR_BLOCK_M)
    result = {"device": torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu",
              "mode": "gpu" if device == "cuda" else "cpu-interpreter-smoke", "pinned_block_m": pinned_m,
              "cases": []}
    for k in (64, 128):
        g = make_groups(k, device)
        x = torch.randn(max(sizes), k, device=device, generator=torch.Generator(device=device).manual_seed(1))
        one_pinned = grouped_linear(x[:1], g)  # row 0 alone, pinned tile: what every call must give
        for m in sizes:
            row = {"K": k, "M": m}
            outs = {}
            for bm in TILES:
                xm = x[:m]
                outs[bm] = grouped_linear(xm, g, block_m=bm)
                row[f"us_block_m{bm}"] = measure(
                    lambda xm=xm, g=g, bm=bm: grouped_linear(xm, g, block_m=bm)) * 1e6
            first = min(m, 16)
            row["rows_equal_across_tiles"] = all(torch.equal(outs[bm][:first], outs[pinned_m][:first])
                                                 for bm in TILES)
            row["row0_equals_one_row_call"] = all(torch.equal(outs[bm][:1], one_pinned) for bm in TILES)
            result["cases"].append(row)
            print(row, flush=True)
    print(f"\ndevice: {result['device']}  (pinned block_m {pinned_m})")
    print(f"{'K':>4} {'M':>6} " + " ".join(f"{'bm=' + str(bm) + ' us':>11}" for bm in TILES)
          + "  rows equal across tiles  row 0 = one-row call (pinned tile)")
    for r in result["cases"]:
        print(f"{r['K']:4d} {r['M']:6d} " + " ".join(f"{r[f'us_block_m{bm}']:11.1f}" for bm in TILES)
              + f"  {str(r['rows_equal_across_tiles']):>23}  {str(r['row0_equals_one_row_call']):>20}")
    write_json(Path(args.out), result)
    return result


if __name__ == "__main__":
    main()
