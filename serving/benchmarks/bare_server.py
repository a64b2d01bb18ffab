"""The floor for a Python gRPC server on this machine: cdd.v1.Retrieval whose Search returns a constant.

Same proto, same message sizes (k items with metadata), same server options and thread pool as
`serving.server.create_server`, but no decode, no engine, no index: whatever QPS it reaches is the cost of
the gRPC stack and protobuf alone. ``--aio`` runs the same servicer on ``grpc.aio`` instead of a thread
pool, to compare the two threading models.

    python -m serving.benchmarks.bare_server [--port 0] [--k 10] [--max-workers 40] [--aio]

Logs ``serving cdd.v1.Retrieval on 127.0.0.1:PORT`` (the line `cdd-serve` logs) once bound.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import grpc

from serving._proto import retrieval_pb2 as pb
from serving._proto import retrieval_pb2_grpc as pb_grpc
from serving.config import ServeConfig

__all__ = ["constant_response", "main"]

_LOG = logging.getLogger("serving.benchmarks.bare_server")
_OPTIONS = [
    ("grpc.max_receive_message_length", ServeConfig.max_message_bytes),
    ("grpc.max_send_message_length", ServeConfig.max_message_bytes),
    ("grpc.so_reuseport", 0),
]


def constant_response(k: int) -> pb.SearchResponse:
    """k items shaped like a real answer (id, score, the metadata `cdd-index build` stores)."""
    items = [
        pb.Item(id=f"{i:04d}_c1s1_000001_00.jpg", score=1.0 - i / 100,
                metadata={"path": f"{i:04d}_c1s1_000001_00.jpg", "file": f"{i:04d}_c1s1_000001_00.jpg",
                          "label": str(i), "camera": "0"})
        for i in range(k)
    ]
    return pb.SearchResponse(items=items)


class _Constant(pb_grpc.RetrievalServicer):
    def __init__(self, k: int) -> None:
        self._response = constant_response(k)

    def Search(self, request: pb.SearchRequest, context: grpc.ServicerContext) -> pb.SearchResponse:
        return self._response


class _AsyncConstant(pb_grpc.RetrievalServicer):
    def __init__(self, k: int) -> None:
        self._response = constant_response(k)

    async def Search(self, request: pb.SearchRequest, context: grpc.aio.ServicerContext) -> pb.SearchResponse:
        return self._response


def _serve_sync(port: int, k: int, max_workers: int, stop: threading.Event) -> None:
    server = grpc.server(ThreadPoolExecutor(max_workers=max_workers), options=_OPTIONS,
                         maximum_concurrent_rpcs=max_workers)
    pb_grpc.add_RetrievalServicer_to_server(_Constant(k), server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    _LOG.info("serving cdd.v1.Retrieval on 127.0.0.1:%d (bare, sync, %d threads)", bound, max_workers)
    stop.wait()
    server.stop(1.0).wait()


async def _serve_aio(port: int, k: int, stop: threading.Event) -> None:
    server = grpc.aio.server(options=_OPTIONS)
    pb_grpc.add_RetrievalServicer_to_server(_AsyncConstant(k), server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    _LOG.info("serving cdd.v1.Retrieval on 127.0.0.1:%d (bare, aio)", bound)
    while not stop.is_set():
        await asyncio.sleep(0.1)
    await server.stop(1.0)


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGTERM / SIGINT; exit 0."""
    parser = argparse.ArgumentParser(prog="python -m serving.benchmarks.bare_server", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--k", type=int, default=10, help="items in every answer")
    parser.add_argument("--max-workers", type=int, default=ServeConfig.max_workers)
    parser.add_argument("--aio", action="store_true", help="grpc.aio instead of a thread pool")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    if args.aio:
        asyncio.run(_serve_aio(args.port, args.k, stop))
    else:
        _serve_sync(args.port, args.k, args.max_workers, stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
