"""`python -m mlops_iac.serving --config server.json`: the entrypoint of every image.

It reads the server settings written into the build context, loads ONNX only, and serves.
A deployment's own settings (auth, data collection, traffic weights) come from the
environment variable MLOPS_IAC_SERVER_SETTINGS (the JSON of a server.json) when it is set:
a Kubernetes ConfigMap or a Docker container's environment, with no file to mount on a
read-only root filesystem. Relative paths in it are relative to the --config file's folder.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..contract import PORT, SETTINGS_ENV
from ..errors import MlopsIacError
from .config import ServerConfig, read_config
from .run import serve


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mlops_iac.serving")
    parser.add_argument("--config", type=Path, required=True, help="server.json")
    parser.add_argument("--host", default="0.0.0.0")  # noqa: S104 - inside a container
    parser.add_argument("--port", type=int, default=PORT)
    args = parser.parse_args(argv)
    try:
        inline = os.environ.get(SETTINGS_ENV)
        config = ServerConfig.model_validate_json(inline) if inline else read_config(args.config)
        serve(config, args.config.resolve().parent, args.host, args.port)
    except (MlopsIacError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
