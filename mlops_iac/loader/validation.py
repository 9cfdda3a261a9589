"""pydantic's errors become located problems: the file, line, field and the allowed values."""

from __future__ import annotations

from types import UnionType
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from ..errors import ConfigError, Problem, did_you_mean
from ..spec.types import shown
from .document import Document, PathKey

M = TypeVar("M", bound=BaseModel)


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
