"""`python -m service`: serve the forecasting API with uvicorn."""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
from pathlib import Path

import torch
import uvicorn

from model.checkpoint import CheckpointError
from model.onnx_network import OnnxNetworkError
from service.app import create_app
from service.cache import SpillError
from service.http_protocol import with_header_timeout
from service.settings import Settings, parse
from service.store import StoreError


def unwritable(directory: Path) -> str | None:
    """Why `directory` cannot hold the service's files (created if missing), or None."""
    if directory.exists() and not directory.is_dir():
        return "not a directory"
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)  # (like its files: 0600)
    except OSError as exc:
        return exc.strerror or str(exc)
    if not os.access(directory, os.W_OK | os.X_OK):
        return "not writable"
    return None


def preflight(settings: Settings) -> str | None:
    """A configuration mistake found before anything is loaded, as one line; None if there is
    none. (Mistakes found loading the weights or recovering are reported by `main`.)"""
    weights = Path(settings.weights)
    if not weights.exists():
        return f"--weights: no checkpoint at {weights}"
    for flag, directory in (("--data-dir", settings.data_dir), ("--spill-dir", settings.spill_dir)):
        problem = directory and unwritable(Path(directory))
        if problem:
            return f"{flag}: cannot use {directory} ({problem})"
    if (settings.spill_dir and settings.data_dir
            and Path(settings.spill_dir).resolve() == Path(settings.data_dir).resolve()):
        return "--spill-dir must not be --data-dir (the default is <data-dir>/spill)"
    if settings.device == "cuda" and not torch.cuda.is_available():
        return "--device cuda: CUDA is not available on this machine"
    if settings.backend == "triton" and importlib.util.find_spec("triton") is None:
        return "--backend triton needs the triton package (requirements-dev.txt pins it)"
    if settings.backend == "onnx":
        if settings.device == "cuda" or (settings.device == "auto" and torch.cuda.is_available()):
            return "--backend onnx runs on the CPU: add --device cpu"
        from model.onnx_network import OnnxNetworkError, open_sessions
        try:
            open_sessions(weights)
        except OnnxNetworkError as exc:
            return f"--backend onnx: {exc}"
    return None


def main(argv: list[str] | None = None) -> None:
    settings = parse(argv)
    # The service's own loggers (rimer.*: recovery, snapshots, log warnings) beside uvicorn's.
    logging.basicConfig(level=logging.INFO, format="%(levelname)s:     %(name)s: %(message)s")
    mistake = preflight(settings)
    if mistake is not None:
        print(f"python -m service: error: {mistake}", file=sys.stderr)
        sys.exit(2)
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    if settings.gil_switch_us:  # (the process's, so here and not in create_app)
        sys.setswitchinterval(settings.gil_switch_us / 1e6)
    app = create_app(settings)
    try:
        app.state.start()  # weights and recovery before serving: their errors in one line
    except (CheckpointError, OnnxNetworkError, StoreError, SpillError, OSError) as exc:
        print(f"python -m service: error: cannot start: {exc}", file=sys.stderr)
        sys.exit(2)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="info",
                access_log=settings.access_log, http=with_header_timeout(settings.header_timeout_s),
                limit_concurrency=settings.max_connections)


if __name__ == "__main__":
    main()
