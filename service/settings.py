"""Service configuration: flags override environment variables, which override defaults."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, fields
from pathlib import Path

DEFAULT_WEIGHTS = Path(__file__).resolve().parent.parent / "weights" / "rimer-small"


@dataclass(frozen=True)
class Settings:
    weights: str = str(DEFAULT_WEIGHTS)
    device: str = "auto"  # cpu | cuda | auto
    backend: str = "auto"  # torch | triton | auto (triton on CUDA, else torch)
    host: str = "127.0.0.1"
    port: int = 8000
    max_horizon: int = 2048
    max_series_per_request: int = 1024
    max_points_per_request: int = 2_000_000
    max_body_bytes: int = 64 * 1024 * 1024
    max_series: int = 100_000  # streaming series held at once

    @classmethod
    def env_name(cls, field: str) -> str:
        return "RIMER_" + field.upper()


HELP = {
    "weights": "checkpoint to serve: a directory of ours or an original Rimer .pth",
    "device": "cpu, cuda, or auto (cuda when available)",
    "backend": "torch, triton (state pool on the device, Triton kernels, CUDA graphs on a GPU), "
               "or auto (triton on CUDA, else torch)",
    "host": "address to listen on",
    "port": "port to listen on",
    "max_horizon": "largest forecast horizon accepted",
    "max_series_per_request": "most series in one request",
    "max_points_per_request": "most values in one request, all series together",
    "max_body_bytes": "largest request body accepted (413 beyond)",
    "max_series": "most streaming series held at once (409 beyond)",
}


def parse(argv: list[str] | None = None) -> Settings:
    """Settings from flags (`--max-horizon`), then env (`RIMER_MAX_HORIZON`), then defaults."""
    ap = argparse.ArgumentParser(prog="python -m service", description="Rimer forecasting service")
    values = {}
    for f in fields(Settings):
        env = Settings.env_name(f.name)
        default = os.environ.get(env, f.default)
        ap.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=default,
                        help=f"{HELP[f.name]} (env {env}, default {f.default})")
    args = ap.parse_args(argv)
    for f in fields(Settings):
        values[f.name] = type(f.default)(getattr(args, f.name))
    if values["device"] not in ("cpu", "cuda", "auto"):
        ap.error("--device must be cpu, cuda or auto")
    if values["backend"] not in ("torch", "triton", "auto"):
        ap.error("--backend must be torch, triton or auto")
    return Settings(**values)
