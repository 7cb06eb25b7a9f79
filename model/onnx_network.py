"""The network as ONNX graphs, run by ONNX Runtime: the `onnx` backend on CPU.

What is exported is `Rimer._network` on T patches per series, twice: T = 1, with the recurrence in
`model.wkv.wkv7_products`'s form (fewer operators over whole matrices than the reference's), and
T = CHUNK, with the recurrence as one chunk (`model.wkv.wkv7_chunk`: the matrices read and written
once per call, not per patch). bench/ab_cpu.py measures the difference. Inputs: normalised patches
[B, T, P], matrices [B, layers, H, N, N] and token shifts [B, layers, D] (and, for a model with
sinusoidal positions, each series' patch count [B]); outputs: normalised outputs [B, T, P], new
matrices, new shifts; the batch is dynamic. Everything around it (the float64 causal statistics,
tails, chunking, the forecast rollout) stays in model/rimer.py and runs as for the torch backend:
`OnnxNetwork` takes the place of `_network` (`Rimer.network_runtime`). Each series runs its
patches CHUNK per call while it has that many left and then one per call, on its own rows of the
batch, so which graph computed what depends on the series alone, never on the batch it came in.

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

import numpy as np
import torch
from torch import nn

from model import checkpoint, cli
from model.rimer import Rimer, TorchStep
from model.state import RimerState
from model.wkv import wkv7_chunk, wkv7_products

OPSET = 18
# Patches per call of the chunk graph: a long history or a long append runs CHUNK patches per call
# while it has that many left (much faster than one at a time: bench/RESULTS.md).
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
    """The torch step with the recurrence in the graphs' forms: what is exported. The one-patch
    graph steps (`wkv7_products`); the chunk graph, where every patch is valid, runs its CHUNK
    patches as one chunk (`wkv7_chunk`: the matrices read and written once per call)."""

    @staticmethod
    def recurrence(layer: int, r, w, k, v, a, b, wkv: torch.Tensor, valid: torch.Tensor | None):
        if valid is None and r.shape[1] > 1:
            return wkv7_chunk(r, w, k, v, a, b, wkv)
        return wkv7_products(r, w, k, v, a, b, wkv, valid)


class Patches(nn.Module):
    """`Rimer._network` on T patches per series (T fixed by the example it is exported with), every
    one valid, with plain tensors in and out: what is exported."""

    def __init__(self, model: Rimer):
        super().__init__()
        self.model = model

    def forward(self, xn, wkv, shift, extra1=None, extra2=None):
        """extras, in order: n_patches [B] int64 for a model with sinusoidal positions, then
        forecast [B] float (1: the patches are the model's own forecasts) for one with a
        forecast flag."""
        bsz = xn.shape[0]
        zeros = torch.zeros(bsz, dtype=torch.int64)
        extra = [e for e in (extra1, extra2) if e is not None]
        n_patches = extra.pop(0) if self.model.cfg.pos_emb == "sinusoidal" else zeros
        forecast = extra.pop(0) if self.model.cfg.forecast_flag else False
        state = RimerState(wkv=wkv, shift=shift, n_patches=n_patches,
                           tail=xn[:, 0], tail_len=zeros,
                           norm=torch.zeros(bsz, 2, dtype=torch.float64), next_patch=xn[:, 0])
        preds, wkv, shift, heads = self.model._network_full(xn, state, None, GraphStep,
                                                            check_positions=False, forecast=forecast)
        return (preds, wkv, shift, *(heads[name] for name in head_names(self.model)))


def head_names(model: Rimer) -> list[str]:
    """The extra heads a model's graphs output after pred, wkv_out and shift_out, in order."""
    return [name for name, on in (("lag", model.cfg.lag_window), ("quantile", model.cfg.quantiles)) if on]


def export(weights: str | Path) -> Path:
    """Export the checkpoint's network for 1 and for CHUNK patches beside it, with the sidecar
    naming the weights' sha256 and each graph's; returns the one-patch graph's path."""
    model, manifest = checkpoint.load(weights, "cpu")
    cfg = model.cfg
    positions = cfg.pos_emb == "sinusoidal"
    names = (["xn", "wkv", "shift"] + (["n_patches"] if positions else [])
             + (["forecast"] if cfg.forecast_flag else []))
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
        if cfg.forecast_flag:
            args.append(torch.zeros(bsz))
        with torch.no_grad():
            torch.onnx.export(Patches(model).eval(), tuple(args), str(out), dynamo=True,
                              opset_version=OPSET, input_names=names,
                              output_names=["pred", "wkv_out", "shift_out"] + head_names(model),
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
        self.forecast = False  # the current call's patches are forecasts (set by each call)
        self.heads = head_names(model)

    @classmethod
    def for_checkpoint(cls, model: Rimer, weights: str | Path, threads: int = 1) -> OnnxNetwork:
        return cls(model, open_sessions(weights, threads))

    def __call__(self, xn: torch.Tensor, state: RimerState, valid: torch.Tensor | None,
                 check_positions: bool = True, forecast: bool = False):
        """`Rimer._network`'s contract: xn [B, T, P] -> (outputs [B, T, P], new wkv, new shift);
        `valid`, a prefix of each row, or None. Each series runs its own patches CHUNK per call of
        the chunk graph while it has CHUNK left, then one per call of the one-patch graph: a
        schedule that depends on its own patch count only, never on the rest of the batch. The two
        graphs compute the recurrence in different forms (so differ in the last bits); ONNX
        Runtime's products give each row the same bits whatever the other rows
        (tests/unit/model/test_onnx.py), so a series' results are the same bits alone or in any batch."""
        bsz, t, _ = xn.shape
        if self.positions and check_positions:
            self.model.check_positions(state.n_patches, t, valid.sum(1) if valid is not None else None)
        self.forecast = forecast
        if valid is None or bool(valid.all()):  # every row the same schedule: plain slices
            return self._uniform(xn, state, t)
        counts = valid.sum(1)
        chunks = counts // CHUNK if CHUNK in self.sessions else torch.zeros_like(counts)
        singles = counts - chunks * CHUNK
        run = _Run(self, xn, state)
        for c in range(int(chunks.max()) if bsz else 0):
            run(CHUNK, chunks > c, torch.full_like(counts, c * CHUNK))
        for j in range(int(singles.max()) if bsz else 0):
            run(1, singles > j, chunks * CHUNK + j)
        return run.outputs()

    def _uniform(self, xn: torch.Tensor, state: RimerState, t: int):
        wkv, shift, preds, step = state.wkv, state.shift, [], 0
        extra = {name: [] for name in self.heads}
        while step < t:
            n = CHUNK if CHUNK in self.sessions and t - step >= CHUNK else 1
            feeds = {"xn": xn[:, step:step + n].contiguous().numpy(),
                     "wkv": wkv.contiguous().numpy(), "shift": shift.contiguous().numpy()}
            if self.positions:  # (clamped as in _Run: past the table only unused rollout steps)
                feeds["n_patches"] = (state.n_patches + step).clamp(
                    max=self.model.cfg.max_positions - n).numpy()
            self._flag(feeds, xn.shape[0])
            pred, wkv, shift, *more = (torch.from_numpy(o) for o in self.sessions[n].run(None, feeds))
            preds.append(pred)
            for name, value in zip(self.heads, more):
                extra[name].append(value)
            step += n
        if not preds:  # (no patches)
            return self._result(torch.zeros_like(xn), wkv, shift, {})

        def joined(parts):
            return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

        return self._result(joined(preds), wkv, shift, {k: joined(v) for k, v in extra.items()})

    def _result(self, preds, wkv, shift, heads: dict):
        """`_network`'s triple, and the heads' outputs for a model that has heads."""
        return (preds, wkv, shift, heads) if self.heads else (preds, wkv, shift)

    def _flag(self, feeds: dict, rows: int) -> None:
        """The forecast flag's input, for a model that has one."""
        if self.model.cfg.forecast_flag:
            feeds["forecast"] = np.full(rows, 1.0 if self.forecast else 0.0, dtype=np.float32)


class _Run:
    """The graph calls of one `OnnxNetwork` call: each on the rows given, at each row's own
    patch offset; the batch's matrices and shifts move on only in those rows."""

    def __init__(self, net: OnnxNetwork, xn: torch.Tensor, state: RimerState):
        self.net, self.xn, self.state = net, xn, state
        self.wkv, self.shift = state.wkv, state.shift
        self.owned = False  # wkv and shift are still the caller's (copied before a partial update)
        self.preds: torch.Tensor | None = None
        self.extra: dict[str, torch.Tensor] = {}

    def __call__(self, n: int, rows_mask: torch.Tensor, starts: torch.Tensor) -> None:
        bsz, t, _ = self.xn.shape
        every = bool(rows_mask.all())
        rows = torch.arange(bsz) if every else rows_mask.nonzero()[:, 0]
        at = starts[rows, None] + torch.arange(n)  # [R, n]: each row's patches in this call
        same_start = bool((at[:, 0] == at[0, 0]).all())
        first = int(at[0, 0])
        x = self.xn[:, first:first + n] if every and same_start else self.xn[rows[:, None], at]
        wkv, shift = (self.wkv, self.shift) if every else (self.wkv[rows], self.shift[rows])
        feeds = {"xn": x.contiguous().numpy(), "wkv": wkv.contiguous().numpy(),
                 "shift": shift.contiguous().numpy()}
        if self.net.positions:
            pos = (self.state.n_patches[rows] + at[:, 0]).clamp(
                max=self.net.model.cfg.max_positions - n)
            feeds["n_patches"] = pos.numpy()
        self.net._flag(feeds, len(rows))
        pred, new_wkv, new_shift, *more = (torch.from_numpy(o)
                                           for o in self.net.sessions[n].run(None, feeds))
        for name, value in zip(self.net.heads, more):
            if name not in self.extra:
                self.extra[name] = torch.zeros(bsz, t, value.shape[-1], dtype=value.dtype)
            self.extra[name][rows[:, None], at] = value
        if every:
            self.wkv, self.shift, self.owned = new_wkv, new_shift, True
        else:
            if not self.owned:
                self.wkv, self.shift, self.owned = self.wkv.clone(), self.shift.clone(), True
            self.wkv[rows], self.shift[rows] = new_wkv, new_shift
        if self.preds is None and every and same_start and n == t:
            self.preds = pred
            return
        if self.preds is None:  # (patches no call reaches: not valid; zeros)
            self.preds = torch.zeros_like(self.xn)
        self.preds[rows[:, None], at] = pred

    def outputs(self):
        preds = self.preds if self.preds is not None else torch.zeros_like(self.xn)
        return self.net._result(preds, self.wkv, self.shift, self.extra)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Export a checkpoint's network to ONNX (beside it)")
    ap.add_argument("--weights", required=True, help="a weights directory or an original .pth")
    args = ap.parse_args(argv)
    export(args.weights)


if __name__ == "__main__":
    cli.run(main, "python -m model.onnx_network")
