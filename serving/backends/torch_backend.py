"""torch backend: the bundle's ``torch.export`` program (``model.pt2``) on CUDA when available, else CPU.

The program is loaded with ``torch.export.load(path).module()`` (never a pickled module) and moved to the
device with ``torch.export.passes.move_to_device_pass``; ``compile=True`` wraps it in ``torch.compile``.
"""

from __future__ import annotations

import io
import threading
from pathlib import Path
from typing import Any

import numpy as np

from serving.backends.base import BackendUnavailable, Engine
from serving.bundle import Manifest
from serving.bundle_files import read_checked_file

__all__ = ["TorchEngine"]


class TorchEngine(Engine):
    """``model.pt2`` on ``device`` ("cuda", "cuda:1", "cpu"; None = CUDA when available, else CPU).

    Raises BackendUnavailable (torch missing, no program in the bundle, CUDA asked but absent)."""

    name = "torch"

    def __init__(
        self, bundle_dir: str | Path, manifest: Manifest, device: str | None = None, compile: bool = False
    ) -> None:
        super().__init__(manifest)
        path = self._program_path(Path(bundle_dir))  # before importing torch: no program, no import
        try:
            import torch
        except ImportError as exc:
            raise BackendUnavailable(f"torch is not installed ({exc}); pip install torch") from exc
        self._torch = torch
        program_bytes = read_checked_file(path.parent, manifest.files, path.name)
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise BackendUnavailable(
                f"device {device!r} asked but torch {torch.__version__} sees no CUDA GPU"
            )
        self.device = device
        self.compiled = compile
        try:
            # The checked bytes, not the path. torch.export.load unpickles parts of the archive: only the
            # manifest's sha256 stands between a tampered .pt2 and code execution (README, Security).
            program = torch.export.load(io.BytesIO(program_bytes))
        except (RuntimeError, ValueError, OSError) as exc:
            raise BackendUnavailable(f"torch {torch.__version__} cannot load {path}: {exc}") from exc
        if device != "cpu":
            from torch.export.passes import move_to_device_pass

            program = move_to_device_pass(program, device)
        module = program.module()
        self._module = torch.compile(module) if compile else module
        self._lock = threading.Lock()

    def _program_path(self, bundle: Path) -> Path:
        name = self.manifest.backends.get("torch")
        if not name:
            raise BackendUnavailable(
                f"bundle {bundle} lists no 'torch' program (model.pt2) in manifest backends; re-export the "
                "bundle with the torch program"
            )
        return bundle / str(name)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        torch = self._torch
        with self._lock, torch.inference_mode():
            images = torch.from_numpy(batch).to(self.device)
            out = self._module(images)
            if isinstance(out, tuple | list):
                out = out[0]
            return out.float().cpu().numpy()

    def describe(self) -> dict[str, Any]:
        torch = self._torch
        info: dict[str, Any] = {
            "backend": self.name,
            "device": self.device,
            "torch": torch.__version__,
            "compiled": self.compiled,
            "model": self.manifest.backends.get("torch"),
        }
        if self.device.startswith("cuda"):
            info["gpu"] = torch.cuda.get_device_name(torch.device(self.device))
        return info
