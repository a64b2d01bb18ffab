"""FAISS index factory strings for gallery indexes (``cdd-index build --factory "IVF256,PQ16x4fs"``).

Any string ``faiss.index_factory(dim, string, METRIC_INNER_PRODUCT)`` accepts can hold a gallery:
- gallery labels: indexes that cannot take ids (Flat, PQ, HNSW, refine wrappers, ...) are wrapped in
  ``IDMap2``; IVF indexes (also behind a pre-transform such as OPQ) take the labels themselves;
- removal: FAISS ``remove_ids`` where the structure has it, else tombstones the searcher skips (and the
  gallery rebuilds the structure once they pile up);
- the operating point: ``nprobe`` where the structure has an inverted file, else ``ef_search`` where it is
  an HNSW graph, else none (`search_knob`); ``cdd-index build`` tunes it like for the named types.
The named ``--index-type`` values are these factory strings (`named_type_factory`): flat = ``Flat``,
ivf = ``IVF{nlist},Flat``, ivfpq = ``IVF{nlist},PQ{pq_m}x{pq_nbits}``, hnsw = ``HNSW{hnsw_m}``.
"""

from __future__ import annotations

from typing import Any

import faiss

__all__ = ["FactoryError", "check_factory", "new_factory_index", "named_type_factory", "search_knob",
           "set_search_knob", "nlist_of", "lossy"]

_KNOB_PARAMETER = {"nprobe": "nprobe", "ef_search": "efSearch"}
_LOSSY_CODES = ("PQ", "SQ", "RQ", "LSQ", "RaBitQ", "LSH")


class FactoryError(ValueError):
    """A factory string FAISS does not accept for inner-product search at this dimension."""


def named_type_factory(index_type: str, options: dict[str, Any]) -> str:
    """The factory string of a named index type with its (resolved) options."""
    if index_type == "flat":
        return "Flat"
    if index_type == "ivf":
        return f"IVF{options.get('nlist', '{nlist}')},Flat"
    if index_type == "ivfpq":
        return f"IVF{options.get('nlist', '{nlist}')},PQ{options.get('pq_m', '{m}')}x{options.get('pq_nbits', 8)}"
    if index_type == "hnsw":
        return f"HNSW{options.get('hnsw_m', 32)}"
    raise FactoryError(f"no factory string for index type {index_type!r}")


def _build(spec: str, dim: int) -> Any:
    if not isinstance(spec, str) or not spec.strip():
        raise FactoryError(f"--factory: expected a FAISS index factory string like 'IVF256,PQ16x4fs', found {spec!r}")
    try:
        index = faiss.index_factory(dim, spec, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        reason = str(exc).strip().splitlines()[-1]
        raise FactoryError(
            f"--factory {spec!r}: FAISS refuses it for dim {dim} with inner product ({reason}); see "
            "https://github.com/facebookresearch/faiss/wiki/The-index-factory, e.g. 'IVF256,Flat', "
            "'IVF256,PQ16x4fs', 'HNSW32', 'OPQ16,IVF256,PQ16'"
        ) from None
    if index.metric_type != faiss.METRIC_INNER_PRODUCT:
        raise FactoryError(f"--factory {spec!r}: the index does not search by inner product (cosine)")
    return index


def check_factory(spec: str, dim: int) -> None:
    """Raise FactoryError (naming the string, dim and FAISS's reason) unless FAISS builds it for IP."""
    _build(spec, dim)


def _takes_ids(index: Any) -> bool:
    outer = faiss.downcast_index(index)
    if isinstance(outer, faiss.IndexIDMap | faiss.IndexIDMap2):
        return True
    if isinstance(outer, faiss.IndexPreTransform):
        outer = faiss.downcast_index(outer.index)
    return isinstance(outer, faiss.IndexIVF)


def new_factory_index(spec: str, dim: int) -> Any:
    """A fresh (maybe untrained) index for ``spec`` that takes gallery labels (``add_with_ids``)."""
    index = _build(spec, dim)
    return index if _takes_ids(index) else faiss.IndexIDMap2(index)


def _inner(index: Any) -> Any:
    index = faiss.downcast_index(index)
    while True:
        if isinstance(index, faiss.IndexIDMap | faiss.IndexIDMap2 | faiss.IndexPreTransform):
            index = faiss.downcast_index(index.index)
        elif isinstance(index, faiss.IndexRefine):
            index = faiss.downcast_index(index.base_index)
        else:
            return index


def search_knob(index: Any) -> str | None:
    """"nprobe" (an inverted file), "ef_search" (an HNSW graph) or None (nothing to tune)."""
    if faiss.try_extract_index_ivf(index) is not None:
        return "nprobe"
    if isinstance(_inner(index), faiss.IndexHNSW):
        return "ef_search"
    return None


def set_search_knob(index: Any, name: str, value: int) -> None:
    """Set ``nprobe`` / ``ef_search`` through any wrappers; ValueError when the index has no such knob."""
    if name != search_knob(index):
        raise ValueError(f"{name!r} is not a search parameter of this index (its knob: {search_knob(index)})")
    faiss.ParameterSpace().set_index_parameter(index, _KNOB_PARAMETER[name], int(value))


def nlist_of(index: Any) -> int | None:
    ivf = faiss.try_extract_index_ivf(index)
    return None if ivf is None else int(ivf.nlist)


def lossy(spec: str) -> bool:
    """Whether the codes are compressed (results are then re-ranked with the stored exact vectors)."""
    return any(code in spec for code in _LOSSY_CODES)
