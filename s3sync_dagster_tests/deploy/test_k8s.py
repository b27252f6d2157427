"""deploy/k8s on paper: the Helm values, the Chroma manifest, the source config's ConfigMap and the user code
image's Dockerfile, checked as far as can be without a cluster, a registry, Docker or Helm.

Each file is parsed and its parts checked against each other and against the project (the module the code
server serves, the run tag the queue limits, the instance settings of the root dagster.yaml, the source
config through the project's own parser). With DAGSTER_HELM_CHART pointing at a copy of Dagster's chart
(the folder holding its Chart.yaml and values.schema.json), the values are also validated against the chart's
schemas after merging them onto its defaults as Helm does (Kubernetes' own types too with
KUBERNETES_DEFINITIONS), and, where Helm's library for Python (helm-python-sdk) is importable, Helm renders the
chart and the rendered instance and code server are checked.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.version import Version

from s3sync_dagster.config import CREDENTIAL_SHAPE, parse_config
from s3sync_dagster.defs.tags import SOURCE_TAG

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
KNOWN_KINDS = {
    ("v1", "ConfigMap"),
    ("v1", "Service"),
    ("apps/v1", "StatefulSet"),
    ("networking.k8s.io/v1", "NetworkPolicy"),
}
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
SECRET_WORDS = re.compile(r"password|secret|token|api_?key|access_?key", re.IGNORECASE)


def documents(name: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all((K8S / name).read_text(encoding="utf-8")) if doc is not None]


def manifests() -> list[dict[str, Any]]:
    return [doc for path in sorted(K8S.glob("*.yaml")) if path.name != "values.yaml" for doc in documents(path.name)]


def one(kind: str) -> dict[str, Any]:
    found = [doc for doc in manifests() if doc["kind"] == kind]
    assert len(found) == 1, f"expected one {kind} in deploy/k8s, found {len(found)}"
    return found[0]


def values() -> dict[str, Any]:
    (doc,) = documents("values.yaml")
    return doc


def user_deployment() -> dict[str, Any]:
    (deployment,) = values()["dagster-user-deployments"]["deployments"]
    return deployment


def source_config_text() -> tuple[str, str]:
    """The ConfigMap's key and the source config it holds."""
    (key, text), *rest = one("ConfigMap")["data"].items()
    assert not rest, "the ConfigMap holds one file, the source config"
    return key, text


def env_refs(node: Any) -> Iterator[str]:
    """Every variable the source config names as {env: VAR}."""
    if isinstance(node, dict):
        if set(node) == {"env"} and isinstance(node["env"], str):
            yield node["env"]
        for value in node.values():
            yield from env_refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from env_refs(value)


def literal_secrets(node: Any, path: str = "") -> list[str]:
    """Where a value looks like a secret written out: a credential's shape, a non-empty string under a
    password/secret/token key (a `...Name` key names a Secret, which is fine), or an env var of such a name
    given a `value` instead of `valueFrom`."""
    found: list[str] = []
    if isinstance(node, dict):
        if isinstance(node.get("name"), str) and SECRET_WORDS.search(node["name"]) and "value" in node:
            found.append(f"{path}: env {node['name']} has a literal value")
        for key, value in node.items():
            where = f"{path}.{key}" if path else str(key)
            key_says_secret = SECRET_WORDS.search(str(key)) and not str(key).lower().endswith("name")
            if key_says_secret and isinstance(value, str) and value:
                found.append(f"{where}: literal")
            found.extend(literal_secrets(value, where))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found.extend(literal_secrets(value, f"{path}[{index}]"))
    elif isinstance(node, str) and re.search(CREDENTIAL_SHAPE, node):
        found.append(f"{path}: looks like a credential")
    return found


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of deploy/k8s/Dockerfile, continuation lines joined, comments dropped."""
    joined: list[str] = []
    pending = ""
    for line in (K8S / "Dockerfile").read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        joined.append(pending + line)
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued line"
    return [(text.split(None, 1)[0].upper(), text.split(None, 1)[1].strip()) for text in joined]


def dockerfile_args() -> dict[str, str]:
    return dict(arg.split("=", 1) for name, arg in dockerfile_instructions() if name == "ARG" and "=" in arg)


def project_requirement(name: str) -> Requirement:
    """`name`'s requirement in pyproject.toml: the runtime's, or an extra's (torch is the [torch] extra's)."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    texts = [*project["dependencies"], *(text for extra in project["optional-dependencies"].values() for text in extra)]
    (requirement,) = [Requirement(text) for text in texts if Requirement(text).name == name]
    return requirement


