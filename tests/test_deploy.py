"""The Kubernetes examples in deploy/: schemas offline, sidecar configs, and probe wiring."""

from __future__ import annotations

import copy
import importlib.resources
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
SHAPES = ("init-container", "sidecar", "native-sidecar")
# The Kubernetes release whose schemas the examples must match. Native sidecars need 1.29.
KUBERNETES_VERSION = "1.30"
SIDECAR_PORT = 8558
SIDECAR_IMAGE = "readiness-sidecar"
CONFIG_KEY = "config.yaml"
EXPECTED_OBJECTS = {
    ("Secret", "mysql"),
    ("Service", "mysql"),
    ("StatefulSet", "mysql"),
    ("ConfigMap", "readiness-sidecar"),
    ("Deployment", "wordpress"),
    ("Service", "wordpress"),
}

Manifest = dict[str, Any]


def manifest_files() -> list[Path]:
    return sorted(DEPLOY.glob("*/*.yaml"))


def load(shape: str) -> list[Manifest]:
    documents: list[Manifest] = []
    for path in sorted((DEPLOY / shape).glob("*.yaml")):
        documents.extend(doc for doc in yaml.safe_load_all(path.read_text()) if doc)
    return documents


def find(documents: list[Manifest], kind: str, name: str) -> Manifest:
    found = [d for d in documents if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, got {len(found)}"
    return found[0]


def pod_spec(documents: list[Manifest]) -> dict[str, Any]:
    spec: dict[str, Any] = find(documents, "Deployment", "wordpress")["spec"]["template"]["spec"]
    return spec


def all_containers(spec: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield from spec.get("initContainers", [])
    yield from spec.get("containers", [])


def is_sidecar(container: dict[str, Any]) -> bool:
    return SIDECAR_IMAGE in container["image"]


def sidecar_containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    found = [container for container in all_containers(spec) if is_sidecar(container)]
    assert len(found) == 1, "one container runs readiness-sidecar"
    return found


def http_get(container: dict[str, Any], probe: str) -> dict[str, Any]:
    assert probe in container, f"{container['name']} has no {probe}"
    action: dict[str, Any] = container[probe]["httpGet"]
    return action


def config_path(container: dict[str, Any]) -> str:
    args = container["args"]
    flag = "--config" if "--config" in args else "-c"
    path: str = args[args.index(flag) + 1]
    return path


def sidecar_config(documents: list[Manifest]) -> dict[str, Any]:
    text = find(documents, "ConfigMap", "readiness-sidecar")["data"][CONFIG_KEY]
    config: dict[str, Any] = yaml.safe_load(text)
    return config


def mounted_files(
    documents: list[Manifest], spec: dict[str, Any], container: dict[str, Any]
) -> dict[str, tuple[str, str]]:
    """Map each file mounted into a container from a ConfigMap or Secret to (kind, key)."""
    volumes = {volume["name"]: volume for volume in spec.get("volumes", [])}
    files: dict[str, tuple[str, str]] = {}
    for mount in container.get("volumeMounts", []):
        volume = volumes[mount["name"]]
        if "configMap" in volume:
            kind, source = "ConfigMap", volume["configMap"]
            name = source["name"]
        elif "secret" in volume:
            kind, source = "Secret", volume["secret"]
            name = source["secretName"]
        else:
            continue
        if "items" in source:
            items = [(item["key"], item["path"]) for item in source["items"]]
        else:
            data = find(documents, kind, name)
            items = [(key, key) for key in {**data.get("data", {}), **data.get("stringData", {})}]
        for key, path in items:
            files[f"{mount['mountPath']}/{path}"] = (kind, key)
    return files


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any connection attempt fail, to show that validation works offline."""

    def reject_connection(*args: object, **kwargs: object) -> None:
        raise AssertionError("schema validation tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", reject_connection)
    monkeypatch.setattr(socket, "create_connection", reject_connection)


def test_every_shape_is_a_complete_example() -> None:
    assert sorted(path.name for path in DEPLOY.iterdir() if path.is_dir()) == sorted(SHAPES)
    for shape in SHAPES:
        documents = load(shape)
        namespaces = [d["metadata"]["name"] for d in documents if d["kind"] == "Namespace"]
        assert len(namespaces) == 1, shape
        objects = {(d["kind"], d["metadata"]["name"]) for d in documents}
        assert objects - {("Namespace", namespaces[0])} == EXPECTED_OBJECTS, shape
        for document in documents:
            if document["kind"] != "Namespace":
                assert document["metadata"]["namespace"] == namespaces[0]
        assert find(documents, "Service", "mysql")["spec"]["clusterIP"] == "None"
        assert find(documents, "StatefulSet", "mysql")["spec"]["serviceName"] == "mysql"
        password = find(documents, "Secret", "mysql")["stringData"]["password"]
        assert "placeholder" in password, "the repository holds no real password"


def test_schemas_ship_with_the_package() -> None:
    schemas = importlib.resources.files("kubernetes_validate") / "kubernetes-json-schema"
    directory = schemas / f"v{KUBERNETES_VERSION}.0-local-strict"
    assert (directory / "deployment-apps-v1.json").is_file()
    assert (directory / "_definitions.json").is_file()


@pytest.mark.usefixtures("no_network")
@pytest.mark.parametrize("path", manifest_files(), ids=lambda path: str(path.relative_to(DEPLOY)))
def test_manifest_matches_the_kubernetes_schema(path: Path) -> None:
    documents = [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    assert documents
    for document in documents:
        # Strict mode rejects fields that are not in the schema, such as a misspelt probe.
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


@pytest.mark.usefixtures("no_network")
def test_strict_validation_catches_a_misspelt_field() -> None:
    deployment = copy.deepcopy(find(load("sidecar"), "Deployment", "wordpress"))
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["readinesProbe"] = container.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError, match="readinesProbe"):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("shape", SHAPES)
def test_sidecar_config_is_accepted(shape: str, tmp_path: Path) -> None:
    documents = load(shape)
    spec = pod_spec(documents)
    (container,) = sidecar_containers(spec)
    files = mounted_files(documents, spec, container)
    assert files[config_path(container)] == ("ConfigMap", CONFIG_KEY)

    config = sidecar_config(documents)
    # The Secret's path exists only in the Pod, and validate reads password files, so each
    # password_file is checked against the container's mounts, then pointed at a local file.
    for check in config["checks"]:
        if "password_file" in check:
            assert files[check["password_file"]] == ("Secret", "password"), check["name"]
            local = tmp_path / f"{check['name']}-password"
            local.write_text("placeholder\n")
            check["password_file"] = str(local)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))

    result = subprocess.run(
        [sys.executable, "-m", "sidecar", "validate", "-c", str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr

    checks = {check["name"]: check for check in config["checks"]}
    assert checks["mysql"]["type"] == "mysql"
    assert checks["mysql"]["host"] == "mysql"
    assert checks["mysql-dns"]["type"] == "dns"
    assert checks["mysql-dns"]["host"] == "mysql"
    wordpress = next(c for c in spec["containers"] if c["name"] == "wordpress")
    env = {item["name"]: item.get("value") for item in wordpress["env"]}
    assert checks["mysql"]["user"] == env["WORDPRESS_DB_USER"]


@pytest.mark.parametrize("shape", SHAPES)
def test_sidecar_container_is_hardened_and_sized(shape: str) -> None:
    (container,) = sidecar_containers(pod_spec(load(shape)))
    context = container["securityContext"]
    assert context["runAsNonRoot"] is True
    assert context["runAsUser"] != 0
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"]["drop"] == ["ALL"]
    for section in ("requests", "limits"):
        assert set(container["resources"][section]) == {"cpu", "memory"}, section
    assert all(mount.get("readOnly") is True for mount in container["volumeMounts"])


@pytest.mark.parametrize("shape", SHAPES)
def test_no_liveness_depends_on_a_dependency(shape: str) -> None:
    for container in all_containers(pod_spec(load(shape))):
        probe = container.get("livenessProbe")
        if probe is None or "httpGet" not in probe:
            continue
        assert not probe["httpGet"]["path"].startswith(("/ready", "/started")), container["name"]
        if not is_sidecar(container):
            assert probe["httpGet"]["port"] != SIDECAR_PORT, container["name"]


def test_sidecar_shape_gates_wordpress_readiness() -> None:
    documents = load("sidecar")
    spec = pod_spec(documents)
    assert "initContainers" not in spec
    wordpress, sidecar = spec["containers"]
    assert wordpress["name"] == "wordpress"
    assert is_sidecar(sidecar)
    ready = http_get(wordpress, "readinessProbe")
    # A named port resolves only among the probed container's own ports.
    assert type(ready["port"]) is int
    assert ready["port"] == SIDECAR_PORT
    assert ready["path"] == "/ready"
    assert http_get(sidecar, "livenessProbe") == {"path": "/live", "port": SIDECAR_PORT}
    assert sidecar["args"][0] == "serve"
    assert sidecar_config(documents)["server"]["port"] == SIDECAR_PORT


def test_native_sidecar_holds_wordpress_until_started() -> None:
    documents = load("native-sidecar")
    spec = pod_spec(documents)
    (sidecar,) = spec["initContainers"]
    assert is_sidecar(sidecar)
    assert not any(is_sidecar(c) for c in spec["containers"])
    assert sidecar["restartPolicy"] == "Always"
    assert sidecar["args"][0] == "serve"
    assert http_get(sidecar, "startupProbe") == {"path": "/started", "port": SIDECAR_PORT}
    assert http_get(sidecar, "readinessProbe") == {"path": "/ready", "port": SIDECAR_PORT}
    assert http_get(sidecar, "livenessProbe") == {"path": "/live", "port": SIDECAR_PORT}
    assert sidecar_config(documents)["server"]["port"] == SIDECAR_PORT


def test_init_container_waits_for_mysql() -> None:
    documents = load("init-container")
    spec = pod_spec(documents)
    (waiter,) = spec["initContainers"]
    assert is_sidecar(waiter)
    assert "restartPolicy" not in waiter
    assert not any(is_sidecar(c) for c in spec["containers"])
    args = waiter["args"]
    assert args[0] == "wait"
    selected = {args[i + 1] for i, arg in enumerate(args) if arg == "--check"}
    assert selected == {"mysql", "mysql-dns"}
    assert selected <= {check["name"] for check in sidecar_config(documents)["checks"]}
    assert float(args[args.index("--timeout") + 1]) > 0
