"""The pool runner: the Rimer network driven by the fused Triton kernels over a pool of states.

model/ holds the network's math and its PyTorch reference path; kernels/ the Triton kernels, each
beside its PyTorch reference. This package puts them together for serving: `pool.PoolRunner(model)`
appends to and forecasts from the states in rows (slots) of a preallocated `RimerState` on the
device, in place (`append_slots`, `step_slots`, `forecast_slots`), and `graphs.StepGraphs` replays
CUDA graphs of the one-patch step. Triton is needed here only: import this package on the triton
backend alone.
"""