# The checks' own checks: each rule finds what it is for.


def test_the_literal_secret_rule_finds_what_it_is_for() -> None:
    planted = {
        "postgresql": {"postgresqlPassword": "hunter2", "postgresqlUsername": "dagster"},
        "global": {"postgresqlSecretName": "s3sync-postgresql"},
        "env": [
            {"name": "AWS_SECRET_ACCESS_KEY", "value": "x"},
            {"name": "AWS_ACCESS_KEY_ID", "valueFrom": {"secretKeyRef": {"name": "s3sync-aws", "key": "k"}}},
        ],
        "note": "AKIA" + "ABCDEFGHIJKLMNOP",
    }
    assert literal_secrets(planted) == [
        "postgresql.postgresqlPassword: literal",
        "env[0]: env AWS_SECRET_ACCESS_KEY has a literal value",
        "note: looks like a credential",
    ]


def test_env_refs_finds_every_variable() -> None:
    raw = {"chroma": {"headers": {"Authorization": {"env": "T"}}}, "sources": [{"aws_access_key_id": {"env": "K"}}]}
    assert sorted(env_refs(raw)) == ["K", "T"]


# The manifests.


def test_every_manifest_is_a_known_kind_with_a_valid_name() -> None:
    found = manifests()
    assert {doc["kind"] for doc in found} == {kind for _, kind in KNOWN_KINDS}
    for doc in found:
        assert (doc["apiVersion"], doc["kind"]) in KNOWN_KINDS, f"{doc['kind']}: apiVersion {doc['apiVersion']}"
        assert DNS_LABEL.match(doc["metadata"]["name"]), f"{doc['kind']} name {doc['metadata']['name']!r}"
        assert "namespace" not in doc["metadata"], "manifests take the release's namespace from kubectl -n"


def test_no_literal_secret_in_any_file() -> None:
    _, config_text = source_config_text()
    found = literal_secrets(values(), "values.yaml")
    for doc in manifests():
        found += literal_secrets(doc, f"{doc['kind']}/{doc['metadata']['name']}")
    found += literal_secrets(yaml.safe_load(config_text), "s3sync.yaml")
    assert found == []


