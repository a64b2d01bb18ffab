"""Inference backends behind one interface (`Engine`), chosen by `create_engine`.

Backend modules are imported inside `create_engine`, so importing this package imports neither torch,
onnxruntime nor tensorrt; and a backend whose model file the bundle lacks is skipped before its module
(or its runtime, or CUDA) is imported.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from serving.backends.base import BackendUnavailable, Engine
from serving.bundle import Manifest, load_bundle

__all__ = ["BACKENDS", "BackendUnavailable", "Engine", "create_engine"]

BACKENDS = ("tensorrt", "onnxruntime-cuda", "onnxruntime-cpu", "torch")
"""Backend names in the order ``backend="auto"`` tries them."""

_LOG = logging.getLogger("serving.backends")

_MANIFEST_KEY = {
    "tensorrt": "tensorrt",
    "onnxruntime-cuda": "onnxruntime",
    "onnxruntime-cpu": "onnxruntime",
    "torch": "torch",
}
"""Backend name -> the ``manifest.backends`` key naming its model file."""


def _tensorrt(
    bundle: Path, manifest: Manifest, torch_compile: bool, threads: int | None, spin: bool
) -> Engine:
    from serving.backends.tensorrt_backend import TensorRTEngine

    return TensorRTEngine(bundle, manifest)


def _onnxruntime_cuda(
    bundle: Path, manifest: Manifest, torch_compile: bool, threads: int | None, spin: bool
) -> Engine:
    from serving.backends.onnxruntime_backend import OnnxRuntimeEngine

    return OnnxRuntimeEngine(bundle, manifest, device="cuda", spin=spin)


def _onnxruntime_cpu(
    bundle: Path, manifest: Manifest, torch_compile: bool, threads: int | None, spin: bool
) -> Engine:
    from serving.backends.onnxruntime_backend import OnnxRuntimeEngine

    return OnnxRuntimeEngine(bundle, manifest, device="cpu", threads=threads, spin=spin)


def _torch(
    bundle: Path, manifest: Manifest, torch_compile: bool, threads: int | None, spin: bool
) -> Engine:
    from serving.backends.torch_backend import TorchEngine

    return TorchEngine(bundle, manifest, compile=torch_compile)


_FACTORIES: dict[str, Callable[[Path, Manifest, bool, int | None], Engine]] = {
    "tensorrt": _tensorrt,
    "onnxruntime-cuda": _onnxruntime_cuda,
    "onnxruntime-cpu": _onnxruntime_cpu,
    "torch": _torch,
}


def create_engine(
    bundle_dir: str | Path,
    manifest: Manifest | None = None,
    backend: str = "auto",
    log: logging.Logger | None = None,
    *,
    torch_compile: bool = False,
    threads: int | None = None,
    spin: bool = True,
) -> Engine:
    """Open the bundle at ``bundle_dir`` with ``backend`` (one of BACKENDS) or, for "auto", the first of
    BACKENDS that works here, logging (INFO) why each earlier one was skipped.

    ``manifest``: an already loaded manifest (else it is read and its files verified). ``torch_compile``
    applies ``torch.compile`` in the torch backend; ``threads`` sets ONNX Runtime CPU intra-op threads
    (None = its default, one per core; the other backends ignore it); ``spin`` whether ONNX Runtime's idle
    intra-op threads spin-wait (its default; cdd-serve turns it off, see ServeConfig). Raises
    BackendUnavailable (explicit
    backend cannot run, or no backend can, with every reason), ValueError for an unknown backend name,
    BundleError."""
    log = log or _LOG
    bundle = Path(bundle_dir)
    if manifest is None:
        manifest = load_bundle(bundle)
    if backend != "auto":
        if backend not in _FACTORIES:
            raise ValueError(f"unknown backend {backend!r}; choose one of: auto, {', '.join(BACKENDS)}")
        engine = _FACTORIES[backend](bundle, manifest, torch_compile, threads, spin)
        log.info("backend %s on %s", engine.name, engine.device)
        return engine
    reasons: list[str] = []
    for name in BACKENDS:
        if _MANIFEST_KEY[name] not in manifest.backends:
            reasons.append(f"{name}: the bundle has no {_MANIFEST_KEY[name]} model file")
            log.info("backend %s skipped: the bundle has no %s model file", name, _MANIFEST_KEY[name])
            continue
        try:
            engine = _FACTORIES[name](bundle, manifest, torch_compile, threads, spin)
        except BackendUnavailable as exc:
            reasons.append(f"{name}: {exc}")
            log.info("backend %s skipped: %s", name, exc)
            continue
        log.info("backend %s selected on %s", engine.name, engine.device)
        return engine
    raise BackendUnavailable(f"no inference backend can run bundle {bundle} here:\n  " + "\n  ".join(reasons))
