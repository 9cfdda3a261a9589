"""The import rules of ARCHITECTURE.md, checked from the import graph of the package."""

from __future__ import annotations

import ast
import fnmatch
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
    found: dict[tuple[str, str], int] = {}
    for file in PACKAGE.rglob("*.py"):
        parts = file.relative_to(ROOT).with_suffix("").parts
        package = parts[:-1]  # what a relative import starts from, for a module and an __init__ alike
        here = unit(".".join(package if file.name == "__init__.py" else parts))
        for node in ast.walk(ast.parse(file.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom):
                base = ".".join(package[:len(package) - node.level + 1]) if node.level else ""
                module = ".".join(p for p in (base, node.module or "") if p)
                targets = [module] if node.module else [f"{module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            for target in targets:
                if target.split(".")[0] == "mlops_iac" and unit(target) != here:
                    found.setdefault((here, unit(target)), node.lineno)
    return found


def layer_of(name: str, table: dict[str, int]) -> int | None:
    return next((n for pattern, n in table.items() if fnmatch.fnmatch(name, pattern)), None)


def test_every_module_has_a_layer() -> None:
    table = layers()
    names = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir()
             if (p.suffix == ".py" or (p / "__init__.py").exists())}
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
