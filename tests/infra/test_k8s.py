"""The Kubernetes manifests: every overlay renders and validates (what `make k8s-validate` runs),
and the validator catches the mistakes it is there for."""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def validator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("validate_manifests", ROOT / "infra" / "validate_manifests.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def prod(validator: ModuleType) -> list[dict[str, Any]]:
    return list(validator.render(ROOT / "k8s" / "overlays" / "prod-gpu"))


def test_every_overlay_renders_and_validates(validator: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    import sys

    argv, sys.argv = sys.argv, ["validate_manifests.py"]
    try:
        assert validator.main() == 0, capsys.readouterr().out
    finally:
        sys.argv = argv
    assert "k8s manifests valid" in capsys.readouterr().out


def rayservice(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return copy.deepcopy(next(d for d in docs if d["kind"] == "RayService"))


def test_prod_overlay_has_gpu_worker_groups_and_the_generated_serve_config(prod: list[dict[str, Any]]) -> None:
    service = rayservice(prod)
    groups = {g["groupName"]: g for g in service["spec"]["rayClusterConfig"]["workerGroupSpecs"]}
    assert set(groups) == {"slm-gpu", "llm-gpu"}
    for group in groups.values():
        container = group["template"]["spec"]["containers"][0]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
        assert group["template"]["spec"]["nodeSelector"]
    assert service["spec"]["rayClusterConfig"]["enableInTreeAutoscaling"] is True
    serve = yaml.safe_load(service["spec"]["serveConfigV2"])
    deployments = {d["name"]: d for d in serve["applications"][0]["deployments"]}
    assert deployments["pool-small"]["ray_actor_options"]["num_gpus"] == 1
    assert {"router", "pool-small", "pool-large", "threshold-controller", "task-consumer"} == set(deployments)
    kinds = {d["kind"] for d in prod}
    assert {"StatefulSet", "Service", "Deployment", "ConfigMap", "RayService"} <= kinds


def test_validator_catches_mistakes(validator: ModuleType, prod: list[dict[str, Any]]) -> None:
    service = rayservice(prod)
    service["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["replicass"] = 2
    assert any("replicass" in p for p in validator.check_rayservice(service, "1.31.0"))

    service = rayservice(prod)
    service["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["imagee"] = "x"
    assert any("imagee" in p for p in validator.check_rayservice(service, "1.31.0"))

    service = rayservice(prod)
    del service["spec"]["rayClusterConfig"]["workerGroupSpecs"][1]["template"]["spec"]["tolerations"]
    assert any("does not tolerate nvidia.com/gpu" in p for p in validator.check_rayservice(service, "1.31.0"))

    service = rayservice(prod)
    service["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["rayStartParams"]["resources"] = '"{\\"other\\": 1}"'
    assert any("no worker group offers" in p for p in validator.check_rayservice(service, "1.31.0"))

    redis = copy.deepcopy(next(d for d in prod if d["kind"] == "StatefulSet"))
    redis["spec"]["replica"] = 1
    assert validator.check_kubernetes(redis, "1.31.0")
