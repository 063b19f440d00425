"""deploy/: the Kubernetes manifests validate offline against Kubernetes' own schemas (kubernetes-validate),
KServe's InferenceService against the fields of its CRD that it uses, and the pieces fit together:
probes hit Triton's health endpoints, Services select the pods, the HPA's metric is the adapter's,
and the adapter's series are metrics the real tritonserver exports.
"""

from __future__ import annotations

import copy
import re
import time
import urllib.request
from pathlib import Path

import kubernetes_validate  # test extra: pip install -e ".[test]"
import pytest
import yaml

from fer_triton.client.grpc_client import FerClient
from fer_triton.export.gpu import VARIANTS, GPUOptions
from fer_triton.synthetic import draw_faces

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
K8S_VERSIONS = ("1.28.0", kubernetes_validate.latest_version())


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _all_resources() -> list[tuple[Path, dict]]:
    return [(path, doc) for path in sorted(DEPLOY.rglob("*.yaml")) for doc in _docs(path)
            if "kind" in doc and not doc["apiVersion"].startswith(("kustomize.", "serving.kserve.io"))]


def _one(kind: str, name: str, folder: str = "kubernetes") -> dict:
    (doc,) = [d for p, d in _all_resources() if p.parent.name == folder and d["kind"] == kind
              and d["metadata"]["name"] == name]
    return doc


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_kubernetes_manifests_validate_strictly(version):
    resources = _all_resources()
    assert {d["kind"] for _, d in resources} == {"Deployment", "Service", "HorizontalPodAutoscaler",
                                                 "PersistentVolumeClaim"}
    for path, doc in resources:
        kubernetes_validate.validate(doc, version, strict=True)  # raises naming the bad field


def test_the_validator_is_strict_enough_to_catch_a_typo():
    deployment = copy.deepcopy(_one("Deployment", "fer-triton"))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}  # misspelt field
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[-1], strict=True)


def test_kustomization_lists_every_manifest():
    kustomization = _docs(DEPLOY / "kubernetes" / "kustomization.yaml")[0]
    manifests = {p.name for p in (DEPLOY / "kubernetes").glob("*.yaml")
                 if p.name not in ("kustomization.yaml", "prometheus-adapter-values.yaml")}
    assert set(kustomization["resources"]) == manifests


def _container(deployment: dict) -> dict:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def _port(container: dict, name_or_number) -> int:
    if isinstance(name_or_number, int):
        return name_or_number
    (port,) = [p["containerPort"] for p in container["ports"] if p["name"] == name_or_number]
    return port


