"""Which backend and device serve, loading the weights for them, and the start-up check of
whether appends are batch-invariant on this machine."""

from __future__ import annotations

import logging

import torch

from model import checkpoint
from model.rimer import Rimer
from model.state import RimerState

log = logging.getLogger("rimer.engine")
BACKENDS = ("torch", "triton", "onnx", "auto")


def resolve_backend(name: str, device: torch.device) -> str:
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    if name == "auto":
        return "triton" if device.type == "cuda" else "torch"
    if name == "onnx" and device.type != "cpu":
        raise ValueError("the onnx backend runs on the CPU (--device cpu)")
    return name


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for but CUDA is not available")
    return torch.device(name)


def load_model(weights: str, device: str, backend: str = "auto") -> tuple[Rimer, dict, str]:
    """The model on its device, its manifest, and the backend that will serve it: `auto` is
    triton on a GPU and, on the CPU, onnx where a graph is shipped beside the weights (torch
    where there is none, or it does not load)."""
    model, manifest = checkpoint.load(weights, resolve_device(device))
    chosen = resolve_backend(backend, model.head.weight.device)
    if backend == "auto" and chosen == "torch":
        from model.onnx_network import graph_path
        chosen = "onnx" if graph_path(weights).is_file() else "torch"
        if chosen == "torch":
            log.info("no ONNX graph beside %s: serving with the torch backend", weights)
    if chosen == "onnx":
        from model.onnx_network import OnnxNetwork, OnnxNetworkError
        try:
            model.network_runtime = OnnxNetwork.for_checkpoint(model, weights, torch.get_num_threads())
        except OnnxNetworkError as exc:
            if backend == "onnx":
                raise
            log.warning("serving with the torch backend: %s", exc)
            chosen = "torch"
    return model, manifest, chosen


def appends_are_batch_invariant(model: Rimer) -> bool:
    """Whether `model.append` computes every series' new state bit for bit as it does alone, in
    a batch of series of uneven lengths (patches in the chunked graph and one at a time), then
    again with one completing patch each from those states. A check of this machine's kernels,
    not a proof for every batch: a few hundred ms at start."""
    device, cfg = model.head.weight.device, model.cfg
    p, g = cfg.patch_len, torch.Generator().manual_seed(0)
    # (a sinusoidal position table covers max_positions patches: the check stays inside it)
    most = cfg.max_positions - 1 if cfg.pos_emb == "sinusoidal" else 20
    if most < 1:
        return False  # (a table of one patch: no room for the check; assume not invariant)
    patches = tuple(min(k, most) for k in (1, 2, 5, 17, 20, 3, 16, 1, 9))
    values = [torch.randn(k * p + k % p, generator=g) * 3 + 10 for k in patches]
    states = RimerState.zeros(cfg, len(values), device)
    for _ in range(2):
        batched = model.append(states, values)
        rows = batched.tensors()
        for b, v in enumerate(values):
            alone = model.append(states.select([b]), [v]).tensors()
            if any(not torch.equal(alone[f], rows[f][b:b + 1]) for f in alone):
                return False
        states = batched
        tails = states.tail_len.tolist()
        values = [torch.randn(p - t, generator=g) for t in tails]  # each completes one patch
    return True
