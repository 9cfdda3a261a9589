"""The v2 gRPC service (`inference.GRPCInferenceService`), beside REST in the same process.

It runs on grpcio's asyncio server, on the event loop uvicorn runs the REST app on, and serves
the same `Server`: the same loaded models and batchers (a gRPC request and a REST request can
share one batch), the same metrics (counted under the HTTP status a REST request would have
had, so error rates, alerts and rollouts see both protocols), the same API key (metadata
`authorization: Bearer <key>`; the health RPCs, like REST's health routes, need none) and the
same data collection. Client mistakes are answered with gRPC status codes matching the REST
status, and never take the server down.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc

from .. import __version__
from . import open_inference_grpc_pb2 as pb
from .grpc_tensors import metadata_of, request_of, response_of
from .protocol import ClientError
from .triton import EXTENSIONS

if TYPE_CHECKING:
    from .app import Server

log = logging.getLogger("mlops_iac.serving.grpc")
SERVICE = "inference.GRPCInferenceService"
# The REST status a client mistake has, as the gRPC code that means the same.
CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    503: grpc.StatusCode.UNAVAILABLE,
}
GRPC_IDLE_MS = 300_000
Handler = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]


class InferenceService:
    def __init__(self, server: Server) -> None:
        self.server = server

    def handler(self) -> grpc.GenericRpcHandler:
        methods: dict[str, tuple[Handler, Any, Any]] = {
            "ServerLive": (self.server_live, pb.ServerLiveRequest, pb.ServerLiveResponse),
            "ServerReady": (self.server_ready, pb.ServerReadyRequest, pb.ServerReadyResponse),
            "ModelReady": (self.model_ready, pb.ModelReadyRequest, pb.ModelReadyResponse),
            "ServerMetadata": (self.server_metadata, pb.ServerMetadataRequest, pb.ServerMetadataResponse),
            "ModelMetadata": (self.model_metadata, pb.ModelMetadataRequest, pb.ModelMetadataResponse),
            "ModelInfer": (self.model_infer, pb.ModelInferRequest, pb.ModelInferResponse),
        }
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                name: grpc.unary_unary_rpc_method_handler(
                    _guarded(func),
                    request_deserializer=request.FromString,
                    response_serializer=response.SerializeToString,
                )
                for name, (func, request, response) in methods.items()
            },
        )

    # --- health and metadata ----------------------------------------------------------------

    async def server_live(self, request: Any, context: grpc.aio.ServicerContext) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=self.server.failed is None)

    async def server_ready(self, request: Any, context: grpc.aio.ServicerContext) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.server.ready)

    async def model_ready(self, request: Any, context: grpc.aio.ServicerContext) -> pb.ModelReadyResponse:
        self.authorize(context)
        self.server.pick(request.name, request.version or None)
        return pb.ModelReadyResponse(ready=self.server.ready)

    async def server_metadata(self, request: Any, context: grpc.aio.ServicerContext) -> pb.ServerMetadataResponse:
        self.authorize(context)
        return pb.ServerMetadataResponse(name="mlops-iac", version=__version__, extensions=EXTENSIONS)

    async def model_metadata(self, request: Any, context: grpc.aio.ServicerContext) -> pb.ModelMetadataResponse:
        self.authorize(context)
        entry = self.server.pick(request.name, request.version or None)
        doc = entry.runtime.metadata()
        doc["versions"] = sorted(self.server.models[request.name])
        return metadata_of(doc)

    def authorize(self, context: grpc.aio.ServicerContext) -> None:
        if self.server.key is None:
            return
        for name, value in context.invocation_metadata() or ():
            if name == "authorization":
                given = value.encode() if isinstance(value, str) else value
                if self.server.key_matches(given):  # constant time
                    return
                break
        raise ClientError(401, "missing or wrong API key (metadata authorization: Bearer <key>)")

    # --- inference ------------------------------------------------------------------------

    async def model_infer(self, message: Any, context: grpc.aio.ServicerContext) -> pb.ModelInferResponse:
        started = time.perf_counter()
        self.authorize(context)
        entry = self.server.pick(message.model_name, message.model_version or None)
        with self.server.counted(entry):
            request = request_of(message)
            outputs = await self.server.outputs(entry, request, started)
            return response_of(entry.runtime.name, entry.runtime.version, request.id, outputs)


def _guarded(func: Handler) -> Handler:
    """Client mistakes become their gRPC status with the REST message; anything else is INTERNAL
    with no detail (the log has it), as REST answers 500."""

    async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await func(request, context)
        except ClientError as error:
            await context.abort(CODES.get(error.status, grpc.StatusCode.INVALID_ARGUMENT), error.message)
        except grpc.aio.AbortError:
            raise
        except Exception:
            log.exception("internal error in %s", getattr(func, "__name__", "an RPC"))
            await context.abort(grpc.StatusCode.INTERNAL, "internal server error")

    return call


async def start(server: Server, host: str, port: int) -> grpc.aio.Server:
    """The gRPC listener on host:port, started; a port it cannot bind is one clear error."""
    from ..errors import MlopsIacError

    listener = grpc.aio.server(
        options=[
            # The same body limit as REST; answers are not limited (the client sets its own).
            ("grpc.max_receive_message_length", server.config.max_body_bytes),
            ("grpc.max_send_message_length", -1),
            # Without this, a second server on a busy port shares it silently (SO_REUSEPORT).
            ("grpc.so_reuseport", 0),
            # A connection that never finishes its HTTP/2 preface is closed like a REST one that
            # never finishes its head; one with no call open, after 5 minutes (GOAWAY: clients
            # reconnect on their next call). A call whose message stalls is held until its deadline.
            ("grpc.server_handshake_timeout_ms", round(server.config.header_timeout_s * 1000)),
            ("grpc.max_connection_idle_ms", GRPC_IDLE_MS),
        ]
    )
    listener.add_generic_rpc_handlers((InferenceService(server).handler(),))
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        bound = listener.add_insecure_port(address)
    except RuntimeError:
        bound = 0
    if not bound:
        raise MlopsIacError(
            f"cannot listen for gRPC on {address}: the port is in use or not allowed; choose another grpc_port"
        )
    await listener.start()
    return listener