def test_deployment_probes_tritons_health_endpoints_on_its_http_port():
    deployment = _one("Deployment", "fer-triton")
    container = _container(deployment)
    args = container["args"]
    assert container["image"].startswith("nvcr.io/nvidia/tritonserver:")
    http_port = int(next(a for a in args if a.startswith("--http-port=")).split("=")[1])
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["startupProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert _port(container, container[probe]["httpGet"]["port"]) == http_port
    grpc_port = int(next(a for a in args if a.startswith("--grpc-port=")).split("=")[1])
    assert _port(container, "grpc") == grpc_port
    # One GPU per replica; extended resources need request == limit.
    resources = container["resources"]
    assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"] == 1


def test_deployment_serves_an_exported_variant_from_the_repository_volume():
    deployment = _one("Deployment", "fer-triton")
    container = _container(deployment)
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["MODEL_CONFIG_NAME"] in VARIANTS
    assert "--model-config-name=$(MODEL_CONFIG_NAME)" in container["args"]
    assert "--model-repository=$(MODEL_REPOSITORY)" in container["args"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["model-repository"] == env["MODEL_REPOSITORY"]
    assert mounts["trt-cache"] == GPUOptions.trt_cache_path  # the engine cache path the GPU configs name
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    claim = volumes["model-repository"]["persistentVolumeClaim"]["claimName"]
    assert _one("PersistentVolumeClaim", claim)["spec"]["accessModes"] == ["ReadWriteMany"]


def test_services_select_the_triton_pods_and_one_is_headless_for_grpc_round_robin():
    deployment = _one("Deployment", "fer-triton")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    container = _container(deployment)
    services = {name: _one("Service", name) for name in ("fer-triton", "fer-triton-grpc")}
    for service in services.values():
        assert service["spec"]["selector"].items() <= pod_labels.items()
        for port in service["spec"]["ports"]:
            _port(container, port["targetPort"])  # every target is a named container port
    headless = services["fer-triton-grpc"]["spec"]
    assert headless["clusterIP"] == "None"
    assert [p["name"] for p in headless["ports"]] == ["grpc"]


def _adapter_rule() -> dict:
    (rule,) = _docs(DEPLOY / "kubernetes" / "prometheus-adapter-values.yaml")[0]["rules"]["custom"]
    return rule


@pytest.mark.parametrize("folder,target", [("kubernetes", "fer-triton"), ("kserve", "fer-cafe-predictor")])
def test_hpa_scales_its_deployment_on_the_adapters_queue_time_metric(folder, target):
    hpa = _one("HorizontalPodAutoscaler", target, folder)
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": target}
    if folder == "kubernetes":
        assert _one("Deployment", target)  # the plain manifests' Deployment exists
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods"
    rule = _adapter_rule()
    assert metric["pods"]["metric"]["name"] == rule["name"]["as"]
    assert re.fullmatch(rule["name"]["matches"], "nv_inference_queue_duration_us")
    assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}
    assert 1 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]


def test_adapter_rule_reads_metrics_the_real_triton_exports(triton_server):
    faces, _ = draw_faces(2, 224, seed=9)
    with FerClient(triton_server.grpc_url) as client:
        client.infer(faces)
    exported = urllib.request.urlopen(triton_server.metrics_url, timeout=10).read().decode()
    exported_names = set(re.findall(r"^(nv_[a-z_]+)\{", exported, flags=re.M))
    rule = _adapter_rule()
    used = set(re.findall(r"\bnv_[a-z_]+", rule["seriesQuery"] + rule["metricsQuery"]))
    assert used == {"nv_inference_queue_duration_us", "nv_inference_request_success"}
    assert used <= exported_names
    # Per model, as the rule's "by (..., model)" expects.
    assert re.search(r'^nv_inference_queue_duration_us\{model="cafe_clip_encoder"', exported, flags=re.M)


# -- KServe: its CRD is not in kubernetes-validate; check the fields used against the CRD's structure --

# The InferenceService fields this project uses (serving.kserve.io/v1beta1), with their types.
# Container-typed and PodSpec-typed parts are validated below with Kubernetes' own schemas.
KSERVE_FIELDS = {
    "apiVersion": str, "kind": str,
    "metadata": {"name": str, "labels": dict, "annotations": dict},
    "spec": {"predictor": {
        "minReplicas": int, "maxReplicas": int, "serviceAccountName": str, "tolerations": list, "volumes": list,
        "model": {"modelFormat": {"name": str, "version": str}, "runtime": str, "runtimeVersion": str,
                  "protocolVersion": str, "storageUri": str,
                  # corev1.Container fields (ModelSpec inlines a Container)
                  "args": list, "env": list, "ports": list, "readinessProbe": dict, "livenessProbe": dict,
                  "resources": dict, "volumeMounts": list},
    }},
}
KSERVE_MODEL_ONLY = ("modelFormat", "runtime", "runtimeVersion", "protocolVersion", "storageUri")
KSERVE_PREDICTOR_ONLY = ("minReplicas", "maxReplicas", "model")


def _check_fields(value, schema, where="InferenceService"):
    if isinstance(schema, dict):
        assert isinstance(value, dict), f"{where} must be a mapping"
        unknown = set(value) - set(schema)
        assert not unknown, f"{where} has fields the KServe CRD does not: {sorted(unknown)}"
        for key, sub in value.items():
            _check_fields(sub, schema[key], f"{where}.{key}")
    else:
        assert isinstance(value, schema), f"{where} must be {schema.__name__}"


