"""deploy/k8s: every overlay rendered by kustomize, valid for a pinned Kubernetes, and safe to run."""

from __future__ import annotations

import copy
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import kubernetes_validate
import pytest
import yaml
from sqlalchemy.engine import make_url

from creditnet import __version__, settings
from tests.deploy.helpers import CITIES, K8S, tool

KUBERNETES = "1.32.0"
OVERLAYS = (*CITIES, "national")
FILE_PARSERS = (settings.parse_file, settings.parse_directory)
Manifest = dict[str, Any]


def render(overlay: str) -> list[Manifest]:
    kubectl = tool("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed; its kustomize (kubectl 1.27 or later) renders the overlays")
    result = subprocess.run(
        [kubectl, "kustomize", str(K8S / "overlays" / overlay)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[Manifest]]:
    return {overlay: render(overlay) for overlay in OVERLAYS}


def base_manifests() -> Iterator[tuple[Path, Manifest]]:
    for path in sorted((K8S / "base").rglob("*.yaml")):
        if path.name != "kustomization.yaml":
            for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
                yield path, doc


def one(manifests: list[Manifest], kind: str) -> Manifest:
    found = [m for m in manifests if m["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def quantity(text: str | int) -> float:
    units = {"m": 1e-3, "": 1.0, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    number, unit = re.fullmatch(r"([\d.]+)([A-Za-z]*)", str(text)).groups()  # type: ignore[union-attr]
    return float(number) * units[unit]


def workload_kind(overlay: str) -> str:
    """Nodes run as a StatefulSet of one; the aggregator as a Deployment of replicas on one database."""
    return "Deployment" if overlay == "national" else "StatefulSet"


def workload(manifests: list[Manifest]) -> Manifest:
    kinds = {m["kind"] for m in manifests} & {"Deployment", "StatefulSet"}
    assert len(kinds) == 1, kinds
    return one(manifests, kinds.pop())


def role_of(overlay: str) -> tuple[str, tuple[settings.Variable[Any], ...]]:
    if overlay == "national":
        return "creditnet-aggregator", settings.AGGREGATOR_VARIABLES
    return "creditnet-node", settings.NODE_VARIABLES


# --- validity -------------------------------------------------------------------


def test_base_manifests_are_valid() -> None:
    kinds = set()
    for path, doc in base_manifests():
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)
        kinds.add((path.parent.name, doc["kind"]))
    for part, workload in (("node", "StatefulSet"), ("aggregator", "Deployment")):
        assert {(part, k) for k in (workload, "Service", "PodDisruptionBudget", "ServiceAccount")} <= kinds


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rendered_overlays_are_valid(rendered: dict[str, list[Manifest]], overlay: str) -> None:
    manifests = rendered[overlay]
    assert {m["kind"] for m in manifests} == {
        "Namespace", "ServiceAccount", "ConfigMap", "Service", workload_kind(overlay), "PodDisruptionBudget",
    }  # fmt: skip
    for manifest in manifests:
        kubernetes_validate.validate(manifest, KUBERNETES, strict=True)


def test_validation_is_strict() -> None:
    """The validator rejects what the API server would: a misspelt field, a wrong type."""
    statefulset = next(d for p, d in base_manifests() if d["kind"] == "StatefulSet")
    for change in ("misspelt", "wrong type"):
        broken = copy.deepcopy(statefulset)
        container = broken["spec"]["template"]["spec"]["containers"][0]
        if change == "misspelt":
            container["readinesProbe"] = container.pop("readinessProbe")
        else:
            container["livenessProbe"]["grpc"]["port"] = "health"
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(broken, KUBERNETES, strict=True)


# --- what each operator runs ----------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_namespace_enforces_restricted_pods(rendered: dict[str, list[Manifest]], overlay: str) -> None:
    manifests = rendered[overlay]
    namespace = one(manifests, "Namespace")
    assert namespace["metadata"]["name"] == f"creditnet-{overlay}"
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for manifest in manifests:
        if manifest["kind"] != "Namespace":
            assert manifest["metadata"]["namespace"] == f"creditnet-{overlay}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_are_unprivileged(rendered: dict[str, list[Manifest]], overlay: str) -> None:
    """The checks of the restricted Pod Security Standard, and a read-only root filesystem."""
    statefulset = workload(rendered[overlay])
    pod = statefulset["spec"]["template"]["spec"]
    context = pod["securityContext"]
    assert context["runAsNonRoot"] is True
    assert context["runAsUser"] == context["runAsGroup"] == context["fsGroup"] == 10001
    assert context["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    assert pod["enableServiceLinks"] is False
    assert "hostNetwork" not in pod and "hostPID" not in pod
    allowed_volumes = {"secret", "emptyDir", "configMap", "persistentVolumeClaim", "projected"}
    for volume in pod["volumes"]:
        assert set(volume) - {"name"} <= allowed_volumes, volume
    for container in pod["containers"]:
        sc = container["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert not sc.get("privileged", False)
        assert "ports" in container and all("hostPort" not in p for p in container["ports"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_resources_are_requested_and_limited(rendered: dict[str, list[Manifest]], overlay: str) -> None:
    for container in workload(rendered[overlay])["spec"]["template"]["spec"]["containers"]:
        resources = container["resources"]
        for what in ("cpu", "memory"):
            assert quantity(resources["requests"][what]) <= quantity(resources["limits"][what]), what


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_ask_the_health_only_port(rendered: dict[str, list[Manifest]], overlay: str) -> None:
    manifests = rendered[overlay]
    config = one(manifests, "ConfigMap")
    (container,) = workload(manifests)["spec"]["template"]["spec"]["containers"]
    assert container["envFrom"] == [{"configMapRef": {"name": config["metadata"]["name"]}}]
    health = settings.port_of(config["data"]["CREDITNET_HEALTH_LISTEN"])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["health"] == health
    assert ports["grpc"] == settings.port_of(config["data"]["CREDITNET_LISTEN"])
    assert ports["metrics"] == int(config["data"]["CREDITNET_METRICS_PORT"])
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"] == {"port": health}, probe
    # The liveness probe must not kill a pod that is still starting or draining.
    live = container["livenessProbe"]
    assert live["periodSeconds"] * live["failureThreshold"] >= 30
    grace = workload(manifests)["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > settings.parse_duration(config["data"]["CREDITNET_SHUTDOWN_GRACE"]) + 5


@pytest.mark.parametrize("overlay", CITIES)
def test_a_node_is_one_pod_with_a_budget_and_services_that_select_it(
    rendered: dict[str, list[Manifest]], overlay: str
) -> None:
    manifests = rendered[overlay]
    name, _ = role_of(overlay)
    statefulset = workload(manifests)
    assert statefulset["metadata"]["name"] == name
    assert statefulset["spec"]["replicas"] == 1
    labels = statefulset["spec"]["template"]["metadata"]["labels"]
    assert matches(statefulset["spec"]["selector"]["matchLabels"], labels)
    budget = one(manifests, "PodDisruptionBudget")
    assert matches(budget["spec"]["selector"]["matchLabels"], labels)
    assert budget["spec"]["minAvailable"] == 1
    assert budget["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    (container,) = statefulset["spec"]["template"]["spec"]["containers"]
    port_names = {p["name"] for p in container["ports"]}
    services = {m["metadata"]["name"]: m for m in manifests if m["kind"] == "Service"}
    assert set(services) == {name, f"{name}-headless"}
    assert services[f"{name}-headless"]["spec"]["clusterIP"] == "None"
    assert statefulset["spec"]["serviceName"] == f"{name}-headless"
    for service in services.values():
        assert matches(service["spec"]["selector"], labels)
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= port_names
    account = one(manifests, "ServiceAccount")
    assert statefulset["spec"]["template"]["spec"]["serviceAccountName"] == account["metadata"]["name"]


def test_the_aggregator_is_two_replicas_on_one_database_and_a_drain_keeps_one(
    rendered: dict[str, list[Manifest]],
) -> None:
    manifests = rendered["national"]
    name, _ = role_of("national")
    deployment = one(manifests, "Deployment")
    assert deployment["metadata"]["name"] == name
    assert deployment["spec"]["replicas"] == 2
    # A rollout never takes a ready replica away before its successor is ready.
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert matches(deployment["spec"]["selector"]["matchLabels"], labels)
    budget = one(manifests, "PodDisruptionBudget")
    assert matches(budget["spec"]["selector"]["matchLabels"], labels)
    assert budget["spec"]["minAvailable"] == 1 < deployment["spec"]["replicas"]
    assert budget["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    (spread,) = deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]
    assert spread["topologyKey"] == "kubernetes.io/hostname"
    assert matches(spread["labelSelector"]["matchLabels"], labels)
    services = {m["metadata"]["name"]: m for m in manifests if m["kind"] == "Service"}
    assert set(services) == {name}
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert {p["targetPort"] for p in services[name]["spec"]["ports"]} <= {
        p["name"] for p in container["ports"]
    }
    assert matches(services[name]["spec"]["selector"], labels)
    # The replicas' shared state is the database's, never a volume of one pod.
    data = one(manifests, "ConfigMap")["data"]
    assert make_url(data["DATABASE_URL"]).get_backend_name() == "postgresql"
    assert "volumeClaimTemplates" not in deployment["spec"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_settings_are_known_parse_and_point_into_mounts(
    rendered: dict[str, list[Manifest]], overlay: str
) -> None:
    """The ConfigMap holds creditnet settings only, each valid, and every file it names is mounted."""
    manifests = rendered[overlay]
    _, variables = role_of(overlay)
    declared = {v.name: v for v in variables}
    data = one(manifests, "ConfigMap")["data"]
    assert settings.unknown_variables(data) == []
    assert set(data) <= set(declared), set(data) - set(declared)
    assert {v.name for v in variables if v.required} <= set(data)
    if overlay != "national":
        assert data["CREDITNET_CITY"] == overlay
    pod = workload(manifests)["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    claims = {c["metadata"]["name"] for c in workload(manifests)["spec"].get("volumeClaimTemplates", [])}
    if overlay == "national":
        # The aggregator's durable state is in its database; a pod's state
        # directory holds only its directory copy, remade from the bootstrap.
        assert make_url(data["DATABASE_URL"]).get_backend_name() == "postgresql"
        claims = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
    for variable in variables:
        value = data.get(variable.name, variable.default)
        if value is None:
            continue
        if variable.parse is settings.parse_file:
            path = PurePosixPath(value)
            volume = volumes[mounts[str(path.parent)]]
            source = volume.get("secret") or volume["configMap"]
            items = {i["path"] for i in source["items"]}
            assert path.name in items, f"{variable.name}={value} is not in the {volume['name']} volume"
            assert next(m for m in container["volumeMounts"] if m["mountPath"] == str(path.parent))[
                "readOnly"
            ]
        elif variable.parse is settings.parse_directory:
            assert mounts[value] in claims, f"{variable.name}={value} is not on a persistent volume"
        elif variable.parse is settings.parse_state_file:
            parent = str(PurePosixPath(value).parent)
            assert mounts[parent] in claims, f"{variable.name}={value} is not on a persistent volume"
        else:
            variable.parse(value)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_pins_the_directory_its_operator_was_given(
    rendered: dict[str, list[Manifest]], overlay: str
) -> None:
    """The anchor and the first directory come from the creditnet-directory ConfigMap the operator makes."""
    pod = workload(rendered[overlay])["spec"]["template"]["spec"]
    data = one(rendered[overlay], "ConfigMap")["data"]
    assert "CREDITNET_DIRECTORY_ANCHOR" not in data, "the anchor is the network's, not in the manifests"
    assert {"CREDITNET_DIRECTORY_BOOTSTRAP", "CREDITNET_DIRECTORY_STATE"} <= set(data)
    volumes = {v["name"]: v for v in pod["volumes"]}
    # The migration reads the node's settings too: every container gets all three.
    for container in [*pod.get("initContainers", []), *pod["containers"]]:
        (anchor,) = [e for e in container.get("env", []) if e["name"] == "CREDITNET_DIRECTORY_ANCHOR"]
        assert anchor["valueFrom"]["configMapKeyRef"] == {"name": "creditnet-directory", "key": "anchor"}
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        bootstrap = PurePosixPath(data["CREDITNET_DIRECTORY_BOOTSTRAP"])
        volume = volumes[mounts[str(bootstrap.parent)]]
        assert volume["configMap"]["name"] == "creditnet-directory"
        assert str(PurePosixPath(data["CREDITNET_DIRECTORY_STATE"]).parent) in mounts, container["name"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_holds_the_routing_key_its_operator_was_given(
    rendered: dict[str, list[Manifest]], overlay: str
) -> None:
    """Nodes publish filters and the aggregator routes under the key in the role's routing-key Secret."""
    pod = workload(rendered[overlay])["spec"]["template"]["spec"]
    data = one(rendered[overlay], "ConfigMap")["data"]
    key = PurePosixPath(data["CREDITNET_ROUTING_KEY_FILE"])
    volumes = {v["name"]: v for v in pod["volumes"]}
    for container in [*pod.get("initContainers", []), *pod["containers"]]:
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        mount = mounts[str(key.parent)]
        assert mount["readOnly"], container["name"]
        secret = volumes[mount["name"]]["secret"]
        assert secret["secretName"] == f"{role_of(overlay)[0]}-routing-key"
        assert secret["items"] == [{"key": "routing.key", "path": key.name}]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_secret_is_in_the_manifests(rendered: dict[str, list[Manifest]], overlay: str) -> None:
    manifests = rendered[overlay]
    assert all(m["kind"] != "Secret" for m in manifests)
    text = yaml.safe_dump_all(manifests)
    assert "PRIVATE KEY" not in text and "BEGIN CERTIFICATE" not in text
    data = one(manifests, "ConfigMap")["data"]
    if "DATABASE_URL" in data:
        assert make_url(data["DATABASE_URL"]).password is None
        assert "CREDITNET_DATABASE_PASSWORD_FILE" in data
    volumes = workload(manifests)["spec"]["template"]["spec"]["volumes"]
    secrets = [v["secret"]["secretName"] for v in volumes if "secret" in v]
    name, _ = role_of(overlay)
    assert all(s.startswith(f"{name}-") for s in secrets)


def test_every_endpoint_is_a_rendered_service(rendered: dict[str, list[Manifest]]) -> None:
    """Witnesses and nodes name Services that the overlays create, on the ports they serve."""
    services = {
        f"{m['metadata']['name']}.{m['metadata']['namespace']}.svc.cluster.local:{p['port']}"
        for manifests in rendered.values()
        for m in manifests
        if m["kind"] == "Service" and not m["metadata"]["name"].endswith("-headless")
        for p in m["spec"]["ports"]
    }
    national = one(rendered["national"], "ConfigMap")["data"]
    nodes = settings.parse_nodes(national["CREDITNET_NODES"])
    assert {c.value for c in nodes} == set(CITIES)
    endpoints = list(nodes.values())
    for city in CITIES:
        witnesses = settings.parse_witnesses(one(rendered[city], "ConfigMap")["data"]["CREDITNET_WITNESSES"])
        assert set(witnesses) == (set(CITIES) - {city}) | {"national"}
        endpoints += witnesses.values()
    assert set(endpoints) <= services, set(endpoints) - services


def test_every_overlay_runs_this_version(rendered: dict[str, list[Manifest]]) -> None:
    for overlay, manifests in rendered.items():
        (container,) = workload(manifests)["spec"]["template"]["spec"]["containers"]
        assert container["image"] == f"creditnet:{__version__}", overlay
        assert container["args"] == (["aggregator", "run"] if overlay == "national" else ["node", "run"])
        init = workload(manifests)["spec"]["template"]["spec"].get("initContainers", [])
        if overlay == "national":
            assert init == []
        else:
            # The node refuses a database not at its schema: it is migrated first, by the same image.
            (migrate,) = init
            assert migrate["args"] == ["node", "migrate"] and migrate["image"] == container["image"]
            assert migrate["envFrom"] == container["envFrom"]
