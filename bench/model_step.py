"""A whole model step (all layers) for B series with one new patch each: triton vs torch backend.

    python -m bench.model_step [--weights weights/rimer-small] [--out bench/out/model_step.json] [--smoke]

On a GPU, for B = 1, 256, 4096, 32768 series (a pool of B + 1 slots, the series in a random
permutation of them, each with a random state and exactly one new patch):
  * triton, CUDA graph: `PoolRunner.step_slots` captured for a bucket of exactly B rows and replayed
    (runtime.graphs.StepGraphs); time = triton.testing.do_bench median (L2 flushed between runs);
  * triton, eager: the same step without the graph (Python and launch overhead included);
  * torch backend: `Rimer.advance` on a batch RimerState (functional; no gather or scatter counted);
  * the state-traffic bound: every byte of a series' state read and written once per step
    (2 x state bytes per series) at the device-to-device copy bandwidth measured in the same run,
    and the fraction of that bound the graph step reaches (bound time / step time);
  * correctness: next_patch and the matrices after the step against a float64 torch run (on up to
    64 series), and bit-identity of a series stepped alone (bucket 1) and inside the batch.
Single-series append: GPU time of one replay of the B = 1 graph, from CUDA events around 1000
back-to-back replays (L2 warm), and do_bench's median (L2 flushed).
Kernels per one-patch step at B = 1: on a GPU the CUDA kernels torch.profiler sees in one eager
`step_slots` and in one replay of its graph; everywhere, the operations that launch a kernel (PyTorch
ops that are not views or allocations, plus Triton launches), counted on the host.

Without CUDA a tiny model runs under Triton's interpreter (B = 1, 4): a smoke test of this script;
its times are meaningless. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

import kernels  # noqa: F401  (sets TRITON_INTERPRET without CUDA, before triton is imported)
from bench.common import copy_bandwidth, timer
from kernels.settings import KernelSettings
from model import checkpoint
from model.config import RimerConfig
from model.rimer import Rimer
from model.state import RimerState
from runtime.pool import PoolRunner
from service.settings import DEFAULT_WEIGHTS  # the service default

CHECK_SERIES = 64


def random_pool(cfg: RimerConfig, slots: int, device: str, seed: int) -> RimerState:
    """States as after some history: small random matrices and shifts, at least one patch seen."""
    g = torch.Generator(device=device).manual_seed(seed)
    pool = RimerState.zeros(cfg, slots, device)
    pool.wkv.normal_(0, 0.05, generator=g)
    pool.shift.normal_(0, 1, generator=g)
    pool.n_patches.fill_(10)
    pool.norm[:, 0].normal_(0, 1, generator=g)
    pool.norm[:, 1].uniform_(0.5, 2.0, generator=g)
    pool.next_patch.normal_(0, 1, generator=g)
    return pool


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    actual, expected = actual.double(), expected.double()
    diff = actual - expected
    return float(max(diff.norm() / expected.norm(), diff.abs().max() / expected.abs().max()))


def run_case(model: Rimer, model64: Rimer, bsz: int, device: str, measure, copy_bw: float,
             graphs_on: bool) -> dict:
    runner = PoolRunner(model)
    cfg, p = model.cfg, model.cfg.patch_len
    g = torch.Generator(device=device).manual_seed(bsz)
    pool = random_pool(cfg, bsz + 1, device, seed=bsz)
    slots = torch.randperm(bsz, generator=g, device=device)
    values = 1 + torch.randn(bsz, 2 * p, generator=g, device=device)
    counts = torch.full((bsz,), p, dtype=torch.int64, device=device)
    state_bytes = 2 * RimerState.zeros(cfg, 1).nbytes_per_series()
    row = {"B": bsz, "state_bytes_per_series_step": state_bytes,
           "bound_us": bsz * state_bytes / copy_bw * 1e6}

    # Correctness: one eager step on a copy against float64 torch on the first series.
    m = min(CHECK_SERIES, bsz)
    work = pool.clone()
    runner.step_slots(work, slots, values, counts)
    before = pool.select(slots[:m])
    ref = model64.advance(RimerState(**{k: v.double() if v.dtype == torch.float32 else v
                                         for k, v in before.tensors().items()}),
                           values[:m, None, :p].double()).state
    row["err_next_patch_vs_f64"] = rel_err(work.next_patch[slots[:m]], ref.next_patch)
    row["err_wkv_vs_f64"] = rel_err(work.wkv[slots[:m]], ref.wkv)
    del work

    row["triton_eager_us"] = measure(lambda: runner.step_slots(pool, slots, values, counts)) * 1e6
    if graphs_on:
        try:
            _time_graph(model, pool, slots, values, counts, measure, row)
        except Exception as e:  # noqa: BLE001 - record it; the other measurements still count
            row["graph_error"] = f"{type(e).__name__}: {e}"[:500]
    # Bit-identity: the series in slots[0] stepped alone (from the same state) vs in the batch.
    alone = pool.select(slots[:1])
    batch = pool.clone()
    runner.step_slots(alone, torch.zeros(1, dtype=torch.int64, device=device), values[:1], counts[:1])
    runner.step_slots(batch, slots, values, counts)
    row["alone_equals_batched"] = _equal(alone, batch.select(slots[:1]))
    del batch, alone

    torch_state = pool.select(slots)
    patches = values[:, None, :p].contiguous()
    row["torch_us"] = measure(lambda: model.advance(torch_state, patches)) * 1e6
    row["speedup_vs_torch"] = row["torch_us"] / row.get("triton_graph_us", row["triton_eager_us"])
    return row


def _time_graph(model: Rimer, pool: RimerState, slots, values, counts, measure, row: dict) -> None:
    from runtime.graphs import StepGraphs
    runner = PoolRunner(model)
    graphs = StepGraphs(runner, pool, spare_slot=len(slots), buckets=(len(slots),))
    graph, s, v, c = graphs.capture(len(slots))
    s.copy_(slots)
    v.copy_(values)
    c.copy_(counts)
    row["triton_graph_us"] = measure(graph.replay) * 1e6
    row["fraction_of_state_bound"] = row["bound_us"] / row["triton_graph_us"]
    # One replay equals one eager step, bit for bit (the graph is bound to `pool`'s memory).
    backup = pool.clone()
    graph.replay()
    replayed = pool.clone()
    _restore(pool, backup)
    runner.step_slots(pool, slots, values, counts)
    row["graph_equals_eager"] = _equal(pool, replayed)
    _restore(pool, backup)
    del graph, backup, replayed


def _restore(pool: RimerState, backup: RimerState) -> None:
    for name, t in backup.tensors().items():
        getattr(pool, name).copy_(t)


def _equal(a: RimerState, b: RimerState) -> bool:
    return all(torch.equal(t, getattr(b, k)) for k, t in a.tensors().items())


def single_append_gpu_us(model: Rimer, device: str) -> dict:
    """GPU time of one replay of the B = 1 graph: CUDA events over many back-to-back replays."""
    import triton.testing

    from runtime.graphs import StepGraphs
    runner = PoolRunner(model)
    p = model.cfg.patch_len
    pool = random_pool(model.cfg, 2, device, seed=1)
    sg = StepGraphs(runner, pool, spare_slot=1, buckets=(1,))  # (spare slot 1: padding rows)
    graph, s, v, c = sg.capture(1)
    s.fill_(0)
    v.normal_()
    c.fill_(p)
    for _ in range(20):
        graph.replay()
    n = 1000
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(n):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        graph.replay()
    torch.cuda.synchronize()
    wall = (time.perf_counter() - t0) / n
    return {"events_us_per_replay": start.elapsed_time(end) * 1e3 / n,
            "do_bench_median_us": triton.testing.do_bench(graph.replay, warmup=10, rep=60,
                                                          return_mode="median") * 1e3,
            "host_wall_us_per_replay": wall * 1e6, "replays": n}


def _one_patch_setup(model: Rimer, device: str):
    p = model.cfg.patch_len
    pool = random_pool(model.cfg, 2, device, seed=1)
    slots = torch.zeros(1, dtype=torch.int64, device=device)
    values = torch.randn(1, 2 * p, device=device)
    counts = torch.full((1,), p, dtype=torch.int64, device=device)
    return pool, slots, values, counts


def count_launches(model: Rimer, device: str, settings: KernelSettings | None = None) -> dict:
    """Kernel-launching operations of one one-patch `step_slots` at B = 1, counted on the host:
    PyTorch ops dispatched that are not views or allocations, plus Triton kernel launches.
    settings: the runner's launch settings (None: the environment's)."""
    import collections

    import triton.runtime.jit as jit
    from torch.utils._python_dispatch import TorchDispatchMode

    runner = PoolRunner(model, settings)

    no_kernel = {"empty", "empty_strided", "_local_scalar_dense", "lift_fresh", "detach", "alias"}
    ops, launches, inside = collections.Counter(), collections.Counter(), [False]

    class Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = func.overloadpacket.__name__
            if not inside[0] and not func.is_view and name not in no_kernel:
                ops[name] += 1
            return func(*args, **(kwargs or {}))

    classes = [jit.JITFunction]
    if device != "cuda":
        import triton.runtime.interpreter as interp
        classes = [interp.InterpretedFunction]
    originals = {cls: cls.run for cls in classes}

    def wrap(orig):
        def run(self, *a, **k):
            launches[getattr(self, "fn", self).__name__] += 1
            inside[0] = True  # (the interpreter's own tensor copies are not kernels)
            try:
                return orig(self, *a, **k)
            finally:
                inside[0] = False
        return run

    pool, slots, values, counts = _one_patch_setup(model, device)
    runner.step_slots(pool, slots, values, counts)
    for cls, orig in originals.items():
        cls.run = wrap(orig)
    try:
        with Count():
            runner.step_slots(pool, slots, values, counts)
    finally:
        for cls, orig in originals.items():
            cls.run = orig
    return {"torch_ops": sum(ops.values()), "triton_launches": sum(launches.values()),
            "total": sum(ops.values()) + sum(launches.values()), "triton_by_kernel": dict(launches),
            "torch_by_op": dict(ops.most_common())}


def profile_kernels(model: Rimer, device: str) -> dict:
    """CUDA kernels (and memsets/copies) torch.profiler records for one eager one-patch step at
    B = 1 and for one replay of its CUDA graph."""
    from torch.profiler import ProfilerActivity, profile

    from runtime.graphs import StepGraphs
    runner = PoolRunner(model)

    def gpu_events(fn):
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            fn()
            torch.cuda.synchronize()
        return [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]

    def timeline(events) -> dict:
        """Where one step's GPU time goes: each kernel's duration in launch order, their sum, and
        the span from the first kernel's start to the last one's end (the rest is gaps)."""
        spans = sorted((e.time_range.start, e.time_range.end, e.name) for e in events)
        if not spans:
            return {}
        busy = sum(end - start for start, end, _ in spans)
        return {"span_us": spans[-1][1] - spans[0][0], "kernels_us": busy,
                "per_kernel_us": [[name, round(end - start, 2)] for start, end, name in spans]}

    pool, slots, values, counts = _one_patch_setup(model, device)
    runner.step_slots(pool, slots, values, counts)
    eager = gpu_events(lambda: runner.step_slots(pool, slots, values, counts))
    graph, s, v, c = StepGraphs(runner, pool, spare_slot=1, buckets=(1,)).capture(1)
    s.copy_(slots)
    v.copy_(values)
    c.copy_(counts)
    graph.replay()
    replay = gpu_events(graph.replay)
    out = {"eager_gpu_events": len(eager), "graph_replay_gpu_events": len(replay),
           "triton_kernels_eager": sum(1 for e in eager if e.name.startswith("_")),
           "names_eager": sorted({e.name for e in eager})[:80]}
    try:
        out["graph_replay_timeline"] = timeline(replay)
    except Exception as e:  # noqa: BLE001 - profiler fields differ across torch versions
        out["graph_replay_timeline"] = {"error": f"{type(e).__name__}: {e}"[:300]}
    return out


def tiny() -> Rimer:
    torch.manual_seed(0)
    cfg = RimerConfig(patch_len=8, d_model=32, n_layers=2, head_size=16, w_rank=8, a_rank=8, v_rank=4,
                      g_rank=8, pos_emb="none", norm="causal", norm_window=4)
    model = Rimer(cfg).eval()
    with torch.no_grad():
        for prm in model.parameters():
            prm.add_(torch.randn_like(prm) * 0.3)
    return model


# Long (~90 lines): the arguments and the cases in the order they run, read top to bottom.
def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--weights", default=str(DEFAULT_WEIGHTS))
    ap.add_argument("--out", default="bench/out/model_step.json")
    ap.add_argument("--smoke", action="store_true", help="small batch sizes even on a GPU")
    ap.add_argument("--sizes", default=None, help="comma-separated batch sizes")
    args = ap.parse_args(argv)
    import triton

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        model, manifest = checkpoint.load(args.weights, device)
        name = str(manifest.get("name", args.weights))
    else:
        model, name = tiny(), "tiny (CPU smoke)"
        print("NOTE: no CUDA: a tiny model under TRITON_INTERPRET=1; times are meaningless.")
    model64 = Rimer(model.cfg).to(device).double().eval().requires_grad_(False)
    model64.load_state_dict({k: v.double() for k, v in model.state_dict().items()})
    sizes = ([1, 256, 4096, 32768] if device == "cuda" and not args.smoke else [1, 4] if device == "cpu"
             else [1, 256])
    if args.sizes:
        sizes = [int(s) for s in args.sizes.split(",")]
    measure = timer(device, warmup=10, rep=60, cpu_reps=2)
    settings = KernelSettings.from_env()  # (RIMER_* variables: gpu_check.sh runs one per setting)
    copy_bw = copy_bandwidth(device, measure, cpu_elems=1 << 20)
    result = {"device": torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu",
              "mode": "gpu" if device == "cuda" else "cpu-interpreter-smoke", "model": name,
              "config": model.cfg.to_dict(), "torch": torch.__version__, "triton": triton.__version__,
              "copy_gbps": copy_bw / 1e9, **settings.describe(),  # (what the runners use)
              "cases": []}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if device == "cuda":  # first: the figure the issue asks for at B = 1
        try:
            result["single_append"] = single_append_gpu_us(model, device)
        except Exception as e:  # noqa: BLE001 - record it and go on with the other cases
            result["single_append"] = {"error": f"{type(e).__name__}: {e}"[:500]}
        print(json.dumps(result["single_append"]), flush=True)
    try:
        result["launches_per_one_patch_step"] = count_launches(model, device)
    except Exception as e:  # noqa: BLE001
        result["launches_per_one_patch_step"] = {"error": f"{type(e).__name__}: {e}"[:500]}
    if device == "cuda":
        try:
            result["profiled_kernels_per_one_patch_step"] = profile_kernels(model, device)
        except Exception as e:  # noqa: BLE001
            result["profiled_kernels_per_one_patch_step"] = {"error": f"{type(e).__name__}: {e}"[:500]}
        print(json.dumps({k: v for k, v in result["profiled_kernels_per_one_patch_step"].items()
                          if k != "names_eager"}), flush=True)
    print(json.dumps({k: v for k, v in result["launches_per_one_patch_step"].items()
                      if k != "torch_by_op"}), flush=True)
    for bsz in sizes:
        try:
            row = run_case(model, model64, bsz, device, measure, copy_bw, graphs_on=device == "cuda")
        except Exception as e:  # noqa: BLE001
            row = {"B": bsz, "error": f"{type(e).__name__}: {e}"[:500]}
        result["cases"].append(row)
        if device == "cuda":
            torch.cuda.empty_cache()
        print(json.dumps({k: (float(f"{v:.4g}") if isinstance(v, float) else v) for k, v in row.items()}),
              flush=True)
        out.write_text(json.dumps(result, indent=2) + "\n")  # as we go, in case of a timeout

    state_bytes = 2 * RimerState.zeros(model.cfg, 1).nbytes_per_series()
    print(f"\ndevice: {result['device']}  model: {name}  PDL {'on' if settings.pdl_on else 'off'}  "
          f"linear rows/tile {settings.block_m}  LayerNorm in linears {settings.fuse_ln}  "
          f"o_proj+ffn in one {settings.out_in_one}  "
          f"wkv warps {settings.wkv_warps}  "
          f"copy {copy_bw / 1e9:.0f} GB/s  "
          f"state {state_bytes} B read+written per series-step")
    print(f"{'B':>6} {'graph us':>10} {'eager us':>10} {'torch us':>10} {'bound us':>9} {'of bound':>8} "
          f"{'err f64':>9} {'alone=batch':>11}")
    for r in result["cases"]:
        if "error" in r:
            print(f"{r['B']:6d} error: {r['error']}")
            continue
        gus = r.get("triton_graph_us", float("nan"))
        print(f"{r['B']:6d} {gus:10.1f} {r['triton_eager_us']:10.1f} {r['torch_us']:10.1f} "
              f"{r['bound_us']:9.1f} {r.get('fraction_of_state_bound', float('nan')):8.1%} "
              f"{max(r['err_next_patch_vs_f64'], r['err_wkv_vs_f64']):9.2e} "
              f"{r['alone_equals_batched']!s:>11}")
    if "events_us_per_replay" in result.get("single_append", {}):
        sa = result["single_append"]
        print(f"single-series append (B = 1 graph replay): {sa['events_us_per_replay']:.1f} us GPU "
              f"(events, back to back), {sa['do_bench_median_us']:.1f} us (do_bench, L2 flushed)")
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
