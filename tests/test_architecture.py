"""The import rules of ARCHITECTURE.md, checked from the import graph of the package."""

from __future__ import annotations

import ast
import fnmatch
import pathlib
import re

from .conftest import ROOT

PACKAGE = ROOT / "mlops_iac"


def layers() -> dict[str, int]:
    """Module pattern -> layer number, from the table between the `layers` markers."""
    text = (ROOT / "ARCHITECTURE.md").read_text()
    table = text.split("<!-- layers:", 1)[1].split("<!-- end layers -->", 1)[0]
    out = {}
    for row in re.finditer(r"^\| (\d+) [^|]*\| (.+) \|$", table, re.M):
        for name in re.findall(r"`([^`]+)`", row.group(2)):
            out[name] = int(row.group(1))
    return out


def unit(module: str) -> str:
    """`mlops_iac.registry.oci` -> `registry`; `mlops_iac` -> `__init__`."""
    parts = module.split(".")
    if len(parts) == 1 or not ((PACKAGE / f"{parts[1]}.py").exists() or (PACKAGE / parts[1]).is_dir()):
        return "__init__"  # the package itself, or a name it defines (`from mlops_iac import __version__`)
    return parts[1]


def imports() -> dict[tuple[str, str], int]:
    """(importing unit, imported unit) -> a line where it happens, for every project import."""
    return {(here, unit(target)): line for (here, target, _, line) in reversed(_edges()) if unit(target) != here}


def _edges() -> list[tuple[str, str, tuple[str, ...], int]]:
    """(importing unit, imported module, names taken from it, line) for every project import."""
    found: list[tuple[str, str, tuple[str, ...], int]] = []
    for file in sorted(PACKAGE.rglob("*.py")):
        parts = file.relative_to(ROOT).with_suffix("").parts
        package = parts[:-1]  # what a relative import starts from, for a module and an __init__ alike
        here = unit(".".join(package if file.name == "__init__.py" else parts))
        for node in ast.walk(ast.parse(file.read_text())):
            targets: list[tuple[str, tuple[str, ...]]] = []
            if isinstance(node, ast.ImportFrom):
                base = ".".join(package[: len(package) - node.level + 1]) if node.level else ""
                module = ".".join(p for p in (base, node.module or "") if p)
                names = tuple(a.name for a in node.names)
                targets = [(module, names)] if node.module else [(f"{module}.{n}", ()) for n in names]
            elif isinstance(node, ast.Import):
                targets = [(a.name, ()) for a in node.names]
            for target, names in targets:
                if target.split(".")[0] == "mlops_iac":
                    found.append((here, target, names, node.lineno))
    return found


def _files() -> dict[str, pathlib.Path]:
    return {".".join(f.relative_to(ROOT).with_suffix("").parts): f for f in sorted(PACKAGE.rglob("*.py"))}


def layer_of(name: str, table: dict[str, int]) -> int | None:
    return next((n for pattern, n in table.items() if fnmatch.fnmatch(name, pattern)), None)


def test_every_module_has_a_layer() -> None:
    table = layers()
    names = {
        p.stem if p.is_file() else p.name
        for p in PACKAGE.iterdir()
        if (p.suffix == ".py" or (p / "__init__.py").exists())
    }
    assert {n for n in names if layer_of(n, table) is None} == set()


def test_imports_only_go_down() -> None:
    table = layers()
    top = max(table.values())
    wrong = []
    for a, b in sorted(imports()):
        below, above = layer_of(b, table), layer_of(a, table)
        assert below is not None and above is not None, (a, b)
        if not (below < above or below == above == top):
            wrong.append(f"{a} (layer {above}) imports {b} (layer {below})")
    assert wrong == []


def test_the_server_imports_only_leaves() -> None:
    """It runs inside the image, where only the server's own code and the leaves are copied."""
    table = layers()
    assert {b for (a, b) in imports() if a == "serving"} <= {n for n, layer in table.items() if layer == 0}


def test_no_module_takes_another_modules_private_names() -> None:
    """A `_name` is its module's business: a helper two modules need is public, in the lower one."""
    taken = []
    for name, file in _files().items():
        package = name.split(".")[:-1]  # what a relative import starts from
        name = name.removesuffix(".__init__")
        for node in ast.walk(ast.parse(file.read_text())):
            if not isinstance(node, ast.ImportFrom):
                continue
            base = ".".join(package[: len(package) - node.level + 1]) if node.level else ""
            module = ".".join(p for p in (base, node.module or "") if p)
            if module.split(".")[0] != "mlops_iac" or module == name:
                continue
            taken += [
                f"{name}:{node.lineno} takes {module}.{a.name}"
                for a in node.names
                if a.name.startswith("_") and not a.name.startswith("__")
            ]
    assert taken == []


# Heavy rooms, and who may load them: `convert` loads onnx and the training frameworks, so a
# Markdown review or a plan never pulls it in (its pure helpers live in the leaves).
HEAVY = {"convert": ("profile", "workspace", "cli", "cli_*", "console")}


def test_heavy_rooms_are_loaded_only_where_they_are_used() -> None:
    wrong = [
        f"{a} imports {b}"
        for (a, b) in sorted(imports())
        if b in HEAVY and not any(fnmatch.fnmatch(a, p) for p in HEAVY[b])
    ]
    assert wrong == []


def test_no_command_module_imports_another() -> None:
    """`cli` registers the commands; what two commands share lives in `console` or `workspace`."""
    wrong = [
        f"{a} imports {b}"
        for (a, b) in sorted(imports())
        if fnmatch.fnmatch(a, "cli_*") and (b == "cli" or fnmatch.fnmatch(b, "cli_*"))
    ]
    assert wrong == []


MAX_LINES = 400


def test_no_module_is_over_the_line_limit() -> None:
    """A module over 400 lines holds more than one meaning: split it by meaning."""
    long = {name: n for name, file in _files().items() if (n := len(file.read_text().splitlines())) > MAX_LINES}
    assert long == {}
