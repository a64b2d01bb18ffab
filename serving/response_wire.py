"""Search responses as protobuf bytes, built from each item's pre-serialised fields plus its score.

`item_fields` encodes the parts of a ``cdd.v1.Item`` that belong to the item (``id`` = 1 and the
``metadata`` map = 3, each value in its `metadata_text` form), once, when the item enters the gallery;
`search_response` then writes a ``cdd.v1.SearchResponse`` per query as one bytes join: for every hit the
``items`` tag, the length, the stored fields and the ``score`` (field 2, little-endian float32). The bytes
parse to the same message the protobuf runtime would build from the same hits (tests check this); no
protobuf object is made per hit. Plain Python, no protobuf import (the gallery uses `item_fields`).

`item_head` goes one step further for the gallery's own items: everything of a hit's bytes in the
response but the 4 score bytes (the ``items`` tag and length, the fields, the score tag), stored once per
item; `search_reply` then interleaves those heads with the packed float32 scores in one join, with no
Python work per hit beyond a slice of the packed scores. Same bytes as `search_response` (tests check).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from serving.index.item_table import metadata_text

__all__ = ["item_fields", "item_head", "search_reply", "search_response", "search_batch_response"]

_ID_TAG = b"\x0a"  # field 1, length-delimited
_SCORE_TAG = b"\x15"  # field 2, fixed32
_METADATA_TAG = b"\x1a"  # field 3, length-delimited (one map entry)
_ENTRY_KEY_TAG = b"\x0a"
_ENTRY_VALUE_TAG = b"\x12"
_ITEMS_TAG = b"\x0a"  # SearchResponse.items = 1, SearchBatchResponse.results = 1
_FLOAT = struct.Struct("<f")


class _WireHit(Protocol):
    id: str
    score: float
    metadata: dict[str, Any]
    wire: bytes


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _string_field(tag: bytes, text: str) -> bytes:
    data = text.encode("utf-8")
    return tag + _varint(len(data)) + data


def item_fields(item_id: str, metadata: Mapping[str, Any]) -> bytes:
    """The ``id`` and ``metadata`` fields of a ``cdd.v1.Item`` (everything but the score), metadata values in
    their `metadata_text` form (what clients see)."""
    out = [_string_field(_ID_TAG, item_id)] if item_id else []
    for key, value in metadata.items():
        entry = _string_field(_ENTRY_KEY_TAG, str(key)) + _string_field(_ENTRY_VALUE_TAG, metadata_text(value))
        out.append(_METADATA_TAG + _varint(len(entry)) + entry)
    return b"".join(out)


def item_head(fields: bytes) -> bytes:
    """What precedes the score in a SearchResponse for an item whose `item_fields` are ``fields``: the
    ``items`` tag, the item's length (its fields plus the 5 bytes of the score field), the fields, the
    score tag."""
    return _ITEMS_TAG + _varint(len(fields) + 5) + fields + _SCORE_TAG


def search_reply(heads: Sequence[bytes], scores: np.ndarray) -> bytes:
    """A serialised ``cdd.v1.SearchResponse`` from the `item_head` of each hit and its score (a 1-d array,
    one per head, packed as little-endian float32): the bytes `search_response` writes for the same hits."""
    if len(heads) != len(scores):
        raise ValueError(f"{len(heads)} item heads but {len(scores)} scores; give one score per head")
    if not heads:
        return b""
    packed = np.asarray(scores).astype("<f4").tobytes()
    parts: list[bytes] = [b""] * (2 * len(heads))
    parts[0::2] = heads
    parts[1::2] = [packed[i : i + 4] for i in range(0, len(packed), 4)]
    return b"".join(parts)


def search_response(hits: Sequence[_WireHit]) -> bytes:
    """A serialised ``cdd.v1.SearchResponse`` holding ``hits`` in order; a hit without pre-serialised
    fields (``wire`` empty, e.g. from Milvus) is encoded here."""
    parts = []
    for hit in hits:
        fields = hit.wire or item_fields(hit.id, hit.metadata)
        body = fields + _SCORE_TAG + _FLOAT.pack(hit.score)
        parts.append(_ITEMS_TAG + _varint(len(body)) + body)
    return b"".join(parts)


def search_batch_response(results: Sequence[Sequence[_WireHit]]) -> bytes:
    """A serialised ``cdd.v1.SearchBatchResponse``: one SearchResponse per query, in order."""
    parts = []
    for hits in results:
        body = search_response(hits)
        parts.append(_ITEMS_TAG + _varint(len(body)) + body)
    return b"".join(parts)
