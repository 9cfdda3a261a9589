"""The server's own CPU per request, without sockets: the Python path a request takes.

    python benchmarks/request_path.py [--model rf|mlp|iris] [--requests 20000] [--profile]

Over loopback, a request's cost is mostly the kernel's (the send that wakes the client, the
scheduler) and, on a shared machine, other processes': `benchmarks/serving.py` measures what a
client sees, with that noise. This one feeds the same HTTP request bytes to the server's own
protocol (uvicorn's httptools protocol with our one-write cycle, the app, onnxruntime) on a
transport that only keeps what is written, so what it times is the Python path alone, in
microseconds per request, beside bare `session.run` on the same input (the floor). With
`--profile`, cProfile's top functions of that path (their own time).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import pstats
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from serving import build_model

from mlops_iac.serving.app import Server
from mlops_iac.serving.config import ServerConfig
from mlops_iac.serving.run import uvicorn_config


class Transport(asyncio.Transport):
    """Keeps the bytes the server writes; the protocol sees an open, writable connection."""

    def __init__(self) -> None:
        super().__init__()
        self.written: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written.append(bytes(data))

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8080), "peername": ("127.0.0.1", 40000)}.get(name, default)

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def requests_per_second(server: Server, raw: bytes, count: int, profile: cProfile.Profile | None) -> float:
    from uvicorn.server import ServerState

    config = uvicorn_config(server)  # the server's own settings and protocol, loop aside
    config.load()
    protocol = config.http_protocol_class(config, ServerState(), {}, asyncio.get_running_loop())
    transport = Transport()
    protocol.connection_made(transport)

    async def one() -> None:
        protocol.data_received(raw)
        while not transport.written:  # the request's task runs on the next turns of the loop
            await asyncio.sleep(0)
        answer = transport.written.pop()
        assert answer.startswith(b"HTTP/1.1 200"), answer[:200]

    for _ in range(200):  # warm: caches, the first-request paths
        await one()
    if profile is not None:
        profile.enable()
    started = time.thread_time()
    for _ in range(count):
        await one()
    elapsed = time.thread_time() - started
    if profile is not None:
        profile.disable()
    return elapsed / count


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", choices=("rf", "mlp", "iris"), default="rf")
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--batching", action="store_true", help="the model with dynamic batching (32 rows, no delay)")
    parser.add_argument(
        "--only",
        choices=("ours", "bare"),
        help="time one side alone (for instruction counts: `perf stat -e instructions:u` at two --requests)",
    )
    args = parser.parse_args()
    import onnxruntime as ort
    import uvloop

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        path, x = build_model(args.model, folder)
        row = x[:1]
        body = json.dumps(
            {"inputs": [{"name": "input", "datatype": "FP32", "shape": list(row.shape), "data": row.ravel().tolist()}]}
        ).encode()
        raw = (
            b"POST /v2/models/m/infer HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )
        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        model: dict[str, object] = {"name": "m", "version": 1, "path": path.name}
        if args.batching:
            model.update(max_batch_size=32, max_delay_ms=0)
        server = Server(ServerConfig.model_validate({"models": [model]}), folder)
        server.counts_arrivals = True  # as the runner sets it: the batchers see requests read and not started
        server.load()
        bare, ours = [], []
        profile = cProfile.Profile() if args.profile else None
        for _ in range(args.rounds):  # alternated, medians: the machine is shared
            started = time.thread_time()
            for _ in range(args.requests if args.only != "ours" else 0):
                session.run(None, {name: row})
            bare.append((time.thread_time() - started) / args.requests)
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:  # the server's loop
                count = args.requests if args.only != "bare" else 0
                ours.append(runner.run(requests_per_second(server, raw, count, profile)) if count else 0.0)
        b, o = float(np.median(bare)) * 1e6, float(np.median(ours)) * 1e6
        print(f"model {args.model}, {args.requests} requests x {args.rounds} rounds, CPU time, medians")
        print(f"  bare session.run                        {b:8.1f} us")
        print(f"  HTTP request through the server's path  {o:8.1f} us  (+{o - b:.1f} us over session.run)")
        if profile is not None:
            pstats.Stats(profile).sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    main()
