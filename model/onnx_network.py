"""The network as ONNX graphs, run by ONNX Runtime: the `onnx` backend on CPU.

What is exported is `Rimer._network` on T patches per series, twice: T = 1 and T = CHUNK (the
recurrence unrolled), with the recurrence in `model.wkv.wkv7_products`'s form (fewer operators
over whole matrices than the reference's; bench/ab_cpu.py measures the difference). Inputs:
normalised patches [B, T, P], matrices [B, layers, H, N, N] and token shifts [B, layers, D] (and,
for a model with sinusoidal positions, each series' patch count [B]);
outputs: normalised outputs [B, T, P], new matrices, new shifts; the batch is dynamic. Everything
around it (the float64 causal statistics, tails, chunking, the forecast rollout) stays in
model/rimer.py and runs as for the torch backend: `OnnxNetwork` takes the place of `_network`
(`Rimer.network_runtime`), running CHUNK patches per call where every series of the batch has
them and one at a time otherwise, keeping each series' state where its patches have run out, as
`_network`'s `valid` mask does.

The graphs are exported once per checkpoint and shipped beside it (`network.onnx` and
`network-chunk16.onnx` in a weights directory; `<file>.onnx` and `<file>-chunk16.onnx` beside an
original `.pth`), with a sidecar `network.onnx.json` naming the sha256 of the weights they came
from and of each graph, so a stale or damaged graph is refused at load instead of serving other
weights:

    python -m model.onnx_network --weights weights/rimer-general-d128

Exporting needs `onnx` and `onnxscript` (requirements-dev.txt); running needs only onnxruntime.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch import nn

from model import checkpoint
from model.rimer import Rimer, TorchStep
from model.state import RimerState
from model.wkv import wkv7_products

OPSET = 18
# Patches per call of the second graph (the recurrence unrolled): a long history or a chunk of
# appends runs CHUNK patches per call where every series in the batch has them (2.2x faster than
# one at a time for one series on the CPU), one at a time otherwise.
CHUNK = 16


class OnnxNetworkError(RuntimeError):
    pass


def graph_path(weights: str | Path, patches: int = 1) -> Path:
    """Where a checkpoint's graph of `patches` patches lives: in its directory, or beside its file
    (the one-patch graph's sidecar, `<graph>.json`, covers both)."""
    weights = Path(weights)
    tag = "" if patches == 1 else f"-chunk{patches}"
    if weights.is_dir():
        return weights / f"network{tag}.onnx"
    return weights.with_name(f"{weights.name}{tag}.onnx")


def source_file(weights: str | Path) -> Path:
    """The file whose bytes the graph's weights come from (its sha256 is in the sidecar)."""
    weights = Path(weights)
    return weights / "model.safetensors" if weights.is_dir() else weights


class GraphStep(TorchStep):
    """The torch step with the recurrence as `wkv7_products`: what is exported."""

    @staticmethod
    def recurrence(layer: int, r, w, k, v, a, b, wkv: torch.Tensor, valid: torch.Tensor | None):
        return wkv7_products(r, w, k, v, a, b, wkv, valid)


class Patches(nn.Module):
    """`Rimer._network` on T patches per series (T fixed by the example it is exported with), every
    one valid, with plain tensors in and out: what is exported."""

    def __init__(self, model: Rimer):
        super().__init__()
        self.model = model

    def forward(self, xn, wkv, shift, n_patches=None):
        bsz = xn.shape[0]
        zeros = torch.zeros(bsz, dtype=torch.int64)
        state = RimerState(wkv=wkv, shift=shift, n_patches=zeros if n_patches is None else n_patches,
                           tail=xn[:, 0], tail_len=zeros,
                           norm=torch.zeros(bsz, 2, dtype=torch.float64), next_patch=xn[:, 0])
        return self.model._network(xn, state, None, GraphStep, check_positions=False)


def export(weights: str | Path) -> Path:
    """Export the checkpoint's network for 1 and for CHUNK patches beside it, with the sidecar
    naming the weights' sha256 and each graph's; returns the one-patch graph's path."""
    model, manifest = checkpoint.load(weights, "cpu")
    cfg = model.cfg
    positions = cfg.pos_emb == "sinusoidal"
    names = ["xn", "wkv", "shift"] + (["n_patches"] if positions else [])
    batch = torch.export.Dim("batch", min=1, max=1 << 20)
    started = time.perf_counter()
    graphs = {}
    for patches in (1, CHUNK):
        out = graph_path(weights, patches)
        bsz = 2
        args = [torch.zeros(bsz, patches, cfg.patch_len),
                torch.zeros(bsz, cfg.n_layers, cfg.n_heads, cfg.head_size, cfg.head_size),
                torch.zeros(bsz, cfg.n_layers, cfg.d_model)]
        if positions:
            args.append(torch.zeros(bsz, dtype=torch.int64))
        with torch.no_grad():
            torch.onnx.export(Patches(model).eval(), tuple(args), str(out), dynamo=True,
                              opset_version=OPSET, input_names=names,
                              output_names=["pred", "wkv_out", "shift_out"],
                              dynamic_shapes=tuple({0: batch} for _ in args), optimize=True,
                              external_data=False, verbose=False)
        graphs[out.name] = {"patches": patches, "sha256": checkpoint.sha256_of(out)}
    sidecar = {"model": manifest.get("name"), "source": source_file(weights).name,
               "source_sha256": checkpoint.sha256_of(source_file(weights)), "graphs": graphs,
               "opset": OPSET, "inputs": names, "torch": torch.__version__,
               "exported_by": f"python -m model.onnx_network --weights {weights}"}
    Path(str(graph_path(weights)) + ".json").write_text(json.dumps(sidecar, indent=2) + "\n")
    print(f"exported {', '.join(graphs)} beside {weights} in {time.perf_counter() - started:.0f} s")
    return graph_path(weights)


def open_sessions(weights: str | Path, threads: int = 1) -> dict[int, object]:
    """ONNX Runtime sessions of the checkpoint's graphs, by patches per call, once the graphs are
    known to come from these weights (the sidecar's sha256) and to be intact (their own); any
    failure to get there is an OnnxNetworkError saying what to do."""
    graph, source = graph_path(weights), source_file(weights)
    meta = Path(str(graph) + ".json")
    again = f"python -m model.onnx_network --weights {weights}"
    if not graph.is_file() or not meta.is_file():
        raise OnnxNetworkError(f"no ONNX graph at {graph} (with its {meta.name}); export it "
                               f"with: {again}")
    try:
        info = json.loads(meta.read_text())
        if not isinstance(info, dict) or not isinstance(info.get("graphs"), dict):
            raise ValueError("not a sidecar of this version")
        listed = {int(g["patches"]): (graph.with_name(name), g["sha256"])
                  for name, g in info["graphs"].items()}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise OnnxNetworkError(f"{meta} cannot be read ({exc}); export again: {again}") from None
    if info.get("source_sha256") != checkpoint.sha256_of(source):
        raise OnnxNetworkError(f"{graph} was exported from other weights than {source} "
                               f"(sha256 differs); export it again: {again}")
    if set(listed) != {1, CHUNK}:
        raise OnnxNetworkError(f"{meta} lists graphs of {sorted(listed)} patches, not 1 and "
                               f"{CHUNK}; export again: {again}")
    for path, digest in listed.values():
        if not path.is_file() or checkpoint.sha256_of(path) != digest:
            raise OnnxNetworkError(f"{path} is missing or does not match the sha256 in "
                                   f"{meta.name}; export it again: {again}")
    try:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads  # 0: one per core (ONNX Runtime's default)
        options.inter_op_num_threads = 1
        return {n: ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
                for n, (path, _) in listed.items()}
    except Exception as exc:  # noqa: BLE001 - ImportError, or ONNX Runtime's own load errors
        raise OnnxNetworkError(f"ONNX Runtime cannot load {graph}: {exc}".strip()) from None


class OnnxNetwork:
    """ONNX Runtime in place of `Rimer._network` (set as `model.network_runtime`)."""

    def __init__(self, model: Rimer, sessions: dict[int, object]):
        self.sessions = sessions
        self.model = model
        self.positions = model.cfg.pos_emb == "sinusoidal"

    @classmethod
    def for_checkpoint(cls, model: Rimer, weights: str | Path, threads: int = 1) -> OnnxNetwork:
        return cls(model, open_sessions(weights, threads))

    def __call__(self, xn: torch.Tensor, state: RimerState, valid: torch.Tensor | None,
                 check_positions: bool = True):
        """`Rimer._network`'s contract: xn [B, T, P] -> (outputs [B, T, P], new wkv, new shift).
        CHUNK patches at a time where every series has them all, else one at a time (the two
        graphs compute the same bits: tests/test_onnx.py)."""
        bsz, t, _ = xn.shape
        if self.positions and check_positions:
            self.model.check_positions(state.n_patches, t)
        wkv, shift = state.wkv.contiguous(), state.shift.contiguous()
        preds = []
        step = 0
        while step < t:
            n = CHUNK if CHUNK in self.sessions and step + CHUNK <= t and (
                valid is None or bool(valid[:, step:step + CHUNK].all())) else 1
            feeds = {"xn": xn[:, step:step + n].contiguous().numpy(), "wkv": wkv.numpy(),
                     "shift": shift.numpy()}
            if self.positions:  # (rows past their last patch: any valid position, discarded)
                pos = (state.n_patches + step).clamp(max=self.model.cfg.max_positions - n)
                feeds["n_patches"] = pos.numpy()
            pred, new_wkv, new_shift = (torch.from_numpy(a)
                                        for a in self.sessions[n].run(None, feeds))
            if n == 1 and valid is not None and not bool(valid[:, step].all()):
                keep = valid[:, step]
                new_wkv = torch.where(keep[:, None, None, None, None], new_wkv, wkv)
                new_shift = torch.where(keep[:, None, None], new_shift, shift)
            wkv, shift = new_wkv, new_shift
            preds.append(pred)
            step += n
        return torch.cat(preds, dim=1), wkv, shift


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Export a checkpoint's network to ONNX (beside it)")
    ap.add_argument("--weights", required=True, help="a weights directory or an original .pth")
    args = ap.parse_args(argv)
    export(args.weights)


if __name__ == "__main__":
    main()
