"""The triton backend's micro-batches through the engine: batched on the pool against op by op.

    python -m bench.engine_batch [--out bench/out/engine_batch.json] [--rounds 4]

What a bulk append (`POST /series/append`) or a micro-batch of appends costs the service on the
triton backend: one `Engine.apply_batch` of one request naming N series, applied batched (one
`append_slots` and one CUDA-graph `step_slots` per round, one `forecast_slots` per horizon:
`SlotPoolStore.apply`) against the same request applied op by op (`SlotPoolStore._apply_by_op`,
each op a batch of one, as a single append is: one graph replay or kernel chain per series).
Wall time of the call, host work included, the device synchronised at its end; the two on
two engines holding the same
series, alternating call by call, so load changes hit both alike. Cases (the default weights on
a GPU): N series x 1 point (about N / P complete a patch: bulk ingest), the same with a forecast
of 96 each, and one patch each, at N = 1,000 and 4,096 (the forecast case at N = 256 only: op
by op it is N rollouts of eager launches). Before timing, both engines apply the same batch and
every series' state and forecast must be bit-identical between them.

Without CUDA a tiny model runs under Triton's interpreter with N = 3: a smoke test of this
script; its times are meaningless. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import torch

import kernels  # noqa: F401  (sets TRITON_INTERPRET without CUDA, before triton is imported)
from bench.common import cpu_name, write_json
from model import checkpoint
from service.engine import Engine, Op, admission
from service.settings import DEFAULT_WEIGHTS


def by_op(e: Engine, requests: list[list[Op]]) -> list:
    """`apply_batch` checked whole, then applied op by op (each a batch of one, as a single
    append is)."""
    sp = e.store
    with sp.lock:
        errors = admission.plan(e.model.cfg, e.max_series, requests, sp.length, len(sp.length))
        results = [errors.get(r) for r in range(len(requests))]
        return sp._apply_by_op(requests, results, [r for r in range(len(requests)) if r not in errors])[0]


def batched(e: Engine, requests: list[list[Op]]) -> list:
    return e.apply_batch(requests)


def make_engine(model, manifest, n: int, graphs: bool) -> Engine:
    e = Engine(model, manifest, max_series=n, backend="triton", cuda_graphs=graphs)
    g = torch.Generator().manual_seed(0)
    history = [Op(f"s{i}", torch.randn(40 + i % 32, generator=g).cumsum(0).tolist())
               for i in range(n)]
    [result] = e.apply_batch([history])
    assert not isinstance(result, Exception), result
    return e


def request(n: int, points: int, horizon: int | None, seed: int) -> list[Op]:
    g = torch.Generator().manual_seed(seed)
    values = torch.randn(n, points, generator=g).tolist()
    return [Op(f"s{i}", values[i], horizon, f"series[{i}]") for i in range(n)]


def synced(fn, device: str):
    def run(*args):
        out = fn(*args)
        if device == "cuda":
            torch.cuda.synchronize()
        return out
    return run


def same_states(a: Engine, b: Engine, n: int) -> bool:
    rows = {e: e.store.rows([e.store.slot[f"s{i}"] for i in range(n)]) for e in (a, b)}
    sa, sb = a.store.pool.select(rows[a]), b.store.pool.select(rows[b])
    return all(torch.equal(t, getattr(sb, f)) for f, t in sa.tensors().items())


def run_case(model, manifest, device: str, n: int, points: int, horizon: int | None,
             rounds: int, engines: tuple[Engine, Engine] | None = None) -> dict:
    """One case on two engines holding the same n series (made here unless given: the cases of
    one n share them, as both receive the same requests)."""
    graphs = device == "cuda"
    new, old = engines or (make_engine(model, manifest, n, graphs),
                           make_engine(model, manifest, n, graphs))
    fast, slow = synced(batched, device), synced(by_op, device)
    check = request(n, points, horizon, 1)
    got, want = fast(new, [check]), slow(old, [request(n, points, horizon, 1)])
    identical = got == want and same_states(new, old, n)
    times = {"batched": [], "by_op": []}
    for k in range(rounds + 1):  # the first round warms up (graph capture)
        for name, fn, e in (("batched", fast, new), ("by_op", slow, old)):
            req = [request(n, points, horizon, 100 + k)]
            t0 = time.perf_counter()
            fn(e, req)
            if k:
                times[name].append(time.perf_counter() - t0)
    identical = identical and same_states(new, old, n)
    med = {name: statistics.median(t) for name, t in times.items()}
    return {"series": n, "points_each": points, "horizon": horizon,
            "batched_s": med["batched"], "by_op_s": med["by_op"],
            "speedup": med["by_op"] / med["batched"],
            "points_per_s_batched": n * points / med["batched"],
            "bit_identical": identical, "times_s": times}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--weights", default=DEFAULT_WEIGHTS)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--out", default="bench/out/engine_batch.json")
    args = ap.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        model, manifest = checkpoint.load(args.weights, device)
        p = model.cfg.patch_len
        cases = [(1000, 1, None), (256, 1, 96), (1000, p, None), (4096, 1, None), (4096, p, None)]
    else:
        from tests.test_model import tiny_model
        model, manifest = tiny_model(), {"name": "tiny"}
        p = model.cfg.patch_len
        cases = [(3, 1, None), (3, 1, 5), (3, p, None)]
        args.rounds = min(args.rounds, 1)
    graphs, shared, rows = device == "cuda", {}, []
    for n, pts, h in cases:
        if n not in shared:
            shared[n] = (make_engine(model, manifest, n, graphs), make_engine(model, manifest, n, graphs))
        rows.append(run_case(model, manifest, device, n, pts, h, args.rounds, shared[n]))
    print(f"{'series':>7} {'points':>6} {'horizon':>7} {'batched':>10} {'op by op':>10} "
          f"{'speed-up':>8} {'points/s':>10} {'bits':>5}")
    for r in rows:
        print(f"{r['series']:>7} {r['points_each']:>6} {str(r['horizon'] or '-'):>7} "
              f"{r['batched_s'] * 1e3:>8.2f}ms {r['by_op_s'] * 1e3:>8.2f}ms {r['speedup']:>7.1f}x "
              f"{r['points_per_s_batched']:>10,.0f} {'same' if r['bit_identical'] else 'DIFF':>5}")
    result = {"bench": "engine_batch", "device": torch.cuda.get_device_name() if device == "cuda"
              else cpu_name(), "weights": args.weights if device == "cuda" else "tiny (interpreter)",
              "torch": torch.__version__, "python": platform.python_version(), "cases": rows}
    write_json(Path(args.out), result)
    if not all(r["bit_identical"] for r in rows):
        raise SystemExit("batched and op-by-op results differ")
    return result


if __name__ == "__main__":
    main()
