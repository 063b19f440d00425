"""deploy/: every manifest validates offline against Kubernetes' own schemas (kubernetes-validate), KServe's
InferenceService against KServe's published CRD schema and Triton runtime (tests/fixtures/kserve/), and the
pieces fit together: probes hit Triton's health endpoints, Services select the pods, the HPA's metric is
the adapter's and the adapter's series are metrics the real tritonserver exports; the HPA alone sets the
replica count; a rollout can proceed when every GPU is in use; model control sits behind the admin key,
which comes only from the Secret; the NetworkPolicy admits exactly the ports the Services expose; the
retrain Job writes the repository the Triton pods read (read-only) from the same claim.
"""

from __future__ import annotations

import copy
import re
import time
import urllib.error
import urllib.request
from fractions import Fraction
from pathlib import Path

import jsonschema
import kubernetes_validate  # test extra: pip install -e ".[test]"
import pytest
import yaml

from fer_triton.client.grpc_client import FerClient
from fer_triton.export.gpu import VARIANTS, GPUOptions
from fer_triton.synthetic import draw_faces

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
KSERVE_FIXTURES = Path(__file__).resolve().parent / "fixtures" / "kserve"
K8S_VERSIONS = ("1.28.0", kubernetes_validate.latest_version())
ADMIN_KEY_ENV = "FER_TRITON_ADMIN_KEY"
ADMIN_KEY_HEADER = "triton-admin-key"   # fer_triton.admin_key.HEADER (checked below where that module exists)


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _kustomization() -> dict:
    return _docs(DEPLOY / "kubernetes" / "kustomization.yaml")[0]


def _generated_secrets() -> list[tuple[Path, dict]]:
    """The Secrets kustomize's secretGenerator makes (their data comes from git-ignored files at build time)."""
    kustomization = _kustomization()
    labels = {k: v for entry in kustomization.get("labels", []) for k, v in entry["pairs"].items()}
    return [(DEPLOY / "kubernetes" / "kustomization.yaml",
             {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": gen["name"], "labels": labels},
              "type": gen.get("type", "Opaque")})
            for gen in kustomization.get("secretGenerator", [])]


def _all_resources() -> list[tuple[Path, dict]]:
    files = [(path, doc) for path in sorted(DEPLOY.rglob("*.yaml")) for doc in _docs(path)
             if "kind" in doc and not doc["apiVersion"].startswith(("kustomize.", "serving.kserve.io"))]
    return files + _generated_secrets()


def _name(doc: dict) -> str:
    return doc["metadata"].get("name") or doc["metadata"]["generateName"]


def _one(kind: str, name: str, folder: str = "kubernetes") -> dict:
    (doc,) = [d for p, d in _all_resources() if p.parent.name == folder and d["kind"] == kind and _name(d) == name]
    return doc


def _jobs() -> list[dict]:
    return [d for p, d in _all_resources() if d["kind"] == "Job"]


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_kubernetes_manifests_validate_strictly(version):
    resources = _all_resources()
    assert {d["kind"] for _, d in resources} == {"Deployment", "Service", "HorizontalPodAutoscaler",
                                                 "PersistentVolumeClaim", "NetworkPolicy", "Job", "Secret"}
    for path, doc in resources:
        kubernetes_validate.validate(doc, version, strict=True)  # raises naming the bad field


def test_the_validator_is_strict_enough_to_catch_a_typo():
    deployment = copy.deepcopy(_one("Deployment", "fer-triton"))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}  # misspelt field
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[-1], strict=True)


def test_kustomization_lists_every_manifest():
    # The retrain/rollback Jobs and the site-data claim (retrain/) are created on demand, not applied with -k.
    manifests = {p.name for p in (DEPLOY / "kubernetes").glob("*.yaml")
                 if p.name not in ("kustomization.yaml", "prometheus-adapter-values.yaml")}
    assert set(_kustomization()["resources"]) == manifests


def _container(deployment: dict) -> dict:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def _port(container: dict, name_or_number) -> int:
    if isinstance(name_or_number, int):
        return name_or_number
    (port,) = [p["containerPort"] for p in container["ports"] if p["name"] == name_or_number]
    return port


