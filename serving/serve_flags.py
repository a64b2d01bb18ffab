"""``cdd-serve``'s flags: the parser and the `ServeConfig` it fills (`serving.server.main` runs it).

Most flags are ServeConfig fields of the same name (``max_batch`` -> ``--max-batch``), typed and
defaulted by ServeConfig itself. ``--workers`` counts server processes (`serving.worker_pool`; default one
per core); ``--rpc-threads`` the threads of each that run the calls which may block, ``--max-workers``
being its deprecated old spelling.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields
from pathlib import Path

from serving.auth import READ_TOKEN_ENV, load_token
from serving.backends import BACKENDS
from serving.config import CPU_AFFINITY, MIB, ServeConfig
from serving.worker_pool import WORKER_LOCK_FLAG, WORKER_PARENT_FLAG

__all__ = ["config_from_args", "flag_parser"]

_FLAG_HELP = {
    "host": "interface to bind",
    "port": "port (0 = any free port)",
    "max_batch": "images per engine call (1 = no batching)",
    "max_wait_ms": "batch window after 1st image",
    "max_k": "largest k a search may ask for",
    "max_pixels": "largest image (w*h)",
    "max_call_pixels": "declared pixels (w*h) summed over the images of one call",
    "max_id_bytes": "longest gallery id (UTF-8 bytes)",
    "max_metadata_bytes": "largest metadata per item / filters per query (UTF-8 bytes)",
    "grace_s": "shutdown drain time for in-flight calls",
    "index_threads": "FAISS OpenMP threads per search (0 = FAISS default); 1 suits single-query traffic",
    "index_device": "where a FAISS index searches: cpu, cuda or auto (GPU when faiss has GPU support)",
    "snapshot_interval_s": "seconds between folds of the FAISS write log into a snapshot (0 = at shutdown only)",
    "max_concurrent_rpcs": "Retrieval calls in flight; more get RESOURCE_EXHAUSTED at once",
    "max_queue_images": "images waiting for the engine; more get RESOURCE_EXHAUSTED",
    "max_deadline_s": "deadline of a call that carries none (or a longer one)",
    "instances": "engine worker threads",
    "engine_threads": "ONNX Runtime CPU intra-op threads per engine call (0 = one per core)",
    "watchdog_s": "health NOT_SERVING after this long without engine progress (0 = off)",
}
"""ServeConfig fields that are flags of the same name (``max_batch`` -> ``--max-batch``), typed and
defaulted by ServeConfig itself."""


def flag_parser() -> argparse.ArgumentParser:
    """The parser of cdd-serve's flags."""
    parser = argparse.ArgumentParser(
        prog="cdd-serve", description="Serve image retrieval (cdd.v1.Retrieval) over gRPC."
    )
    parser.add_argument("--bundle", type=Path, required=True, help="model bundle directory (cdd-export)")
    parser.add_argument("--index", type=Path, required=True, help="gallery index directory (cdd-index build)")
    defaults = {f.name: f.default for f in fields(ServeConfig)}
    for name, text in _FLAG_HELP.items():
        default = defaults[name]
        parser.add_argument(
            f"--{name.replace('_', '-')}", type=type(default), default=default, help=f"{text} (default {default})"
        )
    parser.add_argument("--workers", type=int, default=ServeConfig.workers, metavar="N",
                        help="server processes, one port each from --port up (default 0 = one per core, or 1 for "
                             "an embedded milvus-lite index); see docs/serve-workers.md")
    parser.add_argument("--cpu-affinity", default=ServeConfig.cpu_affinity, choices=CPU_AFFINITY,
                        help="with --workers N no larger than the usable cores, pin each worker process to its own "
                             "share of them (auto) or leave scheduling to the OS (off) (default auto)")
    parser.add_argument("--rpc-threads", dest="max_workers", type=int, default=ServeConfig.max_workers, metavar="N",
                        help="threads per process for the calls that may block (SearchBatch, Embed, AddItems, "
                             f"RemoveItems, Stats; Search stays on the event loop) (default {ServeConfig.max_workers})")
    parser.add_argument("--max-workers", dest="max_workers", type=int, action=_DeprecatedAlias, metavar="N",
                        help="deprecated spelling of --rpc-threads")
    parser.add_argument(WORKER_LOCK_FLAG, dest="worker_lock_fd", type=int, help=argparse.SUPPRESS)
    parser.add_argument(WORKER_PARENT_FLAG, dest="worker_parent_pid", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--backend", default=ServeConfig.backend, choices=("auto", *BACKENDS))
    parser.add_argument(
        "--max-message-mb", type=float, default=ServeConfig.max_message_bytes / MIB,
        help=f"largest request/response (MiB, default {ServeConfig.max_message_bytes / MIB:g})",
    )
    parser.add_argument("--tls-cert", type=Path, help="PEM certificate chain (with --tls-key)")
    parser.add_argument("--tls-key", type=Path, help="PEM private key (with --tls-cert)")
    parser.add_argument("--tls-client-ca", type=Path, help="PEM CA: require client certificates it signed (mTLS)")
    parser.add_argument("--token-file", type=Path, help="admin bearer token, every call (else $CDD_SERVE_TOKEN)")
    parser.add_argument("--read-token-file", type=Path,
                        help="read-only bearer token: no AddItems/RemoveItems (else $CDD_SERVE_READ_TOKEN)")
    parser.add_argument("--allow-plaintext-remote", action="store_true",
                        help="allow a non-loopback --host without TLS (TLS ends at a proxy in front)")
    parser.add_argument("--engine-spin", action="store_true",
                        help="let ONNX Runtime's idle intra-op threads spin-wait (faster engine alone, slower "
                             "server when RPC threads need the cores; default off)")
    parser.add_argument("--metrics-port", type=int, help="serve Prometheus /metrics on this port (0 = any)")
    parser.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    parser.add_argument("--log-format", default=ServeConfig.log_format, choices=("text", "json"))
    parser.add_argument("--check-gpu", action="store_true",
                        help="check this environment for GPU serving (onnxruntime-gpu without onnxruntime, the CUDA "
                             "provider, TensorRT, faiss) and exit 0 when ready, 1 with the fixes; needs no --bundle")
    return parser


class _DeprecatedAlias(argparse.Action):
    """A flag's old spelling: stores like the new one and says which that is (on stderr)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: object,
                 option_string: str | None = None) -> None:
        print(f"cdd-serve: {option_string} is deprecated; use --rpc-threads (pool threads per process; "
              "--workers now counts processes)", file=sys.stderr)
        setattr(namespace, self.dest, values)


def config_from_args(args: argparse.Namespace) -> ServeConfig:
    """ServeConfig from parsed flags; raises ValueError for an out-of-range value."""
    if args.max_message_mb <= 0:
        raise ValueError(f"--max-message-mb must be > 0, got {args.max_message_mb}")
    if args.workers < 0:
        raise ValueError(f"--workers must be >= 0 (0 = one per core), got {args.workers}")
    names = (*_FLAG_HELP, "bundle", "index", "backend", "metrics_port", "log_format", "engine_spin", "max_workers",
             "worker_lock_fd", "cpu_affinity")
    same_name = {name: getattr(args, name) for name in names}
    return ServeConfig(
        **same_name,
        max_message_bytes=int(args.max_message_mb * MIB),
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_client_ca=args.tls_client_ca,
        token=load_token(args.token_file),
        read_token=load_token(args.read_token_file, variable=READ_TOKEN_ENV),
        allow_plaintext_remote=args.allow_plaintext_remote,
        workers=args.workers,
    )
