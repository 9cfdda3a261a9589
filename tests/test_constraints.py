"""constraints.txt (the versions the suite passed with) and the pins on what we lean on."""

from __future__ import annotations

import importlib.util
import os
import tomllib
from importlib.metadata import version
from types import ModuleType

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from mlops_iac.images.wheels import BATCH_RUNTIME, RUNTIME

from .conftest import ROOT

# Dependencies whose internals we subclass or whose output we parse: held to the tested minor.
LEANED_ON = {"uvicorn": "serving/http11.py subclasses its httptools protocol and its response cycle"}


def constraints() -> dict[str, str]:
    lines = (ROOT / "constraints.txt").read_text().splitlines()
    pins = (line.split("==") for line in lines if line and not line.startswith("#"))
    return {canonicalize_name(name): ver for name, ver in pins}


def requirement(name: str) -> Requirement:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    (found,) = [r for r in map(Requirement, project["dependencies"]) if canonicalize_name(r.name) == name]
    return found


def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("constraints_script", ROOT / "scripts" / "constraints.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", sorted(LEANED_ON))
def test_a_dependency_whose_internals_we_use_stays_in_its_tested_minor(name: str) -> None:
    specifier = requirement(name).specifier
    upper = [Version(s.version) for s in specifier if s.operator == "<"]
    lower = [Version(s.version) for s in specifier if s.operator == ">="]
    assert upper and lower, f"pyproject.toml: {name}{specifier} needs a tested range (>=, <): {LEANED_ON[name]}"
    assert (lower[0].major, lower[0].minor + 1) == (upper[0].major, upper[0].minor), (
        f"pyproject.toml: {name}{specifier} spans more than the one minor tested"
    )
    for where, found in (("installed", version(name)), ("constraints.txt", constraints()[name])):
        assert specifier.contains(found, prereleases=True), (
            f"{name} {found} ({where}) is outside the tested range {specifier}: {LEANED_ON[name]}; "
            "run the serving tests on it, then move the range in pyproject.toml"
        )


def test_the_images_runtime_is_pinned_by_the_constraints() -> None:
    """An image takes the versions installed here (images/wheels.py): scripts/test.sh installs
    them from constraints.txt, so every package an image installs must be pinned there."""
    missing = {canonicalize_name(n) for n in (*RUNTIME, *BATCH_RUNTIME, "onnxruntime")} - set(constraints())
    assert not missing, f"constraints.txt pins no version of {sorted(missing)}: run python3 scripts/constraints.py"


def test_the_constraints_are_what_this_environment_has() -> None:
    """Stale constraints (a dependency added, a version moved) show up here with the package
    named, not as a surprise on a fresh machine."""
    if os.environ.get("CI_NEWEST") == "1":
        pytest.skip("CI_NEWEST=1 installs the newest versions allowed, not constraints.txt's")
    module = generator()
    here = {name: Version(v).public for name, v in module.installed("mlops-iac", frozenset(module.EXTRAS)).items()}
    pinned = constraints()
    names = sorted(pinned.keys() | here.keys())
    differ = {n: (pinned.get(n), here.get(n)) for n in names if pinned.get(n) != here.get(n)}
    assert not differ, (
        f"constraints.txt against this environment, as {{package: (pinned, installed)}}: {differ}; "
        "install with scripts/test.sh, or regenerate with python3 scripts/constraints.py"
    )


def test_the_constraints_file_is_the_generators_output() -> None:
    text = (ROOT / "constraints.txt").read_text()
    assert text.startswith(generator().HEADER)
    names = list(constraints())
    assert names == sorted(names) and len(names) == len(set(names))
