"""YAML to a `Document`: the data, and the line and column of every key and value."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError, Problem

# libyaml's parser is about 10x faster and gives the same nodes and marks; PyYAML wheels
# ship it, a source build may not.
_Loader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

PathKey = tuple[str | int, ...]
# A document larger than this many nodes (aliases expanded) is refused: no real mlops.yaml
# comes near it, and a hostile one could otherwise expand exponentially.
MAX_NODES = 500_000


@dataclass(frozen=True)
class Position:
    """1-based line and column of a key (where there is one) and of its value."""

    key_line: int
    key_column: int
    line: int
    column: int


@dataclass(frozen=True)
class Document:
    """Plain Python data from YAML, with the position of every node by its path."""

    file: str
    data: Any
    positions: Mapping[PathKey, Position]

    def position(self, path: PathKey, *, of_key: bool = False) -> tuple[int, int]:
        """The position of `path`, or of its nearest ancestor that exists in the file."""
        for end in range(len(path), -1, -1):
            pos = self.positions.get(path[:end])
            if pos is not None:
                if of_key or end < len(path):
                    return (pos.key_line, pos.key_column)
                return (pos.line, pos.column)
        return (1, 1)

    def problem(
        self, path: PathKey, message: str, allowed: str = "", *, of_key: bool = False, severity: str = "error"
    ) -> Problem:
        line, column = self.position(path, of_key=of_key)
        return Problem(
            self.file,
            line,
            column,
            format_path(path),
            message,
            allowed,
            "warning" if severity == "warning" else "error",
        )


def format_path(path: PathKey) -> str:
    """`("deployments", 1, "hardware")` -> `deployments[1].hardware`."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif out:
            out += f".{part}"
        else:
            out = str(part)
    return out


def _mark(mark: yaml.Mark | None) -> tuple[int, int]:
    return (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)


class _Builder:
    def __init__(self, file: str, loader: yaml.SafeLoader) -> None:
        self.file = file
        self.loader = loader
        self.positions: dict[PathKey, Position] = {}
        self.problems: list[Problem] = []
        self.count = 0
        self.active: set[int] = set()

    def fail(self, node: yaml.Node, path: PathKey, message: str, allowed: str = "") -> None:
        line, column = _mark(node.start_mark)
        self.problems.append(Problem(self.file, line, column, format_path(path), message, allowed))

    def build(self, node: yaml.Node, path: PathKey, key_at: tuple[int, int]) -> Any:
        self.count += 1
        if self.count > MAX_NODES:
            raise _TooLarge
        line, column = _mark(node.start_mark)
        # Assign, not setdefault: a later key (an override of a `<<` merge) wins, as in the data.
        self.positions[path] = Position(key_at[0], key_at[1], line, column)
        if isinstance(node, yaml.ScalarNode):
            return self.loader.construct_object(node, deep=True)
        if id(node) in self.active:
            self.fail(node, path, "an alias refers to a node that contains it", "YAML aliases must not be recursive")
            return None
        self.active.add(id(node))
        try:
            if isinstance(node, yaml.SequenceNode):
                return [self.build(item, (*path, i), _mark(item.start_mark)) for i, item in enumerate(node.value)]
            assert isinstance(node, yaml.MappingNode)
            return self.mapping(node, path)
        finally:
            self.active.discard(id(node))

    def mapping(self, node: yaml.MappingNode, path: PathKey) -> dict[Hashable, Any]:
        seen: dict[Hashable, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                continue
            key = self.loader.construct_object(key_node, deep=True)
            if key in seen:
                self.fail(
                    key_node,
                    (*path, key),
                    f"duplicate key {key!r}; the first is on line {seen[key]}",
                    "each key may appear once in a mapping",
                )
            else:
                seen[key] = _mark(key_node.start_mark)[0]
        # flatten_mapping resolves `<<: *anchor` merges in place; explicit keys win.
        self.loader.flatten_mapping(node)
        out: dict[Hashable, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                self.fail(key_node, path, "a mapping or list is used as a key", "keys must be plain strings or numbers")
                continue
            key = self.loader.construct_object(key_node, deep=True)
            if not isinstance(key, Hashable):
                self.fail(key_node, path, f"the key {key!r} cannot be used", "keys must be plain strings")
                continue
            step = key if isinstance(key, str | int) else str(key)
            out[key] = self.build(value_node, (*path, step), _mark(key_node.start_mark))
        return out


class _TooLarge(Exception):
    pass


def load_text(text: str, file: str) -> Document:
    """Parse one YAML document; raise `ConfigError` with positions for anything wrong."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
    except yaml.MarkedYAMLError as exc:
        line, column = _mark(exc.problem_mark or exc.context_mark)
        what = exc.problem or "invalid YAML"
        if exc.context and exc.context_mark is not None and exc.context_mark != exc.problem_mark:
            what += f" ({exc.context} that started on line {exc.context_mark.line + 1})"
        raise ConfigError(
            [Problem(file, line, column, "", f"YAML syntax: {what}", "the file must be valid YAML 1.1")]
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError(
            [Problem(file, 1, 1, "", f"YAML error: {exc}", "the file must be one valid YAML document")]
        ) from None
    finally:
        loader.dispose()
    if node is None:
        raise ConfigError(
            [Problem(file, 1, 1, "", "the file is empty", "a mapping with apiVersion and the sections of the file")]
        )
    builder = _Builder(file, loader)
    try:
        data = builder.build(node, (), _mark(node.start_mark))
    except _TooLarge:
        raise ConfigError(
            [
                Problem(
                    file,
                    1,
                    1,
                    "",
                    f"the document expands to more than {MAX_NODES} nodes",
                    "fewer aliases; no real file comes near this",
                )
            ]
        ) from None
    except (yaml.YAMLError, ValueError, TypeError, OverflowError) as exc:
        # A scalar that matches a tag but cannot be built (e.g. a timestamp like 2026-13-45).
        mark = getattr(exc, "problem_mark", None)
        line, column = _mark(mark)
        raise ConfigError(
            [
                Problem(
                    file, line, column, "", f"cannot read a value: {exc}", "plain strings, numbers, lists and mappings"
                )
            ]
        ) from None
    if builder.problems:
        raise ConfigError(builder.problems)
    return Document(file, data, builder.positions)


def load_file(path: Path, display: str | None = None) -> Document:
    """Read and parse `path`; `display` is the name shown in errors (default: as given)."""
    name = display if display is not None else str(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            [Problem(name, 1, 1, "", "file not found", "create it with `mlops-iac init` or pass -f FILE")]
        ) from None
    except OSError as exc:
        raise ConfigError(
            [Problem(name, 1, 1, "", f"cannot read the file: {exc.strerror}", "a readable file")]
        ) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError([Problem(name, line, 1, "", "the file is not UTF-8 text", "UTF-8 encoded YAML")]) from None
    return load_text(text, name)