def test_chroma_service_statefulset_and_policy_fit_together() -> None:
    service, statefulset, policy = one("Service"), one("StatefulSet"), one("NetworkPolicy")
    pod = statefulset["spec"]["template"]
    pod_labels = pod["metadata"]["labels"]
    (container,) = pod["spec"]["containers"]
    port_names = {port["name"]: port["containerPort"] for port in container["ports"]}

    assert statefulset["spec"]["serviceName"] == service["metadata"]["name"]
    assert statefulset["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert service["spec"]["selector"].items() <= pod_labels.items()
    for port in service["spec"]["ports"]:
        assert port["targetPort"] in port_names, f"Service port {port['port']} targets no container port"
    claims = {claim["metadata"]["name"] for claim in statefulset["spec"]["volumeClaimTemplates"]}
    volumes = {volume["name"] for volume in pod["spec"].get("volumes", [])}
    for mount in container["volumeMounts"]:
        assert mount["name"] in claims | volumes, f"volume mount {mount['name']} has no volume"

    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    client_labels = user_deployment()["labels"]
    (rule,) = policy["spec"]["ingress"]
    assert any(peer["podSelector"]["matchLabels"].items() <= client_labels.items() for peer in rule["from"]), (
        "the NetworkPolicy must admit the code server and its run pods (their labels in values.yaml)"
    )
    assert {port["port"] for port in rule["ports"]} <= set(port_names) | set(port_names.values())


def test_chroma_image_matches_the_client_the_project_pins() -> None:
    (container,) = one("StatefulSet")["spec"]["template"]["spec"]["containers"]
    repository, tag = container["image"].rsplit(":", 1)
    assert repository.endswith("chromadb/chroma")
    assert project_requirement("chromadb").specifier.contains(Version(tag)), (
        f"Chroma's image {tag} is not the chromadb version pyproject.toml pins "
        f"({project_requirement('chromadb').specifier}): client and server must speak the same API"
    )


def test_source_config_parses_and_points_at_the_chroma_service() -> None:
    key, text = source_config_text()
    config = parse_config(yaml.safe_load(text), f"deploy/k8s/s3sync-config.yaml:{key}")
    service = one("Service")
    assert not config.chroma.is_embedded, "pods share no disk: the config must name a Chroma server"
    assert config.chroma.host == service["metadata"]["name"]
    assert config.chroma.port in {port["port"] for port in service["spec"]["ports"]}
    assert config.sources, "the example config has a source"


# The Helm values.


def test_code_server_serves_the_definitions_with_the_mounted_config() -> None:
    deployment = user_deployment()
    assert deployment["dagsterApiGrpcArgs"][:1] == ["-m"]
    module = deployment["dagsterApiGrpcArgs"][1]
    assert module == "s3sync_dagster.definitions" and importlib.util.find_spec(module) is not None
    assert deployment["includeConfigInLaunchedRuns"]["enabled"], "run pods need the same env and volumes"

    env = {item["name"]: item for item in deployment["env"]}
    config_path = Path(env["S3SYNC_CONFIG"]["value"])
    (mount,) = [m for m in deployment["volumeMounts"] if Path(m["mountPath"]) == config_path.parent]
    (volume,) = [v for v in deployment["volumes"] if v["name"] == mount["name"]]
    config_map = one("ConfigMap")
    key, _ = source_config_text()
    assert volume["configMap"]["name"] == config_map["metadata"]["name"]
    assert config_path.name == key, f"S3SYNC_CONFIG names {config_path.name}, the ConfigMap holds {key}"


def test_code_server_loads_the_definitions_from_the_configmaps_config(tmp_path: Path) -> None:
    """What the code server's pod does first, in a process of its own: build the definitions from the
    ConfigMap's file with the secrets absent (they are read when a run or tick needs them)."""
    key, text = source_config_text()
    (tmp_path / key).write_text(text, encoding="utf-8")
    (tmp_path / "home").mkdir()
    module = user_deployment()["dagsterApiGrpcArgs"][1]
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "DAGSTER_HOME": str(tmp_path / "home"),
        "S3SYNC_CONFIG": str(tmp_path / key),
        "PYTHONPATH": str(REPO),
    }
    dagster = Path(sys.executable).parent / "dagster"
    done = subprocess.run(
        [str(dagster), "definitions", "validate", "-m", module],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_variable_the_config_names_comes_from_a_secret() -> None:
    _, text = source_config_text()
    env = {item["name"]: item for item in user_deployment()["env"]}
    for name in env_refs(yaml.safe_load(text)):
        assert name in env, f"the source config names {name}, which values.yaml does not set"
        assert "secretKeyRef" in env[name].get("valueFrom", {}), f"{name} must come from a Secret"


def test_runs_are_pods_sized_for_documents_and_cleaned_up() -> None:
    run_launcher = values()["runLauncher"]
    assert run_launcher["type"] == "K8sRunLauncher"
    launcher = run_launcher["config"]["k8sRunLauncher"]
    assert launcher["resources"]["requests"]["memory"] and launcher["resources"]["limits"]["memory"]
    assert launcher["runK8sConfig"]["jobSpecConfig"]["ttlSecondsAfterFinished"] > 0
    # The chart passes a user deployment's resources on to its run pods, over the launcher's.
    assert "resources" not in user_deployment()


def test_postgres_is_external_and_its_password_a_secret() -> None:
    doc = values()
    assert doc["postgresql"]["enabled"] is False and doc["postgresql"]["postgresqlHost"]
    assert doc["generatePostgresqlPasswordSecret"] is False
    assert doc["postgresql"]["postgresqlPassword"] == ""
    assert doc["global"]["postgresqlSecretName"]


def test_run_queue_limits_runs_per_source() -> None:
    coordinator = values()["dagsterDaemon"]["runCoordinator"]
    assert coordinator["enabled"] and coordinator["type"] == "QueuedRunCoordinator"
    queued = coordinator["config"]["queuedRunCoordinator"]
    (limit,) = [limit for limit in queued["tagConcurrencyLimits"] if limit["key"] == SOURCE_TAG]
    assert limit["value"] == {"applyLimitPerUniqueValue": True}, "the limit counts each source on its own"
    assert 1 <= limit["limit"] <= queued["maxConcurrentRuns"]


def test_daemon_settings_are_the_root_instance_settings() -> None:
    root = yaml.safe_load((REPO / "dagster.yaml").read_text(encoding="utf-8"))
    daemon = values()["dagsterDaemon"]
    assert daemon["enabled"] and daemon["sensors"]["useThreads"]
    assert daemon["runRetries"] == {
        "enabled": root["run_retries"]["enabled"],
        "maxRetries": root["run_retries"]["max_retries"],
        "retryOnAssetOrOpFailure": root["run_retries"]["retry_on_asset_or_op_failure"],
    }
    monitoring = daemon["runMonitoring"]
    assert monitoring["enabled"] == root["run_monitoring"]["enabled"]
    assert monitoring["startTimeoutSeconds"] == root["run_monitoring"]["start_timeout_seconds"]
    assert monitoring["pollIntervalSeconds"] == root["run_monitoring"]["poll_interval_seconds"]
    assert monitoring["maxResumeRunAttempts"] == root["run_monitoring"]["max_resume_run_attempts"]
    queued = daemon["runCoordinator"]["config"]["queuedRunCoordinator"]
    assert queued["dequeueIntervalSeconds"] == root["run_queue"]["dequeue_interval_seconds"]
    retention = values()["retention"]
    assert retention["schedule"]["purgeAfterDays"] == root["retention"]["schedule"]["purge_after_days"]
    assert retention["sensor"]["purgeAfterDays"] == root["retention"]["sensor"]["purge_after_days"]
    assert values()["telemetry"]["enabled"] == root["telemetry"]["enabled"]


def test_dagster_versions_agree_across_images() -> None:
    args = dockerfile_args()
    dagster = Version(args["DAGSTER_VERSION"])
    assert project_requirement("dagster").specifier.contains(dagster)
    # Dagster's libraries are numbered 0.(minor + 16).patch beside dagster 1.minor.patch.
    assert args["DAGSTER_LIBS_VERSION"] == f"0.{dagster.minor + 16}.{dagster.micro}"
    doc = values()
    assert doc["dagsterWebserver"]["image"]["tag"] == str(dagster)
    assert doc["dagsterDaemon"]["image"]["tag"] == str(dagster)
    assert project_requirement("torch").specifier.contains(Version(args["TORCH_VERSION"]))


# The Dockerfile.


def test_dockerfile_copies_what_exists_and_runs_modules_that_exist() -> None:
    instructions = dockerfile_instructions()
    assert instructions[0][0] == "FROM" and instructions[0][1].startswith("python:3.11-")
    ignore = [line for line in (K8S / "Dockerfile.dockerignore").read_text().splitlines() if line.strip()]
    ignore = [line for line in ignore if not line.startswith("#")]
    copied: set[str] = set()
    for name, arguments in instructions:
        if name != "COPY":
            continue
        *sources, _ = shlex.split(arguments)
        for source in sources:
            assert (REPO / source).exists(), f"COPY {source}: no such file in the repository"
            kept = False
            for pattern in ignore:  # .dockerignore: the last matching line decides
                if fnmatch(source, pattern.lstrip("!").rstrip("/")):
                    kept = pattern.startswith("!")
            assert kept, f"COPY {source}: excluded by Dockerfile.dockerignore"
            copied.add(source)
    readme = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["readme"]
    assert {"pyproject.toml", readme, "s3sync_dagster"} <= copied, "`pip install .` needs these"

    commands = " ".join(arguments for name, arguments in instructions if name in ("RUN", "CMD"))
    modules = re.findall(r"(?:python -m|\"-m\",)\s*\"?([\w.]+)", commands)
    assert "s3sync_dagster.pipeline.embedding.default_model" in modules, (
        "the image makes Chroma's default model at build time"
    )
    for module in modules:
        assert importlib.util.find_spec(module) is not None, f"the Dockerfile runs {module}, which does not exist"
    grpc_args = user_deployment()["dagsterApiGrpcArgs"]
    assert grpc_args[1] in modules, "the image's CMD serves the module values.yaml serves"


# Against the chart itself, when a copy of it is at hand (README, "Kubernetes").


def helm_merge(defaults: Any, override: Any) -> Any:
    """Values as Helm coalesces them: maps merge key by key, anything else is replaced, null deletes."""
    if not (isinstance(defaults, dict) and isinstance(override, dict)):
        return override
    merged = dict(defaults)
    for key, value in override.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = helm_merge(defaults.get(key), value)
    return merged


def without_remote_refs(node: Any) -> Any:
    if isinstance(node, dict):
        return {
            key: without_remote_refs(value)
            for key, value in node.items()
            if not (key == "$ref" and str(value).startswith("http"))
        }
    if isinstance(node, list):
        return [without_remote_refs(value) for value in node]
    return node


def offline_schema(schema: dict[str, Any], kubernetes_definitions: Path | None) -> tuple[dict[str, Any], Any]:
    """The chart's schema and a registry for its remote `$ref`s to Kubernetes' definitions (a URL Helm
    fetches): served from a local `_definitions.json` when given, else those refs are dropped (what each
    such type then checks is only what the chart's own schema says of it)."""
    import json

    from referencing import Registry, Resource

    remote = sorted({ref.split("#")[0] for ref in re.findall(r'"\$ref": "(http[^"]+)"', json.dumps(schema))})
    if kubernetes_definitions is None:
        return without_remote_refs(schema), Registry()
    definitions = json.loads(kubernetes_definitions.read_text(encoding="utf-8"))["$defs"]
    # The chart points at `#/definitions/NAME`; these files keep the same names under `$defs`.
    document = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "definitions": definitions,
        "$defs": definitions,
    }
    registry: Registry = Registry().with_resources((url, Resource.from_contents(document)) for url in remote)
    return schema, registry


