"""What the benchmarks share: naming the machine, and writing their JSON."""

from __future__ import annotations

import json
import platform
import statistics
import time
from pathlib import Path


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_probe_ms(reps: int = 7) -> float:
    """Median milliseconds of a fixed single-thread workload shaped like the server's worker
    (Python loops over dicts and lists, small NumPy arrays, FFTs of 640 points). These shared
    machines change speed by a third from hour to hour (bench/RESULTS.md): runs taken at
    different times compare by their figures over this probe's, not by their figures alone."""
    import numpy as np

    x = np.random.default_rng(0).standard_normal((32, 640))

    def work():
        table = {f"s{i}": [float(i)] for i in range(20_000)}
        for key in table:
            table[key].append(1.0)
        for _ in range(40):
            np.fft.irfft(np.fft.rfft(x, axis=-1) * 0.5, 640, axis=-1).cumsum(-1)

    work()
    return 1e3 * median_time(work, reps)


def write_json(out: Path, result: dict) -> None:
    """`result` as indented JSON at `out` (its folder made), and a line saying where."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


def median_time(fn, reps: int) -> float:
    """Median wall time of `reps` calls of `fn`, in seconds."""
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def timer(device: str, warmup: int, rep: int, cpu_reps: int):
    """A function timing `fn` in seconds: triton's do_bench (median) on CUDA, else one warm-up
    call and the median of `cpu_reps`."""
    if device == "cuda":
        import triton.testing

        def run(fn):
            return triton.testing.do_bench(fn, warmup=warmup, rep=rep, return_mode="median") * 1e-3
    else:
        def run(fn):
            fn()
            return median_time(fn, cpu_reps)
    return run


def copy_bandwidth(device: str, measure, cpu_elems: int) -> float:
    """Bytes read + written per second by a plain device-to-device copy of a large fp32 buffer
    (2^28 elements, 1 GiB, on the GPU; `cpu_elems` on the CPU)."""
    import torch

    n = (1 << 28) if device == "cuda" else cpu_elems
    src = torch.randn(n, device=device)
    dst = torch.empty_like(src)
    return 2 * n * 4 / measure(lambda: dst.copy_(src))
