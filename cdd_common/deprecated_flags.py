"""Old flag spellings kept for one release: they still work, and each use prints one line naming the new one.

`add_deprecated_alias` adds the old spelling to an argparse parser, hidden from ``--help``, storing into the
new flag's destination (appending when the new flag appends). `deprecation_notice` prints the same line for
spellings argparse does not see (a ``--set`` key). Stdlib only.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["add_deprecated_alias", "deprecation_notice"]


def deprecation_notice(prog: str, old: str, new: str) -> None:
    """Print ``PROG: OLD is deprecated; use NEW`` on stderr (one line)."""
    print(f"{prog}: {old} is deprecated; use {new}", file=sys.stderr)


class _DeprecatedAlias(argparse.Action):
    def __init__(self, option_strings: Sequence[str], dest: str, *, new: str,
                 rewrite: Callable[[Any], Any] | None, append: bool, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, default=argparse.SUPPRESS, help=argparse.SUPPRESS, **kwargs)
        self.new, self.rewrite, self.append = new, rewrite, append

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        value = self.const if self.nargs == 0 else values
        deprecation_notice(parser.prog, option_string or self.option_strings[0], self.new.format(value=value))
        stored = self.rewrite(value) if self.rewrite is not None else value
        if self.append:
            stored = [*(getattr(namespace, self.dest, None) or []), stored]
        setattr(namespace, self.dest, stored)


def add_deprecated_alias(parser: argparse.ArgumentParser, old: str, *, new: str,
                         dest: str, type: Callable[[str], Any] | None = None, choices: Sequence[Any] | None = None,
                         value: Any = None, rewrite: Callable[[Any], Any] | None = None,
                         append: bool = False, metavar: str | None = None) -> None:
    """Accept ``old`` as another spelling of the flag stored at ``dest``.

    ``new`` is the spelling the notice names; ``{value}`` in it is replaced by the value given. With ``value``
    set, ``old`` takes no argument and stores ``value`` (a switch such as ``--int8``); otherwise it takes one
    argument, converted by ``type`` and checked against ``choices``. ``rewrite`` maps what is stored (e.g.
    ``nlist=8`` -> ``index.nlist=8``); ``append`` appends to the list at ``dest`` like an ``append`` flag."""
    kwargs: dict[str, Any] = {"nargs": 0, "const": value} if value is not None else {
        "type": type, "choices": choices, "metavar": metavar}
    parser.add_argument(old, dest=dest, action=_DeprecatedAlias, new=new, rewrite=rewrite, append=append, **kwargs)
