"""TensorRT backend: the bundle's ``model.plan`` (the TensorRT 10 and 11 named-tensor API: ``set_input_shape``,
``set_tensor_address``, ``execute_async_v3``), torch CUDA buffers.

A plan only runs on the GPU model, compute capability and TensorRT version it was built with, so the
manifest entry carries that stamp (`serving.backends.tensorrt_stamp`, the definition the exporter writes
with) and the backend refuses a plan stamped for another machine. Accepted manifest entries for
``backends["tensorrt"]``::

    {"file": "model.plan", "gpu": ..., "compute_capability": "8.9", "tensorrt": "11.4.0", ...}   (the exporter's)
    {"file": "model.plan", "stamp": {"gpu": ..., "compute_capability": "8.9", "tensorrt": "11.4.0"}}
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from serving.backends.base import BackendUnavailable, Engine
from serving.backends.tensorrt_stamp import STAMP_KEYS, machine_stamp, plan_entry, stamp_mismatch
from serving.bundle import Manifest
from serving.bundle_files import read_checked_file

__all__ = ["STAMP_KEYS", "TensorRTEngine", "current_stamp", "plan_refusal", "stamp_mismatch"]


def current_stamp(trt: Any, torch: Any, device_index: int = 0) -> dict[str, str]:
    """This machine's stamp (`serving.backends.tensorrt_stamp.machine_stamp`) for CUDA device ``device_index``."""
    return machine_stamp(torch.cuda.get_device_name(device_index), torch.cuda.get_device_capability(device_index),
                         trt.__version__)


def plan_refusal(entry: Any, here: dict[str, Any]) -> tuple[str, str | None]:
    """(plan file, None) when the ``manifest.backends["tensorrt"]`` ``entry`` was stamped for the machine whose
    stamp is ``here``, else (plan file, why not). Raises BackendUnavailable for an entry of the wrong shape."""
    try:
        file, stamp = plan_entry(entry)
    except ValueError as exc:
        raise BackendUnavailable(str(exc)) from exc
    reason = stamp_mismatch(stamp, here)
    if reason is None:
        return file, None
    return file, f"{file} was built for another machine: {reason}; re-export on this machine"


def _imports() -> tuple[Any, Any]:
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise BackendUnavailable(f"tensorrt is not installed ({exc}); pip install tensorrt") from exc
    try:
        import torch
    except ImportError as exc:
        raise BackendUnavailable(
            f"the tensorrt backend keeps its buffers in torch ({exc}); pip install torch"
        ) from exc
    if not torch.cuda.is_available():
        raise BackendUnavailable("no CUDA GPU visible (torch.cuda.is_available() is False)")
    return trt, torch


class TensorRTEngine(Engine):
    """The bundle's TensorRT plan on CUDA device ``device_index``. Runs are serialised by a lock (one
    execution context). Raises BackendUnavailable (no plan, no tensorrt/GPU, stamp mismatch, bad plan)."""

    name = "tensorrt"

    def __init__(self, bundle_dir: str | Path, manifest: Manifest, device_index: int = 0) -> None:
        super().__init__(manifest)
        entry = manifest.backends.get("tensorrt")
        if entry is None:  # checked before importing tensorrt or torch (or touching CUDA)
            raise BackendUnavailable(
                "the bundle has no TensorRT plan (export on a machine with TensorRT adds one)"
            )
        try:
            plan_entry(entry)  # the entry's shape is checked before importing tensorrt or torch
        except ValueError as exc:
            raise BackendUnavailable(str(exc)) from exc
        trt, torch = _imports()
        here = current_stamp(trt, torch, device_index)
        file, reason = plan_refusal(entry, here)
        if reason:
            raise BackendUnavailable(reason)
        path = Path(bundle_dir) / file
        plan = read_checked_file(bundle_dir, manifest.files, file)  # the checked bytes are what runs
        self._trt, self._torch, self._stamp = trt, torch, here
        self.device = f"cuda:{device_index}"
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self._engine = runtime.deserialize_cuda_engine(plan)
        if self._engine is None:
            raise BackendUnavailable(f"TensorRT {trt.__version__} could not deserialise {path}; re-export it")
        self._context = self._engine.create_execution_context()
        self._input, self._output = manifest.input.name, manifest.output.name
        self._check_tensors(path)
        self._lock = threading.Lock()

    def _check_tensors(self, path: Path) -> None:
        trt, engine = self._trt, self._engine
        names = {engine.get_tensor_name(i) for i in range(engine.num_io_tensors)}
        inputs = {n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT}
        if self._input not in inputs or self._output not in names - inputs:
            raise BackendUnavailable(
                f"{path}: inputs {sorted(inputs)}, outputs {sorted(names - inputs)}; manifest expects input "
                f"{self._input!r} and output {self._output!r}; re-export the bundle"
            )
        if engine.get_tensor_dtype(self._input) != trt.uint8:
            raise BackendUnavailable(
                f"{path}: input is {engine.get_tensor_dtype(self._input)}, expected uint8"
            )
        _, _, max_shape = engine.get_tensor_profile_shape(self._input, 0)
        if max_shape[0] < self.max_batch:
            raise BackendUnavailable(
                f"{path}: profile max batch {max_shape[0]} < manifest batch.max {self.max_batch}; re-export"
            )
        self._output_dtype = {trt.float32: self._torch.float32, trt.float16: self._torch.float16}[
            engine.get_tensor_dtype(self._output)
        ]

    def _run(self, batch: np.ndarray) -> np.ndarray:
        torch = self._torch
        with self._lock, torch.cuda.device(self.device):
            stream = torch.cuda.current_stream()
            images = torch.from_numpy(batch).to(self.device)
            self._context.set_input_shape(self._input, tuple(images.shape))
            out = torch.empty(
                tuple(self._context.get_tensor_shape(self._output)),
                dtype=self._output_dtype,
                device=self.device,
            )
            self._context.set_tensor_address(self._input, images.data_ptr())
            self._context.set_tensor_address(self._output, out.data_ptr())
            if not self._context.execute_async_v3(stream.cuda_stream):
                raise RuntimeError(f"TensorRT execution failed for a batch of {batch.shape[0]} images")
            result = out.float().cpu().numpy()  # .cpu() waits for the stream
        return result

    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "device": self.device,
            **self._stamp,
            "model": plan_entry(self.manifest.backends["tensorrt"])[0],
        }
