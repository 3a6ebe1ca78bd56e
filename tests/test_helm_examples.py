"""The Zero to JupyterHub examples are accepted by the real chart's schema, as Helm checks them.

Helm deep-merges the chart's default values with the user's file (maps
merge, lists are replaced, ``null`` removes a key) and validates the result
against ``values.schema.json``.  The chart's schema and defaults are kept in
``tests/data`` (BSD-3-Clause, with the chart's licence).
"""

from __future__ import annotations

import copy
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from traitlets.config import Config

from jupyter_harness import effective_server_policy
from kernel_guard.config import KernelGuard
from kernel_guard.server.policy import assess_kernelspec
from kernel_guard.server.settings import KernelGuardServer

REPO = Path(__file__).resolve().parents[1]
CHART_DATA = Path(__file__).resolve().parent / "data"
EXAMPLES = sorted((REPO / "examples" / "helm").glob("*.yaml"))


def deep_merge(defaults: Any, override: Any) -> Any:
    """Helm's coalescing of values: maps merge, everything else replaces, null deletes."""
    if not isinstance(defaults, dict) or not isinstance(override, dict):
        return copy.deepcopy(override)
    merged = copy.deepcopy(defaults)
    for key, value in override.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = deep_merge(merged.get(key), value)
    return merged


def load_yaml(path: Path) -> Any:
    with open(path, encoding="utf-8") as fh:
        return yaml.safe_load(fh)


@pytest.fixture(scope="module")
def chart() -> tuple[dict, Any]:
    """The chart's default values and a validator for its schema."""
    schema_path, values_path = CHART_DATA / "z2jh-values.schema.yaml", CHART_DATA / "z2jh-values.yaml"
    assert schema_path.exists() and values_path.exists(), f"chart schema and values expected in {CHART_DATA}"
    schema = load_yaml(schema_path)
    validator_cls = jsonschema.validators.validator_for(schema)
    validator_cls.check_schema(schema)
    return load_yaml(values_path), validator_cls(schema)


def test_both_routes_have_an_example() -> None:
    """The ConfigMap route and the image route each have a values file."""
    assert {p.name for p in EXAMPLES} >= {"configmap-values.yaml", "image-values.yaml"}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_validates_against_the_chart_schema(chart: tuple[dict, Any], path: Path) -> None:
    """Chart defaults merged with the example satisfy the chart's JSON schema."""
    defaults, validator = chart
    merged = deep_merge(defaults, load_yaml(path))
    errors = sorted(validator.iter_errors(merged), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)


def test_schema_check_rejects_what_the_chart_does_not_know(chart: tuple[dict, Any]) -> None:
    """The check has teeth: the seed recipe's singleuser.extraContainerConfig is not a chart value."""
    defaults, validator = chart
    merged = deep_merge(defaults, {"singleuser": {"extraContainerConfig": {"securityContext": {}}}})
    assert any("extraContainerConfig" in e.message for e in validator.iter_errors(merged))


def _extra_file(values: dict, key: str) -> dict:
    return values["singleuser"]["extraFiles"][key]


def test_configmap_route_mounts_trusted_settings() -> None:
    """The mounted ipython_kernel_config.py runs and sets valid KernelGuard settings; it loads nothing
    itself (the launcher kernelspec does, on its command line)."""
    values = load_yaml(REPO / "examples" / "helm" / "configmap-values.yaml")
    entry = _extra_file(values, "kernel-guard-ipython")
    assert entry["mountPath"] == "/etc/ipython/ipython_kernel_config.py"
    config = Config()
    exec(compile(entry["stringData"], entry["mountPath"], "exec"), {"get_config": lambda: config})
    assert config.InteractiveShellApp.reraise_ipython_extension_failures is True
    guard = KernelGuard(config=config)
    assert guard.mode == "enforce" and guard.sinks == ["stderr://"]


def test_configmap_route_kernelspec_is_the_launcher_and_the_only_one_allowed() -> None:
    """The mounted kernelspec runs the launcher (the OS layers, as in the image route), and the mounted
    server config allows it alone and starts it by default."""
    values = load_yaml(REPO / "examples" / "helm" / "configmap-values.yaml")
    spec = _extra_file(values, "kernel-guard-kernelspec")["data"]
    server = _extra_file(values, "kernel-guard-server")["data"]
    assert spec["argv"][1:5] == ["-I", "-m", "kernel_guard.launch", "--profile"]
    assert server["ServerApp"]["jpserver_extensions"] == {"kernel_guard.server": True}
    assert server["ServerApp"]["terminals_enabled"] is False
    assert "debug_request" not in server["MappingKernelManager"]["allowed_message_types"]
    assert server["MappingKernelManager"]["cull_idle_timeout"] > 0
    settings = KernelGuardServer(config=Config(server))
    verdict = assess_kernelspec("python3-guarded", spec["argv"], {}, None, settings.allowed_kernelspecs,
                                require_protected=False)
    assert verdict.allowed and verdict.guarded
    assert server["KernelGuardServer"]["allowed_kernelspecs"] == ["python3-guarded"]
    assert values["hub"]["config"]["KubeSpawner"]["disable_user_config"] is True


