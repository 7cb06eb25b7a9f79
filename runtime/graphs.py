"""CUDA graphs of the one-patch model step on a pool of states, for fixed batch-size buckets.

`PoolRunner.step_slots` (runtime/pool.py: append at most one patch per series, in place on the
pool) has no host synchronisation, so it is captured once per bucket with static input buffers and
replayed: a small append then costs the GPU time of its kernels and no Python or launch overhead.
A batch of n series runs in the smallest bucket that holds it (larger batches in chunks of the
largest bucket); padding rows name one spare slot of the pool with no new points, which changes
nothing (their recurrence length is 0 and the step's kernels write nothing for a row without new
points).
The step is Triton launches only (a prologue and three per block, the last one running the
epilogue: kernels/step_io.py, kernels/block_out.py), so a replay is that many kernels and no
PyTorch glue.

GPU only: capture needs CUDA. Rows within one replay must name distinct slots.
"""

from __future__ import annotations

import torch

BUCKETS = (1, 8, 64, 512, 4096)


class StepGraphs:
    """The graphs of `runner.step_slots` on `pool` (a `runtime.pool.PoolRunner`), one per bucket,
    captured on first use; padding rows name `spare_slot`."""

    def __init__(self, runner, pool, spare_slot: int, buckets: tuple[int, ...] = BUCKETS):
        if not torch.cuda.is_available() or pool.tail.device.type != "cuda":
            raise RuntimeError("CUDA graphs need the pool on a CUDA device")
        self.runner, self.pool, self.spare = runner, pool, spare_slot
        self.buckets = tuple(sorted(buckets))
        self._graphs: dict[int, tuple] = {}
        self._mempool = torch.cuda.graph_pool_handle()

    def bucket(self, n: int) -> int:
        return next((b for b in self.buckets if b >= n), self.buckets[-1])

    def capture(self, size: int) -> tuple:
        """Capture (once) the step for `size` rows; returns (graph, slots, values, counts)."""
        if size in self._graphs:
            return self._graphs[size]
        p, dev = self.runner.model.cfg.patch_len, self.pool.tail.device
        slots = torch.full((size,), self.spare, dtype=torch.int64, device=dev)
        values = torch.zeros(size, 2 * p, device=dev)
        counts = torch.zeros(size, dtype=torch.int64, device=dev)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up (compiles the kernels): all rows are padding
            for _ in range(2):
                self.runner.step_slots(self.pool, slots, values, counts)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._mempool):
            self.runner.step_slots(self.pool, slots, values, counts)
        self._graphs[size] = (graph, slots, values, counts)
        return self._graphs[size]

    def run(self, slots: torch.Tensor, values: torch.Tensor, counts: torch.Tensor) -> None:
        """`runner.step_slots(pool, slots, values, counts)` by graph replay; values [n, <= 2P]."""
        n, start = len(slots), 0
        while start < n:
            size = self.bucket(n - start)
            take = min(size, n - start)
            graph, s, v, c = self.capture(size)
            s[:take].copy_(slots[start:start + take], non_blocking=True)
            s[take:].fill_(self.spare)
            v.zero_()
            v[:take, : values.shape[1]].copy_(values[start:start + take], non_blocking=True)
            c[:take].copy_(counts[start:start + take], non_blocking=True)
            c[take:].zero_()
            graph.replay()
            start += take
