"""Results blocks in markdown: a line ``<!-- results:NAME -->``, the rendered table, a line
``<!-- /results:NAME -->``. A marker counts only on a line of its own, so prose may quote one.

Everything between an opening and its closing marker belongs to the renderer: `replace_blocks` swaps it for
what the render function gives for NAME, keeping the markers and the text around them as they are.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Block", "MarkerError", "find_blocks", "replace_blocks"]

_MARKER = re.compile(r"^<!-- (/?)results:([A-Za-z0-9_.-]+) -->[ \t]*$", re.MULTILINE)


class MarkerError(ValueError):
    """Unbalanced, nested or repeated results markers."""


@dataclass(frozen=True)
class Block:
    """One results block: NAME and the character span of its content (between the two markers)."""

    name: str
    start: int
    end: int


def find_blocks(text: str, source: str = "<text>") -> list[Block]:
    """Every results block of ``text`` in order. Raises MarkerError naming ``source`` and the line for a
    closing marker without its opening, an opening inside another block, a block never closed, or a name used
    twice."""
    blocks: list[Block] = []
    open_name, open_end, open_line = None, 0, 0
    for match in _MARKER.finditer(text):
        closing, name = match.group(1) == "/", match.group(2)
        line = text.count("\n", 0, match.start()) + 1
        if not closing:
            if open_name is not None:
                raise MarkerError(f"{source}:{line}: results:{name} opens inside results:{open_name} "
                                  f"(opened at line {open_line}); close it first with <!-- /results:{open_name} -->")
            open_name, open_end, open_line = name, match.end(), line
        elif name != open_name:
            raise MarkerError(f"{source}:{line}: <!-- /results:{name} --> closes a block that is not open"
                              + (f" (results:{open_name} is, since line {open_line})" if open_name else ""))
        else:
            if any(b.name == name for b in blocks):
                raise MarkerError(f"{source}:{line}: results:{name} appears twice; each table is rendered once "
                                  "per file")
            blocks.append(Block(name, open_end, match.start()))
            open_name = None
    if open_name is not None:
        raise MarkerError(f"{source}:{open_line}: results:{open_name} is never closed; add "
                          f"<!-- /results:{open_name} --> after its table")
    return blocks


def replace_blocks(text: str, render: Callable[[str], str], source: str = "<text>") -> str:
    """``text`` with the content of every block replaced by ``"\\n" + render(NAME).strip() + "\\n"``."""
    out, last = [], 0
    for block in find_blocks(text, source):
        out += [text[last:block.start], "\n", render(block.name).strip(), "\n"]
        last = block.end
    out.append(text[last:])
    return "".join(out)
