"""Speed of the Triton RWKV-7 pool kernel, next to the copy bandwidth and PyTorch eager.

    python -m bench.kernels [--out bench/out/kernels.json] [--sweep] [--smoke]

On a GPU: decode (T = 1) at H = 8, N = 64 for B = 1, 256, 4096, 32768 series, each in a pool of B
slots named in a random permutation, and prefill of 64 series x 1024 steps. Per case: the kernel's
time (triton.testing.do_bench, median), the state bandwidth it achieves (bytes of state read and
written / time; the per-step vectors are reported apart), the device-to-device copy bandwidth
measured in the same run for scale, PyTorch eager (model.wkv.wkv7_recurrent with a gather of
pool[slots] and a scatter back) and, if `fla` imports, fla's fused recurrent RWKV-7 (same gather and
scatter). Correctness: the kernel against a float64 run of wkv7_recurrent (on up to 256 series).
--sweep also times other launch configurations (rows per program, warps; the kernel's own default
stays pinned). fla: raw (its states already a contiguous batch) and with the gather from and
scatter to a state pool that a server needs; its outputs are compared with ours.

Without CUDA only a tiny smoke configuration runs, under Triton's interpreter: it checks that the
benchmark and the kernel run and agree; its times are meaningless and say nothing of the GPU.
Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch
import torch.nn.functional as F

# kernels sets TRITON_INTERPRET when there is no CUDA, so triton is imported after it (in functions).
from bench.common import copy_bandwidth, timer, write_json
from kernels import BLOCK_V, NUM_WARPS, wkv7_pool_step
from model.wkv import wkv7_recurrent

CHECK_SERIES = 256


def try_fla():
    """fla-core's fused recurrent RWKV-7 (`fused_mul_recurrent_rwkv7`, which takes kk and the
    in-context learning rate as RWKV-7 produces them), if installed; else None and why."""
    try:
        from fla.ops.rwkv7 import fused_mul_recurrent_rwkv7
        return fused_mul_recurrent_rwkv7, None
    except Exception as e:  # noqa: BLE001 - any import failure just means "not available"
        return None, f"{type(e).__name__}: {e}"


def make_case(bsz: int, t: int, h: int, n: int, device: str, seed: int = 0):
    g = torch.Generator(device=device).manual_seed(seed)

    def rnd(*shape):
        return torch.randn(*shape, generator=g, device=device)

    kk = F.normalize(rnd(bsz, t, h, n), dim=-1)
    alpha = torch.rand(bsz, t, h, n, generator=g, device=device)
    x = [rnd(bsz, t, h, n), -0.6 * torch.sigmoid(rnd(bsz, t, h, n)), rnd(bsz, t, h, n),
         rnd(bsz, t, h, n), -kk, kk * alpha]
    pool = 0.3 * rnd(bsz, 1, h, n, n)
    slots = torch.randperm(bsz, generator=g, device=device)
    lengths = torch.full((bsz,), t, dtype=torch.int32, device=device)
    return x, pool, slots, lengths, (kk, alpha)


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    actual, expected = actual.double(), expected.double()
    diff = actual - expected
    return float(max(diff.norm() / expected.norm(), diff.abs().max() / expected.abs().max()))


def check(x, pool, slots, lengths) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """The kernel on a copy of the pool against float64 wkv7_recurrent on the first series; also
    returns the kernel's outputs and new states of those series, for comparing fla with."""
    m = min(CHECK_SERIES, slots.shape[0])
    sub = [z[:m] for z in x]
    work = pool.clone()
    o = wkv7_pool_step(*sub, work, slots[:m], 0, lengths[:m])
    state = work[slots[:m], 0]
    o_ref, s_ref = wkv7_recurrent(*(z.double() for z in sub), pool[slots[:m], 0].double())
    out = {"series_checked": m, "max_rel_err_o": rel_err(o, o_ref),
           "max_rel_err_state": rel_err(state, s_ref)}
    return out, o, state


