"""What can be checked of the container setup without a Docker engine (none runs in CI): the
compose files (the GPU default and its CPU override), the Prometheus config and the Grafana
provisioning parse and agree with each other and with the service (ports, metric names), each
Dockerfile starts `python -m service` with flags the service accepts, as a non-root user, with a
health check, and takes its packages from the index and wheels its build arguments name. `docker
build` and `docker compose up` are not run here: docker/smoke.sh does that on a real engine
(docker/SMOKE.md)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import pytest
import yaml

from service.app import create_app
from service.settings import Settings, parse
from tests.conftest import ROOT

DOCKER = ROOT / "docker"
DOCKERFILES = {"cpu": DOCKER / "Dockerfile.cpu", "gpu": DOCKER / "Dockerfile.gpu"}
PROMETHEUS_YML = DOCKER / "prometheus" / "prometheus.yml"
GRAFANA = DOCKER / "grafana"


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


class ComposeLoader(yaml.SafeLoader):
    """YAML with Compose's merge tags (`!reset`, `!override`), kept as Reset/Override markers."""


class Reset:
    def __init__(self, value):
        self.value = value


class Override(Reset):
    pass


ComposeLoader.add_constructor("!reset", lambda loader, node: Reset(
    loader.construct_mapping(node) if isinstance(node, yaml.MappingNode) else
    loader.construct_sequence(node) if isinstance(node, yaml.SequenceNode) else None))
ComposeLoader.add_constructor("!override", lambda loader, node: Override(
    loader.construct_mapping(node, deep=True) if isinstance(node, yaml.MappingNode) else
    loader.construct_sequence(node, deep=True)))


def compose(name: str = "docker-compose.yml") -> dict:
    return yaml.load((ROOT / name).read_text(), Loader=ComposeLoader)


def merged(base: dict, override: dict) -> dict:
    """Compose's merge of an override file into a base, for the keys these files use: mappings
    merge, `!reset` drops a key, `!override` and anything else replaces it."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, Reset) and not isinstance(value, Override):
            out.pop(key, None)
        elif isinstance(value, Override):
            out[key] = value.value
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out


def cpu_compose() -> dict:
    return merged(compose(), compose("docker-compose.cpu.yml"))


def arg_defaults(path) -> dict[str, str]:
    """ARG NAME=default of a Dockerfile (an ARG without a default maps to "")."""
    out = {}
    for w, a in instructions(path):
        if w == "ARG":
            name, _, default = a.partition("=")
            out[name] = default
    return out


def pip_run(path) -> str:
    runs = [a for w, a in instructions(path) if w == "RUN" and "pip install" in a]
    assert len(runs) == 1, f"{path.name}: one RUN installs the requirements"
    return runs[0]


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
    args = arg_defaults(DOCKERFILES[kind])
    assert args["PIP_INDEX_URL"] == "https://pypi.org/simple"
    assert args["WHEELS"] == "wheels" and args["PIP_OFFLINE"] == ""
    if kind == "cpu":
        assert "-r requirements.txt" in runs
        # torch==2.13.0+cpu from PyTorch's CPU index unless the build says otherwise
        assert args["PIP_EXTRA_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
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
                src = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], src)  # ARG defaults
                assert (ROOT / src).exists(), f"{kind}: COPY {src} does not exist"
    assert "COPY ${WHEELS}/ /tmp/wheels/" in DOCKERFILES[kind].read_text()
    for needed in ("service/", "model/", "kernels/", "runtime/", "weights/"):
        assert any(w == "COPY" and a.startswith(needed) for w, a in ins), needed


FAKE_PIP = """#!/bin/sh
[ "$1" = install ] && shift
printf '%s\\n' "$@" > "$PIP_ARGS_OUT"
"""


@pytest.mark.parametrize("kind", ["cpu", "gpu"])
@pytest.mark.parametrize("case", ["defaults", "mirror", "wheels", "offline"])
@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("env") is None,
                    reason="needs bash and env")
def test_build_args_choose_the_index_and_the_local_wheels(kind, case, tmp_path):
    """The pip RUN line, run in a shell with a stand-in pip, passes the index, the extra index,
    --find-links (only with wheels there) and --no-index as the build arguments say."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("pip", "python"):
        (bin_dir / tool).write_text(FAKE_PIP if tool == "pip" else "#!/bin/sh\n")
        (bin_dir / tool).chmod(0o755)
    work = tmp_path / "t"  # stands for /tmp in the image
    (work / "wheels").mkdir(parents=True)
    args = arg_defaults(DOCKERFILES[kind])
    if case == "mirror":
        args["PIP_INDEX_URL"], args["PIP_EXTRA_INDEX_URL"] = "https://mirror.test/simple", ""
    if case in ("wheels", "offline"):
        (work / "wheels" / "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl").write_bytes(b"")
    if case == "offline":
        args["PIP_OFFLINE"] = "1"
    script = pip_run(DOCKERFILES[kind]).replace("/tmp/", f"{work}/")
    out = tmp_path / "pip-args"
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "PIP_ARGS_OUT": str(out), **args}
    subprocess.run(["bash", "-c", script], cwd=ROOT, env=env, check=True, capture_output=True)
    argv = out.read_text().splitlines()
    flags = " ".join(argv)
    if case == "offline":
        assert argv[:3] == ["--no-index", "--find-links", f"{work}/wheels"]
        assert "--index-url" not in argv and "--extra-index-url" not in argv
    else:
        assert argv[:2] == ["--index-url", args["PIP_INDEX_URL"]]
        extra = args["PIP_EXTRA_INDEX_URL"]
        assert (f"--extra-index-url {extra}" in flags) == bool(extra)
        if extra == "":
            assert "--extra-index-url" not in argv
        assert ("--find-links" in argv) == (case == "wheels")
    if kind == "cpu":
        assert argv[-2:] == ["-r", "requirements.txt"]
    else:
        assert f"{work}/requirements-gpu.txt" in argv and "torch==2.11.0" in argv
        assert any(a.startswith("triton==") for a in argv)
        assert "torch==2.13.0" not in (work / "requirements-gpu.txt").read_text()
    assert not (work / "wheels").exists()  # the wheels do not stay in the image


