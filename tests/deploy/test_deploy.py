"""Deployment artefacts: Dockerfile, compose, Kubernetes, Prometheus, Grafana, runbooks.

Nothing here starts a container or a cluster. Kubernetes manifests are checked against the
API schema by deserializing them into the ``kubernetes`` client's models (and by refusing
fields those models do not know, which the client itself would drop silently); alert
rules and the Prometheus config go through ``promtool``; the settings that compose and
Kubernetes hand to Guarita are loaded by Guarita's own settings code.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from dockerfile_parse import DockerfileParser
from kubernetes import client as k8s
from kubernetes.utils import parse_quantity

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
PROMETHEUS = DEPLOY / "prometheus"
GRAFANA = DEPLOY / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "guarita.json"
OPERATIONS = ROOT / "docs" / "operations.md"
ALERTS_TEST = Path(__file__).with_name("alerts_test.yml")

PROMTOOL = shutil.which("promtool")
# Skipped on a developer machine without promtool; in CI (CI=true) a missing promtool fails
# these tests instead, so the alert rules are never silently left unchecked.
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None and os.environ.get("CI", "").lower() not in ("1", "true"),
    reason="promtool is not installed: apt-get install prometheus (Debian) provides it",
)

ALERTS = ("HighErrorRate", "HighLatency", "HighCost", "NoRequests")
SECRET_TEMPLATE = "secret.template.yaml"

# (apiVersion, kind) -> the kubernetes client model that the API server's schema maps to.
MODELS = {
    ("v1", "Namespace"): "V1Namespace",
    ("v1", "ServiceAccount"): "V1ServiceAccount",
    ("v1", "ConfigMap"): "V1ConfigMap",
    ("v1", "Secret"): "V1Secret",
    ("v1", "Service"): "V1Service",
    ("apps/v1", "Deployment"): "V1Deployment",
    ("apps/v1", "StatefulSet"): "V1StatefulSet",
    ("batch/v1", "Job"): "V1Job",
    ("autoscaling/v2", "HorizontalPodAutoscaler"): "V2HorizontalPodAutoscaler",
    ("policy/v1", "PodDisruptionBudget"): "V1PodDisruptionBudget",
    ("networking.k8s.io/v1", "Ingress"): "V1Ingress",
}


# -- helpers -------------------------------------------------------------------------------


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def manifest_files() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def manifests() -> Iterator[tuple[Path, dict[str, Any]]]:
    for path in manifest_files():
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if doc is not None:
                yield path, doc


def find(kind: str, name: str) -> dict[str, Any]:
    for _, doc in manifests():
        if doc["kind"] == kind and doc["metadata"]["name"] == name:
            return doc
    raise AssertionError(f"no {kind} named {name!r} in deploy/k8s")


def unknown_fields(data: Any, type_name: str, where: str = "") -> list[str]:
    """Fields the API schema does not define, e.g. a misspelled ``readinesProbe``."""
    if data is None:
        return []
    if m := re.fullmatch(r"(?:List|list)\[(.+)\]", type_name):
        return [
            e
            for i, item in enumerate(data)
            for e in unknown_fields(item, m.group(1), f"{where}[{i}]")
        ]
    if m := re.fullmatch(r"(?:Dict\[str, (.+)\]|dict\(str, (.+)\))", type_name):
        inner = m.group(1) or m.group(2)
        return [e for k, v in data.items() for e in unknown_fields(v, inner, f"{where}.{k}")]
    model = getattr(k8s, type_name, None)
    if model is None or not hasattr(model, "attribute_map"):
        return []  # a primitive, IntOrString ("object") or a free-form map
    if not isinstance(data, dict):
        return [f"{where or '.'}: expected an object for {type_name}"]
    python_name = {json_name: attr for attr, json_name in model.attribute_map.items()}
    errors = []
    for key, value in data.items():
        if key not in python_name:
            errors.append(f"{where}.{key} (not a field of {type_name})")
        else:
            errors += unknown_fields(value, model.openapi_types[python_name[key]], f"{where}.{key}")
    return errors


def deserialize(doc: dict[str, Any], model: str | None = None) -> Any:
    """The typed object the kubernetes client builds; raises on wrong types or missing fields."""
    model = model or MODELS[(doc["apiVersion"], doc["kind"])]
    api = k8s.ApiClient()
    try:
        return api._ApiClient__deserialize(doc, model)  # type: ignore[attr-defined]
    finally:
        api.close()


def pod_templates() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for _, doc in manifests():
        if doc["kind"] in ("Deployment", "StatefulSet", "Job"):
            found.append((f"{doc['kind']}/{doc['metadata']['name']}", doc["spec"]["template"]))
    return found


def quantity(value: str) -> float:
    return float(parse_quantity(value))


def github_anchor(heading: str) -> str:
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def doc_anchors() -> set[str]:
    return {
        github_anchor(line.lstrip("#"))
        for line in OPERATIONS.read_text(encoding="utf-8").splitlines()
        if re.match(r"^#{1,6} ", line)
    }


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's ``${VAR}``, ``${VAR:-default}`` and ``${VAR:?error}``."""

    def sub(m: re.Match[str]) -> str:
        name, op, arg = m.group(1), m.group(2), m.group(3)
        value = env.get(name, "")
        if op == ":?" and not value:
            raise AssertionError(f"compose needs {name}: {arg}")
        return value or (arg if op == ":-" else "")

    return re.sub(r"\$\{(\w+)(?:(:[-?])([^}]*))?\}", sub, text)


