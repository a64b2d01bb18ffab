"""`preset_lines`: every preset in training/presets with the start of its header comment, for ``--help``."""

from __future__ import annotations

from training.config import PRESET_DIR

__all__ = ["preset_names", "preset_lines"]


def preset_names() -> list[str]:
    """Names accepted by ``--preset``: the TOML files of training/presets, sorted."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.toml"))


def _summary(name: str) -> str:
    for line in (PRESET_DIR / f"{name}.toml").read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").split(": ")[0].split(". ")[0].strip().rstrip(":")
    return ""


def preset_lines() -> str:
    """One "  name  summary" line per preset."""
    names = preset_names()
    width = max(map(len, names), default=0)
    return "\n".join(f"  {name:<{width}}  {_summary(name)}" for name in names)
