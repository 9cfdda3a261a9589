"""Property: any YAML document validates or yields ConfigErrors, never another exception."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlops_iac.errors import ConfigError
from mlops_iac.loader import load_text
from mlops_iac.resolve import load

from .conftest import QUICKSTART

VALID = yaml.safe_load((QUICKSTART / "mlops.yaml").read_text())
WORDS = [
    "apiVersion",
    "project",
    "name",
    "models",
    "framework",
    "source",
    "targets",
    "kind",
    "local",
    "docker",
    "kubernetes",
    "deployments",
    "model",
    "version",
    "versions",
    "alias",
    "traffic",
    "hardware",
    "cpu",
    "memory",
    "gpu",
    "replicas",
    "min",
    "max",
    "auto",
    "monitoring",
    "registry",
    "backend",
    "oci",
    "sklearn",
    "iris",
    "1",
    "500m",
    "1Gi",
]
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True),
    st.sampled_from(WORDS),
    st.text(max_size=12),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(WORDS), st.integers(0, 5)), inner, max_size=4),
    ),
    max_leaves=20,
)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            out += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out += _paths(value, (*prefix, i))
    return out


def _set(doc: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = value
    return doc


def _check(text: str, folder: Path) -> None:
    file = folder / "mlops.yaml"
    file.write_text(text)
    try:
        load(file)
    except ConfigError as exc:
        assert exc.problems
        for problem in exc.problems:
            assert problem.line >= 1 and problem.column >= 1
            assert str(problem).startswith(str(file))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_valid_file_never_raises_anything_else(data: st.DataObject, project: Path) -> None:
    doc = copy.deepcopy(VALID)
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(_paths(doc)))
        doc = _set(doc, path, data.draw(values))
    _check(yaml.safe_dump(doc), project)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(alphabet=st.sampled_from(list("abc:- \n\t[]{}&*!|>'\"#%@`,?1.")), max_size=80))
def test_arbitrary_text_never_raises_anything_else(text: str, project: Path) -> None:
    _check(text, project)


def test_billion_laughs_is_refused() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 8)]
    try:
        load_text("\n".join(lines) + "\n", "bomb.yaml")
    except ConfigError as exc:
        assert "more than" in str(exc)
    else:
        raise AssertionError("an exponential document was accepted")


def test_merge_keys_and_positions() -> None:
    doc = load_text("base: &b {cpu: 1, memory: 1Gi}\nhw:\n  <<: *b\n  cpu: 2\n", "f.yaml")
    assert doc.data["hw"] == {"cpu": 2, "memory": "1Gi"}
    assert doc.position(("hw", "cpu")) == (4, 8)
    assert doc.position(("hw", "cpu"), of_key=True) == (4, 3)
    assert doc.position(("hw", "nothing", "deeper")) == (2, 1)


def test_non_utf8_file_is_reported(tmp_path: Path) -> None:
    from mlops_iac.loader import load_file

    bad = tmp_path / "m.yaml"
    bad.write_bytes(b"apiVersion: x\nname: \xff\xfe\n")
    try:
        load_file(bad)
    except ConfigError as exc:
        assert exc.first.line == 2 and "UTF-8" in exc.first.message
    else:
        raise AssertionError("non-UTF-8 accepted")
