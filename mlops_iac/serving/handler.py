"""A model's handler (`preprocess`, `postprocess`) called the one way the server and batch
scoring both call it: what it refuses is the client's error (400), what it returns is arrays."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .protocol import ClientError


def call_handler(func: Callable[[Any], Any], value: Any) -> dict[str, np.ndarray]:
    try:
        result = func(value)
    except (ValueError, KeyError, TypeError) as exc:
        raise ClientError(400, f"the model's handler refused the request: {exc}") from None
    if not isinstance(result, dict):
        raise TypeError(f"the handler returned {type(result).__name__}, not a dict of arrays")
    return {k: np.asarray(v) for k, v in result.items()}
