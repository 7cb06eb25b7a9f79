"""The network as an ONNX graph, run by ONNX Runtime: the `onnx` backend on CPU.

What is exported is `Rimer._network` for one patch per series: normalised patch [B, P], matrices
[B, layers, H, N, N] and token shifts [B, layers, D] (and, for a model with sinusoidal positions,
each series' patch count [B]) -> normalised output [B, P], new matrices, new shifts; the batch is
dynamic. Everything around it (the float64 causal statistics, tails, chunking, the forecast
rollout) stays in model/rimer.py and runs as for the torch backend: `OnnxNetwork` takes the place
of `_network` (`Rimer.network_runtime`), stepping a chunk of T patches one patch at a time and
keeping each series' state where its patches have run out, as `_network`'s `valid` mask does.

The graph is exported once per checkpoint and shipped beside it (`network.onnx` in a weights
directory; `<file>.onnx` beside an original `.pth`), with a sidecar `.json` naming the sha256 of the
weights it came from, so a stale graph is refused at load instead of serving other weights:

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

OPSET = 18


class OnnxNetworkError(RuntimeError):
    pass


def graph_path(weights: str | Path) -> Path:
    """Where the graph of a checkpoint lives: in its directory, or beside its file."""
    weights = Path(weights)
    return weights / "network.onnx" if weights.is_dir() else weights.with_name(weights.name + ".onnx")


def source_file(weights: str | Path) -> Path:
    """The file whose bytes the graph's weights come from (its sha256 is in the sidecar)."""
    weights = Path(weights)
    return weights / "model.safetensors" if weights.is_dir() else weights


class OnePatch(nn.Module):
    """`Rimer._network` on one patch per series, with plain tensors in and out (what is exported)."""

    def __init__(self, model: Rimer):
        super().__init__()
        self.model = model

    def forward(self, xn, wkv, shift, n_patches=None):
        bsz, p = xn.shape
        zeros = torch.zeros(bsz, dtype=torch.int64)
        state = RimerState(wkv=wkv, shift=shift, n_patches=zeros if n_patches is None else n_patches,
                           tail=xn, tail_len=zeros, norm=torch.zeros(bsz, 2, dtype=torch.float64),
                           next_patch=xn)
        preds, new_wkv, new_shift = self.model._network(xn[:, None], state, None, TorchStep,
                                                        check_positions=False)
        return preds[:, 0], new_wkv, new_shift


def export(weights: str | Path, out: str | Path | None = None) -> Path:
    """Export the checkpoint's one-patch network to `out` (default `graph_path(weights)`), with a
    sidecar `<out>.json`; returns `out`."""
    model, manifest = checkpoint.load(weights, "cpu")
    cfg = model.cfg
    out = Path(out) if out is not None else graph_path(weights)
    bsz = 2
    args = [torch.zeros(bsz, cfg.patch_len),
            torch.zeros(bsz, cfg.n_layers, cfg.n_heads, cfg.head_size, cfg.head_size),
            torch.zeros(bsz, cfg.n_layers, cfg.d_model)]
    names = ["xn", "wkv", "shift"]
    if cfg.pos_emb == "sinusoidal":
        args.append(torch.zeros(bsz, dtype=torch.int64))
        names.append("n_patches")
    batch = torch.export.Dim("batch", min=1, max=1 << 20)
    started = time.perf_counter()
    with torch.no_grad():
        torch.onnx.export(OnePatch(model).eval(), tuple(args), str(out), dynamo=True, opset_version=OPSET,
                          input_names=names, output_names=["pred", "wkv_out", "shift_out"],
                          dynamic_shapes=tuple({0: batch} for _ in args), optimize=True,
                          external_data=False, verbose=False)
    sidecar = {"model": manifest.get("name"), "source": source_file(weights).name,
               "source_sha256": checkpoint.sha256_of(source_file(weights)),
               "graph_sha256": checkpoint.sha256_of(out), "opset": OPSET, "inputs": names,
               "torch": torch.__version__,
               "exported_by": f"python -m model.onnx_network --weights {weights}"}
    Path(str(out) + ".json").write_text(json.dumps(sidecar, indent=2) + "\n")
    print(f"exported {out} in {time.perf_counter() - started:.0f} s")
    return out


