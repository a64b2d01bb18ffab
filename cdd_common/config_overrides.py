"""The one override grammar of every command that takes ``--set`` (``cdd-train``, ``cdd-export``, ``cdd-index``).

``--set section.key=value``: the key is a dotted path through a config's nested frozen dataclasses, and
the value is parsed by that field's own type, so no quoting is needed:

- ``bool``: ``true`` or ``false``;  ``int``: ``3``;  ``float``: ``0.02``, ``1e-5``;
- ``str``: the text as given (``data.root=data/x``); surrounding quotes are removed (``"data/x"``);
- fixed tuples: comma-separated, brackets optional (``data.mean=0.5,0.5,0.5`` or ``[0.5, 0.5, 0.5]``).

An unknown key is rejected with the list of valid keys. Stdlib only (no torch).
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Iterable
from typing import Any

__all__ = ["apply_overrides", "override_keys"]


def override_keys(config_cls: type) -> dict[str, Any]:
    """Dotted key -> type hint of every leaf field of ``config_cls`` (nested dataclasses are recursed)."""
    keys: dict[str, Any] = {}
    for name, hint in typing.get_type_hints(config_cls).items():
        if dataclasses.is_dataclass(hint):
            keys.update({f"{name}.{key}": sub for key, sub in override_keys(hint).items()})
        else:
            keys[name] = hint
    return keys


def apply_overrides(
    tree: dict[str, Any], config_cls: type, overrides: Iterable[str], error: type[Exception]
) -> dict[str, Any]:
    """A copy of ``tree`` (the config as nested dicts, possibly partial) with each ``key=value`` override set,
    the value parsed by the type of that field of ``config_cls``. Raises ``error`` for a malformed
    override, an unknown key (listing the valid ones) or a value its field's type cannot take."""
    keys = override_keys(config_cls)
    out = _copy(tree)
    for text in overrides:
        key, sep, raw = text.partition("=")
        key = key.strip()
        if not sep or not key:
            raise error(f"--set {text!r}: expected key=value with a dotted key, e.g. {next(iter(keys))}=...")
        if key not in keys:
            raise error(f"--set {key}: unknown key; valid keys are {', '.join(_near(key, keys))}")
        *parents, leaf = key.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = _parse(key, raw.strip(), keys[key], error)
    return out


def _copy(tree: dict[str, Any]) -> dict[str, Any]:
    return {k: _copy(v) if isinstance(v, dict) else v for k, v in tree.items()}


def _near(key: str, keys: dict[str, Any]) -> list[str]:
    """The valid keys under the longest known prefix of ``key`` (all keys when none is known)."""
    parts = key.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        prefix = ".".join(parts[:cut]) + "."
        under = sorted(k for k in keys if k.startswith(prefix))
        if under:
            return under
    return sorted(keys)


def _parse(key: str, raw: str, hint: Any, error: type[Exception]) -> Any:
    if typing.get_origin(hint) is tuple:
        return _parse_tuple(key, raw, typing.get_args(hint), error)
    try:
        return _parse_scalar(raw, hint)
    except ValueError:
        kind = {bool: "true or false", int: "an integer", float: "a number"}.get(hint, str(hint))
        raise error(f"--set {key}={raw}: expected {kind}") from None


def _parse_scalar(raw: str, hint: Any) -> Any:
    if hint is bool:
        if raw.lower() not in ("true", "false"):
            raise ValueError(raw)
        return raw.lower() == "true"
    if hint is int:
        return int(raw)
    if hint is float:
        return float(raw)
    if hint is str:
        quoted = len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "\"'"
        return raw[1:-1] if quoted else raw
    raise ValueError(f"fields of type {hint} cannot be overridden")


def _parse_tuple(key: str, raw: str, args: tuple[Any, ...], error: type[Exception]) -> tuple[Any, ...]:
    inner = raw[1:-1] if raw.startswith("[") and raw.endswith("]") else raw
    items = [item.strip() for item in inner.split(",") if item.strip()]
    variadic = len(args) == 2 and args[1] is Ellipsis
    if not variadic and len(items) != len(args):
        raise error(f"--set {key}={raw}: expected {len(args)} comma-separated values, found {len(items)}")
    hints = [args[0]] * len(items) if variadic else list(args)
    return tuple(_parse(key, item, hint, error) for item, hint in zip(items, hints, strict=True))
