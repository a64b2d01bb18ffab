"""`Hit` (one search result) and `FoundItems`: the hits of one query as columns, best first.

A gallery search captures, while it holds its read lock, the columns of the rows it found; nothing of the
gallery is read later, so a change after the search cannot alter the result. The two ways out:
`hits` makes one `Hit` per item (the search API's list, metadata copied as before), and `reply` writes
the ``cdd.v1.SearchResponse`` bytes from the items' stored heads and the packed scores in one join
(`serving.response_wire.search_reply`), with no object per hit; the gRPC Search handler uses `reply`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from serving.response_wire import item_fields, item_head, search_reply

__all__ = ["FoundItems", "Hit"]


@dataclass(frozen=True)
class Hit:
    """One search result: item ``id``, ``score`` (cosine similarity, higher is closer), a metadata copy;
    ``wire``: the item's pre-serialised response fields (`serving.response_wire`), empty when not known."""

    id: str
    score: float
    metadata: dict[str, Any] = field(default_factory=dict)
    wire: bytes = field(default=b"", compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class FoundItems:
    """One query's hits, best first: ``ids``, ``scores`` (1-d array, one per id), ``metadata`` (the stored
    dicts; `hits` copies them), ``wire`` (each item's `item_fields`, or b"" when unknown) and ``heads``
    (each item's `item_head`). Immutable; every column has one entry per hit."""

    ids: Sequence[str]
    scores: np.ndarray
    metadata: Sequence[dict[str, Any]]
    wire: Sequence[bytes]
    heads: Sequence[bytes]

    @classmethod
    def from_hits(cls, hits: Sequence[Hit]) -> FoundItems:
        """The columns of ready-made hits (a store without stored response fields, e.g. Milvus); `hits`
        gives back equal hits, `reply` the bytes `search_response` writes for them."""
        wire = [hit.wire for hit in hits]
        fields = [w or item_fields(hit.id, hit.metadata) for w, hit in zip(wire, hits, strict=True)]
        return cls([hit.id for hit in hits], np.asarray([hit.score for hit in hits], dtype=np.float64),
                   [hit.metadata for hit in hits], wire, [item_head(f) for f in fields])

    def __len__(self) -> int:
        return len(self.ids)

    def top(self, k: int) -> FoundItems:
        """The first ``k`` hits (all of them when there are fewer)."""
        if k >= len(self.ids):
            return self
        return FoundItems(self.ids[:k], self.scores[:k], self.metadata[:k], self.wire[:k], self.heads[:k])

    def hits(self) -> list[Hit]:
        """One `Hit` per item, in order, each with a copy of its metadata."""
        return [Hit(item_id, score, dict(meta), wire)
                for item_id, score, meta, wire in zip(self.ids, self.scores.tolist(), self.metadata, self.wire,
                                                      strict=True)]

    def reply(self) -> bytes:
        """The serialised ``cdd.v1.SearchResponse`` of these hits."""
        return search_reply(self.heads, self.scores)
