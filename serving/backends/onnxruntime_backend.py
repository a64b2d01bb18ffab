"""ONNX Runtime backend: the bundle's ``model.onnx`` on the CUDA or CPU execution provider.

A CUDA session that silently runs on CPU (onnxruntime-gpu without a usable GPU or CUDA libraries) is
detected from the session's actual providers, and reported as BackendUnavailable.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from serving.backends.base import BackendUnavailable, Engine
from serving.bundle import Manifest
from serving.bundle_files import read_checked_file

__all__ = ["INTRA_OP_SPIN_KEY", "OnnxRuntimeEngine"]

_PROVIDERS = {"cuda": "CUDAExecutionProvider", "cpu": "CPUExecutionProvider"}
INTRA_OP_SPIN_KEY = "session.intra_op.allow_spinning"
"""ONNX Runtime session config entry: "1" lets idle intra-op threads spin-wait, "0" makes them sleep."""


def _import_onnxruntime(device: str) -> Any:
    try:
        import onnxruntime
    except ImportError as exc:
        package = "onnxruntime-gpu" if device == "cuda" else "onnxruntime"
        raise BackendUnavailable(f"onnxruntime is not installed ({exc}); pip install {package}") from exc
    return onnxruntime


class OnnxRuntimeEngine(Engine):
    """``model.onnx`` on ``device`` "cuda" (CUDAExecutionProvider) or "cpu"; ``threads`` sets intra-op
    threads (None = onnxruntime's default); ``spin`` lets idle intra-op threads spin-wait for the next
    operator (onnxruntime's default: fastest when the engine has the CPU to itself, but in a server the
    spinning threads take the cores the RPC threads need). Raises BackendUnavailable when the provider
    cannot run here."""

    def __init__(
        self, bundle_dir: str | Path, manifest: Manifest, device: str = "cpu", threads: int | None = None,
        spin: bool = True,
    ) -> None:
        super().__init__(manifest)
        if device not in _PROVIDERS:
            raise ValueError(f"device must be 'cuda' or 'cpu', found {device!r}")
        self.name = f"onnxruntime-{device}"
        self.device = device
        ort = _import_onnxruntime(device)
        self._ort_version = ort.__version__
        wanted = _PROVIDERS[device]
        available = ort.get_available_providers()
        if wanted not in available:
            hint = (
                "pip uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime-gpu (both installed hide the "
                "CUDA provider; cdd-serve --check-gpu checks)" if device == "cuda" else "reinstall"
            )
            raise BackendUnavailable(
                f"onnxruntime {ort.__version__} has no {wanted} (available: {', '.join(available)}); {hint}"
            )
        model, model_bytes = self._model_bytes(Path(bundle_dir))
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        options.add_session_config_entry(INTRA_OP_SPIN_KEY, "1" if spin else "0")
        providers = [wanted] if device == "cpu" else [wanted, "CPUExecutionProvider"]
        try:
            # The checked bytes, not the path: what was hashed is what runs.
            self._session = ort.InferenceSession(model_bytes, sess_options=options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own untyped errors (Fail, RuntimeException, ...)
            raise BackendUnavailable(f"onnxruntime cannot load {model}: {exc}") from exc
        actual = self._session.get_providers()
        if not actual or actual[0] != wanted:
            raise BackendUnavailable(
                f"onnxruntime session fell back to {actual} instead of {wanted} (no usable GPU or CUDA/cuDNN "
                "libraries not found); check `nvidia-smi` and the onnxruntime-gpu CUDA requirements"
            )
        self._providers = actual
        self._input_name = self._check_io(model)
        self._output_name = manifest.output.name

    def _model_bytes(self, bundle: Path) -> tuple[Path, bytes]:
        name = self.manifest.backends.get("onnxruntime")
        if not name:
            raise BackendUnavailable(
                f"bundle {bundle} lists no 'onnxruntime' model in manifest backends; re-export the bundle"
            )
        return bundle / str(name), read_checked_file(bundle, self.manifest.files, str(name))

    def _check_io(self, model: Path) -> str:
        inputs = {i.name: i for i in self._session.get_inputs()}
        outputs = {o.name for o in self._session.get_outputs()}
        spec = self.manifest.input
        if spec.name not in inputs or self.manifest.output.name not in outputs:
            raise BackendUnavailable(
                f"{model}: graph has inputs {sorted(inputs)} and outputs {sorted(outputs)}, manifest expects "
                f"input {spec.name!r} and output {self.manifest.output.name!r}; re-export the bundle"
            )
        if inputs[spec.name].type != "tensor(uint8)":
            raise BackendUnavailable(
                f"{model}: input {spec.name!r} is {inputs[spec.name].type}, manifest expects tensor(uint8)"
            )
        return spec.name

    def _run(self, batch: np.ndarray) -> np.ndarray:
        # InferenceSession.run is safe to call from several threads at once.
        return self._session.run([self._output_name], {self._input_name: batch})[0]

    def describe(self) -> dict[str, Any]:
        session_options = self._session.get_session_options()
        return {
            "backend": self.name,
            "device": self.device,
            "providers": list(self._providers),
            "onnxruntime": self._ort_version,
            "model": self.manifest.backends.get("onnxruntime"),
            # Read back from the session: what runs, not what was asked for.
            "intra_op_spinning": session_options.get_session_config_entry(INTRA_OP_SPIN_KEY) == "1",
            "intra_op_threads": session_options.intra_op_num_threads,
        }