def run_case(name: str, bsz: int, t: int, h: int, n: int, device: str, measure, copy_bw: float,
             fla_fn) -> dict:
    x, pool, slots, lengths, (kk, alpha) = make_case(bsz, t, h, n, device)
    errors, o_mine, s_mine = check(x, pool, slots, lengths)
    row = {"case": name, "B": bsz, "T": t, "H": h, "N": n, **errors}
    state_bytes = bsz * h * n * n * 4 * 2          # the state read once and written once
    io_bytes = bsz * t * h * n * 4 * 7             # r w k v a b read, o written
    row["state_bytes"], row["io_bytes"] = state_bytes, io_bytes

    sec = measure(lambda: wkv7_pool_step(*x, pool, slots, 0, lengths))
    row["kernel_us"] = sec * 1e6
    row["kernel_state_gbps"] = state_bytes / sec / 1e9
    row["kernel_total_gbps"] = (state_bytes + io_bytes) / sec / 1e9
    row["kernel_state_frac_of_copy"] = state_bytes / sec / copy_bw

    def eager():
        o, s = wkv7_recurrent(*x, pool[slots, 0])
        pool[slots, 0] = s
        return o

    sec = measure(eager)
    row["eager_us"] = sec * 1e6
    row["speedup_vs_eager"] = row["eager_us"] / row["kernel_us"]

    if fla_fn is not None:
        try:
            row.update(time_fla(fla_fn, x, kk, alpha, pool, slots, (o_mine, s_mine), measure,
                                row["kernel_us"]))
        except Exception as e:  # noqa: BLE001 - a version mismatch should not sink the benchmark
            row["fla_error"] = f"{type(e).__name__}: {e}"[:300]
    return row


def time_fla(fla_fn, x, kk, alpha, pool, slots, mine, measure, kernel_us: float) -> dict:
    """fla's kernel raw (states already a contiguous batch) and as a server would use it with a
    state pool: gather pool[slots], step, scatter back. fla keeps a state as [K, V], ours [V, K].
    mine: our kernel's outputs and new states of the first series (from `check`), which fla's
    must match for the comparison to be of the same computation."""
    r, w, k, v = x[:4]
    out = {}
    o_mine, s_mine = mine
    m = o_mine.shape[0]
    s0 = pool[slots[:m], 0].transpose(-1, -2).contiguous()
    o_fla, s_fla = fla_fn(r[:m], w[:m], k[:m], v[:m], kk[:m], alpha[:m], scale=1.0,
                          initial_state=s0, output_final_state=True)
    out["fla_vs_ours_rel_diff_o"] = rel_err(o_fla, o_mine)
    out["fla_vs_ours_rel_diff_state"] = rel_err(s_fla.transpose(-1, -2), s_mine)
    del s0, o_fla, s_fla

    batch = pool[slots, 0].transpose(-1, -2).contiguous()
    out["fla_raw_us"] = measure(lambda: fla_fn(r, w, k, v, kk, alpha, scale=1.0, initial_state=batch,
                                               output_final_state=True)) * 1e6

    def fla_pool():
        s_in = pool[slots, 0].transpose(-1, -2).contiguous()
        o, s_out = fla_fn(r, w, k, v, kk, alpha, scale=1.0, initial_state=s_in, output_final_state=True)
        pool[slots, 0] = s_out.transpose(-1, -2)
        return o

    out["fla_pool_us"] = measure(fla_pool) * 1e6
    out["speedup_vs_fla_raw"] = out["fla_raw_us"] / kernel_us
    out["speedup_vs_fla_pool"] = out["fla_pool_us"] / kernel_us
    return out


def sweep_case(name: str, bsz: int, t: int, device: str, measure, copy_bw: float) -> list[dict]:
    x, pool, slots, lengths, _ = make_case(bsz, t, 8, 64, device)
    state_bytes = bsz * 8 * 64 * 64 * 4 * 2
    rows = []
    for bv, nw in ((32, 2), (32, 4), (64, 2), (64, 4), (64, 8)):
        sec = measure(lambda bv=bv, nw=nw: wkv7_pool_step(*x, pool, slots, 0, lengths, block_v=bv,
                                                          num_warps=nw))
        rows.append({"case": name, "B": bsz, "T": t, "block_v": bv, "num_warps": nw, "us": sec * 1e6,
                     "state_frac_of_copy": state_bytes / sec / copy_bw,
                     "pinned": (bv, nw) == (BLOCK_V, NUM_WARPS)})
    return rows


