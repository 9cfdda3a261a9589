"""References to model versions: `MODEL`, `MODEL@N`, `MODEL@alias`, `MODEL@sha256:<hex>`."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import RegistryError
from ..spec.types import DIGEST, DNS_LABEL

_NAME = re.compile(DNS_LABEL)
_DIGEST = re.compile(DIGEST)
ALLOWED = (
    "expected MODEL, MODEL@N, MODEL@alias or MODEL@sha256:<64 hex digits>, where MODEL "
    "is a DNS-1123 label (lowercase letters, digits and '-')"
)


@dataclass(frozen=True)
class Ref:
    model: str
    selector: int | str | None = None  # None: the latest version

    def __str__(self) -> str:
        return self.model if self.selector is None else f"{self.model}@{self.selector}"


def check_name(name: str, what: str = "model name") -> str:
    if not _NAME.match(name):
        raise RegistryError(
            f"invalid {what} {name!r}: expected a DNS-1123 label (lowercase "
            "letters, digits and '-', at most 63 characters)"
        )
    return name


def parse_ref(text: str) -> Ref:
    """Parse a reference; anything that could name a path (`..`, `/`, `%2e`) is refused."""
    model, sep, selector = text.partition("@")
    if not _NAME.match(model):
        raise RegistryError(f"invalid reference {text!r}: {ALLOWED}")
    if not sep:
        return Ref(model)
    if selector.isdigit() and int(selector) >= 1 and not selector.startswith("0"):
        return Ref(model, int(selector))
    if _DIGEST.match(selector) or (_NAME.match(selector) and not selector.isdigit()):
        return Ref(model, selector)
    raise RegistryError(f"invalid reference {text!r}: {ALLOWED}")


def check_alias(alias: str) -> str:
    if not _NAME.match(alias) or alias.isdigit() or alias == "latest":
        raise RegistryError(
            f"invalid alias {alias!r}: expected a DNS-1123 label that is not a "
            "number and not 'latest' (which always means the newest version)"
        )
    return alias
