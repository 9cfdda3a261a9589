"""Generate the gRPC message module of the server from the protocol's .proto (grpcio-tools).

    python scripts/grpc_stubs.py            # rewrite mlops_iac/serving/open_inference_grpc_pb2.py
    python scripts/grpc_stubs.py OUT_DIR    # write it under OUT_DIR instead (the freshness test)

The generated files are committed: the image is built hermetically from the server's sources
and runtime wheels, and protoc (grpcio-tools) is a build tool nobody should need to install or
run the server. tests/test_grpc.py regenerates them and fails when they differ; the generator
version is pinned in pyproject's dev extra, since protoc writes its version into its output.

One change to protoc's output: the messages go into a descriptor pool of their own, not the
process-wide default one. tritonclient.grpc registers the same `inference.*` names in the
default pool (from Triton's grpc_service.proto), and two files defining one name in a pool
cannot load in one process; the wire names, which are all gRPC needs, do not depend on the pool.
(That holds with protobuf's default implementation, upb; its pure-Python fallback registers
every message in the default pool anyway, so there the two still cannot share a process.)
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO = "mlops_iac/serving/open_inference_grpc.proto"
MODULE = "open_inference_grpc_pb2.py"
DEFAULT_POOL = "_descriptor_pool.Default().AddSerializedFile("
OWN_POOL = "_descriptor_pool.DescriptorPool().AddSerializedFile("


def generate(out: Path) -> Path:
    from grpc_tools import protoc

    with tempfile.TemporaryDirectory() as tmp:
        # Given as a path from the repository root, the module is registered under that path in
        # protobuf's descriptor pool; the service's wire name (/inference.GRPCInferenceService/...)
        # comes from the `package`, not from the file name.
        code = protoc.main(["protoc", f"-I{ROOT}", f"--python_out={tmp}", str(ROOT / PROTO)])
        if code != 0:
            raise SystemExit(f"protoc failed with {code}")
        code_text = (Path(tmp) / "mlops_iac" / "serving" / MODULE).read_text()
    if code_text.count(DEFAULT_POOL) != 1:
        raise SystemExit(
            f"protoc's output no longer registers its file with {DEFAULT_POOL!r}; update scripts/grpc_stubs.py"
        )
    out.mkdir(parents=True, exist_ok=True)
    target = out / MODULE
    target.write_text(code_text.replace(DEFAULT_POOL, OWN_POOL))
    return target


if __name__ == "__main__":
    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "mlops_iac" / "serving"
    print(generate(folder))
