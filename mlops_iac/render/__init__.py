"""The one Jinja2 environment. Renderers return strings; only the writer touches the disk."""

from __future__ import annotations

import json
import shlex
from functools import cache
from pathlib import Path
from typing import Any

import jinja2

PACKAGE_TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
SOURCE_TEMPLATES = Path(__file__).resolve().parents[2] / "templates"


def templates_dir() -> Path:
    """Templates ship inside the wheel; in a source checkout they live at the top level."""
    return PACKAGE_TEMPLATES if PACKAGE_TEMPLATES.is_dir() else SOURCE_TEMPLATES


@cache
def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(templates_dir()),
        undefined=jinja2.StrictUndefined,  # a missing variable is a bug, never an empty string
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,  # we render YAML, Dockerfiles and shell, not HTML  # noqa: S701
    )
    env.filters["shquote"] = shlex.quote
    env.filters["tojson"] = lambda value: json.dumps(value, sort_keys=True)
    env.filters["cell"] = cell
    return env


def cell(value: object) -> str:
    """A Markdown table cell: a `|` would end the cell and a newline the row, whatever the value.
    `&#124;` rather than `\\|`: a backslash in the value itself cannot undo it."""
    text = str(value).replace("|", "&#124;")
    return "<br>".join(text.splitlines())  # no line break left: \n, \r\n, \r and Unicode's own


def render(template: str, **context: Any) -> str:
    return environment().get_template(template).render(**context)


def macro(template: str, macro_name: str, /, **context: Any) -> str:
    """One macro of a template of several parts (the review's head, sections, folds)."""
    return str(getattr(environment().get_template(template).module, macro_name)(**context))
