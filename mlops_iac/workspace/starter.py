"""What `mlops-iac init` writes beside mlops.yaml besides the spec: the ignore patterns that
keep what the tool and training make (registry blobs, pickles, cached ONNX files, build
contexts) out of a `git add -A`, while mlops.yaml and mlops.lock stay committed."""

from __future__ import annotations

from ..render import render

SOURCE = "model.joblib"  # what the starter train.py writes and mlops.yaml names
SAMPLE = "sample.npy"


def gitignore(existing: str | None) -> str | None:
    """The .gitignore to write: the starter's when there is none, an existing one with the
    patterns it lacks appended (a user's own lines are kept), or None when it has them all."""
    text = render("init/gitignore.j2", source=SOURCE, sample=SAMPLE)
    if existing is None:
        return text
    have = {line.strip() for line in existing.splitlines()}
    lacking = [p for p in _patterns(text) if p not in have]
    if not lacking:
        return None
    joined = existing if existing.endswith("\n") or not existing else existing + "\n"
    return (
        joined + "# Added by `mlops-iac init`: what mlops-iac and training make.\n" + "".join(f"{p}\n" for p in lacking)
    )


def _patterns(text: str) -> list[str]:
    return [line for line in (raw.strip() for raw in text.splitlines()) if line and not line.startswith("#")]