@pytest.mark.skipif(not os.environ.get("DAGSTER_HELM_CHART"), reason="DAGSTER_HELM_CHART is not set")
def test_values_validate_against_the_charts_schemas() -> None:
    import json

    import jsonschema

    chart = Path(os.environ["DAGSTER_HELM_CHART"])
    definitions = os.environ.get("KUBERNETES_DEFINITIONS")
    ours = values()
    subchart = chart / "charts" / "dagster-user-deployments"
    pairs = [
        (chart, ours),
        (subchart, {**ours["dagster-user-deployments"], "global": ours.get("global", {})}),
    ]
    for folder, override in pairs:
        schema, registry = offline_schema(
            json.loads((folder / "values.schema.json").read_text(encoding="utf-8")),
            Path(definitions) if definitions else None,
        )
        defaults = yaml.safe_load((folder / "values.yaml").read_text(encoding="utf-8"))
        validator = jsonschema.validators.validator_for(schema)(schema, registry=registry)
        errors = [
            f"{'.'.join(map(str, error.absolute_path))}: {error.message}"
            for error in validator.iter_errors(helm_merge(defaults, override))
        ]
        assert errors == [], f"{folder}: values rejected by the chart's schema"


@pytest.mark.skipif(
    not os.environ.get("DAGSTER_HELM_CHART") or importlib.util.find_spec("helm_python") is None,
    reason="needs DAGSTER_HELM_CHART and Helm's library for Python (helm-python-sdk)",
)
def test_chart_renders_the_instance_and_code_server_we_mean(tmp_path: Path) -> None:
    """Helm itself (its Go library, offline) renders the chart with these values: the instance's dagster.yaml
    and the code server's Deployment say what values.yaml means them to."""
    import json
    import shutil

    from helm_python import Chart

    # Helm fetches the schemas' remote `$ref`s; offline, a copy of the chart without them renders instead.
    chart = shutil.copytree(os.environ["DAGSTER_HELM_CHART"], tmp_path / "dagster")
    for schema_path in chart.glob("**/values.schema.json"):
        schema_path.write_text(json.dumps(without_remote_refs(json.loads(schema_path.read_text()))))
    with Chart.load(str(chart)) as loaded:
        rendered = loaded.render(values=values(), name="s3sync", namespace="s3sync", is_install=True)
    objects = [
        doc
        for path, text in rendered.items()
        if path.endswith(".yaml")
        for doc in yaml.safe_load_all(text)
        if doc is not None
    ]

    (instance_map,) = [
        doc for doc in objects if doc["kind"] == "ConfigMap" and doc["metadata"]["name"].endswith("-instance")
    ]
    instance = yaml.safe_load(instance_map["data"]["dagster.yaml"])
    assert instance["run_launcher"]["class"] == "K8sRunLauncher"
    assert instance["run_storage"]["class"] == "PostgresRunStorage"
    assert instance["run_storage"]["config"]["postgres_db"]["password"] == {"env": "DAGSTER_PG_PASSWORD"}
    coordinator = instance["run_coordinator"]["config"]
    assert coordinator["tag_concurrency_limits"][0]["key"] == SOURCE_TAG
    root = yaml.safe_load((REPO / "dagster.yaml").read_text(encoding="utf-8"))
    assert instance["run_retries"] == root["run_retries"]

    (code_server,) = [
        doc for doc in objects if doc["kind"] == "Deployment" and "user-deployments" in doc["metadata"]["name"]
    ]
    (container,) = code_server["spec"]["template"]["spec"]["containers"]
    assert container["args"][-2:] == user_deployment()["dagsterApiGrpcArgs"]
    env = {item["name"]: item for item in container["env"]}
    run_context = json.loads(env["DAGSTER_CLI_API_GRPC_CONTAINER_CONTEXT"]["value"])["k8s"]
    assert {item["name"] for item in run_context["env"]} >= {
        "S3SYNC_CONFIG",
        *env_refs(yaml.safe_load(source_config_text()[1])),
    }
    assert run_context["labels"] == user_deployment()["labels"], "run pods must pass Chroma's NetworkPolicy"
