"""Operations one one-patch `PoolRunner.step_slots` call issues at B = 1, counted on the host.

    python -m bench.step_ops [--label after] [--out bench/results/step_ops-after-cpu.json]
                             [--compare bench/results/step_ops-before-cpu.json]

Counted with `bench.model_step.count_launches`: PyTorch ops dispatched that launch a kernel (not views,
not allocations) plus Triton kernel launches, for one `step_slots` of one series that completes a patch,
after a warm-up call. On a machine without CUDA the Triton kernels run under the interpreter and the
PyTorch ops on the CPU, so these are launch COUNTS, not GPU time: each counted op is one GPU kernel (or
memset/copy) of the step a CUDA graph captures. GPU time is measured by bench/gpu_check.sh
(bench.model_step's single-series append).

Models: the test's tiny model and the shipped configs (random weights: the count depends on the shape
of the network, not on its weights). To count an older tree, run this file with that tree first on
worktree (`git worktree add /tmp/old <commit>`), copy this file into its bench/ and run it there (its
bench.model_step and model are then the ones imported):

    cd /tmp/old && python -m bench.step_ops --label before --out ...
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

import torch

import kernels  # noqa: F401  (sets TRITON_INTERPRET without CUDA, before triton is imported)
from bench.model_step import count_launches, tiny
from model.config import RimerConfig
from model.rimer import Rimer

CONFIGS = ("weights/rimer-general/config.json", "weights/rimer-small/config.json")


def models(root: Path) -> dict[str, Rimer]:
    out = {"tiny (tests)": tiny()}
    for rel in CONFIGS:
        path = root / rel
        if path.exists():
            torch.manual_seed(0)
            cfg = RimerConfig(**json.loads(path.read_text()))
            out[f"{path.parent.name} config"] = Rimer(cfg).eval()
    return out


def commit(root: Path) -> str:
    try:
        return subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def table(results: dict[str, dict]) -> str:
    lines = [f"{'tree':<8} {'model':<22} {'layers':>6} {'torch ops':>9} {'triton':>7} {'total':>6}"]
    for label, res in results.items():
        for name, row in res["models"].items():
            lines.append(f"{label:<8} {name:<22} {row['layers']:>6} {row['torch_ops']:>9} "
                         f"{row['triton_launches']:>7} {row['total']:>6}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--label", default="after")
    ap.add_argument("--out", default=None, help="JSON path (default bench/out/step_ops-<label>.json)")
    ap.add_argument("--compare", default=None, help="an earlier run's JSON to print beside this one")
    args = ap.parse_args(argv)
    root = Path.cwd()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    result = {"label": args.label, "commit": commit(root), "device": device,
              "counted": "host-side: PyTorch ops that launch a kernel + Triton launches, one step_slots at "
                         "B = 1 completing a patch; launch counts, not GPU time",
              "models": {}}
    for name, model in models(root).items():
        model = model.to(device)
        row = count_launches(model, device)
        row["layers"] = model.cfg.n_layers
        result["models"][name] = row
    out = Path(args.out or f"bench/out/step_ops-{args.label}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    shown = {args.label: result}
    if args.compare:
        earlier = json.loads(Path(args.compare).read_text())
        shown = {earlier["label"]: earlier, **shown}
    print(table(shown))
    for label, res in shown.items():
        row = next(iter(res["models"].values()))
        print(f"{label} ({res['commit']}), tiny, Triton launches by kernel: {row['triton_by_kernel']}")
        print(f"{label} ({res['commit']}), tiny, PyTorch ops: {row['torch_by_op']}")
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
