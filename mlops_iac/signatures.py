"""Model signatures as the registry records them (`{"inputs": [...], "outputs": [...]}`, each
tensor a name, a v2 datatype and a shape): what breaks a client. Pure, a leaf: the review of a
deployment change reads it without loading onnx.
"""

from __future__ import annotations

from typing import Any


def breaking_changes(old: dict[str, Any] | None, new: dict[str, Any]) -> list[str]:
    """What in `new` breaks a client of `old`: a changed or missing input or output.

    A DataFrame pipeline takes one input per column: those are named as columns, so a review
    says "column 'sex' (BYTES) was removed" where a client dropped or renamed a field.
    """
    if not old:
        return []
    problems = []
    for side in ("inputs", "outputs"):
        before = {t["name"]: t for t in old.get(side, [])}
        after = {t["name"]: t for t in new.get(side, [])}
        for name, tensor in sorted(before.items()):
            what = _what(side, tensor, before)
            if name not in after:
                problems.append(f"{what} was removed")
                continue
            label = what.split(" (")[0]  # the datatype follows in the message itself
            if after[name]["datatype"] != tensor["datatype"]:
                problems.append(f"{label} changed datatype {tensor['datatype']} -> {after[name]['datatype']}")
            if not _shapes_compatible(tensor["shape"], after[name]["shape"]):
                problems.append(f"{label} changed shape {tensor['shape']} -> {after[name]['shape']}")
        if side == "inputs":
            problems += [
                f"{_what(side, after[n], after)} is new and required" for n in sorted(set(after) - set(before))
            ]
    return problems


def _what(side: str, tensor: dict[str, Any], tensors: dict[str, Any]) -> str:
    if side == "inputs" and len(tensors) > 1 and list(tensor["shape"]) == [-1, 1]:
        return f"column {tensor['name']!r} ({tensor['datatype']})"
    return f"{side[:-1]} {tensor['name']!r}"


def _shapes_compatible(old: list[int], new: list[int]) -> bool:
    return len(old) == len(new) and all(a == b or -1 in (a, b) for a, b in zip(old, new, strict=True))
