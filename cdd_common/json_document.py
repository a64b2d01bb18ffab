"""`read_json_object`: read a JSON document that must hold an object, or raise the caller's error.
The one reader of training, export and serving (`cdd_common`, torch-free).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["read_json_object"]


def read_json_object(path: str | Path, error: type[Exception], what: str, fix: str) -> dict[str, Any]:
    """The object in JSON file ``path``. Raises ``error`` naming the file and ``what`` it should hold,
    ending with ``fix``, when it is missing, unreadable, not JSON or not an object."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise error(f"{path}: {what} not found; {fix}") from None
    except (OSError, ValueError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise error(f"{path}: {what} is not readable JSON ({exc}); {fix}") from exc
    if not isinstance(data, dict):
        raise error(f"{path}: {what} must be a JSON object, found {type(data).__name__}; {fix}")
    return data
