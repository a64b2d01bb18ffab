"""Serving: model bundles, inference engines, the gallery index and the gRPC search service.

The runtime (what a deployed ``cdd-serve`` loads): a Search request enters `server` (`create_server`,
`serve`), goes through `grpc_servicer` (messages <-> Python, `errors` -> status codes) to `service`
(`RetrievalService`), which checks request sizes (`request_limits`), decodes and resizes the image
(`preprocess` by the rule of `cdd_common.image_decoding`, as the `bundle` manifest says),
embeds it through `batcher` (dynamic batching) and an engine from `backends/`, and searches the gallery
index (`index/gallery.py`: the item table plus a FAISS or torch searcher). Every serving default lives in
`config` (`ServeConfig`); `auth` checks the read and admin bearer tokens, `tls` builds (mutual) TLS
credentials and refuses plaintext beyond loopback; `bundle_files` makes every loaded model file a checked
file; `_proto/` is generated from ``protos/``.
Under load: `request_interceptor` gives every call a request id (`request_context`, shown by
`log_format`), caps concurrent calls (`admission`) and counts them in `metrics` (Prometheus); the batcher
bounds its queue and splits large requests; `watchdog` turns health NOT_SERVING while the engine is
stuck; `log_rate` keeps client-error logs to a few lines per second.

The four commands:
- ``cdd-serve``  `serving.server`: run the gRPC server.
- ``cdd-search`` `serving.client`: `RetrievalClient` for apps, and a command-line search.
- ``cdd-index``  `serving.index.__main__`: build, grow, inspect, verify and evaluate a gallery index.
- ``cdd-bench``  `serving.benchmarks.__main__`: engine, serving and index benchmarks.
(``python -m serving.proto_build`` regenerates `_proto/`.)

Importing this package (or ``serving.bundle``, ``serving.preprocess``, ``serving.index``) never imports
torch, onnxruntime, tensorrt or faiss; each backend is imported when it is chosen. The import rule is written
down in docs/architecture.md: serving shares the torch-free `cdd_common` package with training (decoding rule,
atomic writes, JSON reader, ``--set`` grammar), never imports export, and from training only
``training.data.layouts``, ``training.data.records`` and ``training.metrics``, lazily, for
``cdd-index build --layout`` and ``cdd-index eval``.
"""

__all__: list[str] = []
