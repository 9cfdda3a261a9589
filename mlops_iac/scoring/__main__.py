"""`python -m mlops_iac.scoring --config server.json ...`: batch scoring inside the server's
image (a Kubernetes Job's pods, a one-shot Docker container).

The model comes from the same settings the server reads (the file, or the JSON in
MLOPS_IAC_SERVER_SETTINGS), so a batch deployment scores with exactly the pinned ONNX file
and handler. In an indexed Job, each pod scores the parts of its JOB_COMPLETION_INDEX.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from ..contract import SETTINGS_ENV
from ..errors import MlopsIacError
from ..serving.config import ServerConfig, read_config
from .engine import default_workers, prepare, score
from .jobs import Settings
from .writers import OUTPUT_FORMATS

INDEX_ENV = "JOB_COMPLETION_INDEX"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m mlops_iac.scoring")
    p.add_argument("--config", type=Path, required=True, help="server.json")
    p.add_argument("--model", default=None, help="Which model of the settings (default: the first).")
    p.add_argument("--input", dest="inputs", action="append", required=True)
    p.add_argument("--output", type=Path, required=True)
    p.add_argument("--batch-size", type=int, default=10_000)
    p.add_argument("--part-rows", type=int, default=100_000)
    # One by default: a pod's memory is sized for one session; Jobs scale out with parallelism.
    p.add_argument("--workers", type=int, default=1, help="0: one lane per 4 CPUs this process may use")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--error-threshold", type=int, default=0)
    p.add_argument("--id", dest="ids", action="append", default=None)
    p.add_argument("--format", default="parquet", choices=sorted(OUTPUT_FORMATS))
    p.add_argument("--resume", action="store_true")
    p.add_argument("--shards", type=int, default=1, help="Parts are dealt to this many pods.")
    p.add_argument("--shard", type=int, default=None, help=f"This pod's share (default: ${INDEX_ENV} or 0).")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        inline = os.environ.get(SETTINGS_ENV)
        config = ServerConfig.model_validate_json(inline) if inline else read_config(args.config)
        model = next((m for m in config.models if args.model in (None, m.name)), None)
        if model is None:
            raise MlopsIacError(
                f"no model {args.model!r} in the settings; models: " + ", ".join(m.name for m in config.models)
            )
        shard = args.shard if args.shard is not None else int(os.environ.get(INDEX_ENV, "0"))
        settings = Settings(
            batch_size=args.batch_size,
            part_rows=args.part_rows,
            workers=args.workers or default_workers(args.threads),
            threads=args.threads,
            error_threshold=args.error_threshold,
            ids=tuple(args.ids) if args.ids else None,
            format=args.format,
            resume=args.resume,
            shard=shard,
            shards=args.shards,
        )
        summary = score(prepare(model, args.config.resolve().parent, args.inputs, args.output, settings))
    except (MlopsIacError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(
        json.dumps(
            {
                "rows_in": summary.rows_in,
                "rows_out": summary.rows_out,
                "rejects": summary.rejects,
                "parts": summary.parts,
                "resumed_parts": summary.skipped,
                "manifest": str(summary.manifest),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