def _arg(args: list[str], flag: str) -> str:
    (value,) = [a.split("=", 1)[1] for a in args if a.startswith(flag + "=")]
    return value


def test_deployment_probes_tritons_health_endpoints_on_its_http_port():
    deployment = _one("Deployment", "fer-triton")
    container = _container(deployment)
    args = container["args"]
    assert container["image"].startswith("nvcr.io/nvidia/tritonserver:")
    http_port = int(_arg(args, "--http-port"))
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["startupProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert _port(container, container[probe]["httpGet"]["port"]) == http_port
    assert _port(container, "grpc") == int(_arg(args, "--grpc-port"))
    assert _port(container, "metrics") == int(_arg(args, "--metrics-port"))
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(_port(container, "metrics"))
    # One GPU per replica; extended resources need request == limit.
    resources = container["resources"]
    assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"] == 1


def test_deployment_serves_an_exported_variant_from_the_repository_volume():
    deployment = _one("Deployment", "fer-triton")
    container = _container(deployment)
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["MODEL_CONFIG_NAME"] in VARIANTS
    assert "--model-config-name=$(MODEL_CONFIG_NAME)" in container["args"]
    assert "--model-repository=$(MODEL_REPOSITORY)" in container["args"]
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["model-repository"]["mountPath"] == env["MODEL_REPOSITORY"]
    assert mounts["trt-cache"]["mountPath"] == GPUOptions.trt_cache_path  # the engine cache path the GPU configs name
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


# -- The HPA alone sets the replica count; rollouts that work with every GPU in use ------------------

def test_no_deployment_sets_replicas_while_an_hpa_targets_it():
    hpas = [d for _, d in _all_resources() if d["kind"] == "HorizontalPodAutoscaler"]
    deployments = {d["metadata"]["name"]: d for _, d in _all_resources() if d["kind"] == "Deployment"}
    targeted = [deployments[h["spec"]["scaleTargetRef"]["name"]] for h in hpas
                if h["spec"]["scaleTargetRef"]["name"] in deployments]
    assert targeted, "the HPA of deploy/kubernetes targets the Deployment there"
    for deployment in targeted:
        # `replicas` in the manifest would scale the Deployment back on every `kubectl apply`.
        assert "replicas" not in deployment["spec"], deployment["metadata"]["name"]


def _resolve(value, replicas: int, round_up: bool) -> int:
    """maxSurge / maxUnavailable as the Deployment controller resolves them (percent: surge up, unavailable down)."""
    if isinstance(value, int):
        return value
    percent = Fraction(value.rstrip("%")) * replicas / 100
    return int(-(-percent // 1)) if round_up else int(percent // 1)


def rollout_completes(replicas: int, max_surge, max_unavailable, spare_gpus: int) -> bool:
    """Simulate the Deployment controller replacing `replicas` one-GPU pods with `spare_gpus` free GPUs.

    New pods start (become available) only on a free GPU; old pods are scaled down only while the
    available pods stay at least replicas - maxUnavailable; total pods stay at most replicas + maxSurge.
    """
    if all(str(v).rstrip("%") == "0" for v in (max_surge, max_unavailable)):
        return False  # the API server refuses the Deployment: maxUnavailable may not be 0 when maxSurge is 0
    surge, unavailable = _resolve(max_surge, replicas, True), _resolve(max_unavailable, replicas, False)
    if surge == 0 and unavailable == 0:
        unavailable = 1  # what the controller does when percentages both round to 0
    old, new_ready, new_pending, free = replicas, 0, 0, spare_gpus
    for _ in range(10 * replicas + 10):
        if old == 0 and new_ready == replicas:
            return True
        before = (old, new_ready, new_pending)
        new_pending += max(0, min(replicas + surge - (old + new_ready + new_pending),
                                  replicas - new_ready - new_pending))
        started = min(new_pending, free)
        new_pending, new_ready, free = new_pending - started, new_ready + started, free - started
        scale_down = min(old, old + new_ready - (replicas - unavailable))
        if scale_down > 0:
            old, free = old - scale_down, free + scale_down
        if (old, new_ready, new_pending) == before:
            return False  # stuck: a surge pod waits for a GPU no old pod will give up
    return False


def test_the_rollout_simulation_catches_a_surge_that_waits_for_a_gpu():
    assert not rollout_completes(3, 1, 0, spare_gpus=0)
    assert not rollout_completes(1, "25%", "25%", spare_gpus=0)  # KServe's default: surge 1, unavailable 0
    assert rollout_completes(3, 1, 0, spare_gpus=1)
    assert rollout_completes(3, 0, 1, spare_gpus=0)
    assert not rollout_completes(3, 0, 0, spare_gpus=3)  # invalid: nothing may move


def _strategies() -> dict[str, tuple[dict, int]]:
    """{where: (rollingUpdate, maxReplicas)} for the plain Deployment and KServe's generated one."""
    deployment = _one("Deployment", "fer-triton")
    hpa = _one("HorizontalPodAutoscaler", "fer-triton")
    strategy = deployment["spec"]["strategy"]
    assert strategy["type"] == "RollingUpdate"
    predictor = _inference_service()["spec"]["predictor"]
    assert predictor["deploymentStrategy"]["type"] == "RollingUpdate"
    return {"deploy/kubernetes": (strategy["rollingUpdate"], hpa["spec"]["maxReplicas"]),
            "deploy/kserve": (predictor["deploymentStrategy"]["rollingUpdate"], predictor["maxReplicas"])}


@pytest.mark.parametrize("where", ["deploy/kubernetes", "deploy/kserve"])
def test_rollout_proceeds_with_no_spare_gpu(where):
    rolling, max_replicas = _strategies()[where]
    for replicas in range(1, max_replicas + 1):
        assert rollout_completes(replicas, rolling["maxSurge"], rolling["maxUnavailable"], spare_gpus=0), \
            f"{where}: a rollout of {replicas} replicas stalls when every GPU is in use ({rolling})"


# -- Model control behind the admin key, the key only from the Secret --------------------------------

_VAR_REF = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def _pod_specs() -> list[tuple[str, dict]]:
    return [(_name(d), d["spec"]["template"]["spec"]) for _, d in _all_resources()
            if d["kind"] in ("Deployment", "Job")]


def _restriction(arg: str) -> tuple[str, list[str], str, str]:
    """'--flag=api1,api2:key=value' -> (flag, [apis], key, value)."""
    flag, rest = arg.split("=", 1)
    apis, restriction = rest.split(":", 1)
    key, value = restriction.split("=", 1)
    return flag, apis.split(","), key, value


def test_every_variable_an_argument_names_is_defined():
    # The kubelet leaves an unknown $(VAR) as it is: a misspelt key variable would make the literal
    # text "$(...)" the admin key.
    for name, spec in _pod_specs():
        for container in spec["containers"]:
            defined = {e["name"] for e in container.get("env", [])}
            used = {v for a in container.get("command", []) + container.get("args", []) for v in _VAR_REF.findall(a)}
            assert used <= defined, f"{name}/{container['name']}: {sorted(used - defined)} not defined"


def test_model_control_is_behind_the_admin_key_from_the_secret():
    container = _container(_one("Deployment", "fer-triton"))
    restricted = [_restriction(a) for a in container["args"]
                  if a.startswith(("--grpc-restricted-protocol=", "--http-restricted-api="))]
    assert sorted(flag for flag, *_ in restricted) == ["--grpc-restricted-protocol", "--http-restricted-api"]
    for flag, apis, key, value in restricted:
        assert "model-repository" in apis, flag           # load, unload, repository index
        assert not {"inference", "health", "metadata"} & set(apis), flag  # these stay open
        assert key == ADMIN_KEY_HEADER
        assert value == f"$({ADMIN_KEY_ENV})", f"{flag}: the key must come from the environment, not the manifest"
    assert "--model-control-mode=explicit" in container["args"]
    (key_env,) = [e for e in container["env"] if e["name"] == ADMIN_KEY_ENV]
    assert set(key_env) == {"name", "valueFrom"}
    ref = key_env["valueFrom"]["secretKeyRef"]
    assert not ref.get("optional", False), "without the Secret the pod must not start with model control open"
    (secret,) = [d for _, d in _generated_secrets() if d["metadata"]["name"] == ref["name"]]
    assert secret["type"] == "Opaque"


def test_the_restriction_header_is_the_one_fer_triton_sends():
    admin_key = pytest.importorskip("fer_triton.admin_key")
    assert admin_key.HEADER == ADMIN_KEY_HEADER and admin_key.KEY_ENV == ADMIN_KEY_ENV


def test_the_jobs_take_the_admin_key_from_the_same_secret():
    server_ref = next(e for e in _container(_one("Deployment", "fer-triton"))["env"]
                      if e["name"] == ADMIN_KEY_ENV)["valueFrom"]["secretKeyRef"]
    assert {_name(j) for j in _jobs()} == {"fer-triton-retrain-", "fer-triton-rollback-"}
    for job in _jobs():
        (container,) = job["spec"]["template"]["spec"]["containers"]
        (key_env,) = [e for e in container["env"] if e["name"] == ADMIN_KEY_ENV]
        assert set(key_env) == {"name", "valueFrom"} and key_env["valueFrom"]["secretKeyRef"] == server_ref


def _strings(node):
    if isinstance(node, dict):
        for value in node.values():
            yield from _strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _strings(value)
    elif isinstance(node, str):
        yield node


def test_no_manifest_holds_an_admin_key():
    for path in sorted(DEPLOY.rglob("*.yaml")):
        for doc in _docs(path):
            if doc.get("kind") == "Secret":
                assert not doc.get("data") and not doc.get("stringData"), f"{path}: a Secret with its data"
            for text in _strings(doc):
                for match in re.finditer(rf"{ADMIN_KEY_HEADER}=(\S*)", text):
                    assert match.group(1) == f"$({ADMIN_KEY_ENV})", f"{path}: {text}"
    for _, spec in _pod_specs():
        for container in spec["containers"]:
            assert all("value" not in e for e in container.get("env", []) if e["name"] == ADMIN_KEY_ENV)
    # The key's only way in: a secretGenerator reading a git-ignored file, never literals.
    generators = _kustomization()["secretGenerator"]
    ignored = {line.strip() for line in (DEPLOY / "kubernetes" / ".gitignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    for gen in generators:
        assert not gen.get("literals"), gen["name"]
        sources = [s.split("=", 1)[-1] for s in gen.get("envs", []) + gen.get("files", [])]
        assert sources and set(sources) <= ignored, f"{gen['name']}: {sources} must be git-ignored"
        assert gen["options"]["disableNameSuffixHash"], "the Jobs (applied on their own) find the Secret by name"


# -- NetworkPolicy ----------------------------------------------------------------------------------

def _selects(selector: dict, labels: dict) -> bool:
    assert set(selector) <= {"matchLabels"}, "matchExpressions are not modelled here"
    return selector.get("matchLabels", {}).items() <= labels.items()


def test_network_policy_selects_the_triton_pods_and_admits_exactly_the_service_ports():
    deployment = _one("Deployment", "fer-triton")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    container = _container(deployment)
    policy = _one("NetworkPolicy", "fer-triton")["spec"]
    assert _selects(policy["podSelector"], pod_labels)
    assert policy["policyTypes"] == ["Ingress"]
    admitted: dict[int, list[dict]] = {}
    for rule in policy["ingress"]:
        assert rule.get("from") and rule.get("ports"), "a rule without `from` or `ports` opens everything"
        for port in rule["ports"]:
            assert port.get("protocol", "TCP") == "TCP" and "endPort" not in port
            admitted.setdefault(_port(container, port["port"]), []).extend(rule["from"])
    exposed = {_port(container, p["targetPort"]) for name in ("fer-triton", "fer-triton-grpc")
               for p in _one("Service", name)["spec"]["ports"]}
    assert set(admitted) == exposed == {p["containerPort"] for p in container["ports"]}
    # Metrics only to Prometheus in its namespace; HTTP and gRPC to the pods of this namespace, the Jobs included.
    for peer in admitted[_port(container, "metrics")]:
        assert peer["namespaceSelector"]["matchLabels"] and peer["podSelector"]["matchLabels"]
    for port in ("http", "grpc"):
        peers = admitted[_port(container, port)]
        assert all("ipBlock" not in p and "namespaceSelector" not in p for p in peers)
        for job in _jobs():
            assert any(_selects(p["podSelector"], job["spec"]["template"]["metadata"]["labels"]) for p in peers)


# -- Retrain in the cluster: the Job writes the repository the servers read -------------------------

def _claim_mounts(spec: dict, claim: str) -> list[tuple[dict, dict]]:
    """(volume, mount) pairs of the one container of `spec` for the given claim."""
    volumes = {v["name"]: v for v in spec["volumes"] if v.get("persistentVolumeClaim", {}).get("claimName") == claim}
    (container,) = spec["containers"]
    return [(volumes[m["name"]], m) for m in container.get("volumeMounts", []) if m["name"] in volumes]


def test_jobs_mount_the_repository_read_write_and_the_servers_read_only_from_the_same_claim():
    deployment = _one("Deployment", "fer-triton")
    pvc = _one("PersistentVolumeClaim", "fer-triton-model-repository")
    claim = pvc["metadata"]["name"]
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]  # a writer pod beside readers on other nodes
    ((server_volume, server_mount),) = _claim_mounts(deployment["spec"]["template"]["spec"], claim)
    assert server_volume["persistentVolumeClaim"].get("readOnly") is True and server_mount.get("readOnly") is True
    served = server_mount.get("subPath", "")
    headless = _one("Service", "fer-triton-grpc")
    grpc_port = next(p["port"] for p in headless["spec"]["ports"] if p["name"] == "grpc")
    for job in _jobs():
        spec = job["spec"]["template"]["spec"]
        assert spec["restartPolicy"] == "Never" and job["spec"]["backoffLimit"] == 0  # a refused head is not retried
        ((volume, mount),) = _claim_mounts(spec, claim)
        assert not volume["persistentVolumeClaim"].get("readOnly") and not mount.get("readOnly")
        assert "subPath" not in mount  # the archive beside the repository must be on the volume too
        (container,) = spec["containers"]
        args = container["args"]
        assert container["command"] == ["fer-triton"] and args[0] in ("retrain", "rollback")
        # The Job writes exactly the folder the servers serve, and publishes to every replica.
        assert _arg(args, "--repository") == f"{mount['mountPath']}/{served}".replace("//", "/")
        assert _arg(args, "--url") == f"{headless['metadata']['name']}:{grpc_port}"
        if args[0] == "retrain":
            mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
            assert mounts[_arg(args, "--data")].get("readOnly") is True
            report_root = _arg(args, "--report").split("/$(")[0]
            assert not mounts[report_root].get("readOnly")


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


# -- KServe: KServe's published CRD schema and its Triton runtime (tests/fixtures/kserve/README.md) ---

def _inference_service() -> dict:
    (isvc,) = [d for d in _docs(DEPLOY / "kserve" / "inferenceservice.yaml") if d["kind"] == "InferenceService"]
    return isvc


def _fixture(name: str) -> dict:
    return yaml.safe_load((KSERVE_FIXTURES / name).read_text())


def _crd_predictor_properties() -> dict:
    return {**_fixture("crd-v1beta1-predictor-deploymentStrategy.yaml"),
            **_fixture("crd-v1beta1-predictor-maxReplicas-minReplicas-model.yaml")}


def _strict(schema):
    """The CRD schema with unknown fields refused, as `kubectl apply` (field validation Strict) does.

    The API server would otherwise prune them silently: a misspelt field would vanish, not fail.
    """
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict(v) for k, v in schema.items()}
    if "properties" in schema and "additionalProperties" not in schema \
            and not schema.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


def _podspec_fields() -> set[str]:
    schema = kubernetes_validate.utils.schema_contents(
        f"kubernetes-json-schema/v{K8S_VERSIONS[-1]}-local-strict/podspec-v1.json", K8S_VERSIONS[-1])
    return set(schema["properties"])


def validate_against_kserve_crd(isvc: dict) -> None:
    """Raise jsonschema.ValidationError where `isvc` breaks KServe's CRD schema (the stored parts of it).

    The predictor's other fields are corev1.PodSpec fields (KServe inlines a PodSpec): they must be
    PodSpec fields, and are validated as Kubernetes types in the next test.
    """
    root = _fixture("crd-v1beta1-root-apiVersion-kind-metadata.yaml")
    for key in root:
        jsonschema.Draft7Validator(_strict(root[key])).validate(isvc[key])
    assert set(isvc["spec"]) == {"predictor"}
    crd, podspec = _crd_predictor_properties(), _podspec_fields()
    for key, value in isvc["spec"]["predictor"].items():
        if key in crd:
            try:
                jsonschema.Draft7Validator(_strict(crd[key])).validate(value)
            except jsonschema.ValidationError as exc:
                exc.message = f"spec.predictor.{key}: {exc.message}"
                raise
        else:
            assert key in podspec, f"spec.predictor.{key} is neither a KServe predictor field nor a PodSpec field"


def test_kserve_inference_service_validates_against_kserves_crd_schema():
    validate_against_kserve_crd(_inference_service())


@pytest.mark.parametrize("where,value", [
    (("model", "resource"), {"limits": {"cpu": "4"}}),                      # misspelt field
    (("model", "ports"), [{"name": "http", "containerPort": "8080"}]),       # port as a string
    (("model", "resources"), {"limits": {"cpu": "four"}}),                  # not a quantity
    (("deploymentStrategy", "rollingUpdate", "maxSurge"), 0.5),             # neither int nor string
])
def test_the_kserve_schema_check_catches_mistakes(where, value):
    isvc = copy.deepcopy(_inference_service())
    node = isvc["spec"]["predictor"]
    for key in where[:-1]:
        node = node[key]
    node[where[-1]] = value
    with pytest.raises(jsonschema.ValidationError):
        validate_against_kserve_crd(isvc)


_QUANTITY_SUFFIX = {"": 1, "m": Fraction(1, 1000), "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
                    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def quantity(value) -> Fraction:
    match = re.fullmatch(r"([0-9]+(?:\.[0-9]*)?)([a-zA-Z]*)", str(value))
    assert match and match.group(2) in _QUANTITY_SUFFIX, f"not a quantity this test reads: {value!r}"
    return Fraction(match.group(1)) * _QUANTITY_SUFFIX[match.group(2)]


def _smp(base: dict, patch: dict, where: str = "") -> dict:
    """Strategic merge patch of two corev1.Container fragments as KServe applies it: maps merge key by
    key (resources.requests/limits included), scalars are replaced. Lists that both sides set would merge
    by their merge keys: not modelled, so refused here."""
    out = copy.deepcopy(base)
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _smp(out[key], value, f"{where}.{key}")
        else:
            assert not (isinstance(value, list) and key in out), f"{where}.{key}: list merge not modelled"
            out[key] = copy.deepcopy(value)
    return out


KSERVE_MODEL_ONLY = ("modelFormat", "runtime", "runtimeVersion", "protocolVersion", "storageUri", "storage")


def merged_kserve_container(isvc: dict) -> dict:
    """The predictor container KServe builds: the runtime's kserve-container merged with spec.predictor.model
    (MergeRuntimeContainers: strategic merge, then args = runtime args + model args)."""
    runtime = _fixture("kserve-tritonserver.yaml")
    (base,) = [c for c in runtime["spec"]["containers"] if c["name"] == "kserve-container"]
    model = {k: v for k, v in isvc["spec"]["predictor"]["model"].items() if k not in KSERVE_MODEL_ONLY}
    merged = _smp({k: v for k, v in base.items() if k != "args"}, {k: v for k, v in model.items() if k != "args"})
    merged["args"] = base.get("args", []) + model.get("args", [])
    version = isvc["spec"]["predictor"]["model"].get("runtimeVersion")
    if version:  # KServe's UpdateImageTag
        merged["image"] = merged["image"].rsplit(":", 1)[0] + ":" + version
    return merged


def requests_exceeding_limits(container: dict) -> list[str]:
    resources = container.get("resources", {})
    limits = resources.get("limits", {})
    requests = {**limits, **resources.get("requests", {})}  # a limit without a request defaults the request
    return [f"{name}: request {requests[name]} > limit {limits[name]}" for name in requests
            if name in limits and quantity(requests[name]) > quantity(limits[name])]


def test_kserve_merged_container_requests_do_not_exceed_its_limits():
    isvc = _inference_service()
    runtime_limits = _fixture("kserve-tritonserver.yaml")["spec"]["containers"][0]["resources"]["limits"]
    assert quantity(runtime_limits["cpu"]) == 1  # the runtime's default the merge would keep
    assert requests_exceeding_limits(merged_kserve_container(isvc)) == []
    resources = isvc["spec"]["predictor"]["model"]["resources"]
    assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"]
    # What the old manifest did: a request of 4 CPUs and no CPU limit of its own -> limit 1 from the runtime.
    broken = copy.deepcopy(isvc)
    del broken["spec"]["predictor"]["model"]["resources"]["limits"]["cpu"]
    assert requests_exceeding_limits(merged_kserve_container(broken)) == ["cpu: request 4 > limit 1"]


def test_kserve_ports_http_first_then_grpc_as_the_runtime_serves_them():
    isvc = _inference_service()
    container = merged_kserve_container(isvc)
    args = container["args"]
    assert args[0] == "tritonserver" and "--model-store=/mnt/models" in args
    http_port, grpc_port = int(_arg(args, "--http-port")), int(_arg(args, "--grpc-port"))
    assert (http_port, grpc_port) == (8080, 9000)
    # KServe's Service: the first port becomes port 80 (HTTP by KServe's convention), the rest keep theirs.
    assert [(p["name"], p["containerPort"]) for p in container["ports"]] == [("http", http_port), ("grpc", grpc_port)]
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": http_port}
    assert container["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": http_port}
    config_names = [a.split("=", 1)[1] for a in args if a.startswith("--model-config-name=")]
    assert len(config_names) == 1 and config_names[0] in VARIANTS
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert GPUOptions.trt_cache_path in mounts


def test_kserve_pods_are_scraped_on_tritons_metrics_port():
    isvc = _inference_service()
    annotations = isvc["metadata"]["annotations"]
    assert annotations["serving.kserve.io/deploymentMode"] == "RawDeployment"
    assert annotations["serving.kserve.io/autoscalerClass"] == "external"  # our HPA scales it
    # KServe copies the InferenceService's annotations onto the predictor pods. In RawDeployment its pod
    # webhook must not set the scrape port itself ("true" points it at Knative's queue-proxy, 9091).
    assert annotations["serving.kserve.io/enable-prometheus-scraping"] == "false"
    assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/path"] == "/metrics"
    metrics_port = _arg(merged_kserve_container(isvc)["args"], "--metrics-port")
    runtime = _fixture("kserve-tritonserver.yaml")
    runtime_port = runtime["spec"]["annotations"]["prometheus.kserve.io/port"]
    assert annotations["prometheus.io/port"] == metrics_port == runtime_port
    model = isvc["spec"]["predictor"]["model"]
    assert model["modelFormat"]["name"] == "triton" and model["runtime"] == runtime["metadata"]["name"]
    assert model["protocolVersion"] in runtime["spec"]["protocolVersions"]
    assert re.match(r"^(s3|gs|pvc|https?)://", model["storageUri"])


@pytest.mark.parametrize("version", K8S_VERSIONS[-1:])
def test_kserve_container_and_pod_parts_validate_as_kubernetes_types(version):
    isvc = _inference_service()
    predictor = isvc["spec"]["predictor"]
    container = merged_kserve_container(isvc)
    pod_spec = {k: v for k, v in predictor.items() if k not in _crd_predictor_properties()}
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "fer-cafe-predictor"},
           "spec": {**pod_spec, "containers": [container]}}
    kubernetes_validate.validate(pod, version, strict=True)
    mounted = {m["name"] for m in container["volumeMounts"]}
    assert mounted == {v["name"] for v in pod_spec["volumes"]}


# -- gRPC load balancing as docs/kubernetes.md shows it ---------------------------------------------

def _served_requests(server) -> int:
    # Triton may open its metrics port a moment after it reports ready: retry briefly on a refused connection.
    deadline = time.monotonic() + 20
    while True:
        try:
            text = urllib.request.urlopen(server.metrics_url, timeout=10).read().decode()
            break
        except urllib.error.URLError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
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
