"""Shared fixtures: reference data, the shipped default model, a real server on loopback."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import torch

from service.settings import DEFAULT_WEIGHTS as DEFAULT_WEIGHTS_OF_SERVICE

if not torch.cuda.is_available():  # Triton's interpreter; it must be set before triton is imported
    os.environ.setdefault("TRITON_INTERPRET", "1")

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT.parent / "shared" / "reference"
ORIGINAL_PTH = REFERENCE / "rimer_random_state_dict.pth"
GOLDEN = REFERENCE / "rimer_golden.pt"
DEFAULT_WEIGHTS = Path(DEFAULT_WEIGHTS_OF_SERVICE)  # what `python -m service` serves
DEFAULT_NAME = json.loads((DEFAULT_WEIGHTS / "manifest.json").read_text())["name"]


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Relative error as the larger of the norm-wise and the worst-element measures."""
    actual, expected = actual.double(), expected.double()
    normwise = (actual - expected).norm() / expected.norm()
    worst = (actual - expected).abs().max() / expected.abs().max()
    return float(max(normwise, worst))


@pytest.fixture(scope="session")
def golden() -> dict:
    return torch.load(GOLDEN, map_location="cpu", weights_only=True)


@pytest.fixture(scope="session")
def original_model():
    from model import checkpoint
    model, _ = checkpoint.load(ORIGINAL_PTH)
    return model


@pytest.fixture(scope="session")
def tiny():
    """The small random model of tests/helpers.py (seed 0), built once per session. Tests read
    it and may wrap its methods for a moment (restored in `finally`), never change its weights."""
    from tests.helpers import tiny_model
    return tiny_model()


@pytest.fixture(scope="session")
def default_model():
    from model import checkpoint
    model, _ = checkpoint.load(DEFAULT_WEIGHTS)
    return model


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`python -m service` in a subprocess on a free loopback port."""

    def __init__(self, *args: str):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(self.port),
             "--device", "cpu", *args],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("server exited:\n" + self.proc.stdout.read().decode())
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        else:
            self.stop()
            raise RuntimeError("server did not become healthy in 60 s")
        self.client = httpx.Client(base_url=self.url, timeout=120)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture(scope="session")
def original_server():
    server = Server("--weights", str(ORIGINAL_PTH))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def default_server():
    server = Server()
    yield server
    server.stop()
