"""faiss-gpu decisions on a CPU: filters, IVF-PQ parameters and the GPU lock, driven by a described GPU.

`StandInGpu` is a `FaissGpu` capability whose "GPU copy" is a CPU clone that behaves the way the faiss GPU
sources say a classic GPU index does: it ignores ``SearchParameters.sel`` (unless told it is a cuVS build),
and it records whether the searcher held its GPU lock at every call. The searcher, the CPU FAISS index and
the selectors are the real ones.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

import faiss
import numpy as np
import pytest

from serving.index.faiss_gpu import FaissGpu, gpu_pq_choice, ivfpq_gpu_problem
from serving.index.faiss_searcher import FaissSearcher

DIM = 32


def _unit(n: int, seed: int, dim: int = DIM) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


class _GpuReplica:
    """A CPU clone standing in for a GPU index: same results; ``params.sel`` ignored unless ``honours_sel``."""

    def __init__(self, index, stand_in: StandInGpu) -> None:
        self._index, self._stand_in = faiss.clone_index(index), stand_in

    def search(self, x, k, params=None):
        self._stand_in.calls.append(("search", self._stand_in.lock_held()))
        if params is not None and not self._stand_in.filtered_search:
            nprobe = getattr(params, "nprobe", None)
            params = faiss.SearchParametersIVF(nprobe=nprobe) if nprobe else None  # sel dropped, as on a GPU
        return self._index.search(x, k, params=params)

    def add_with_ids(self, x, ids):
        self._stand_in.calls.append(("add", self._stand_in.lock_held()))
        self._index.add_with_ids(x, ids)

    def remove_ids(self, ids):
        self._stand_in.calls.append(("remove", self._stand_in.lock_held()))
        return self._index.remove_ids(ids)


@dataclass(frozen=True)
class StandInGpu(FaissGpu):
    calls: list = field(default_factory=list, compare=False)
    copies: list = field(default_factory=list, compare=False)
    searcher: list = field(default_factory=list, compare=False)
    copy_gate: threading.Event | None = field(default=None, compare=False)

    def lock_held(self) -> bool:
        return bool(self.searcher) and self.searcher[0]._gpu_lock.locked()

    def copy(self, index, device, float16_tables):
        self.copies.append({"device": device, "float16_tables": float16_tables, "lock_held": self.lock_held()})
        if self.copy_gate is not None:
            self.copy_gate.wait(0.5)  # a second thread copying meanwhile would be recorded as a second copy
        return object(), _GpuReplica(index, self)


def _searcher(index_type: str, gpu: StandInGpu, options: dict | None = None, n: int = 400) -> FaissSearcher:
    searcher = FaissSearcher(index_type, DIM, options or {"nlist": 4, "nprobe": 4}, use_gpu=True, gpu=gpu)
    gpu.searcher.append(searcher)
    vectors = _unit(n, 0)
    if index_type != "flat":
        searcher.train(vectors)
    searcher.add(vectors, np.arange(n, dtype=np.int64))
    return searcher


@pytest.mark.parametrize("index_type", ["flat", "ivf"])
def test_filtered_search_on_a_classic_gpu_runs_on_the_cpu_index(index_type):
    gpu = StandInGpu(devices=1)
    searcher = _searcher(index_type, gpu)
    queries, allowed = _unit(3, 1), np.arange(0, 400, 7, dtype=np.int64)
    searcher.search(queries, 5)
    assert [c[0] for c in gpu.calls] == ["search"] and len(gpu.copies) == 1  # unfiltered: the GPU copy
    scores, labels = searcher.search(queries, 5, allowed=allowed)
    assert [c[0] for c in gpu.calls] == ["search"]  # filtered: not the GPU copy, which would ignore the filter
    assert np.isin(labels, allowed).all()
    exact = (queries @ _unit(400, 0)[allowed].T).argsort(axis=1)[:, ::-1][:, :5]
    np.testing.assert_array_equal(labels, allowed[exact])  # ivf probes all 4 lists: exact as well


def test_filtered_search_on_a_cuvs_gpu_with_selectors_stays_on_the_gpu():
    gpu = StandInGpu(devices=1, cuvs=True, filtered_search=True)
    searcher = _searcher("flat", gpu)
    allowed = np.arange(0, 400, 7, dtype=np.int64)
    _, labels = searcher.search(_unit(3, 1), 5, allowed=allowed)
    assert [c[0] for c in gpu.calls] == ["search"] and np.isin(labels, allowed).all()


def test_a_k_beyond_gpu_selection_runs_on_the_cpu_index():
    gpu = StandInGpu(devices=1, max_k=8)
    searcher = _searcher("flat", gpu)
    _, labels = searcher.search(_unit(2, 1), 9)
    assert gpu.calls == [] and (labels >= 0).all()
    searcher.search(_unit(2, 1), 8)
    assert [c[0] for c in gpu.calls] == ["search"]


def test_ivfpq_rules_from_the_faiss_gpu_sources():
    classic, cuvs = FaissGpu(devices=1), FaissGpu(devices=1, cuvs=True)
    assert ivfpq_gpu_problem(classic, 512, 128, 8) == ("GPU IVF-PQ supports m in (1, 2, 3, 4, 8, 12, 16, 20, 24, 28, "
                                                       "32, 40, 48, 56, 64, 96) (found m=128)")
    assert ivfpq_gpu_problem(classic, 512, 64, 6) == "GPU IVF-PQ needs pq_nbits=8 (found 6)"
    assert ivfpq_gpu_problem(classic, 512, 64, 8) is None and ivfpq_gpu_problem(classic, 512, 48, 8) == (
        "m=48 does not divide the dimension 512")
    small = FaissGpu(devices=1, shared_memory_bytes=32 * 1024)
    assert ivfpq_gpu_problem(small, 384, 48, 8) == ("GPU IVF-PQ lookup tables need 49152 bytes of shared memory "
                                                    "per block, the device has 32768")
    assert ivfpq_gpu_problem(cuvs, 512, 128, 6) is None and "multiple of 8" in ivfpq_gpu_problem(cuvs, 512, 1, 5)
    assert gpu_pq_choice(classic, 512, 10_000) == (64, 8) and gpu_pq_choice(classic, 512, 255) is None


def test_ivfpq_the_gpu_cannot_hold_stays_on_the_cpu_with_one_log_line(caplog):
    gpu = StandInGpu(devices=1)
    caplog.set_level(logging.WARNING, logger="serving.index")
    searcher = _searcher("ivfpq", gpu, {"nlist": 4, "nprobe": 4, "pq_m": 8, "pq_nbits": 4})
    for _ in range(3):
        _, labels = searcher.search(_unit(2, 1), 5)
    assert gpu.copies == [] and gpu.calls == [] and (labels >= 0).all()
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["ivfpq index stays on the CPU: GPU IVF-PQ needs pq_nbits=8 (found 4)"]
    assert searcher.describe()["gpu_refused"] == "GPU IVF-PQ needs pq_nbits=8 (found 4)"


def test_ivfpq_defaults_chosen_for_the_gpu_go_there():
    gpu = StandInGpu(devices=1)
    searcher = _searcher("ivfpq", gpu, {"nlist": 2, "nprobe": 2}, n=600)
    assert (searcher.options["pq_m"], searcher.options["pq_nbits"]) == (8, 8)  # largest supported m <= 32 / 4
    searcher.search(_unit(2, 1), 5)
    assert [c[0] for c in gpu.calls] == ["search"] and gpu.copies[0]["float16_tables"] is False
    assert "gpu_refused" not in searcher.describe()


def test_every_gpu_use_holds_the_lock_and_concurrent_searches_copy_once():
    gate = threading.Event()
    gpu = StandInGpu(devices=1, copy_gate=gate)
    searcher = _searcher("flat", gpu)
    errors: list[BaseException] = []

    def search() -> None:
        try:
            searcher.search(_unit(2, 1), 5)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=search) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    searcher.add(_unit(1, 5), np.array([1000], dtype=np.int64))
    searcher.remove(np.array([1000], dtype=np.int64))
    assert not errors and len(gpu.copies) == 1 and gpu.copies[0]["lock_held"]
    assert [c[0] for c in gpu.calls] == ["search"] * 4 + ["add", "remove"]
    assert all(held for _, held in gpu.calls)


@pytest.mark.gpu
def test_real_faiss_gpu_filters_and_ivfpq_decisions(caplog):
    """On a machine where faiss sees a GPU: the same decisions with the detected capability."""
    from serving.index.faiss_searcher import faiss_gpu_count

    if faiss_gpu_count() == 0:
        pytest.skip("faiss sees no GPU (faiss-cpu, or no CUDA device)")
    vectors, queries, allowed = _unit(2000, 0), _unit(4, 1), np.arange(0, 2000, 13, dtype=np.int64)
    for index_type in ("flat", "ivf"):
        searcher = FaissSearcher(index_type, DIM, {"nlist": 8, "nprobe": 8}, use_gpu=True)
        if index_type != "flat":
            searcher.train(vectors)
        searcher.add(vectors, np.arange(2000, dtype=np.int64))
        scores, labels = searcher.search(queries, 10, allowed=allowed)
        exact = (queries @ vectors[allowed].T).argsort(axis=1)[:, ::-1][:, :10]
        np.testing.assert_array_equal(labels, allowed[exact])
        _, unfiltered = searcher.search(queries, 10)
        np.testing.assert_array_equal(unfiltered, (queries @ vectors.T).argsort(axis=1)[:, ::-1][:, :10])
        assert searcher.describe()["engine"] == "faiss-gpu" and searcher._gpu is not None
    caplog.set_level(logging.WARNING, logger="serving.index")
    pq = FaissSearcher("ivfpq", DIM, {"nlist": 8, "nprobe": 8, "pq_m": 8, "pq_nbits": 6}, use_gpu=True)
    pq.train(vectors)
    pq.add(vectors, np.arange(2000, dtype=np.int64))
    _, labels = pq.search(queries, 10)
    expected = None if FaissGpu.detect().cuvs else "GPU IVF-PQ needs pq_nbits=8 (found 6)"  # cuVS takes 6 bits
    assert (labels >= 0).all() and pq.describe().get("gpu_refused") == expected
    assert (pq._gpu is None) == (expected is not None)
