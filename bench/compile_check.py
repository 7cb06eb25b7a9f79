"""Compile the one-patch step's new kernels for an H100 (sm_90) on a machine without a GPU.

    python -m bench.compile_check      (a few minutes on a CPU)

The CPU tests run the kernels under Triton's interpreter, which accepts code the compiler refuses
(shapes, types, constexpr arithmetic). This runs Triton's real front end and ptxas for the step's
kernels with PDL on (and the pool recurrence of bench/kernels.py): the grouped linear plain and
with its input LayerNorm'd on load (LayerNorm 2; LayerNorm 1 with the token shift, in the
one-patch step and in a chunk), the fused recurrence,
the block's last launch (kernels/block_out.py), the prologue and epilogue (kernels/step_io.py)
and `ln_mix` with and without its shift write, at the shipped models' shapes and the tests' tiny
one, and prints registers and the stack (spills) per kernel (from cuobjdump). It checks that they
build, not that they run: bench/gpu_check.sh does that on a GPU.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

os.environ["TRITON_INTERPRET"] = "0"  # compiled kernels: set before kernels (and triton.jit) load

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from kernels import block_out, fused, step_io, wkv7_pool  # noqa: E402
from kernels.settings import KernelSettings  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)
I64, F64 = "*i64", "*fp64"
PROLOGUE_TYPES = {"counts_ptr": I64, "slots_ptr": I64, "tail_len_ptr": I64, "n_patches_ptr": I64,
                  "norm_ptr": F64, "consts_ptr": F64, "stats_ptr": F64, "new_len_ptr": I64, "done_ptr": I64,
                  "new_n_ptr": I64}
EPILOGUE_TYPES = {"consts_ptr": F64, "counts_ptr": I64, "slots_ptr": I64, "stats_ptr": F64,
                  "new_len_ptr": I64, "done_ptr": I64, "new_n_ptr": I64, "norm_ptr": F64,
                  "n_patches_ptr": I64, "tail_len_ptr": I64}
LN_MIX_TYPES = {"keep_slots_ptr": I64, "keep_flags_ptr": I64, "M": "i32", "T": "i32", "eps": "fp32"}
LINEAR_TYPES = {"plane_ptr": I64, "col_ptr": I64, "act_ptr": "*i32", "keep_slots_ptr": I64, "up_row_ptr": I64,
                "keep_flags_ptr": I64, "M": "i32", "N": "i32", "T": "i32", "eps": "fp32"}
POOL_TYPES = {"slots_ptr": I64, "lengths_ptr": "*i32", "layer": "i32", "T": "i32"}
BLOCK_OUT_TYPES = {"M": "i32", "eps": "fp32", "consts_ptr": F64, "counts_ptr": I64, "slots_ptr": I64,
                   "stats_ptr": F64, "new_len_ptr": I64, "done_ptr": I64, "new_n_ptr": I64, "norm_ptr": F64,
                   "n_patches_ptr": I64, "tail_len_ptr": I64}
WKV_TYPES = {"slots_ptr": I64, "lengths_ptr": I64, "layer": "i32", "T": "i32", "decay_scale": "fp32",
             "eps": "fp32"}
# (patch_len, d_model, layers, causal, sinusoidal): tiny (tests), rimer-general, rimer-small, the original
SHAPES = [(8, 32, 2, True, False), (32, 64, 2, True, False), (32, 128, 2, True, False),
          (32, 256, 2, True, False), (32, 512, 1, False, True)]


def build(fn, types: dict, constexprs: dict, options: dict) -> str:
    """Compile `fn`; returns cuobjdump's resource line (registers, stack, local memory)."""
    signature = {name: "constexpr" if name in constexprs else
                 types.get(name, "*fp32" if name.endswith("_ptr") else "i64") for name in fn.arg_names}
    kernel = triton.compile(ASTSource(fn=fn, signature=signature, constexprs=constexprs), target=TARGET,
                            options=options)
    from triton.backends.nvidia import compiler as nvidia
    cuobjdump = os.path.join(os.path.dirname(nvidia.__file__), "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(kernel.asm["cubin"])
        f.flush()
        out = subprocess.run([cuobjdump, "-res-usage", f.name], capture_output=True, text=True).stdout
    return next((line.strip() for line in out.splitlines() if "REG:" in line), "built (no cuobjdump)")


def main() -> int:
    failed = 0
    settings = KernelSettings.from_env()  # the row tile and warps the runner would launch with
    for p, d, layers, causal, pe in SHAPES:
        bp, bd = triton.next_power_of_2(p), triton.next_power_of_2(d)
        ends = {"num_warps": step_io.NUM_WARPS, "enable_fp_fusion": step_io.FP_FUSION}
        lin = dict(K=d, HAS_BIAS=True, HAS_RES=False, UP=False, N_UP=fused.BLOCK_N, LN=0, SHIFT_ONLY=False,
                   WRITE_LN=False, KEEP=False,
                   PRECISION=fused.PRECISION, USE_DOT=True, BLOCK_M=settings.block_m, BLOCK_N=fused.BLOCK_N,
                   BLOCK_K=fused.BLOCK_K, PDL=True)
        lin_opts = {"num_warps": fused.LINEAR_WARPS}
        out = dict(D=d, PRECISION=fused.PRECISION, USE_DOT=True, BLOCK_M=settings.block_m,
                   BLOCK_N=fused.BLOCK_N, BLOCK_K=fused.BLOCK_K, HEAD=False, P=1, BLOCK_P=16, PDL=True)
        out_opts = {"num_warps": settings.out_warps}
        jobs = [
            ("linear", fused._grouped_linear_kernel, LINEAR_TYPES, lin, lin_opts),
            ("linear ln2", fused._grouped_linear_kernel, LINEAR_TYPES, {**lin, "LN": 1, "HAS_RES": True},
             lin_opts),
            ("linear ln1 step", fused._grouped_linear_kernel, LINEAR_TYPES,
             {**lin, "LN": 2, "SHIFT_ONLY": True, "KEEP": True}, lin_opts),
            ("linear ln1 seq", fused._grouped_linear_kernel, LINEAR_TYPES,
             {**lin, "LN": 2, "WRITE_LN": True}, lin_opts),
            ("down_up step", fused._grouped_linear_kernel, LINEAR_TYPES,
             {**lin, "HAS_BIAS": False, "LN": 2, "SHIFT_ONLY": True, "KEEP": True, "UP": True,
              "N_UP": triton.cdiv(d, fused.BLOCK_N) * fused.BLOCK_N}, lin_opts),
            ("down_up seq", fused._grouped_linear_kernel, LINEAR_TYPES,
             {**lin, "HAS_BIAS": False, "LN": 2, "WRITE_LN": True, "UP": True,
              "N_UP": triton.cdiv(d, fused.BLOCK_N) * fused.BLOCK_N}, lin_opts),
            ("block_out", block_out._block_out_kernel, BLOCK_OUT_TYPES, out, out_opts),
            ("block_out+epi", block_out._block_out_kernel, BLOCK_OUT_TYPES,
             {**out, "HEAD": True, "P": p, "BLOCK_P": max(16, bp)}, out_opts),
            ("wkv7 fused", fused._wkv7_fused_kernel, WKV_TYPES, dict(N=64, HAS_VF=True, PDL=True),
             {"num_warps": settings.wkv_warps}),
            ("wkv7 fused 8w", fused._wkv7_fused_kernel, WKV_TYPES, dict(N=64, HAS_VF=True, PDL=True),
             {"num_warps": 8}),
            ("prologue", step_io._prologue_kernel, PROLOGUE_TYPES,
             dict(P=p, D=d, S=layers * d, LOG_P=bp.bit_length() - 1, BLOCK_P=bp, BLOCK_D=bd,
                  BLOCK_S=triton.next_power_of_2(layers * d), CAUSAL=causal, HAS_PE=pe, PDL=True), ends),
            ("epilogue", step_io._epilogue_kernel, EPILOGUE_TYPES,
             dict(P=p, D=d, BLOCK_P=bp, BLOCK_D=bd, PDL=True), ends),
            ("ln_mix keep", fused._ln_mix_kernel, LN_MIX_TYPES,
             dict(D=d, BLOCK_D=bd, BLOCK_R=fused.LN_ROWS, N_MIX=6, KEEP=True, PDL=True), {"num_warps": 4}),
            ("ln_mix", fused._ln_mix_kernel, LN_MIX_TYPES,
             dict(D=d, BLOCK_D=bd, BLOCK_R=fused.LN_ROWS, N_MIX=6, KEEP=False, PDL=True), {"num_warps": 4}),
        ]
        if d == SHAPES[0][1]:  # the pool recurrence (bench/kernels.py's) has no model shape: once
            pool = dict(N=64, BLOCK_V=wkv7_pool.BLOCK_V, PREFETCH=True)
            jobs += [("wkv7 pool", wkv7_pool._wkv7_pool_kernel, POOL_TYPES, {**pool, "HAS_LENGTHS": True},
                      {"num_warps": wkv7_pool.NUM_WARPS}),
                     ("wkv7 pool all-T", wkv7_pool._wkv7_pool_kernel, POOL_TYPES,
                      {**pool, "HAS_LENGTHS": False}, {"num_warps": wkv7_pool.NUM_WARPS})]
        for name, fn, types, constexprs, options in jobs:
            try:
                usage = build(fn, types, constexprs, options)
            except Exception as e:  # noqa: BLE001 - report every kernel, then fail
                failed += 1
                usage = f"FAILED {type(e).__name__}: {str(e)[:300]}"
            print(f"P={p:3d} D={d:4d} L={layers} {name:<15} {usage}", flush=True)
    print("all built" if not failed else f"{failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    import argparse
    argparse.ArgumentParser(prog="python -m bench.compile_check",
                            description=__doc__.split("\n")[0] + " (a few minutes on a CPU; "
                            "no options)").parse_args()
    sys.exit(main())
