"""Optional dependency groups ("extras") of the cdd-retrieval package, and the message a command prints when
the group it needs is not installed. The base install serves (ONNX Runtime, FAISS, gRPC); ``train`` and
``export`` add torch, onnx, matplotlib and tqdm."""

from __future__ import annotations

import importlib.util

__all__ = ["EXTRA_MODULES", "missing_extra"]

EXTRA_MODULES = {
    "train": ("torch", "onnx", "matplotlib", "tqdm"),
    "export": ("torch", "onnx"),
}


def missing_extra(command: str, extra: str) -> str | None:
    """None when the modules of ``extra`` are importable, else the line to print: what is missing and the
    pip command that installs it."""
    missing = [name for name in EXTRA_MODULES[extra] if importlib.util.find_spec(name) is None]
    if not missing:
        return None
    return (f"{command}: needs the [{extra}] extra ({', '.join(missing)} not installed); install it with "
            f"pip install 'cdd-retrieval[{extra}]' (from a checkout: pip install -e '.[{extra}]')")