def guarita_settings(
    config_yaml: str, env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Any:
    """Settings as a container gets them: this YAML file overlaid by this environment."""
    from guarita.settings import load_settings

    config = tmp_path / "guarita.yaml"
    config.write_text(config_yaml, encoding="utf-8")
    for name in list(os.environ):
        if name.startswith("GUARITA_"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("GUARITA_CONFIG", str(config))
    monkeypatch.chdir(tmp_path)
    return load_settings()


def filled_in(value: str) -> str:
    """A Secret template value with its placeholders replaced by plausible ones."""
    return (
        value.replace("REPLACE_ME_POSTGRES_HOST", "postgres")
        .replace("REPLACE_ME_REDIS_HOST", "redis")
        .replace("REPLACE_ME", "s3cret-for-tests")
    )


def promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None, "CI must install promtool: apt-get install prometheus"
    return subprocess.run(
        [PROMTOOL, *map(str, args)], capture_output=True, text=True, timeout=60, check=False
    )


def exported_metric_names() -> set[str]:
    """Every sample name Guarita's metrics registry can expose."""
    from guarita.telemetry.metrics import Metrics

    names = set()
    for family in Metrics().registry.collect():
        if family.type == "counter":
            names |= {family.name + "_total", family.name + "_created"}
        elif family.type == "histogram":
            names |= {family.name + s for s in ("_bucket", "_sum", "_count", "_created")}
        else:
            names.add(family.name)
    return names


# -- YAML ------------------------------------------------------------------------------------

ALL_YAML = sorted({*DEPLOY.rglob("*.yml"), *DEPLOY.rglob("*.yaml"), ALERTS_TEST})


@pytest.mark.parametrize("path", ALL_YAML, ids=rel)
def test_every_yaml_file_parses(path: Path) -> None:
    docs = list(yaml.safe_load_all(path.read_text(encoding="utf-8")))
    assert docs and all(isinstance(doc, dict) for doc in docs), rel(path)


def test_the_expected_files_exist() -> None:
    expected = [
        ROOT / ".dockerignore",
        DEPLOY / "Dockerfile",
        DEPLOY / "docker-compose.yml",
        PROMETHEUS / "prometheus.yml",
        PROMETHEUS / "alerts.yml",
        GRAFANA / "provisioning" / "datasources" / "prometheus.yml",
        GRAFANA / "provisioning" / "dashboards" / "guarita.yml",
        DASHBOARD,
        OPERATIONS,
        K8S / "kustomization.yaml",
    ]
    assert [rel(p) for p in expected if not p.is_file()] == []


# -- Dockerfile --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dockerfile() -> DockerfileParser:
    return DockerfileParser(path=str(DEPLOY / "Dockerfile"))


def stages(parser: DockerfileParser) -> list[list[dict[str, Any]]]:
    result: list[list[dict[str, Any]]] = []
    for instruction in parser.structure:
        if instruction["instruction"] == "FROM":
            result.append([])
        if result:
            result[-1].append(instruction)
    return result


def index_of(stage: list[dict[str, Any]], instruction: str, pattern: str) -> int:
    for i, ins in enumerate(stage):
        if ins["instruction"] == instruction and re.search(pattern, ins["value"]):
            return i
    raise AssertionError(f"no {instruction} matching {pattern!r} in the stage")


def test_dockerfile_is_multi_stage_on_a_slim_python(dockerfile: DockerfileParser) -> None:
    assert dockerfile.is_multistage
    assert len(stages(dockerfile)) >= 2
    assert dockerfile.parent_images, "no FROM"
    for image in dockerfile.parent_images:
        assert re.fullmatch(r"python:3\.1[1-9]-slim(-\w+)?(@sha256:\w+)?", image), image


def test_dockerfile_final_stage_runs_as_non_root_with_a_healthcheck(
    dockerfile: DockerfileParser,
) -> None:
    final = stages(dockerfile)[-1]
    users = [ins["value"].strip() for ins in final if ins["instruction"] == "USER"]
    assert users, "the final stage sets no USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0") and user.isdigit(), (
        f"USER {users[-1]}: use a numeric non-root UID so runAsNonRoot can verify it"
    )
    checks = [ins["value"] for ins in final if ins["instruction"] == "HEALTHCHECK"]
    assert len(checks) == 1
    assert "/health" in checks[0] and ":8080" in checks[0]
    assert "urllib" in checks[0] and "curl" not in checks[0] and "wget" not in checks[0]
    assert "8080" in [ins["value"].strip() for ins in final if ins["instruction"] == "EXPOSE"]
    entry = [ins["value"] for ins in final if ins["instruction"] == "ENTRYPOINT"]
    assert entry and json.loads(entry[-1]) == ["guarita"]
    cmd = [ins["value"] for ins in final if ins["instruction"] == "CMD"]
    assert json.loads(cmd[-1])[:1] == ["serve"] and "0.0.0.0" in json.loads(cmd[-1])


def test_dockerfile_installs_dependencies_before_copying_the_source(
    dockerfile: DockerfileParser,
) -> None:
    builder = stages(dockerfile)[0]
    copy_pyproject = index_of(builder, "COPY", r"\bpyproject\.toml\b")
    install_deps = index_of(builder, "RUN", r"pip install -r requirements\.txt")
    copy_src = index_of(builder, "COPY", r"^src\b")
    install_app = index_of(builder, "RUN", r"pip install --no-deps")
    assert copy_pyproject < install_deps < copy_src < install_app
    # Nothing that changes with the code may be copied before the dependency layer.
    for ins in builder[:install_deps]:
        if ins["instruction"] in ("COPY", "ADD"):
            sources = ins["value"].split()[:-1]
            assert not {"src", ".", "./", "src/"} & set(sources), ins["value"]
    build_tools = builder[index_of(builder, "RUN", r"apt-get install")]["value"]
    assert "build-essential" in build_tools and "cmake" in build_tools


def test_dockerfile_runtime_stage_ships_the_venv_and_no_compiler(
    dockerfile: DockerfileParser,
) -> None:
    final = stages(dockerfile)[-1]
    copies = [ins["value"] for ins in final if ins["instruction"] == "COPY"]
    assert any(c.startswith("--from=builder") and "/opt/venv" in c for c in copies), copies
    runs = " ".join(ins["value"] for ins in final if ins["instruction"] == "RUN")
    assert "build-essential" not in runs and "cmake" not in runs
    assert "libgomp1" in runs  # llama.cpp's OpenMP runtime
    env = dockerfile.envs  # the final stage's environment
    assert env["XDG_CACHE_HOME"] and env["GUARITA_DATA_DIR"]


def _dockerignore_excludes(path: str, patterns: list[str]) -> bool:
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        pattern = pattern.removeprefix("**/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatch(p, pattern) for p in prefixes) or fnmatch.fnmatch(
            parts[-1], pattern
        ):
            excluded = not negate
    return excluded


def test_dockerignore_keeps_what_the_build_copies_and_drops_the_rest(
    dockerfile: DockerfileParser,
) -> None:
    lines = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    sources = []
    for ins in dockerfile.structure:
        if ins["instruction"] == "COPY" and not ins["value"].startswith("--from"):
            sources += ins["value"].split()[:-1]
    assert {"pyproject.toml", "src", "README.md"} <= set(sources)
    for source in sources:
        assert (ROOT / source).exists(), source
        assert not _dockerignore_excludes(source, patterns), f".dockerignore drops {source}"
    for junk in (".venv", ".git", "tests", "guarita.yaml", "deploy/.env", "x/__pycache__"):
        assert _dockerignore_excludes(junk, patterns), f".dockerignore keeps {junk}"


def test_requirements_script_lists_dependencies_and_extras(tmp_path: Path) -> None:
    script = DEPLOY / "pyproject_requirements.py"
    out = subprocess.run(
        [sys.executable, str(script), "local,scale,no-such-extra", str(ROOT / "pyproject.toml")],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout.splitlines()
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    expected = project["dependencies"] + project["optional-dependencies"]["local"]
    expected += project["optional-dependencies"].get("scale", [])
    assert out == list(dict.fromkeys(expected))
    assert not any(line.startswith("pytest") for line in out)  # dev is not installed

    # A self-reference in an extra expands into that extra's requirements.
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "guarita"\ndependencies = ["a>=1"]\n'
        '[project.optional-dependencies]\nlocal = ["b"]\nall = ["guarita[local]", "c"]\n',
        encoding="utf-8",
    )
    out = subprocess.run(
        [sys.executable, str(script), "all", str(tmp_path / "pyproject.toml")],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout.split()
    assert out == ["a>=1", "b", "c"]


# -- docker compose ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = load_yaml(DEPLOY / "docker-compose.yml")
    assert isinstance(data, dict)
    return data


def test_compose_has_every_service(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"api", "worker", "migrate", "postgres", "redis", "prometheus", "grafana"} <= set(
        services
    )
    assert services["api"]["deploy"]["replicas"] == 2
    assert "container_name" not in services["api"]  # a fixed name forbids replicas
    assert services["api"]["command"][:1] == ["serve"]
    assert services["worker"]["command"] == ["worker"]
    assert services["migrate"]["command"] == ["migrate"]
    assert services["migrate"]["restart"] == "no"
    for name in ("api", "worker", "migrate"):
        assert services[name]["build"]["dockerfile"] == "deploy/Dockerfile"
        assert (DEPLOY / services[name]["build"]["context"] / "pyproject.toml").is_file()


def test_compose_services_have_healthchecks(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in ("api", "postgres", "redis", "prometheus", "grafana"):
        check = services[name].get("healthcheck", {})
        assert check.get("test"), f"{name} has no healthcheck"
        assert not check.get("disable"), name
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert "/ready" in " ".join(services["api"]["healthcheck"]["test"])
    assert any(v.endswith(":/var/lib/postgresql/data") for v in services["postgres"]["volumes"])


def test_compose_start_order_runs_migrations_first(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in ("api", "worker"):
        deps = services[name]["depends_on"]
        assert deps["migrate"]["condition"] == "service_completed_successfully", name
        assert deps["postgres"]["condition"] == "service_healthy", name
        assert deps["redis"]["condition"] == "service_healthy", name
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_compose_mounts_monitoring_config_that_exists(compose: dict[str, Any]) -> None:
    services = compose["services"]
    mounts: dict[str, str] = {}
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source, target = volume.split(":")[:2]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name} mounts missing {source}"
                mounts[f"{name}:{target}"] = source
    assert mounts["prometheus:/etc/prometheus"] == "./prometheus"
    assert mounts["grafana:/etc/grafana/provisioning"] == "./grafana/provisioning"
    assert mounts["grafana:/var/lib/grafana/dashboards"] == "./grafana/dashboards"
    assert mounts["api:/etc/guarita/guarita.yaml"] == "./guarita.yaml"
    command = " ".join(services["prometheus"]["command"])
    assert "--config.file=/etc/prometheus/prometheus.yml" in command


def test_compose_settings_load_in_scale_out_mode(
    compose: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = (DEPLOY / "docker-compose.yml").read_text(encoding="utf-8")
    env = {"POSTGRES_PASSWORD": "pw", "GRAFANA_ADMIN_PASSWORD": "pw"}
    with pytest.raises(AssertionError, match="POSTGRES_PASSWORD"):
        interpolate(raw, {})  # no silent default password
    api_env = yaml.safe_load(interpolate(raw, env))["services"]["api"]["environment"]
    assert api_env["GUARITA_CONFIG"] == "/etc/guarita/guarita.yaml"
    settings = guarita_settings(
        (DEPLOY / "guarita.yaml").read_text(encoding="utf-8"),
        {k: str(v) for k, v in api_env.items()},
        tmp_path,
        monkeypatch,
    )
    assert settings.store_url == "postgresql+asyncpg://guarita:pw@postgres:5432/guarita"
    assert settings.redis_url == "redis://redis:6379/0"
    assert settings.task_queue == "celery"
    assert settings.store.auto_migrate is False  # the migrate service does it
    assert settings.server.host == "0.0.0.0" and settings.server.port == 8080
    db = compose["services"]["postgres"]["environment"]
    assert f"//{db['POSTGRES_USER']}:" in api_env["GUARITA_STORE__URL"]
    assert api_env["GUARITA_STORE__URL"].endswith(f"/{db['POSTGRES_DB']}")


def test_env_example_names_every_variable_compose_requires() -> None:
    raw = (DEPLOY / "docker-compose.yml").read_text(encoding="utf-8")
    required = set(re.findall(r"\$\{(\w+):\?", raw))
    assert {"POSTGRES_PASSWORD", "GRAFANA_ADMIN_PASSWORD"} <= required
    example = (DEPLOY / ".env.example").read_text(encoding="utf-8")
    defined = dict(re.findall(r"(?m)^(\w+)=(.*)$", example))
    assert required <= set(defined)
    assert all(defined[name] == "REPLACE_ME" for name in required)
    assert ".env" in (DEPLOY / ".gitignore").read_text(encoding="utf-8").split()


# -- Kubernetes ----------------------------------------------------------------------------


@pytest.mark.parametrize("path", manifest_files(), ids=rel)
def test_manifest_matches_the_kubernetes_api_schema(path: Path) -> None:
    docs = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]
    assert docs
    for doc in docs:
        key = (doc.get("apiVersion"), doc.get("kind"))
        assert key in MODELS, f"{rel(path)}: unexpected {key}"
        assert unknown_fields(doc, MODELS[key]) == []
        obj = deserialize(doc)
        assert type(obj).__name__ == MODELS[key]
        assert obj.metadata.name
        if doc["kind"] != "Namespace":
            assert obj.metadata.namespace == "guarita", rel(path)


def test_schema_check_catches_a_misspelled_field() -> None:
    doc = find("Deployment", "guarita-api")
    broken = json.loads(json.dumps(doc))
    container = broken["spec"]["template"]["spec"]["containers"][0]
    container["readinesProbe"] = container.pop("readinessProbe")
    assert unknown_fields(broken, "V1Deployment") == [
        ".spec.template.spec.containers[0].readinesProbe (not a field of V1Container)"
    ]
    del broken["spec"]["selector"]
    with pytest.raises(ValueError):  # a required field
        deserialize(broken)


@pytest.fixture(scope="module")
def api() -> Any:
    return deserialize(find("Deployment", "guarita-api"))


def container(obj: Any) -> Any:
    containers = obj.spec.template.spec.containers
    assert len(containers) == 1
    return containers[0]


def test_api_deployment_probes(api: Any) -> None:
    c = container(api)
    ports = {p.name: p.container_port for p in c.ports}
    assert ports == {"http": 8080}
    assert c.liveness_probe.http_get.path == "/health"
    assert c.readiness_probe.http_get.path == "/ready"
    assert c.startup_probe.http_get.path == "/health"
    for probe in (c.liveness_probe, c.readiness_probe, c.startup_probe):
        assert ports.get(probe.http_get.port, probe.http_get.port) == 8080
        assert probe.timeout_seconds and probe.period_seconds
    assert c.args[:1] == ["serve"] and "--port" in c.args
    assert c.args[c.args.index("--port") + 1] == "8080"


@pytest.mark.parametrize(
    "kind,name",
    [("Deployment", "guarita-api"), ("Deployment", "guarita-worker"), ("Job", "guarita-migrate")],
)
def test_workloads_set_resource_requests_and_limits(kind: str, name: str) -> None:
    c = container(deserialize(find(kind, name)))
    for resource in ("cpu", "memory"):
        request = quantity(c.resources.requests[resource])
        limit = quantity(c.resources.limits[resource])
        assert 0 < request <= limit, f"{name} {resource}: {request} > {limit}"


def test_api_resources_fit_the_local_model(api: Any) -> None:
    c = container(api)
    assert quantity(c.resources.limits["memory"]) >= quantity("1Gi")
    config = yaml.safe_load(find("ConfigMap", "guarita-config")["data"]["guarita.yaml"])
    for model in config["models"].values():
        if model["provider"] == "llamacpp":
            threads = model["options"]["n_threads"]
            assert threads <= quantity(c.resources.limits["cpu"]), "threads beyond the CPU limit"


@pytest.mark.parametrize("workload", [name for name, _ in pod_templates()])
def test_pods_meet_the_restricted_pod_security_standard(workload: str) -> None:
    template = dict(pod_templates())[workload]
    pod = deserialize(template, "V1PodTemplateSpec").spec
    assert pod.security_context.run_as_non_root is True
    assert pod.security_context.run_as_user not in (None, 0)
    assert pod.security_context.seccomp_profile.type == "RuntimeDefault"
    assert pod.automount_service_account_token is False
    assert pod.host_network in (None, False) and pod.host_pid in (None, False)
    for c in pod.containers + (pod.init_containers or []):
        sc = c.security_context
        assert sc.allow_privilege_escalation is False, c.name
        assert sc.read_only_root_filesystem is True, c.name
        assert sc.capabilities.drop == ["ALL"] and not sc.capabilities.add, c.name
        assert sc.run_as_user in (None, pod.security_context.run_as_user)
        assert sc.privileged in (None, False)


@pytest.mark.parametrize("workload", [name for name, _ in pod_templates()])
def test_writable_paths_are_empty_dirs(workload: str) -> None:
    template = dict(pod_templates())[workload]
    pod = deserialize(template, "V1PodTemplateSpec").spec
    empty_dirs = {v.name for v in pod.volumes if v.empty_dir is not None}
    for c in pod.containers:
        mounts = {m.mount_path: m.name for m in c.volume_mounts}
        assert mounts.get("/tmp") in empty_dirs, f"{c.name}: /tmp is not an emptyDir"
        env = {e.name: e.value for e in c.env}
        for variable in ("GUARITA_DATA_DIR", "XDG_CACHE_HOME"):
            if variable in env:
                assert mounts.get(env[variable]) in empty_dirs, f"{c.name}: {variable}"
        assert env["GUARITA_DATA_DIR"] == "/var/lib/guarita"
        assert mounts.get("/etc/guarita") == "config"
        assert env["GUARITA_CONFIG"] == "/etc/guarita/guarita.yaml"


def test_api_rolls_out_without_losing_capacity_and_drains(api: Any) -> None:
    strategy = api.spec.strategy
    assert strategy.type == "RollingUpdate"
    assert strategy.rolling_update.max_unavailable == 0
    assert strategy.rolling_update.max_surge == 1
    pod = api.spec.template.spec
    assert pod.termination_grace_period_seconds == 45
    pre_stop = container(api).lifecycle.pre_stop
    assert pre_stop._exec.command[0] == "sleep"
    # preStop sleep + uvicorn's 30 s graceful shutdown must fit in the grace period.
    assert int(pre_stop._exec.command[1]) + 30 <= pod.termination_grace_period_seconds
    # The HPA owns the replica count; a value here would reset it on every apply.
    assert api.spec.replicas is None


def test_service_selects_the_api_pods(api: Any) -> None:
    service = deserialize(find("Service", "guarita-api"))
    labels = api.spec.template.metadata.labels
    assert service.spec.selector.items() <= labels.items()
    assert service.spec.selector["track"] == "blue" == labels["track"]
    assert api.spec.selector.match_labels.items() <= labels.items()
    port_names = {p.name for p in container(api).ports}
    assert {p.target_port for p in service.spec.ports} <= port_names


def test_blue_green_copy_is_selected_after_the_switch() -> None:
    """The green Deployment built as docs/operations.md says is what the flipped Service selects."""
    text = (K8S / "api-deployment.yaml").read_text(encoding="utf-8")
    text = re.sub(r"(?m)^  name: guarita-api$", "  name: guarita-api-green", text)
    text = re.sub(r"(?m)track: blue$", "track: green", text)
    green = yaml.safe_load(text)
    assert green["metadata"]["name"] == "guarita-api-green"
    assert unknown_fields(green, "V1Deployment") == []
    labels = green["spec"]["template"]["metadata"]["labels"]
    selector = dict(find("Service", "guarita-api")["spec"]["selector"], track="green")
    assert selector.items() <= labels.items()
    assert green["spec"]["selector"]["matchLabels"]["track"] == "green"
    assert "kubectl -n guarita patch service guarita-api" in OPERATIONS.read_text(encoding="utf-8")


def test_hpa_scales_the_api_between_3_and_20(api: Any) -> None:
    hpa = deserialize(find("HorizontalPodAutoscaler", "guarita-api"))
    target = hpa.spec.scale_target_ref
    assert (target.api_version, target.kind, target.name) == (
        "apps/v1",
        "Deployment",
        "guarita-api",
    )
    assert (hpa.spec.min_replicas, hpa.spec.max_replicas) == (3, 20)
    targets = {
        m.resource.name: (m.resource.target.type, m.resource.target.average_utilization)
        for m in hpa.spec.metrics
        if m.type == "Resource"
    }
    assert targets == {"cpu": ("Utilization", 70), "memory": ("Utilization", 80)}
    assert hpa.spec.behavior.scale_down.stabilization_window_seconds == 300
    # Utilization is measured against requests: they must be set.
    assert {"cpu", "memory"} <= set(container(api).resources.requests)


def test_pdb_keeps_two_api_pods(api: Any) -> None:
    pdb = deserialize(find("PodDisruptionBudget", "guarita-api"))
    hpa = deserialize(find("HorizontalPodAutoscaler", "guarita-api"))
    assert pdb.spec.min_available == 2
    assert pdb.spec.max_unavailable is None
    assert pdb.spec.selector.match_labels.items() <= api.spec.template.metadata.labels.items()
    assert "track" not in pdb.spec.selector.match_labels  # covers blue and green
    assert pdb.spec.min_available < hpa.spec.min_replicas  # otherwise drains never proceed


def test_ingress_serves_the_api_over_tls() -> None:
    ingress = deserialize(find("Ingress", "guarita"))
    service = deserialize(find("Service", "guarita-api"))
    annotations = ingress.metadata.annotations
    assert annotations.get("cert-manager.io/cluster-issuer") or annotations.get(
        "cert-manager.io/issuer"
    )
    assert len(ingress.spec.tls) == 1
    tls = ingress.spec.tls[0]
    assert tls.secret_name == "guarita-tls"
    paths = []
    for rule in ingress.spec.rules:
        assert rule.host in tls.hosts
        for path in rule.http.paths:
            backend = path.backend.service
            assert backend.name == service.metadata.name
            assert backend.port.name in {p.name for p in service.spec.ports}
            paths.append(path.path)
    assert {"/v1", "/api"} <= set(paths)
    assert not any("/metrics".startswith(p) and p != "/" for p in paths)
    assert "/" not in paths  # /metrics and /ready stay inside the cluster


def test_worker_is_a_deployment_running_celery_workers() -> None:
    worker = deserialize(find("Deployment", "guarita-worker"))
    assert container(worker).args == ["worker"]
    assert worker.spec.replicas >= 1
    assert (worker.spec.template.spec.termination_grace_period_seconds or 30) >= 60
    kinds = {doc["kind"] for _, doc in manifests()}
    assert "StatefulSet" not in kinds
    # The choice is explained where the manifests point.
    assert "why-the-worker-is-a-deployment" in doc_anchors()
    assert "docs/operations.md#why-the-worker-is-a-deployment" in (
        K8S / "worker-deployment.yaml"
    ).read_text(encoding="utf-8")


def test_migration_job_runs_guarita_migrate() -> None:
    job = deserialize(find("Job", "guarita-migrate"))
    assert container(job).args == ["migrate"]
    assert job.spec.template.spec.restart_policy in ("Never", "OnFailure")
    assert job.spec.backoff_limit is not None and job.spec.active_deadline_seconds
    config = yaml.safe_load(find("ConfigMap", "guarita-config")["data"]["guarita.yaml"])
    assert config["store"]["auto_migrate"] is False  # the Job does it, once per release


def test_secret_template_is_all_placeholders() -> None:
    secret = deserialize(find("Secret", "guarita-secrets"))
    assert secret.data is None  # stringData only: readable, no base64 to get wrong
    assert secret.string_data
    for key, value in secret.string_data.items():
        assert "REPLACE_ME" in value, f"{key} holds a value that looks real"


def test_every_referenced_secret_configmap_and_account_exists() -> None:
    names = {(doc["kind"], doc["metadata"]["name"]) for _, doc in manifests()}
    for workload, template in pod_templates():
        pod = template["spec"]
        assert ("ServiceAccount", pod["serviceAccountName"]) in names, workload
        for volume in pod.get("volumes", []):
            if "configMap" in volume:
                assert ("ConfigMap", volume["configMap"]["name"]) in names, workload
        for c in pod["containers"]:
            for source in c.get("envFrom", []):
                assert ("Secret", source["secretRef"]["name"]) in names, workload
            assert c["image"] == "guarita", "kustomization.yaml sets the registry and tag"


def test_kubernetes_settings_load_in_scale_out_mode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ConfigMap's guarita.yaml plus the pod environment (Secret included) is valid."""
    secret = find("Secret", "guarita-secrets")["stringData"]
    api = find("Deployment", "guarita-api")
    c = api["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in c["env"]}
    env |= {k: filled_in(v) for k, v in secret.items()}
    config = find("ConfigMap", "guarita-config")["data"]["guarita.yaml"]
    settings = guarita_settings(config, env, tmp_path, monkeypatch)
    assert settings.store_url.startswith("postgresql+asyncpg://")
    assert settings.redis_url and settings.redis_url.startswith("redis://")
    assert settings.task_queue == "celery"
    assert settings.server.host == "0.0.0.0"
    assert settings.server.port == c["ports"][0]["containerPort"]
    assert settings.auth.enabled is True
    assert settings.auth.allow_unauthenticated_localhost is False
    # Every provider key the config names comes from the Secret.
    for name, model in settings.models.items():
        if model.api_key_env:
            assert model.api_key_env in secret, f"models.{name}: {model.api_key_env}"


def test_kustomization_lists_every_manifest_but_the_secret_template() -> None:
    kustomization = load_yaml(K8S / "kustomization.yaml")
    listed = kustomization["resources"]
    assert len(listed) == len(set(listed))
    files = {p.name for p in manifest_files()}
    assert set(listed) == files - {SECRET_TEMPLATE}
    assert SECRET_TEMPLATE in files
    assert kustomization["namespace"] == "guarita"
    assert [i["name"] for i in kustomization["images"]] == ["guarita"]


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kustomize_build_renders_the_release_image() -> None:
    result = subprocess.run(
        ["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    image = load_yaml(K8S / "kustomization.yaml")["images"][0]
    expected = f"{image['newName']}:{image['newTag']}"
    images = [
        c["image"]
        for d in docs
        if d["kind"] in ("Deployment", "Job")
        for c in d["spec"]["template"]["spec"]["containers"]
    ]
    assert len(images) == 3 and set(images) == {expected}
    assert not any(d["kind"] == "Secret" for d in docs)


# -- Prometheus ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def alert_rules() -> dict[str, dict[str, Any]]:
    groups = load_yaml(PROMETHEUS / "alerts.yml")["groups"]
    return {rule["alert"]: rule for group in groups for rule in group["rules"] if "alert" in rule}


def test_alerts_exist_with_severity_summary_and_runbook(
    alert_rules: dict[str, dict[str, Any]],
) -> None:
    assert set(ALERTS) <= set(alert_rules)
    anchors = doc_anchors()
    for name in ALERTS:
        rule = alert_rules[name]
        assert rule["labels"]["severity"] in ("critical", "warning", "info"), name
        assert rule["annotations"]["summary"], name
        url = rule["annotations"]["runbook_url"]
        page, _, anchor = url.partition("#")
        assert page.endswith("docs/operations.md"), url
        assert anchor == name.lower() and anchor in anchors, f"{url}: no such heading"


def test_alert_expressions_encode_the_thresholds(alert_rules: dict[str, dict[str, Any]]) -> None:
    def expr(name: str) -> str:
        return " ".join(alert_rules[name]["expr"].split())

    assert 'agent_requests_total{status="error"}' in expr("HighErrorRate")
    assert expr("HighErrorRate").endswith("> 0.05")
    assert alert_rules["HighErrorRate"]["for"] == "5m"
    assert "histogram_quantile(0.95," in expr("HighLatency")
    assert "agent_request_duration_seconds_bucket" in expr("HighLatency")
    assert expr("HighLatency").endswith("> 5")
    assert alert_rules["HighLatency"]["for"] == "5m"
    assert "agent_cost_usd_total[1h]" in expr("HighCost")
    assert expr("HighCost").endswith("* 24 * 30 > 1000")
    assert "agent_requests_total[10m]" in expr("NoRequests")
    assert alert_rules["NoRequests"]["for"] == "1m"  # + the 10m window: ~11 minutes idle
    assert 'up{job="guarita-api"}' in expr("NoRequests")


def test_metric_names_in_alerts_and_dashboard_are_ones_guarita_exports(
    alert_rules: dict[str, dict[str, Any]],
) -> None:
    exported = exported_metric_names()
    queries = [rule["expr"] for rule in alert_rules.values()]
    queries += [t["expr"] for p in load_yaml(DASHBOARD)["panels"] for t in p["targets"]]
    # Label matchers and grouping clauses name labels (agent_name), not metrics.
    bare = [re.sub(r"\{[^}]*\}|\b(?:by|without)\s*\([^)]*\)", "", q) for q in queries]
    used = {m for q in bare for m in re.findall(r"\b(?:agent|guarita)_[a-z_]+\b", q)}
    assert used, "no metric found in the queries"
    assert sorted(used - exported) == []


def test_prometheus_scrapes_every_api_replica(compose: dict[str, Any]) -> None:
    config = load_yaml(PROMETHEUS / "prometheus.yml")
    # relative: works in the container and here; slo_rules.yml is generated (docs/slo.md)
    assert config["rule_files"] == ["alerts.yml", "slo_rules.yml"]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    api = jobs["guarita-api"]  # the job name NoRequests relies on
    assert api.get("metrics_path", "/metrics") == "/metrics"
    (sd,) = api["dns_sd_configs"]
    assert sd["names"] == ["api"] and sd["type"] == "A" and sd["port"] == 8080
    assert "api" in compose["services"]


@needs_promtool
def test_promtool_accepts_the_alert_rules() -> None:
    result = promtool("check", "rules", PROMETHEUS / "alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in result.stdout


@needs_promtool
def test_promtool_accepts_the_prometheus_config() -> None:
    result = promtool("check", "config", PROMETHEUS / "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_alerts_fire_on_bad_series_and_stay_quiet_on_good_ones() -> None:
    """promtool unit tests (tests/deploy/alerts_test.yml) for every alert, both ways."""
    tests = load_yaml(ALERTS_TEST)["tests"]
    firing = {
        case["alertname"]
        for test in tests
        for case in test["alert_rule_test"]
        if case.get("exp_alerts")
    }
    quiet = {
        case["alertname"]
        for test in tests
        for case in test["alert_rule_test"]
        if not case.get("exp_alerts")
    }
    assert firing == quiet == set(ALERTS)
    result = promtool("test", "rules", ALERTS_TEST)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_promtool_test_fails_when_a_threshold_changes(tmp_path: Path) -> None:
    """The unit tests above are sharp: a looser HighErrorRate threshold breaks them."""
    rules = (PROMETHEUS / "alerts.yml").read_text(encoding="utf-8")
    assert "> 0.05" in rules
    (tmp_path / "alerts.yml").write_text(rules.replace("> 0.05", "> 0.5"), encoding="utf-8")
    test = ALERTS_TEST.read_text(encoding="utf-8")
    test = test.replace("../../deploy/prometheus/alerts.yml", str(tmp_path / "alerts.yml"))
    (tmp_path / "alerts_test.yml").write_text(test, encoding="utf-8")
    result = promtool("test", "rules", tmp_path / "alerts_test.yml")
    assert result.returncode != 0
    assert "HighErrorRate" in result.stdout + result.stderr


# -- Grafana -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    data = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


REQUIRED_PANELS = {
    # title: (metric the query must read, a fragment it must contain)
    "Requests per second": ("agent_requests_total", "rate("),
    "p95 latency": ("agent_request_duration_seconds_bucket", "histogram_quantile(0.95"),
    "Error rate": ("agent_requests_total", 'status="error"'),
    "Tokens per hour": ("agent_tokens_used_total", "[1h]"),
    "Cost per hour (USD)": ("agent_cost_usd_total", "[1h]"),
    "Active requests": ("agent_active_requests", "agent_active_requests"),
    # error budgets: the generated rules' series (deploy/prometheus/slo_rules.yml)
    "Error budget remaining": ("guarita:slo_error_budget_remaining:ratio", "agent=~"),
    "Burn rates (page windows)": ("guarita:slo_burn_rate:rate1h", "agent=~"),
    "Quality and consistency: bad share (1h)": ("guarita:slo_error_ratio:rate1h", "quality"),
    "Deploys frozen": ("guarita_deploy_frozen", "max by (agent, slo)"),
    # AI behaviour and drift (docs/observability.md)
    "Answer quality (mean) by prompt version": ("guarita_answer_quality_sum", "prompt_version"),
    "Answer consistency (mean)": ("guarita_answer_consistency_sum", "agent_name"),
    "Drift score": ("guarita_drift_score", "kind"),
    "Drift level": ("guarita_drift_level", "kind"),
}


def test_dashboard_has_the_required_panels(dashboard: dict[str, Any]) -> None:
    panels = {p["title"]: p for p in dashboard["panels"]}
    assert set(REQUIRED_PANELS) <= set(panels)
    for title, (metric, fragment) in REQUIRED_PANELS.items():
        exprs = [t["expr"] for t in panels[title]["targets"]]
        assert any(metric in e and fragment in e for e in exprs), f"{title}: {exprs}"
        assert panels[title]["datasource"]["type"] == "prometheus"
    assert panels["Error rate"]["fieldConfig"]["defaults"]["unit"] == "percentunit"
    assert panels["p95 latency"]["fieldConfig"]["defaults"]["unit"] == "s"
    assert panels["Cost per hour (USD)"]["fieldConfig"]["defaults"]["unit"] == "currencyUSD"


def test_dashboard_layout_is_sound(dashboard: dict[str, Any]) -> None:
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    assert dashboard["uid"] and dashboard["title"]
    cells: set[tuple[int, int]] = set()
    for p in panels:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24, p["title"]
        area = {
            (x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])
        }
        assert not cells & area, f"{p['title']} overlaps another panel"
        cells |= area
        assert [t["refId"] for t in p["targets"]] == sorted({t["refId"] for t in p["targets"]})


@needs_promtool
def test_dashboard_queries_are_valid_promql(dashboard: dict[str, Any], tmp_path: Path) -> None:
    rules = []
    for p in dashboard["panels"]:
        for t in p["targets"]:
            expr = t["expr"].replace("$__rate_interval", "5m").replace("$agent", ".*")
            assert "$" not in expr, expr
            rules.append({"record": f"dashboard:panel{p['id']}:{t['refId']}", "expr": expr})
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = promtool("check", "rules", path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_grafana_provisioning_points_at_prometheus_and_the_dashboards(
    compose: dict[str, Any], dashboard: dict[str, Any]
) -> None:
    sources = load_yaml(GRAFANA / "provisioning" / "datasources" / "prometheus.yml")
    (source,) = sources["datasources"]
    assert source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"
    assert "prometheus" in compose["services"]
    assert any(p.endswith(":9090") for p in compose["services"]["prometheus"]["ports"])
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["current"]["value"] == source["uid"]

    providers = load_yaml(GRAFANA / "provisioning" / "dashboards" / "guarita.yml")["providers"]
    (provider,) = providers
    assert provider["type"] == "file"
    mounts = [v.split(":") for v in compose["services"]["grafana"]["volumes"]]
    dashboards_dir = [target for source_, target, *_ in mounts if source_ == "./grafana/dashboards"]
    assert dashboards_dir == [provider["options"]["path"]]


# -- operations.md -----------------------------------------------------------------------------


def test_operations_doc_covers_deploy_scale_rollout_backup_and_runbooks() -> None:
    text = OPERATIONS.read_text(encoding="utf-8")
    anchors = doc_anchors()
    for anchor in (
        "deploy-with-docker-compose",
        "deploy-on-kubernetes",
        "secrets",
        "migrations-job",
        "first-api-key",
        "scale",
        "roll-out-a-new-version",
        "blue-green",
        "back-up-and-restore-postgresql",
        *(a.lower() for a in ALERTS),
    ):
        assert anchor in anchors, anchor
    for needle in (
        "guarita keys create",
        "pg_dump",
        "pg_restore",
        "kubectl -n guarita rollout undo",
        "--workers",
        "track: green",
        "minReplicas",
    ):
        assert needle in text, needle
    # Every in-page link resolves.
    for link in re.findall(r"\]\(#([^)]+)\)", text):
        assert link in anchors, f"broken link #{link}"


@pytest.mark.parametrize("alert", ALERTS)
def test_each_runbook_says_what_it_means_what_to_check_and_what_to_do(alert: str) -> None:
    text = OPERATIONS.read_text(encoding="utf-8")
    section = text.split(f"### {alert}\n", 1)[1].split("\n### ", 1)[0]
    for part in ("**Means**", "**First checks**", "**Actions**"):
        assert part in section, f"{alert}: no {part}"
    checks = section.split("**First checks**", 1)[1].split("**Actions**", 1)[0]
    assert "/ready" in checks, f"{alert}: first checks do not look at /ready"
    assert re.search(r"`[^`]*\b(?:agent|guarita)_\w+[^`]*`", checks), f"{alert}: no metric query"
    assert "logs" in checks, f"{alert}: no log query"