def _inference_service() -> dict:
    (isvc,) = [d for d in _docs(DEPLOY / "kserve" / "inferenceservice.yaml") if d["kind"] == "InferenceService"]
    return isvc


def test_kserve_inference_service_structure():
    isvc = _inference_service()
    _check_fields(isvc, KSERVE_FIELDS)
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1"
    annotations = isvc["metadata"]["annotations"]
    assert annotations["serving.kserve.io/deploymentMode"] in ("Serverless", "RawDeployment")
    assert annotations["serving.kserve.io/autoscalerClass"] == "external"  # our HPA scales it
    model = isvc["spec"]["predictor"]["model"]
    assert model["modelFormat"]["name"] == "triton" and model["runtime"] == "kserve-tritonserver"
    assert model["protocolVersion"] in ("v2", "grpc-v2")
    assert re.match(r"^(s3|gs|pvc|https?)://", model["storageUri"])
    config_names = [a.split("=", 1)[1] for a in model["args"] if a.startswith("--model-config-name=")]
    assert len(config_names) == 1 and config_names[0] in VARIANTS
    # KServe's Triton runtime: HTTP on 8080 (probes), gRPC on 9000 (h2c port).
    assert model["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": 8080}
    assert model["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": 8080}
    assert [(p["name"], p["containerPort"]) for p in model["ports"]] == [("h2c", 9000)]
    mounts = {m["mountPath"] for m in model["volumeMounts"]}
    assert GPUOptions.trt_cache_path in mounts


@pytest.mark.parametrize("version", K8S_VERSIONS[-1:])
def test_kserve_container_and_pod_parts_validate_as_kubernetes_types(version):
    predictor = _inference_service()["spec"]["predictor"]
    container = {k: v for k, v in predictor["model"].items() if k not in KSERVE_MODEL_ONLY}
    container.update(name="kserve-container", image="nvcr.io/nvidia/tritonserver:24.10-py3")
    pod_spec = {k: v for k, v in predictor.items() if k not in KSERVE_PREDICTOR_ONLY}
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "fer-cafe-predictor"},
           "spec": {**pod_spec, "containers": [container]}}
    kubernetes_validate.validate(pod, version, strict=True)
    mounted = {m["name"] for m in container["volumeMounts"]}
    assert mounted == {v["name"] for v in pod_spec["volumes"]}


# -- gRPC load balancing as docs/kubernetes.md shows it ---------------------------------------------

def _served_requests(server) -> int:
    text = urllib.request.urlopen(server.metrics_url, timeout=10).read().decode()
    match = re.search(r'^nv_inference_request_success\{model="cafe",version="1"\} (\d+)', text, flags=re.M)
    return int(match.group(1)) if match else 0


def test_client_side_round_robin_spreads_requests_over_servers(triton_server, tiny_repository, server_factory):
    # A headless Service's DNS name resolves to every pod; here an ipv4: target lists two real servers,
    # and gRPC's round_robin policy must send requests to both over ONE client channel.
    second = server_factory(tiny_repository)
    servers = (triton_server, second)
    before = [_served_requests(s) for s in servers]
    target = "ipv4:" + ",".join(f"127.0.0.1:{s.grpc_port}" for s in servers)
    channel_args = [("grpc.lb_policy_name", "round_robin"),
                    ("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
    faces, _ = draw_faces(1, 224, seed=3)
    with FerClient(target, channel_args=channel_args) as client:
        for _ in range(8):
            assert client.infer(faces).probabilities.shape == (1, 7)
    # Triton counts a request just after answering it: give the counters a moment to settle.
    deadline = time.monotonic() + 10
    while True:
        served = [_served_requests(s) - b for s, b in zip(servers, before)]
        if sum(served) >= 8 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert sum(served) == 8 and min(served) >= 2, served
