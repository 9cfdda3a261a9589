"""Make a virtual environment that sees the packages of the interpreter running this script.

Usage: `python layered_venv.py DIR`. `python -m venv --system-site-packages` would see the
packages of the base interpreter the running one was made from, not those of the running
environment: run from a virtual environment, it loses everything installed there. Here the new
environment's site adds the running interpreter's site folders (their .pth files, editable
installs included) after its own, so what pip installs into it comes first and nothing
installed in it reaches the running environment. The tests that need a second environment
(the stack program's offline install, the workflow's setup-python stand-in) make it this way.
"""

from __future__ import annotations

import site
import sys
import venv
from pathlib import Path


def layered_venv(folder: Path) -> Path:
    """Create the environment at `folder` (no pip of its own); returns its python."""
    venv.EnvBuilder(with_pip=False, clear=True).create(folder)
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    lines = [f"import site; site.addsitedir({path!r})\n" for path in site.getsitepackages()]
    (folder / "lib" / version / "site-packages" / "_layered_on_parent.pth").write_text("".join(lines))
    return folder / "bin" / "python"


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python layered_venv.py DIR")
    print(layered_venv(Path(sys.argv[1])))
