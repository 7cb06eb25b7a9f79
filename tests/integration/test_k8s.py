"""Checks of deploy/k8s/ (no cluster, no kubectl in CI): every document is validated against the
Kubernetes API's JSON schemas (kubernetes-validate, pinned in requirements-dev.txt; it bundles
the schemas, so this runs offline; strict: an unknown field is an error), and has apiVersion,
kind and metadata.name; the StatefulSet, its headless Service, its volume
claim template and its probes agree with each other and with the service (ports, /readyz,
/healthz, flags the service accepts, a GPU requested); the nginx proxy hashes on the series id,
extracted by a pattern checked here on real paths, over exactly the StatefulSet's pods, routing
the same way as deploy/local.sh's generated config (which the cluster test runs for real)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import kubernetes_validate
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


KUBERNETES = "1.30.0"  # validated against this API version's schemas (and the newest bundled)


@pytest.mark.parametrize("version", [KUBERNETES, kubernetes_validate.latest_version()])
def test_every_document_is_valid_against_the_kubernetes_schemas(version):
    docs = documents()
    assert len(docs) == 6
    for d in docs:
        kubernetes_validate.validate(d, version, strict=True)  # raises ValidationError


def test_the_schema_check_catches_a_misspelt_field():
    sts = one("StatefulSet", "rimer")
    bad = {**sts, "spec": {**sts["spec"], "replica": 3}}
    with pytest.raises(kubernetes_validate.ValidationError, match="replica"):
        kubernetes_validate.validate(bad, KUBERNETES, strict=True)
    container = sts["spec"]["template"]["spec"]["containers"][0]
    probe = {**container, "readinessProbe": {"httpGet": {"path": "/readyz", "port": "http"},
                                             "periodSecond": 5}}
    bad = {**sts, "spec": {**sts["spec"], "template": {**sts["spec"]["template"], "spec": {
        **sts["spec"]["template"]["spec"], "containers": [probe]}}}}
    with pytest.raises(kubernetes_validate.ValidationError, match="periodSecond"):
        kubernetes_validate.validate(bad, KUBERNETES, strict=True)


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
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["RIMER_DATA_DIR"] == "/data"  # the log and snapshots on the pod's own volume
    pod_name = next(e for e in container["env"] if e["name"] == "POD_NAME")
    assert pod_name["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    # X-Rimer-Replica names the pod as the proxy's upstream does
    ns, name = sts["metadata"]["namespace"], svc["metadata"]["name"]
    assert env["RIMER_REPLICA_NAME"] == f"$(POD_NAME).{name}.{ns}.svc.cluster.local:{port}"
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert re.fullmatch(r"\d+Gi", claim["spec"]["resources"]["requests"]["storage"])
    assert spec["template"]["spec"]["securityContext"]["fsGroup"] == 10001  # the image's user


def nginx_conf() -> str:
    return one("ConfigMap", "rimer-proxy")["data"]["default.conf"]


def series_pattern() -> re.Pattern:
    m = re.search(r"map \$uri \$series_id \{[^}]*?~(\S+)\s+\$sid;", nginx_conf())
    assert m, "no map of $uri to $series_id"
    return re.compile(m.group(1).replace("(?<", "(?P<"))  # PCRE's named group, in Python


@pytest.mark.parametrize(("path", "series"), [
    ("/series/plant-7.load/append", "plant-7.load"),
    ("/series/plant-7.load/forecast", "plant-7.load"),
    ("/series/plant-7.load", "plant-7.load"),
    ("/series/plant-7.load/export", "plant-7.load"),
    ("/series/plant-7.load/import", "plant-7.load"),
    ("/series/plant-7.load/plot", "plant-7.load"),
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
    servers = re.findall(r"^\s*server\s+(\S+)\s+max_fails=0\s+resolve;", conf, re.M)
    expected = [f"{sts['metadata']['name']}-{i}.{name}.{ns}.svc.cluster.local:{Settings.port}"
                for i in range(sts["spec"]["replicas"])]
    assert servers == expected
    assert len(re.findall(r"^\s*server\s+\S+.*;", conf, re.M)) == len(expected)
    # a down pod is never taken out of the ring, and a request never retried on another pod
    assert "proxy_next_upstream off;" in conf
    ring = re.search(r"location = /cluster/ring \{[^}]*return 200 '([^']*)'", conf).group(1)
    assert json.loads(ring) == {"hash": "nginx-consistent", "servers": expected}
    # a bulk append is routed by its X-Rimer-Series header, refused without it
    assert re.search(r"/series/append\s+\$http_x_rimer_series;", conf)
    assert re.search(r'if \(\$http_x_rimer_series = ""\) \{\s*return 400', conf)
    # what cannot be routed by one id is refused, not sent to an arbitrary replica
    assert re.search(r"location = /series \{\s*default_type application/json;\s*return 501", conf)
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


def test_the_proxy_routes_like_the_local_cluster_script():
    """deploy/local.sh's nginx.conf (run for real by test_cluster.py) and this ConfigMap hash on
    the same key, from the same map."""
    local = (ROOT / "deploy" / "local.sh").read_text()
    def map_lines(text: str) -> list[str]:
        block = re.search(r"map \\?\$uri \\?\$series_id \{(.*?)\}", text, re.S).group(1)
        return [" ".join(line.replace("\\$", "$").split()) for line in block.strip().splitlines()]
    assert map_lines(local) == map_lines(nginx_conf())
    for text in (local, nginx_conf()):
        assert re.search(r"hash \\?\$series_id consistent;", text)
        assert "proxy_next_upstream off;" in text and "max_fails=0" in text


@pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx is not installed (deploy/local.sh "
                                                          "installs it; test_cluster.py runs it)")
def test_the_proxy_config_passes_nginx_t(tmp_path):
    """`nginx -t` on the ConfigMap's default.conf, with what Debian's nginx (1.22) lacks taken
    out: `resolve` on upstream servers (1.27.3) and the cluster's resolver; pod names become
    loopback addresses (nginx -t resolves names)."""
    conf = nginx_conf()
    conf = re.sub(r"^\s*resolver .*$", "", conf, flags=re.M).replace(" resolve;", ";")
    conf = re.sub(r"rimer-\d\.rimer\.rimer\.svc\.cluster\.local", "127.0.0.1", conf)
    (tmp_path / "default.conf").write_text(conf)
    (tmp_path / "nginx.conf").write_text(
        f"pid {tmp_path}/nginx.pid; error_log {tmp_path}/error.log;\n"
        "events {}\n"
        f"http {{ client_body_temp_path {tmp_path}/b; proxy_temp_path {tmp_path}/p; "
        f"include {tmp_path}/default.conf; }}\n")
    done = subprocess.run(["nginx", "-t", "-p", str(tmp_path), "-e", str(tmp_path / "error.log"),
                           "-c", str(tmp_path / "nginx.conf")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