SWEEP_CASES = (("decode", 4096, 1), ("decode", 32768, 1), ("prefill", 64, 1024))


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="bench/out/kernels.json")
    ap.add_argument("--smoke", action="store_true", help="tiny configuration even on a GPU")
    ap.add_argument("--sweep", action="store_true", help="also time other launch configurations (GPU)")
    args = ap.parse_args(argv)
    import triton

    device = "cuda" if torch.cuda.is_available() else "cpu"
    smoke = args.smoke or device == "cpu"
    measure = timer(device, warmup=25, rep=100, cpu_reps=3)
    fla_fn, fla_why = try_fla()
    if device == "cpu":
        fla_fn = None  # fla needs a GPU

    result = {
        "device": torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu",
        "mode": ("cpu-interpreter-smoke" if device == "cpu" else "gpu-smoke" if smoke else "gpu"),
        "torch": torch.__version__, "triton": triton.__version__,
        "pinned_config": {"block_v": BLOCK_V, "num_warps": NUM_WARPS},
        "fla": "available" if fla_fn is not None else f"not used ({fla_why or 'no GPU'})",
    }
    if device == "cpu":
        print("NOTE: no CUDA: tiny smoke configuration under TRITON_INTERPRET=1; "
              "CPU times below are meaningless (numpy interpreter), only the errors mean anything.")
    copy_bw = copy_bandwidth(device, measure, cpu_elems=1 << 22)
    result["copy_gbps"] = copy_bw / 1e9

    if smoke:
        h, n = (2, 16) if device == "cpu" else (8, 64)
        cases = [("decode", 1, 1), ("decode", 4, 1), ("prefill", 2, 16)]
    else:
        h, n = 8, 64
        cases = [("decode", 1, 1), ("decode", 256, 1), ("decode", 4096, 1), ("decode", 32768, 1),
                 ("prefill", 64, 1024)]
    rows = []
    for name, bsz, t in cases:
        row = run_case(name, bsz, t, h, n, device, measure, copy_bw, fla_fn)
        rows.append(row)
        if device == "cuda":
            torch.cuda.empty_cache()
        print(json.dumps({k: (float(f"{v:.4g}") if isinstance(v, float) else v) for k, v in row.items()}),
              flush=True)
    result["cases"] = rows
    if args.sweep and device == "cuda":
        result["sweep"] = [r for name, bsz, t in SWEEP_CASES
                           for r in sweep_case(name, bsz, t, device, measure, copy_bw)]

    print(f"\ndevice: {result['device']}  mode: {result['mode']}  triton {result['triton']}  "
          f"torch {result['torch']}  fla: {result['fla']}")
    print(f"device-to-device copy: {copy_bw / 1e9:.1f} GB/s (read + write)")
    head = (f"{'case':8} {'B':>6} {'T':>5} {'kernel us':>11} {'state GB/s':>10} {'of copy':>8} "
            f"{'eager us':>11} {'speedup':>8} {'fla raw':>9} {'fla pool':>9} {'x fla pool':>10} "
            f"{'err o':>9} {'err S':>9}")
    print(head)
    for r in rows:
        fla = (f"{r['fla_raw_us']:9.1f} {r['fla_pool_us']:9.1f} {r['speedup_vs_fla_pool']:10.2f}"
               if "fla_pool_us" in r else f"{'-':>9} {'-':>9} {'-':>10}")
        print(f"{r['case']:8} {r['B']:6d} {r['T']:5d} {r['kernel_us']:11.1f} {r['kernel_state_gbps']:10.1f} "
              f"{r['kernel_state_frac_of_copy']:8.1%} {r['eager_us']:11.1f} {r['speedup_vs_eager']:8.2f} "
              f"{fla} {r['max_rel_err_o']:9.2e} {r['max_rel_err_state']:9.2e}")
    if result.get("sweep"):
        print("\nlaunch configurations (pinned one marked *):")
        for s in result["sweep"]:
            mark = "*" if s["pinned"] else " "
            print(f"{mark} {s['case']:8} B={s['B']:5d} T={s['T']:5d} block_v={s['block_v']:3d} "
                  f"warps={s['num_warps']}  {s['us']:10.1f} us  "
                  f"{s['state_frac_of_copy']:7.1%} of copy")
    out = Path(args.out)
    write_json(out, result)
    return result


if __name__ == "__main__":
    main()
