"""Deploy artefacts checked without a Docker engine or a cluster: hadolint on the Dockerfile, docker-compose
config, kustomize rendering + Kubernetes schema validation, and a real Prometheus scraping the service."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from contract.checkpoint import open_checkpoint
from loadtest.procs import DEFAULT_MODEL, REPO_ROOT, free_port
from service.metrics import Metrics

VENV_BIN = Path(sys.executable).parent
K8S_VERSION = "1.30.0"


def _tool(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path=str(VENV_BIN))
    if path is None:
        pytest.fail(f"{name} is not installed (make test installs it: `make system-deps`)")
    return path


def _run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)


def test_dockerfile_passes_hadolint():
    result = _run(_tool("hadolint"), "Dockerfile")
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_is_non_root_with_healthcheck():
    text = (REPO_ROOT / "Dockerfile").read_text()
    assert "USER 10001" in text and "HEALTHCHECK" in text and "/readyz" in text
    assert "ARG VARIANT=cpu" in text and "runtime-gpu" in text
    ignored = (REPO_ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored and ".git" in ignored


@pytest.mark.parametrize("profile", [None, "remote-engine", "scale-out"])
def test_compose_file_is_valid(profile):
    argv = [_tool("docker-compose"), "-f", "deploy/docker-compose.yml"]
    if profile:
        argv += ["--profile", profile]
    result = _run(*argv, "config")
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    services = set(config["services"])
    assert {"redis", "r2rank", "prometheus", "grafana"} <= services
    assert config["services"]["vllm"]["profiles"] == ["remote-engine"]  # only with --profile remote-engine
    assert config["services"]["r2rank-remote"]["environment"]["R2RANK_ENGINE"] == "remote"
    redis_command = " ".join(config["services"]["redis"]["command"])
    assert "--appendonly yes --appendfsync always" in redis_command  # what docs/reliability.md measured
    api = config["services"]["r2rank"]
    assert api["environment"]["R2RANK_MODELS_ROOT"] == "/models" and any("/models" in str(v) for v in api["volumes"])
    # the scale-out profile: two engines behind vllm-router's consistent hashing, an API pointed at the router
    assert config["services"]["vllm-router"]["profiles"] == ["scale-out"]
    router = config["services"]["vllm-router"]["command"]
    assert router[0] == "vllm-router" and router[router.index("--policy") + 1] == "consistent_hash"
    assert {"http://vllm-a:8000", "http://vllm-b:8000"} <= set(router)
    assert config["services"]["r2rank-scale-out"]["environment"]["R2RANK_ENGINE_URL"] == "http://vllm-router:8000"
    # Redis requires a password and the API's URL carries it; the remote engine requires a key the API sends
    assert "--requirepass" in config["services"]["redis"]["command"]
    assert config["services"]["r2rank"]["environment"]["R2RANK_REDIS_URL"].startswith("redis://:")
    engine = config["services"]["vllm"]
    assert engine["environment"]["VLLM_API_KEY"] and "--api-key" not in " ".join(engine["command"])
    assert "--served-model-name" in engine["command"][-1] and "model_version" in engine["command"][-1]
    assert config["services"]["r2rank-remote"]["environment"]["R2RANK_ENGINE_API_KEY"]
    dashboard = REPO_ROOT / "deploy/grafana/dashboards/r2rank.json"
    assert "r2rank_model_info" in dashboard.read_text()


def test_every_dashboard_panel_queries_a_metric_the_service_exports():
    """A renamed metric leaves its Grafana panel empty without an error anywhere: read the names off the queries."""
    exported = {family.name for family in Metrics().registry.collect()}
    dashboard = json.loads((REPO_ROOT / "deploy/grafana/dashboards/r2rank.json").read_text())
    queried = {re.sub(r"_(total|bucket|sum|count|info)$", "", name)
               for panel in dashboard["panels"] for target in panel["targets"]
               for name in re.findall(r"\br2rank_\w+", target["expr"])}  # fmt: skip
    assert queried and queried <= exported, queried - exported
    assert "r2rank_unstated_claims" in queried


@pytest.mark.parametrize("overlay", ["cpu", "gpu"])
def test_kustomize_overlays_render_and_validate(overlay, tmp_path):
    rendered = _run(_tool("kubectl"), "kustomize", f"deploy/k8s/overlays/{overlay}")
    assert rendered.returncode == 0, rendered.stderr
    path = tmp_path / f"{overlay}.yaml"
    path.write_text(rendered.stdout)
    result = _run(_tool("kubernetes-validate"), "--strict", "--quiet", "-k", K8S_VERSION, str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    docs = [d for d in yaml.safe_load_all(rendered.stdout) if d]
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "ConfigMap", "Secret",
            "StatefulSet"} <= kinds  # fmt: skip
    api = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "r2rank")
    pod = api["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert {"startupProbe", "readinessProbe", "livenessProbe"} <= set(container)
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["timeoutSeconds"] >= 1, probe  # explicit: /readyz never waits on Redis
    config = next(d for d in docs if d["kind"] == "ConfigMap")["data"]
    assert config["R2RANK_AUTH_ENABLED"] == "true"
    # the trust boundary: secrets in the Secret (never the ConfigMap), Redis behind a password and a
    # NetworkPolicy that lets only the API in, and (gpu) engines that require the API's key
    secret = next(d for d in docs if d["kind"] == "Secret")["stringData"]
    assert "R2RANK_REDIS_URL" not in config and secret["R2RANK_REDIS_URL"].startswith("redis://:")
    assert {"R2RANK_KEY_SECRET", "REDIS_PASSWORD", "R2RANK_API_KEYS"} <= set(secret)
    redis_pod = next(d for d in docs if d["kind"] == "StatefulSet")["spec"]["template"]["spec"]
    redis_container = redis_pod["containers"][0]
    redis_args = redis_container["args"]
    assert redis_args[redis_args.index("--appendfsync") + 1] == "always"
    script = redis_container["command"][2]  # sh -c SCRIPT: the password goes to redis-server on its stdin
    assert "requirepass" in script and "redis-server -" in script
    # no secret is ever a process argument (ps, start-up logs): secret-sourced variables stay in the environment
    for doc in docs:
        pod_spec = doc.get("spec", {}).get("template", {}).get("spec")
        for c in (pod_spec or {}).get("containers", []) + (pod_spec or {}).get("initContainers", []):
            from_secrets = {e["name"] for e in c.get("env", []) if "secretKeyRef" in e.get("valueFrom", {})}
            words = " ".join(map(str, c.get("command", []) + c.get("args", [])))
            assert not [v for v in from_secrets if f"$({v})" in words], (doc["metadata"]["name"], c["name"])
    # pods that never call the Kubernetes API carry no token for it; the API drains after endpoints drop it
    assert pod["automountServiceAccountToken"] is False and redis_pod["automountServiceAccountToken"] is False
    assert container["lifecycle"]["preStop"]["sleep"]["seconds"] > 0
    assert api["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > 5 + 30
    assert config["R2RANK_MODELS_ROOT"] == "/models"  # checkpoints in a shared volume, not only in the image
    claim = next(d for d in docs if d["kind"] == "PersistentVolumeClaim")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    assert any(v.get("persistentVolumeClaim", {}).get("claimName") == claim["metadata"]["name"]
               for v in pod["volumes"])  # fmt: skip
    policies = {d["metadata"]["name"]: d["spec"] for d in docs if d["kind"] == "NetworkPolicy"}
    assert policies["default-deny-ingress"]["podSelector"] == {}
    # egress denied by default too: the API may reach Redis (and the router), every pod DNS, nothing else
    assert policies["default-deny-egress"] == {"podSelector": {}, "policyTypes": ["Egress"]}
    api_egress = [p for p in policies.values() if "Egress" in p["policyTypes"]
                  and p["podSelector"].get("matchLabels") == {"app.kubernetes.io/name": "r2rank"}]  # fmt: skip
    reachable = {(t["podSelector"]["matchLabels"]["app.kubernetes.io/name"], port["port"])
                 for p in api_egress for rule in p["egress"] for t in rule["to"] for port in rule["ports"]}  # fmt: skip
    assert reachable == ({("redis", 6379), ("vllm-router", 8000)} if overlay == "gpu" else {("redis", 6379)})
    allowed = policies["redis-from-api-only"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"]
    assert allowed == {"app.kubernetes.io/name": "r2rank"}
    assert config["R2RANK_ENGINE"] == ("remote" if overlay == "gpu" else "local")
    if overlay == "gpu":
        engine = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "vllm-engine")
        assert engine["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
        vllm = engine["spec"]["template"]["spec"]["containers"][0]
        key = next(e for e in vllm["env"] if e["name"] == "VLLM_API_KEY")  # vLLM requires it on every call
        assert key["valueFrom"]["secretKeyRef"]["key"] == "R2RANK_ENGINE_API_KEY"
        assert "--api-key" not in " ".join(vllm["args"]) and "--served-model-name" in vllm["args"][-1]
        assert vllm["securityContext"]["readOnlyRootFilesystem"] is True
        assert engine["spec"]["template"]["spec"]["automountServiceAccountToken"] is False
        assert engine["spec"]["replicas"] >= 2
        # the API reaches the engines only through vllm-router, which finds them by label
        assert config["R2RANK_ENGINE_URL"] == "http://vllm-router:8000"
        router = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "vllm-router")
        args = router["spec"]["template"]["spec"]["containers"][0]["args"]
        assert args[args.index("--policy") + 1] == "consistent_hash" and "--service-discovery" in args
        assert args[args.index("--selector") + 1] == "app.kubernetes.io/name=vllm-engine"
        budgets = {d["metadata"]["name"] for d in docs if d["kind"] == "PodDisruptionBudget"}
        assert {"vllm-engine", "vllm-router"} <= budgets
        engines_from = policies["vllm-engine-from-router-only"]["ingress"][0]["from"][0]["podSelector"]
        assert engines_from["matchLabels"] == {"app.kubernetes.io/name": "vllm-router"}
        assert {d["kind"] for d in docs} >= {"Role", "RoleBinding", "ServiceAccount"}  # discovery reads pods


@pytest.mark.engine
def test_prometheus_scrapes_the_service(service, client, tmp_path):
    """The compose topology's scraping, natively: a real Prometheus scrapes /metrics, and its query API
    returns r2rank series."""
    client.post("/rank", json={"candidates": [{"item_id": "1", "title": "Tetris"}], "reasoning": "none"})
    port = free_port()
    target = service.url.removeprefix("http://")
    config = tmp_path / "prometheus.yml"
    config.write_text(
        f"global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: r2rank\n"
        f"    static_configs:\n      - targets: ['{target}']\n"
    )
    prom = subprocess.Popen(
        [_tool("prometheus"), f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        series: list = []
        while time.monotonic() < deadline and not series:
            time.sleep(1)
            try:
                answer = httpx.get(f"http://127.0.0.1:{port}/api/v1/query", params={"query": "r2rank_model_info"})
                series = answer.json()["data"]["result"] if answer.status_code == 200 else []
            except httpx.HTTPError:
                continue
        assert series, "Prometheus never returned r2rank_model_info"
        assert series[0]["metric"]["model_version"] == open_checkpoint(DEFAULT_MODEL).model_version
        rank = httpx.get(f"http://127.0.0.1:{port}/api/v1/query", params={"query": "r2rank_requests_total"}).json()
        assert any(s["metric"].get("route") == "/rank" for s in rank["data"]["result"])
    finally:
        prom.terminate()
        prom.wait(20)