def open_session(weights: str | Path, threads: int = 1):
    """An ONNX Runtime session of the checkpoint's graph, once the graph is known to come from
    these weights (the sidecar's sha256) and to be intact (its own); any failure to get there is
    an OnnxNetworkError saying what to do."""
    graph, source = graph_path(weights), source_file(weights)
    meta = Path(str(graph) + ".json")
    again = f"python -m model.onnx_network --weights {weights}"
    if not graph.is_file() or not meta.is_file():
        raise OnnxNetworkError(f"no ONNX graph at {graph} (with its {meta.name}); export it "
                               f"with: {again}")
    try:
        info = json.loads(meta.read_text())
        if not isinstance(info, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as exc:
        raise OnnxNetworkError(f"{meta} cannot be read ({exc}); export again: {again}") from None
    if info.get("source_sha256") != checkpoint.sha256_of(source):
        raise OnnxNetworkError(f"{graph} was exported from other weights than {source} "
                               f"(sha256 differs); export it again: {again}")
    if info.get("graph_sha256") != checkpoint.sha256_of(graph):
        raise OnnxNetworkError(f"{graph} does not match the sha256 in {meta.name}; export it "
                               f"again: {again}")
    try:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads  # 0: one per core (ONNX Runtime's default)
        options.inter_op_num_threads = 1
        return ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - ImportError, or ONNX Runtime's own load errors
        raise OnnxNetworkError(f"ONNX Runtime cannot load {graph}: {exc}".strip()) from None


class OnnxNetwork:
    """ONNX Runtime in place of `Rimer._network` (set as `model.network_runtime`)."""

    def __init__(self, model: Rimer, session):
        self.session = session
        self.model = model
        self.positions = model.cfg.pos_emb == "sinusoidal"

    @classmethod
    def for_checkpoint(cls, model: Rimer, weights: str | Path, threads: int = 1) -> OnnxNetwork:
        return cls(model, open_session(weights, threads))

    def __call__(self, xn: torch.Tensor, state: RimerState, valid: torch.Tensor | None,
                 check_positions: bool = True):
        """`Rimer._network`'s contract: xn [B, T, P] -> (outputs [B, T, P], new wkv, new shift)."""
        bsz, t, _ = xn.shape
        if self.positions and check_positions:
            self.model.check_positions(state.n_patches, t)
        wkv, shift = state.wkv.contiguous(), state.shift.contiguous()
        preds = []
        for step in range(t):
            feeds = {"xn": xn[:, step].contiguous().numpy(), "wkv": wkv.numpy(),
                     "shift": shift.numpy()}
            if self.positions:  # (rows past their last patch: any valid position, discarded)
                pos = (state.n_patches + step).clamp(max=self.model.cfg.max_positions - 1)
                feeds["n_patches"] = pos.numpy()
            pred, new_wkv, new_shift = (torch.from_numpy(a) for a in self.session.run(None, feeds))
            if valid is not None and not bool(valid[:, step].all()):
                keep = valid[:, step]
                new_wkv = torch.where(keep[:, None, None, None, None], new_wkv, wkv)
                new_shift = torch.where(keep[:, None, None], new_shift, shift)
            wkv, shift = new_wkv, new_shift
            preds.append(pred)
        return torch.stack(preds, dim=1), wkv, shift


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Export a checkpoint's network to ONNX (beside it)")
    ap.add_argument("--weights", required=True, help="a weights directory or an original .pth")
    ap.add_argument("--out", default=None, help="default: network.onnx in the directory, or "
                    "<file>.onnx beside a .pth")
    args = ap.parse_args(argv)
    export(args.weights, args.out)


if __name__ == "__main__":
    main()