def test_image_route_has_the_seed_recipe_security_context() -> None:
    """Non-root, no privilege escalation, all capabilities dropped and RuntimeDefault seccomp, pod and container."""
    values = load_yaml(REPO / "examples" / "helm" / "image-values.yaml")
    single = values["singleuser"]
    assert single["allowPrivilegeEscalation"] is False and single["uid"] != 0
    pod = single["extraPodConfig"]["securityContext"]
    assert pod["runAsNonRoot"] is True and pod["seccompProfile"] == {"type": "RuntimeDefault"}
    container = values["hub"]["config"]["KubeSpawner"]["container_security_context"]
    assert container["allowPrivilegeEscalation"] is False
    assert container["capabilities"]["drop"] == ["ALL"]
    assert container["seccompProfile"] == {"type": "RuntimeDefault"} and container["runAsNonRoot"] is True


def test_image_route_ships_events_through_a_sidecar_reading_the_sink_file() -> None:
    """KERNEL_GUARD_SINKS writes into the volume that the Fluent Bit sidecar tails."""
    values = load_yaml(REPO / "examples" / "helm" / "image-values.yaml")
    single = values["singleuser"]
    sink = single["extraEnv"]["KERNEL_GUARD_SINKS"]
    assert KernelGuard(sinks=[sink]).sinks == [sink]
    path = sink[len("file://"):]
    (mount,) = single["storage"]["extraVolumeMounts"]
    assert path.startswith(mount["mountPath"] + "/")
    (sidecar,) = single["extraContainers"]
    assert sidecar["image"].startswith("fluent/fluent-bit")
    assert f"path={path}" in sidecar["args"]
    assert {m["name"] for m in sidecar["volumeMounts"]} == {mount["name"]}
    assert sidecar["securityContext"]["allowPrivilegeEscalation"] is False
    json.dumps(values)  # plain data: nothing YAML-only that Helm would render differently


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_the_server_never_reads_the_user_site(example: Path) -> None:
    """The single-user server is not isolated like the guarded kernels: both routes set PYTHONNOUSERSITE."""
    values = load_yaml(example)
    assert values["singleuser"]["extraEnv"].get("PYTHONNOUSERSITE") == "1"


@pytest.mark.parametrize("example", ["configmap-values.yaml", "image-values.yaml"])
def test_the_servers_start_folders_are_outside_the_home(example: str) -> None:
    """Config and data folders the server reads at start are root-owned image folders; only data
    (runtime files, JupyterLab settings and workspaces) stays in the home, which kernels can write."""
    env = load_yaml(REPO / "examples" / "helm" / example)["singleuser"]["extraEnv"]
    home = "/home/jovyan/"
    for variable in ("JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR"):
        assert env[variable].startswith(("/usr/local/", "/etc/")), (variable, env.get(variable))
    for variable in ("JUPYTER_RUNTIME_DIR", "JUPYTERLAB_SETTINGS_DIR", "JUPYTERLAB_WORKSPACES_DIR"):
        assert env[variable].startswith(home), (variable, env.get(variable))
    assert env["PYTHONNOUSERSITE"] == "1"


def mount_extra_files(values: dict, root: Path) -> None:
    """Write each singleuser.extraFiles entry where the chart mounts it, under ``root``."""
    for entry in values["singleuser"]["extraFiles"].values():
        target = root / entry["mountPath"].lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(entry["stringData"] if "stringData" in entry else json.dumps(entry["data"]))


def test_configmap_route_server_applies_the_mounted_policy(tmp_path: Path) -> None:
    """A server with the pod's environment and the mounted files really applies the policy: terminals
    off, culling on, no debug_request, downloads recorded, the guarded kernelspec by default."""
    values = load_yaml(REPO / "examples" / "helm" / "configmap-values.yaml")
    mount_extra_files(values, tmp_path)
    env = {name: str(value) for name, value in values["singleuser"]["extraEnv"].items()}
    env.update(PATH=os.environ["PATH"], HOME=str(tmp_path / "home"), JUPYTER_DATA_DIR=str(tmp_path / "data"),
               JUPYTER_CONFIG_DIR=str(tmp_path) + env["JUPYTER_CONFIG_DIR"])
    for name in ("JUPYTER_RUNTIME_DIR", "JUPYTERLAB_SETTINGS_DIR", "JUPYTERLAB_WORKSPACES_DIR"):
        env.pop(name)
    policy = effective_server_policy(sys.executable, env, str(tmp_path))
    assert env["JUPYTER_CONFIG_DIR"] + "/jupyter_server_config.json" in policy["config_files"]
    assert policy["kernel_guard.server"] and policy["terminals_enabled"] is False
    assert policy["cull_idle_timeout"] == 3600 and policy["cull_connected"] is False
    assert policy["allowed_message_types"] and "debug_request" not in policy["allowed_message_types"]
    assert policy["downloads"] == "record" and policy["default_kernel_name"] == "python3-guarded"


def test_image_route_reads_config_where_the_image_put_its_policy() -> None:
    """The pod's JUPYTER_CONFIG_DIR is the folder the Dockerfile copies the server policy into, as the
    jupyter_server_config.json the server reads (tests/test_docker_example.py runs that server)."""
    env = load_yaml(REPO / "examples" / "helm" / "image-values.yaml")["singleuser"]["extraEnv"]
    dockerfile = (REPO / "examples" / "docker" / "Dockerfile").read_text()
    (dest,) = re.findall(r"^COPY examples/docker/kernel_guard_server.json (\S+)$", dockerfile, re.M)
    assert dest == env["JUPYTER_CONFIG_DIR"] + "/jupyter_server_config.json"
