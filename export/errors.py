"""The export stage's error hierarchy: every error a user can fix derives from :class:`ExportError`.

``cdd-export`` turns an ExportError into one message and a non-zero exit code; anything else is a bug and
keeps its traceback. Gate, config, TensorRT and bundle errors are defined next to the code that raises them
(``export.parity.ParityGateError``, ``export.config.ExportConfigError``,
``export.tensorrt_build.TensorRTUnavailable``, ``export.bundle_writer.BundleWriteError``).
"""

from __future__ import annotations

__all__ = ["ExportError", "RunDirError"]


class ExportError(Exception):
    """Base of all export errors that are the input's fault, not a bug; the message names the fix."""


class RunDirError(ExportError, ValueError):
    """A training run dir is missing a file, is from another schema, or its spec and weights disagree."""
