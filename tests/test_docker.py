"""What can be checked of the container setup without a Docker engine (none runs in CI): the
compose file and the Prometheus config parse and agree with each other and with the service,
and each Dockerfile starts `python -m service` with flags the service accepts, as a non-root
user, with a health check. `docker build` and `docker compose up` are not run here."""

from __future__ import annotations

import json
import os
import re

import pytest
import yaml

from service.app import create_app
from service.settings import Settings, parse
from tests.conftest import ROOT

DOCKER = ROOT / "docker"
DOCKERFILES = {"cpu": DOCKER / "Dockerfile.cpu", "gpu": DOCKER / "Dockerfile.gpu"}


def instructions(path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    out, pending = [], ""
    for line in path.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        word, _, rest = full.partition(" ")
        out.append((word.upper(), rest.strip()))
    assert not pending, f"{path.name} ends in a continuation line"
    return out


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


@pytest.mark.parametrize("kind", ["cpu", "gpu"])
def test_dockerfile_runs_the_service_as_non_root_with_a_healthcheck(kind, monkeypatch):
    for name in [n for n in os.environ if n.startswith("RIMER_")]:
        monkeypatch.delenv(name)  # the flags alone must say it
    ins = instructions(DOCKERFILES[kind])
    words = [w for w, _ in ins]
    assert words[0] == "FROM"
    base = ins[0][1]
    assert base == "python:3.11-slim" if kind == "cpu" else base.startswith("nvidia/cuda:")
    assert ":latest" not in base

    cmd = [a for w, a in ins if w == "CMD"]
    assert len(cmd) == 1
    argv = json.loads(cmd[0])  # exec form, so signals reach uvicorn
    assert argv[:3] == ["python", "-m", "service"]
    settings = parse(argv[3:])
    assert settings.host == "0.0.0.0"
    assert settings.device == ("cpu" if kind == "cpu" else "cuda")

    users = [a for w, a in ins if w == "USER"]
    assert users and users[-1] not in ("root", "0", "0:0")
    assert words.index("USER") < words.index("CMD")

    health = [a for w, a in ins if w == "HEALTHCHECK"]
    assert len(health) == 1 and "/healthz" in health[0] and "urllib.request" in health[0]
    assert "os.environ.get('RIMER_PORT', '8000')" in health[0] and settings.port == 8000
    expose = [a for w, a in ins if w == "EXPOSE"]
    assert expose == [str(settings.port)]

    runs = " ".join(a for w, a in ins if w == "RUN")
    assert "pip install" in runs
    if kind == "cpu":
        assert "-r requirements.txt" in runs
        assert "--extra-index-url https://download.pytorch.org/whl/cpu" in runs
    else:  # requirements.txt but its (CPU machines') torch, and the GPU checks' torch and Triton
        assert "sed '/^torch==/d' requirements.txt > /tmp/requirements-gpu.txt" in runs
        assert "-r /tmp/requirements-gpu.txt" in runs and '"torch==${TORCH_GPU}"' in runs
        assert "ARG TORCH_GPU=2.11.0" in DOCKERFILES[kind].read_text()
        assert "^triton==" in runs and "requirements-dev.txt" in runs  # the tested Triton pin
        assert re.search(r"^triton==\S+$", (ROOT / "requirements-dev.txt").read_text(), re.M)

    for w, a in ins:  # every COPY source is in the repository and not excluded from the context
        if w == "COPY":
            *sources, _dest = a.split()
            for src in sources:
                assert (ROOT / src).exists(), f"{kind}: COPY {src} does not exist"
    for needed in ("service/", "model/", "kernels/", "runtime/", "weights/"):
        assert any(w == "COPY" and a.startswith(needed) for w, a in ins), needed


def test_dockerignore_keeps_the_context_small():
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored and ".git" in ignored


def test_compose_names_the_services_gpu_volume_and_ports():
    c = compose()
    assert set(c["services"]) == {"rimer", "prometheus"}
    rimer = c["services"]["rimer"]
    assert rimer["build"]["dockerfile"] == "docker/Dockerfile.gpu"
    assert (ROOT / rimer["build"].get("context", ".") / rimer["build"]["dockerfile"]).is_file()
    devices = rimer["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    # Published on this host only unless asked: the API has no keys by default.
    assert rimer["ports"] == [f"${{RIMER_BIND:-127.0.0.1}}:{Settings.port}:{Settings.port}"]
    assert c["services"]["prometheus"]["ports"] == ["${RIMER_BIND:-127.0.0.1}:9090:9090"]
    data = [v.split(":") for v in rimer["volumes"]]
    assert any(target == "/data" and source in c["volumes"] for source, target, *_ in data)
    assert rimer["environment"]["RIMER_DATA_DIR"] == "/data"  # the volume holds the WAL and snapshots
    assert "RIMER_API_KEYS" in rimer["environment"]  # passed through from the host when set

    prom = c["services"]["prometheus"]
    image, _, tag = prom["image"].partition(":")
    assert image == "prom/prometheus" and re.fullmatch(r"v\d+\.\d+\.\d+", tag)  # pinned
    mounts = {v.split(":")[1]: v.split(":")[0] for v in prom["volumes"]}
    assert (ROOT / mounts["/etc/prometheus/prometheus.yml"]).resolve() == DOCKER / "prometheus.yml"
    assert "--config.file=/etc/prometheus/prometheus.yml" in prom["command"]
    assert "rimer" in prom["depends_on"]


def test_prometheus_scrapes_the_rimer_service_metrics():
    cfg = yaml.safe_load((DOCKER / "prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
    job = jobs["rimer"]
    targets = [t for sc in job["static_configs"] for t in sc["targets"]]
    assert targets == [f"rimer:{Settings.port}"]  # the compose service name and the service port
    path = job.get("metrics_path", "/metrics")
    assert path == "/metrics"
    assert path in {r.path for r in create_app(Settings()).routes}
    # the documented (commented) settings for a service with API keys on
    text = (DOCKER / "prometheus.yml").read_text()
    assert "# authorization:" in text and "credentials_file:" in text
    uncommented = yaml.safe_load("\n".join(
        ln.replace("# ", "", 1) if ln.strip().startswith(("# authorization", "#   ")) else ln
        for ln in text.splitlines()))
    auth = uncommented["scrape_configs"][0]["authorization"]
    assert auth == {"type": "Bearer", "credentials_file": "/etc/prometheus/rimer_api_key"}
