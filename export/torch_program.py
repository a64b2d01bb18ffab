"""Export the deploy wrapper as a ``torch.export`` program (``model.pt2``) with a dynamic batch dimension.

The serving torch backend loads it with ``torch.export.load(path).module()``: no Python class of this
project is needed to run it, only torch.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from export.errors import ExportError

__all__ = ["TorchProgramError", "export_program", "program_embedder"]


class TorchProgramError(ExportError):
    """torch.export could not trace the wrapper, or the saved program cannot be loaded back."""


def export_program(wrapper: nn.Module, path: str | Path, input_size: tuple[int, int],
                   batch_range: tuple[int, int]) -> Path:
    """Trace ``wrapper`` (uint8 (N, H, W, 3) -> (N, D)) with N dynamic in ``batch_range`` (inclusive) and
    save it to ``path``. Raises TorchProgramError when tracing fails."""
    path = Path(path)
    height, width = input_size
    low, high = batch_range
    example = torch.zeros(max(2, low), height, width, 3, dtype=torch.uint8)
    batch = torch.export.Dim("batch", min=low, max=max(high, low + 1))
    wrapper.eval()
    try:
        program = torch.export.export(wrapper, (example,), dynamic_shapes={"images": {0: batch}})
    except Exception as exc:  # torch.export raises many types (UserError, GuardOnDataDependent, ...)
        raise TorchProgramError(f"torch.export failed for the deploy wrapper: {type(exc).__name__}: "
                                f"{str(exc)[:300]}") from exc
    torch.export.save(program, str(path))
    return path


def program_embedder(path: str | Path) -> Callable[[np.ndarray], np.ndarray]:
    """Load ``path`` back exactly as serving does and return uint8 (N, H, W, 3) -> float32 (N, D).
    Raises TorchProgramError when the file cannot be loaded."""
    try:
        module = torch.export.load(str(path)).module()
    except Exception as exc:  # deserialisation errors have no common base class
        raise TorchProgramError(f"{path}: torch.export.load failed: {type(exc).__name__}: {exc}") from exc

    def embed(images: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return module(torch.from_numpy(np.ascontiguousarray(images, dtype=np.uint8))).numpy()

    return embed
