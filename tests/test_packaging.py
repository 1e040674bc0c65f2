"""pyproject.toml, environment.yml and the Colab pins describe one environment."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
COLAB = {"jax": "0.7.2", "jaxlib": "0.7.2", "flax": "0.11.2", "optax": "0.2.8"}


def _by_name(specs) -> dict[str, Requirement]:
    reqs = [Requirement(s) for s in specs]
    return {canonicalize_name(r.name): r for r in reqs}


@pytest.fixture(scope="module")
def project() -> dict:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]


@pytest.fixture(scope="module")
def pyproject_deps(project) -> dict[str, Requirement]:
    return _by_name(project["dependencies"] + project["optional-dependencies"]["dev"])


@pytest.fixture(scope="module")
def conda_pip_deps() -> dict[str, Requirement]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_sections = [d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(pip_sections) == 1, "environment.yml should have one pip: section"
    specs = [s for s in pip_sections[0] if not s.startswith("-e")]
    return _by_name(specs)


def test_environment_yml_installs_the_course(project):
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    deps = env["dependencies"]
    assert "pip" in deps
    python = next(d for d in deps if isinstance(d, str) and d.startswith("python"))
    version = Version(python.split("=")[-1])
    assert SpecifierSet(project["requires-python"]).contains(version), (
        f"environment.yml's {python} does not satisfy requires-python {project['requires-python']}"
    )
    pip = next(d["pip"] for d in deps if isinstance(d, dict))
    assert "-e ." in pip, "environment.yml should install course_lib itself (-e .)"


def test_same_packages_both_ways(pyproject_deps, conda_pip_deps):
    only_pyproject = sorted(set(pyproject_deps) - set(conda_pip_deps))
    only_conda = sorted(set(conda_pip_deps) - set(pyproject_deps))
    assert not only_pyproject, f"missing from environment.yml: {only_pyproject}"
    assert not only_conda, f"in environment.yml but not pyproject.toml: {only_conda}"


def test_same_version_bounds(pyproject_deps, conda_pip_deps):
    differ = {
        name: (str(req.specifier), str(conda_pip_deps[name].specifier))
        for name, req in pyproject_deps.items()
        if name in conda_pip_deps and req.specifier != conda_pip_deps[name].specifier
    }
    assert not differ, f"pyproject.toml vs environment.yml bounds differ: {differ}"


def test_every_dependency_has_a_lower_bound(pyproject_deps):
    unbounded = [
        name
        for name, req in pyproject_deps.items()
        if not any(s.operator in (">=", "==", "~=") for s in req.specifier)
    ]
    assert not unbounded, f"give these a lower bound: {unbounded}"


@pytest.mark.parametrize("name", ["jax", "flax", "optax"])
def test_lower_bounds_admit_colab(pyproject_deps, name):
    spec = pyproject_deps[name].specifier
    assert spec.contains(Version(COLAB[name])), f"{name}{spec} excludes Colab's {COLAB[name]}"


def test_colab_constraints_pin_exactly_colabs_versions():
    lines = (ROOT / "tools" / "colab-constraints.txt").read_text().splitlines()
    pins = {}
    for line in lines:
        line = line.split("#")[0].strip()
        if line:
            m = re.fullmatch(r"([A-Za-z0-9_.-]+)==([0-9][0-9A-Za-z.]*)", line)
            assert m, f"not an exact pin: {line!r}"
            pins[canonicalize_name(m.group(1))] = m.group(2)
    assert pins == COLAB


def test_repository_url_is_github(project):
    url = project["urls"]["Repository"]
    assert re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+", url), url
