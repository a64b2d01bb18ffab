"""The gRPC server: `create_server` (wiring, port 0 for tests), `serve` (lifecycle) and `cdd-serve` (`main`).

Lifecycle of `serve`: load the bundle (checksums verified) and the gallery index (refused if built with
another bundle), open the engine, bind and start with health NOT_SERVING, warm up, set health SERVING and
log the address. On SIGTERM / SIGINT (or ``stop`` set): health NOT_SERVING, ``server.stop(grace)`` lets
in-flight calls finish while refusing new ones, then the batcher finishes its queue; exit status 0.

The front is grpc.aio: every RPC runs on one event loop in its own thread (`serving.loop_server`).
A Search is parsed, checked and queued there and awaits its answer from the batch worker, which decodes,
embeds and searches a whole batch and wakes the loop once per batch (`serving.batch_waiters`); calls
that may block (SearchBatch, Embed, AddItems, RemoveItems, Stats) run in a thread pool of
``--rpc-threads`` threads (`serving.grpc_servicer`).

Overload and observability (see `ServeConfig`): `RequestInterceptor` gives each call a request id, caps
concurrent Retrieval calls (`Admission`, RESOURCE_EXHAUSTED beyond) and feeds `ServerMetrics`
(``--metrics-port``); `EngineWatchdog` turns health NOT_SERVING while the engine is stuck.

Health: ``grpc.health.v1`` for the overall server ("") and for "cdd.v1.Retrieval". Reflection lists the
Retrieval, Health and Reflection services. Gallery changes (AddItems / RemoveItems) are durable when
acknowledged: the FAISS store appends them to the index folder's fsynced write log before replying
(`serving.index.durable_gallery`), Milvus keeps them in its own log.

``cdd-serve --workers N`` (N > 1) runs `serving.worker_pool` instead: N processes like this one, one port
each, sharing the write log (docs/serve-workers.md).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from serving.admission import Admission
from serving.auth import BearerTokenInterceptor
from serving.backends import BackendUnavailable, create_engine
from serving.batcher import DynamicBatcher
from serving.bundle import BundleError, load_bundle
from serving.compatibility import gallery_bundle_for
from serving.config import ServeConfig
from serving.grpc_servicer import SERVICE_NAME, RetrievalServicer, add_retrieval_to_server
from serving.index.errors import GalleryIndexError
from serving.index.gallery import GalleryIndex
from serving.index.gallery_backend import open_gallery
from serving.index.index_lock import IndexLock
from serving.log_format import configure_logging
from serving.loop_server import LoopServer, close_loop, new_loop, run_on
from serving.metrics import ServerMetrics
from serving.request_interceptor import RequestInterceptor
from serving.serve_flags import config_from_args as _config
from serving.serve_flags import flag_parser as _parser
from serving.service import RetrievalService, ServiceLimits
from serving.tls import check_bind, is_loopback, server_credentials
from serving.watchdog import EngineWatchdog
from serving.worker_pool import die_with_parent, resolve_workers, run_workers

__all__ = ["build_service", "create_server", "serve", "main"]

_LOG = logging.getLogger("serving.server")
_BACKSTOP_PER_WORKER = 4
_SERVING, _NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
_HEALTH_NAMES = ("", SERVICE_NAME)


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


def create_server(
    service: RetrievalService,
    port: int = 0,
    host: str = ServeConfig.host,
    max_workers: int = ServeConfig.max_workers,
    max_message_bytes: int = ServeConfig.max_message_bytes,
    tls_cert: Path | bytes | None = None,
    tls_key: Path | bytes | None = None,
    auth_token: str | None = None,
    serving: bool = True,
    *,
    read_token: str | None = None,
    tls_client_ca: Path | bytes | None = None,
    allow_plaintext_remote: bool = ServeConfig.allow_plaintext_remote,
    max_concurrent_rpcs: int = ServeConfig.max_concurrent_rpcs,
    max_deadline_s: float = ServeConfig.max_deadline_s,
    metrics: ServerMetrics | None = None,
    index_threads: int = ServeConfig.index_threads,
) -> tuple[LoopServer, int]:
    """A bound, not yet started grpc.aio server with Retrieval, Health and Reflection, running on its own
    event-loop thread (`serving.loop_server`); returns (server, port).

    ``port`` 0 picks a free port. TLS when ``tls_cert`` and ``tls_key`` (PEM paths or bytes) are given,
    mutual TLS with ``tls_client_ca`` (`serving.tls`); bearer tokens (health exempt) when ``auth_token``
    (admin) or ``read_token`` (read-only) is given (`serving.auth`). Health reports SERVING from the start
    when ``serving``, else NOT_SERVING until ``server.set_health(True)``. At most ``max_concurrent_rpcs``
    Retrieval calls run at once (must be below ``max_workers``, the threads that run the calls which may
    block: SearchBatch, Embed, AddItems, RemoveItems, Stats); the rest are refused by the request
    interceptor in microseconds (and counted in ``metrics``). gRPC itself refuses, uncounted, beyond
    4 x ``max_workers`` calls, which bounds memory under any flood. Every pool thread sets FAISS's OpenMP
    threads to ``index_threads`` (a per-thread setting; 0 = FAISS default). Raises
    PlaintextBindRefused (a ValueError) for a plaintext ``host`` beyond loopback, ValueError for bad
    limits, OSError if the address cannot be bound."""
    if (tls_cert is None) != (tls_key is None):
        raise ValueError("TLS needs both a certificate and a key (--tls-cert and --tls-key), got one of them")
    if tls_client_ca is not None and tls_cert is None:
        raise ValueError("mutual TLS (--tls-client-ca) needs --tls-cert and --tls-key")
    if not 1 <= max_concurrent_rpcs < max_workers:
        raise ValueError(
            f"max_concurrent_rpcs must be in 1..max_workers-1 (={max_workers - 1}), got {max_concurrent_rpcs}"
        )
    check_bind(host, tls=tls_cert is not None, allow_plaintext_remote=allow_plaintext_remote)
    tokens = auth_token or read_token
    requests = RequestInterceptor(SERVICE_NAME, Admission(max_concurrent_rpcs), metrics)
    interceptors = [requests, BearerTokenInterceptor(auth_token, read_token=read_token)] if tokens else [requests]
    credentials = (server_credentials(tls_cert, tls_key, tls_client_ca)
                   if tls_cert is not None and tls_key is not None else None)
    executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="cdd-rpc",
                                  initializer=_search_threads, initargs=(index_threads,))
    servicer = RetrievalServicer(service, executor, max_deadline_s, metrics)
    address = _address(host, port)

    async def build() -> tuple[grpc.aio.Server, health_aio.HealthServicer, int]:
        server = grpc.aio.server(
            interceptors=interceptors,
            options=[
                ("grpc.max_receive_message_length", max_message_bytes),
                ("grpc.max_send_message_length", max_message_bytes),
                ("grpc.so_reuseport", 0),
            ],
            maximum_concurrent_rpcs=_BACKSTOP_PER_WORKER * max_workers,
        )
        add_retrieval_to_server(servicer, server)
        health_servicer = health_aio.HealthServicer()
        for name in _HEALTH_NAMES:
            await health_servicer.set(name, _SERVING if serving else _NOT_SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        health_name = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
        reflection.enable_server_reflection((SERVICE_NAME, health_name, reflection.SERVICE_NAME), server)
        try:
            bound = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
        except RuntimeError as exc:
            raise OSError(f"cannot bind {address} ({exc}); is the port in use or the host not local?") from exc
        if bound == 0:
            raise OSError(f"cannot bind {address}; is the port in use or the host not local?")
        return server, health_servicer, bound

    loop, thread = new_loop()
    try:
        server, health_servicer, bound = run_on(loop, build)
    except BaseException:
        close_loop(loop, thread)
        executor.shutdown(wait=False)
        raise
    return LoopServer(server, loop, thread, health_servicer, _HEALTH_NAMES, executor), bound


def _search_threads(threads: int) -> None:
    """Set FAISS's OpenMP threads in the calling thread: omp_set_num_threads applies per thread, and
    a pool thread may search the gallery itself (SearchBatch; else each one would start one OpenMP thread
    per core)."""
    if threads > 0:
        import faiss

        faiss.omp_set_num_threads(threads)


def build_service(config: ServeConfig, metrics: ServerMetrics | None = None) -> RetrievalService:
    """Load bundle (verified), the gallery in the store its index manifest names (built with the bundle, or
    with one the bundle's manifest declares compatibility with: asymmetric retrieval) and engine; raises
    BundleError, GalleryIndexError (IndexBundleMismatch, IndexInUse, ...), BackendUnavailable.
    ``service.close()`` closes the gallery (saving a FAISS gallery's changes). ``metrics`` observes every batch."""
    manifest = load_bundle(config.bundle, verify=True)
    # Requests carry one query each and gRPC already runs them concurrently; FAISS's OpenMP threads only
    # add contention there. Set here for this thread (warmup, loading) and per RPC thread by create_server.
    _search_threads(config.index_threads)
    gallery = gallery_bundle_for(manifest, GalleryIndex.read_info(config.index).get("bundle_sha256"), config.index)
    if gallery.asymmetric:
        _LOG.info("asymmetric retrieval: queries embedded by %s, gallery %s embedded by %s", manifest.name,
                  config.index, gallery.name)
    worker_lock = None if config.worker_lock_fd is None else IndexLock.inherited(config.index, config.worker_lock_fd)
    index = open_gallery(
        config.index,
        manifest.sha256(),
        compatible=manifest.compatible_with,
        device=config.index_device,
        snapshot_interval_s=config.snapshot_interval_s,
        worker_lock=worker_lock,
    )
    try:
        engine = create_engine(config.bundle, manifest, backend=config.backend, spin=config.engine_spin,
                               threads=config.engine_threads or None)
    except BaseException:
        index.close()
        raise
    max_batch = min(config.max_batch, manifest.batch.max)
    if max_batch < config.max_batch:
        _LOG.warning("--max-batch %d exceeds the bundle's batch.max; using %d", config.max_batch, max_batch)
    batcher = DynamicBatcher(
        engine.embed,
        max_batch=max_batch,
        max_wait_ms=config.max_wait_ms,
        enabled=max_batch > 1,
        max_queue_images=max(config.max_queue_images, max_batch),
        instances=config.instances,
        observer=metrics.observe_batch if metrics is not None else None,
        thread_init=lambda: _search_threads(config.index_threads),  # its worker searches the gallery
    )
    limits = ServiceLimits(
        max_k=config.max_k, max_pixels=config.max_pixels, max_call_pixels=config.max_call_pixels,
        max_queries=config.max_queries, max_items=config.max_items,
        max_id_bytes=config.max_id_bytes, max_metadata_bytes=config.max_metadata_bytes,
    )
    try:
        return RetrievalService(engine, index, manifest, limits=limits, batcher=batcher, gallery_bundle=gallery)
    except BaseException:
        batcher.close()
        index.close()
        raise


def serve(config: ServeConfig, stop: threading.Event, ready: threading.Event | None = None) -> int:
    """Run until ``stop`` is set, then shut down gracefully; returns 0. ``ready`` is set once SERVING.
    Port 0 binds a free port; the INFO log line 'serving cdd.v1.Retrieval on HOST:PORT' names it."""
    _check_transport(config)
    metrics = ServerMetrics() if config.metrics_port is not None else None
    service = build_service(config, metrics)
    try:
        server, port = create_server(
            service,
            port=config.port,
            host=config.host,
            max_workers=config.max_workers,
            max_message_bytes=config.max_message_bytes,
            tls_cert=config.tls_cert,
            tls_key=config.tls_key,
            auth_token=config.token,
            serving=False,
            read_token=config.read_token,
            tls_client_ca=config.tls_client_ca,
            allow_plaintext_remote=config.allow_plaintext_remote,
            max_concurrent_rpcs=config.max_concurrent_rpcs,
            max_deadline_s=config.max_deadline_s,
            metrics=metrics,
            index_threads=config.index_threads,
        )
    except BaseException:
        service.close()
        raise
    server.start()
    watchdog = None
    try:
        seconds = service.warmup()
        server.set_health(True)
        if metrics is not None and config.metrics_port is not None:
            _start_metrics(metrics, service, config.host, config.metrics_port)
        if config.watchdog_s > 0:
            watchdog = EngineWatchdog(service.batcher.stalled_s, config.watchdog_s, server.set_health)
            watchdog.start()
        _LOG.info(
            "serving %s on %s (pid %d, %s, bundle %s, %d items, backend %s, engine threads %s, warmup %.2f s)",
            SERVICE_NAME,
            _address(config.host, port),
            os.getpid(),
            "mutual tls" if config.tls_client_ca else "tls" if config.tls_cert else "plaintext",
            service.manifest.name,
            service.count(),
            service.engine.name,
            _engine_threads(service.engine.describe()),
            seconds,
        )
        if ready is not None:
            ready.set()
        while not stop.wait(0.25):
            pass
        _LOG.info("shutting down: draining in-flight calls for up to %.1f s", config.grace_s)
    finally:
        if watchdog is not None:
            watchdog.stop()
        server.enter_graceful_shutdown()
        server.stop(config.grace_s).wait()
        service.close()
        if metrics is not None:
            metrics.close()
    _LOG.info("stopped")
    return 0


def _engine_threads(engine: dict) -> str:
    """The engine's intra-op thread count for the log: a number, "one per core" (ONNX Runtime's default, 0)
    or "n/a" (a backend without that setting)."""
    threads = engine.get("intra_op_threads")
    return "n/a" if threads is None else "one per core" if threads == 0 else str(threads)


def _check_transport(config: ServeConfig) -> None:
    """Refuse a plaintext remote bind or a bad TLS file before loading anything (create_server checks again)."""
    if not config.allow_plaintext_remote:
        check_bind(config.host, tls=config.tls_cert is not None)
    if config.tls_cert is not None and config.tls_key is not None:  # a bad TLS file: say which
        server_credentials(config.tls_cert, config.tls_key, config.tls_client_ca)


def _start_metrics(metrics: ServerMetrics, service: RetrievalService, host: str, port: int) -> None:
    metrics.track_gallery(service.count)
    metrics.set_build_info(service.manifest.sha256(), service.manifest.name, service.engine.name)
    bound = metrics.serve_http(port, host)
    _LOG.info("metrics on http://%s/metrics", _address(host, bound))


def main(argv: list[str] | None = None) -> int:
    """``cdd-serve``: exit 0 after a clean shutdown, 2 for a bad argument, bundle, index or backend.
    ``cdd-serve --check-gpu``: `serving.gpu_environment` (exit 0 ready, 1 not)."""
    if "--check-gpu" in (sys.argv[1:] if argv is None else argv):
        from serving.gpu_environment import check_gpu_main

        return check_gpu_main()
    args = _parser().parse_args(argv)
    if args.worker_parent_pid is not None:  # a worker of `cdd-serve --workers N`: dies with that parent
        die_with_parent(args.worker_parent_pid)
    configure_logging(args.log_level, args.log_format)
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        _LOG.info("received %s", signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        config = _config(args)
        if config.token is None and config.read_token is None and not is_loopback(config.host):
            _LOG.warning("%s without a token: anyone who can reach it can search and change the gallery",
                         config.host)
        workers = resolve_workers(config)
        if workers > 1:
            _check_transport(config)
            return run_workers(replace(config, workers=workers), sys.argv[1:] if argv is None else argv, stop)
        return serve(config, stop)
    except (BundleError, GalleryIndexError, BackendUnavailable, ValueError, OSError) as exc:
        _LOG.error("%s", exc)
        return 2
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


if __name__ == "__main__":
    sys.exit(main())
