"""Safe YAML loading that remembers where every value came from.

PyYAML's `safe_load` forgets positions and silently keeps the last of two duplicate keys.
We compose the node graph ourselves instead, so that every key and value keeps its line and
column, duplicate keys are reported, and aliases cannot blow up memory (billion laughs) or
recurse forever.

`document` reads YAML into a `Document` (data plus positions); `validation` checks it against a
pydantic model and turns each error into a located `Problem`.
"""

from .document import MAX_NODES, Document, PathKey, Position, format_path, load_file, load_text
from .validation import validate_document

__all__ = [
    "MAX_NODES",
    "Document",
    "PathKey",
    "Position",
    "format_path",
    "load_file",
    "load_text",
    "validate_document",
]