def test_wheels_directory_is_in_the_build_context_but_its_wheels_are_not_committed():
    assert (ROOT / "wheels" / "README.md").is_file()  # COPY ${WHEELS}/ needs the directory
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert not any(p.strip("/").startswith("wheels") for p in ignored)
    assert "/wheels/*.whl" in (ROOT / ".gitignore").read_text().split()


def test_dockerignore_keeps_the_context_small():
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored and ".git" in ignored


def test_compose_names_the_services_gpu_volume_and_ports():
    c = compose()
    assert set(c["services"]) == {"rimer", "prometheus", "grafana"}
    rimer = c["services"]["rimer"]
    assert rimer["build"]["dockerfile"] == "docker/Dockerfile.gpu"
    assert (ROOT / rimer["build"].get("context", ".") / rimer["build"]["dockerfile"]).is_file()
    devices = rimer["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    # Published on this host only unless asked: the API has no keys by default.
    port = Settings.port
    assert rimer["ports"] == [f"${{RIMER_BIND:-127.0.0.1}}:${{RIMER_HOST_PORT:-{port}}}:{port}"]
    assert c["services"]["prometheus"]["ports"] == [
        "${RIMER_BIND:-127.0.0.1}:${PROMETHEUS_HOST_PORT:-9090}:9090"]
    assert c["services"]["grafana"]["ports"] == [
        "${RIMER_BIND:-127.0.0.1}:${GRAFANA_HOST_PORT:-3000}:3000"]
    data = [v.split(":") for v in rimer["volumes"]]
    assert any(target == "/data" and source in c["volumes"] for source, target, *_ in data)
    assert rimer["environment"]["RIMER_DATA_DIR"] == "/data"  # the volume holds the WAL and snapshots
    assert "RIMER_API_KEYS" in rimer["environment"]  # passed through from the host when set

    prom = c["services"]["prometheus"]
    image, _, tag = prom["image"].partition(":")
    assert image == "prom/prometheus" and re.fullmatch(r"v\d+\.\d+\.\d+", tag)  # pinned
    mounts = {v.split(":")[1]: v.split(":")[0] for v in prom["volumes"]}
    assert (ROOT / mounts["/etc/prometheus/prometheus.yml"]).resolve() == PROMETHEUS_YML
    assert "--config.file=/etc/prometheus/prometheus.yml" in prom["command"]
    assert "rimer" in prom["depends_on"]

    graf = c["services"]["grafana"]
    image, _, tag = graf["image"].partition(":")
    assert image == "grafana/grafana" and re.fullmatch(r"\d+\.\d+\.\d+", tag)  # pinned
    mounts = {v.split(":")[1]: v.split(":")[0] for v in graf["volumes"]}
    assert (ROOT / mounts["/etc/grafana/provisioning"]).resolve() == GRAFANA / "provisioning"
    assert (ROOT / mounts["/var/lib/grafana/dashboards"]).resolve() == GRAFANA / "dashboards"
    assert "prometheus" in graf["depends_on"]


def test_cpu_override_is_the_same_stack_on_the_cpu_image_without_a_gpu():
    base, override = compose(), compose("docker-compose.cpu.yml")
    assert set(override["services"]) <= set(base["services"])  # overrides only, adds nothing
    assert isinstance(override["services"]["rimer"]["deploy"], Reset)
    c = cpu_compose()
    assert set(c["services"]) == set(base["services"])
    rimer = merged(base["services"]["rimer"], override["services"]["rimer"])
    assert rimer["build"]["dockerfile"] == "docker/Dockerfile.cpu"
    assert rimer["build"]["context"] == base["services"]["rimer"]["build"]["context"]
    assert (ROOT / rimer["build"]["context"] / rimer["build"]["dockerfile"]).is_file()
    assert rimer["image"] == "rimer-service:cpu" != base["services"]["rimer"]["image"]
    assert "deploy" not in rimer and "nvidia" not in json.dumps(rimer)
    assert "PIP_EXTRA_INDEX_URL" in rimer["build"]["args"]
    # the rest is the GPU service's: ports, data volume, environment, health check on /readyz
    for key in ("ports", "volumes", "environment", "restart"):
        assert rimer[key] == base["services"]["rimer"][key], key
    assert "/readyz" in " ".join(rimer["healthcheck"]["test"])
    compose_text = (ROOT / "docker-compose.cpu.yml").read_text()
    assert "docker compose -f docker-compose.yml -f docker-compose.cpu.yml up" in compose_text


@pytest.mark.parametrize("variant", ["gpu", "cpu"])
def test_every_service_has_a_healthcheck_or_waits_for_one_that_has(variant):
    c = compose() if variant == "gpu" else cpu_compose()
    for name, svc in c["services"].items():
        assert "healthcheck" in svc or svc.get("depends_on"), name
        if "healthcheck" in svc:
            hc = svc["healthcheck"]
            assert hc["test"][0] in ("CMD", "CMD-SHELL") and len(hc["test"]) > 1, name
            for key in ("interval", "timeout", "start_period"):
                assert re.fullmatch(r"\d+s", hc[key]), (name, key)
        for dep in svc.get("depends_on", []):
            assert dep in c["services"], (name, dep)
    # the service's check asks the port the service listens on inside the container
    test = " ".join(c["services"]["rimer"]["healthcheck"]["test"])
    assert f"127.0.0.1:{Settings.port}/readyz" in test
    assert "/readyz" in {r.path for r in create_app(Settings()).routes}


def test_prometheus_scrapes_the_rimer_service_metrics():
    cfg = yaml.safe_load(PROMETHEUS_YML.read_text())
    jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
    job = jobs["rimer"]
    targets = [t for sc in job["static_configs"] for t in sc["targets"]]
    assert targets == [f"rimer:{Settings.port}"]  # the compose service name and the service port
    published = compose()["services"]["rimer"]["ports"][0].rsplit(":", 1)[1]
    assert published == str(Settings.port)  # the container port compose publishes
    path = job.get("metrics_path", "/metrics")
    assert path == "/metrics"
    assert path in {r.path for r in create_app(Settings()).routes}
    # the documented (commented) settings for a service with API keys on
    text = PROMETHEUS_YML.read_text()
    assert "# authorization:" in text and "credentials_file:" in text
    uncommented = yaml.safe_load("\n".join(
        ln.replace("# ", "", 1) if ln.strip().startswith(("# authorization", "#   ")) else ln
        for ln in text.splitlines()))
    auth = uncommented["scrape_configs"][0]["authorization"]
    assert auth == {"type": "Bearer", "credentials_file": "/etc/prometheus/rimer_api_key"}


def metric_names() -> dict[str, set[str]]:
    """{exposed name: ...} of every metric the service defines (in service/*.py, where
    service/metrics.py defines them today): a Counter `x` is exposed as `x_total`, a Histogram
    as `x_bucket`, `x_sum` and `x_count`, a Gauge as `x`."""
    kinds = {"Counter": ("_total",), "CounterMetricFamily": ("_total",), "Gauge": ("",),
             "GaugeMetricFamily": ("",), "Histogram": ("_bucket", "_sum", "_count")}
    names: dict[str, set[str]] = {}
    for path in sorted((ROOT / "service").glob("*.py")):
        for kind, name in re.findall(r"\b(\w+)\(\s*\"(rimer_\w+)\"", path.read_text()):
            for suffix in kinds.get(kind, ()):
                names.setdefault(name + suffix, set()).add(kind)
    return names


def dashboard() -> dict:
    return json.loads((GRAFANA / "dashboards" / "rimer.json").read_text())


def exprs() -> list[str]:
    return [t["expr"] for p in dashboard()["panels"] for t in p["targets"]]


def test_metric_names_are_read_from_the_service():
    names = metric_names()  # guards against a vacuous check below (a pattern matching nothing)
    for known in ("rimer_http_requests_total", "rimer_http_request_duration_seconds_bucket",
                  "rimer_points_appended_total", "rimer_cache_series", "rimer_recovery_seconds",
                  "rimer_wal_unsynced_records", "rimer_wal_records_since_snapshot"):
        assert known in names, known
    assert "rimer_cache_series_total" not in names and "rimer_points_appended" not in names


def test_dashboard_queries_only_metrics_the_service_exports():
    names = metric_names()
    used = {m for e in exprs() for m in re.findall(r"\brimer_\w+", e)}
    assert used, "the dashboard queries no rimer_ metric"
    unknown = sorted(used - set(names))
    assert not unknown, f"the dashboard queries metrics the service does not export: {unknown}"
    for e in exprs():  # rate() and histogram_quantile() only on the series they apply to
        for m in re.findall(r"rate\((rimer_\w+)", e):
            assert m.endswith(("_total", "_bucket", "_sum", "_count")), e
        if "histogram_quantile" in e:
            assert re.search(r"rimer_\w+_bucket", e) and "by (le" in e, e
        assert e.count("(") == e.count(")") and e.count("{") == e.count("}"), e


def test_dashboard_has_the_panels_the_issue_asks_for():
    d = dashboard()
    assert d["uid"] == "rimer-service" and d["title"]
    panels = d["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    for p in panels:
        refs = [t["refId"] for t in p["targets"]]
        assert len(set(refs)) == len(refs) and p["targets"], p["title"]
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24 and g["w"] > 0 and g["h"] > 0, p["title"]

    def panel_using(*metrics: str) -> str:
        hits = [p["title"] for p in panels
                if all(any(m in t["expr"] for t in p["targets"]) for m in metrics)]
        assert hits, f"no panel queries {metrics}"
        return hits[0]

    assert "ppend" in panel_using("rimer_points_appended_total", "rimer_http_requests_total")
    latency = panel_using("rimer_http_request_duration_seconds_bucket")
    assert "atency" in latency
    lat = [t["expr"] for p in panels if p["title"] == latency for t in p["targets"]]
    assert all("forecast" in e for e in lat)
    assert "tier" in panel_using("rimer_cache_series")
    assert "WAL" in panel_using("rimer_wal_unsynced_records", "rimer_wal_records_since_snapshot")
    assert "ecovery" in panel_using("rimer_recovery_seconds")


def test_grafana_provisions_the_prometheus_datasource_and_the_dashboard():
    ds = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    assert ds["apiVersion"] == 1
    (source,) = ds["datasources"]
    assert source["type"] == "prometheus" and source["access"] == "proxy"
    c = compose()
    host, _, port = source["url"].removeprefix("http://").partition(":")
    assert host == "prometheus" and host in c["services"]  # the compose service, on its port
    assert c["services"]["prometheus"]["ports"][0].endswith(f":{port}")
    uids = {p["datasource"]["uid"] for p in dashboard()["panels"]}
    uids |= {t["datasource"]["uid"] for p in dashboard()["panels"] for t in p["targets"]}
    assert uids == {source["uid"]}  # every panel queries the provisioned datasource

    prov = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "rimer.yml").read_text())
    (provider,) = prov["providers"]
    assert provider["type"] == "file"
    graf = c["services"]["grafana"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in graf["volumes"]}
    assert provider["options"]["path"] in mounts  # the dashboards directory is mounted there
    home = graf["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    target = provider["options"]["path"]
    assert home.startswith(target + "/")
    assert (ROOT / mounts[target] / home.removeprefix(target + "/")).is_file()


SCRIPTS = [DOCKER / "smoke.sh", DOCKER / "standins" / "build.sh", DOCKER / "standins" / "engine.sh"]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash")
def test_scripts_pass_bash_n(script):
    done = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert os.access(script, os.X_OK), f"{script.name} is not executable"


def test_smoke_script_checks_what_the_issue_asks_for():
    text = (DOCKER / "smoke.sh").read_text()
    for needed in ("docker-compose.cpu.yml", "/readyz", "/forecast", "/append",
                   "restart rimer", "docker kill", 'up{job=\\"rimer\\"}', "rimer_points_appended_total",
                   "/api/health", "/api/search", "rimer-service", "down -v", "PASS: ", "FAIL: ",
                   "SKIP: "):
        assert needed in text, needed
    assert "RIMER_SMOKE_VARIANT" in text and "nvidia-smi" in text  # CPU when no NVIDIA GPU


def test_stand_in_images_carry_the_tags_the_files_name():
    """docker/standins/build.sh builds each base image under the tag a Dockerfile or the compose
    file names (a version bump there must be made in build.sh too)."""
    text = (DOCKER / "standins" / "build.sh").read_text()
    built = set(re.findall(r"build (\S+:\S+) Dockerfile\.\w+", text))
    named = {instructions(p)[0][1] for p in DOCKERFILES.values()}
    named.add(compose()["services"]["prometheus"]["image"])
    assert named <= built, named - built
    for _tag, dockerfile in re.findall(r"build (\S+:\S+) (Dockerfile\.\w+)", text):
        assert (DOCKER / "standins" / dockerfile).is_file(), dockerfile
