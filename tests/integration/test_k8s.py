"""Static checks of deploy/k8s/ (no cluster, no kubectl in CI): every document parses with PyYAML
and has apiVersion, kind and metadata.name; the StatefulSet, its headless Service, its volume
claim template and its probes agree with each other and with the service (ports, /readyz,
/healthz, flags the service accepts, a GPU requested); the nginx proxy hashes on the series id,
extracted by a pattern checked here on real paths, over exactly the StatefulSet's pods. This is a
structural check, not a Kubernetes schema validation (no pinned schema checker is installed)."""

from __future__ import annotations

import re

import pytest
import yaml

from service.app import create_app
from service.settings import Settings, parse
from tests.conftest import ROOT

K8S = ROOT / "deploy" / "k8s"
FILES = sorted(K8S.glob("*.yaml"))


def documents() -> list[dict]:
    return [d for f in FILES if f.name != "kustomization.yaml"
            for d in yaml.safe_load_all(f.read_text()) if d is not None]


def one(kind: str, name: str) -> dict:
    found = [d for d in documents() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, (kind, name)
    return found[0]


def test_every_document_names_its_api_kind_and_name():
    docs = documents()
    assert docs
    for d in docs:
        assert isinstance(d.get("apiVersion"), str) and d["apiVersion"], d
        assert isinstance(d.get("kind"), str) and d["kind"], d
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", d["metadata"]["name"]), d
        if d["kind"] != "Namespace":
            assert d["metadata"]["namespace"] == "rimer"
    kinds = {(d["kind"], d["apiVersion"]) for d in docs}
    assert {("StatefulSet", "apps/v1"), ("Deployment", "apps/v1"), ("Service", "v1"),
            ("ConfigMap", "v1"), ("Namespace", "v1")} <= kinds
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert sorted(kust["resources"]) == sorted(f.name for f in FILES if f.name != "kustomization.yaml")


def ports_of(container: dict) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in container["ports"]}


def probe_port(container: dict, probe: dict) -> int:
    port = probe["httpGet"]["port"]
    return ports_of(container)[port] if isinstance(port, str) else port


def test_statefulset_pods_have_a_volume_each_probes_and_a_gpu():
    sts, svc = one("StatefulSet", "rimer"), one("Service", "rimer")
    spec = sts["spec"]
    assert spec["serviceName"] == svc["metadata"]["name"]
    assert svc["spec"]["clusterIP"] == "None"  # headless: stable per-pod DNS names
    labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    assert svc["spec"]["selector"].items() <= labels.items()
    (container,) = spec["template"]["spec"]["containers"]
    port = Settings.port
    assert ports_of(container) == {"http": port}
    assert svc["spec"]["ports"][0]["port"] == port
    assert ports_of(container)[svc["spec"]["ports"][0]["targetPort"]] == port

    argv = container["args"]
    assert argv[:3] == ["python", "-m", "service"]
    settings = parse(argv[3:])
    assert settings.host == "0.0.0.0" and settings.device == "cuda" and settings.port == port

    routes = {r.path for r in create_app(Settings()).routes}
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    for kind in ("readinessProbe", "livenessProbe", "startupProbe"):
        probe = container[kind]
        assert probe["httpGet"]["path"] in routes, kind
        assert probe_port(container, probe) == port, kind

    res = container["resources"]
    assert res["requests"]["nvidia.com/gpu"] == 1 == res["limits"]["nvidia.com/gpu"]
    assert {"cpu", "memory"} <= set(res["requests"])

    (claim,) = spec["volumeClaimTemplates"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts[claim["metadata"]["name"]] == "/data"
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["RIMER_DATA_DIR"] == "/data"  # the log and snapshots on the pod's own volume
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert re.fullmatch(r"\d+Gi", claim["spec"]["resources"]["requests"]["storage"])
    assert spec["template"]["spec"]["securityContext"]["fsGroup"] == 10001  # the image's user


def nginx_conf() -> str:
    return one("ConfigMap", "rimer-proxy")["data"]["default.conf"]


def series_pattern() -> re.Pattern:
    m = re.search(r"map \$uri \$series_id \{\s*~(\S+)\s+\$sid;", nginx_conf())
    assert m, "no map of $uri to $series_id"
    return re.compile(m.group(1).replace("(?<", "(?P<"))  # PCRE's named group, in Python


@pytest.mark.parametrize(("path", "series"), [
    ("/series/plant-7.load/append", "plant-7.load"),
    ("/series/plant-7.load/forecast", "plant-7.load"),
    ("/series/plant-7.load", "plant-7.load"),
    ("/series/a b/append", "a b"),
    ("/forecast", None),
    ("/models", None),
    ("/series", None),
    ("/series/x/append/more", None),
])
def test_the_proxy_extracts_the_series_id_from_the_path(path, series):
    m = series_pattern().match(path)
    assert (m.group("sid") if m else None) == series


def test_the_proxy_hashes_consistently_over_exactly_the_statefulset_pods():
    conf = nginx_conf()
    assert "hash $series_id consistent;" in conf
    sts, svc = one("StatefulSet", "rimer"), one("Service", "rimer")
    ns, name = sts["metadata"]["namespace"], svc["metadata"]["name"]
    servers = re.findall(r"^\s*server\s+(\S+)\s+resolve;", conf, re.M)
    assert servers == [f"{sts['metadata']['name']}-{i}.{name}.{ns}.svc.cluster.local:{Settings.port}"
                       for i in range(sts["spec"]["replicas"])]
    assert "proxy_next_upstream off;" in conf  # a series' request never lands on another replica
    # what cannot be routed by one id is refused, not sent to an arbitrary replica
    for path in ("/series/append", "/series"):
        assert re.search(rf"location = {re.escape(path)} \{{\s*default_type application/json;\s*"
                         r"return 501", conf), path
    routes = {r.path for r in create_app(Settings()).routes}
    assert {"/series/append", "/series", "/series/{series_id}/append",
            "/series/{series_id}/forecast", "/series/{series_id}"} <= routes


def test_the_proxy_deployment_mounts_its_config_and_probes_its_own_port():
    dep = one("Deployment", "rimer-proxy")
    pod = dep["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    image, _, tag = container["image"].partition(":")
    assert image == "nginx" and re.fullmatch(r"\d+\.\d+\.\d+", tag)
    assert tuple(int(x) for x in tag.split(".")) >= (1, 27, 3)  # `resolve` in upstream servers
    listen = int(re.search(r"listen (\d+);", nginx_conf()).group(1))
    assert ports_of(container) == {"http": listen}
    for kind in ("readinessProbe", "livenessProbe"):
        probe = container[kind]
        assert probe_port(container, probe) == listen
        assert f"location = {probe['httpGet']['path']} " in nginx_conf()
    (vol,) = pod["volumes"]
    assert vol["configMap"]["name"] == "rimer-proxy"
    assert {m["name"]: m["mountPath"] for m in container["volumeMounts"]} == {
        vol["name"]: "/etc/nginx/conf.d"}
    svc = one("Service", "rimer-proxy")
    assert svc["spec"]["selector"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    assert ports_of(container)[svc["spec"]["ports"][0]["targetPort"]] == listen
