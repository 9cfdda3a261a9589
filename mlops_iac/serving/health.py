"""`python -m mlops_iac.serving.health`: the image's HEALTHCHECK (no curl in slim images)."""

from __future__ import annotations

import os
import sys
import urllib.request

from ..contract import PORT, PORT_ENV


def main() -> int:
    port = os.environ.get(PORT_ENV, str(PORT))
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2) as response:
            return 0 if response.status == 200 else 1
    except OSError:
        return 1


if __name__ == "__main__":
    sys.exit(main())
