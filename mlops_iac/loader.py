"""Safe YAML loading that remembers where every value came from.

PyYAML's `safe_load` forgets positions and silently keeps the last of two duplicate keys.
We compose the node graph ourselves instead, so that every key and value keeps its line and
column, duplicate keys are reported, and aliases cannot blow up memory (billion laughs) or
recurse forever.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from .errors import ConfigError, Problem, did_you_mean
from .spec.types import shown

M = TypeVar("M", bound=BaseModel)
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


# --- pydantic errors become located problems ------------------------------------------------


def validate_document(model: type[M], doc: Document) -> M:
    """Validate `doc.data` as `model`; every pydantic error becomes one located `Problem`."""
    try:
        return model.model_validate(doc.data)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
    # A list whose items failed also reports "too short" (it counts valid items): noise.
    failed = {err["loc"][:n] for err in errors for n in range(len(err["loc"]))}
    raise ConfigError(
        _problem(model, doc, err) for err in errors if not (err["type"] == "too_short" and err["loc"] in failed)
    )


def _problem(model: type[BaseModel], doc: Document, err: ErrorDetails) -> Problem:
    path, _, on_key = _data_path(model, err["loc"])
    kind = err["type"]
    ctx: dict[str, Any] = dict(err.get("ctx") or {})
    if kind == "extra_forbidden":
        parent = _data_path(model, err["loc"][:-1])[1]
        hint = did_you_mean(path[-1], _field_names(parent)) if path else ""
        return doc.problem(
            path, f"unknown field {path[-1]!r}{hint}" if path else "unknown field", _allowed_fields(parent), of_key=True
        )
    if kind == "missing":
        parent = _data_path(model, err["loc"][:-1])[1]
        return doc.problem(path, "missing required field", _allowed_fields(parent, required=True), of_key=True)
    if "at" in ctx:  # a validator pointed at a key inside the mapping it checked
        path = (*path, ctx["at"])
        on_key = True
    if kind == "union_tag_invalid":  # point at the tag's value, not at the mapping
        path = (*path, str(ctx["discriminator"]).strip("'"))
    if kind == "union_tag_not_found":
        on_key = True
    message, allowed = _describe(kind, err, ctx)
    return doc.problem(path, message, allowed, of_key=on_key)


def _describe(kind: str, err: ErrorDetails, ctx: dict[str, Any]) -> tuple[str, str]:
    got = f"got {shown(err.get('input'))}"
    if kind == "mlops":
        return (f"got {ctx['got']}" if "got" in ctx else err["msg"].split(";")[0]), ctx["allowed"]
    if kind == "literal_error":
        expected = ctx["expected"].replace(" or ", ", ")
        return got + did_you_mean(err.get("input"), _choices(expected)), f"expected one of: {expected}"
    if kind == "union_tag_invalid":
        hint = did_you_mean(ctx["tag"], _choices(str(ctx["expected_tags"])))
        return got.replace("a mapping", shown(ctx["tag"])) + hint, f"expected one of: {ctx['expected_tags']}"
    if kind == "union_tag_not_found":
        tag = str(ctx["discriminator"]).strip("'")
        return f"missing {tag}", f"add {tag} to say which kind this is"
    if kind in _BOUNDS:
        return got, _BOUNDS[kind].format(**ctx)
    if kind in _EXPECTED:
        return got, _EXPECTED[kind]
    message = err["msg"].removeprefix("Value error, ")
    return message, ""


_EXPECTED = {
    "int_type": "expected a whole number",
    "int_parsing": "expected a whole number",
    "int_from_float": "expected a whole number",
    "float_type": "expected a number",
    "float_parsing": "expected a number",
    "bool_type": "expected true or false",
    "bool_parsing": "expected true or false",
    "string_type": "expected a string",
    "list_type": "expected a list",
    "tuple_type": "expected a list",
    "dict_type": "expected a mapping",
    "model_type": "expected a mapping",
    "model_attributes_type": "expected a mapping",
    "finite_number": "expected a finite number",
}
_BOUNDS = {
    "greater_than": "expected a number greater than {gt}",
    "greater_than_equal": "expected a number of at least {ge}",
    "less_than": "expected a number less than {lt}",
    "less_than_equal": "expected a number of at most {le}",
    "too_short": "expected at least {min_length} item(s)",
    "too_long": "expected at most {max_length} item(s)",
    "string_too_short": "expected at least {min_length} character(s)",
    "string_too_long": "expected at most {max_length} character(s)",
    "string_pattern_mismatch": "expected text matching {pattern}",
}


def _unwrap(tp: Any) -> Any:
    while get_origin(tp) is Annotated:
        tp = get_args(tp)[0]
    return tp


def _tag_member(tp: Any, tag: Any) -> Any:
    """The member of a discriminated union whose literal tag is `tag`, if any."""
    if get_origin(tp) not in (Union, UnionType):
        return None
    for member in get_args(tp):
        if isinstance(member, type) and issubclass(member, BaseModel):
            for field in member.model_fields.values():
                if get_origin(field.annotation) is Literal and get_args(field.annotation) == (tag,):
                    return member
    return None


def _data_path(model: type[BaseModel], loc: tuple[str | int, ...]) -> tuple[PathKey, Any, bool]:
    """Map pydantic's location to a path in the data, and find the type found there.

    Pydantic's locations use field names, and add the tag of a discriminated union and
    `[key]` for a bad dictionary key; the data path uses the YAML keys and has neither.
    """
    tp: Any = model
    path: list[str | int] = []
    on_key = False
    for part in loc:
        tp = _unwrap(tp)
        member = _tag_member(tp, part)
        if member is not None:
            tp = member
            continue
        if get_origin(tp) in (Union, UnionType):
            options = [a for a in get_args(tp) if a is not type(None)]
            tp = _unwrap(options[0]) if len(options) == 1 else None
        if part == "[key]":
            on_key = True
            continue
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            field = tp.model_fields.get(str(part))
            alias = (field.alias or str(part)) if field else str(part)
            path.append(alias if field else part)
            tp = field.annotation if field else None
        elif get_origin(tp) in (tuple, list):
            path.append(part)
            tp = get_args(tp)[0] if get_args(tp) else None
        elif get_origin(tp) is dict:
            path.append(part)
            tp = get_args(tp)[1]
        else:
            path.append(part)
            tp = None
    return tuple(path), _unwrap(tp), on_key


def _choices(expected: str) -> list[str]:
    """`'a', 'b', 'c'` (pydantic's list of literals or tags) -> ["a", "b", "c"]."""
    return [c.strip().strip("'\"") for c in expected.split(",")]


def _field_names(tp: Any) -> list[str]:
    tp = _unwrap(tp)
    if get_origin(tp) in (Union, UnionType):
        tp = next((a for a in get_args(tp) if a is not type(None)), None)
    if not (isinstance(tp, type) and issubclass(tp, BaseModel)):
        return []
    return [f.alias or n for n, f in tp.model_fields.items()]


def _allowed_fields(tp: Any, *, required: bool = False) -> str:
    tp = _unwrap(tp)
    if get_origin(tp) in (Union, UnionType):
        tp = next((a for a in get_args(tp) if a is not type(None)), None)
    if not (isinstance(tp, type) and issubclass(tp, BaseModel)):
        return ""
    if required:
        names = [f.alias or n for n, f in tp.model_fields.items() if f.is_required()]
        return "required fields here: " + ", ".join(names)
    return "allowed fields: " + ", ".join(f.alias or n for n, f in tp.model_fields.items())
