"""`DynamicBatcher.attach_search`: the Search requests of one engine batch get ONE gallery search call on the
worker, each its own result; plain embedding requests in the same batch still get their rows; a failing
search fails only the requests that asked for it. And `RetrievalService.search` goes that way."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from serving.batcher import DynamicBatcher


def _embed(images: np.ndarray) -> np.ndarray:
    return images[:, 0, 0, :1].astype(np.float32)  # row i = the first pixel value of image i


def _image(value: int) -> np.ndarray:
    return np.full((1, 2, 2, 3), value, dtype=np.uint8)


def test_one_search_call_per_batch_and_each_caller_gets_its_own_result() -> None:
    calls: list[tuple[list[float], list[str]]] = []
    threads: set[str] = set()

    def search(rows: np.ndarray, queries: list[str]) -> list[str]:
        calls.append((rows[:, 0].tolist(), list(queries)))
        threads.add(threading.current_thread().name)
        return [f"{q}:{int(r)}" for r, q in zip(rows[:, 0], queries, strict=True)]

    # 4 requests, batches of 4 within a long window: the batch closes full, so all 4 share it
    with DynamicBatcher(_embed, max_batch=4, max_wait_ms=10_000, thread_init=lambda: threads.add("init")) as batcher:
        batcher.attach_search(search)
        with ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(batcher.run, _image(v), None, f"q{v}") for v in (1, 2, 3)]
            plain = pool.submit(batcher.run, _image(9))
            results = [f.result(timeout=30) for f in futures]
        assert results == ["q1:1", "q2:2", "q3:3"]
        assert plain.result(timeout=30).tolist() == [[9.0]]  # embedded in the same batch, not searched
    assert len(calls) == 1 and sorted(calls[0][1]) == ["q1", "q2", "q3"]
    assert sorted(calls[0][0]) == [1.0, 2.0, 3.0]
    assert threads == {"init", "cdd-batcher-0"}  # thread_init and the search ran on the worker


def test_a_failing_search_fails_only_the_searching_requests() -> None:
    def search(rows: np.ndarray, queries: list[str]) -> list[str]:
        raise RuntimeError("index gone")

    with DynamicBatcher(_embed, max_batch=2, max_wait_ms=10_000) as batcher:
        batcher.attach_search(search)
        with ThreadPoolExecutor(2) as pool:
            searching = pool.submit(batcher.run, _image(1), None, "q")
            plain = pool.submit(batcher.run, _image(2))
            with pytest.raises(RuntimeError, match="index gone"):
                searching.result(timeout=30)
            assert plain.result(timeout=30).tolist() == [[2.0]]


def test_queries_queued_without_pixels_are_decoded_on_the_worker_and_a_bad_one_fails_alone() -> None:
    decoded_on: set[str] = set()

    def decode(query: int) -> np.ndarray:
        decoded_on.add(threading.current_thread().name)
        if query < 0:
            raise ValueError(f"query {query}: not an image")
        return _image(query)[0]

    def search(rows: np.ndarray, queries: list[int]) -> list[float]:
        return [float(r) for r in rows[:, 0]]

    with DynamicBatcher(_embed, max_batch=3, max_wait_ms=10_000) as batcher:
        batcher.attach_search(search, decode)
        with ThreadPoolExecutor(3) as pool:
            futures = {q: pool.submit(batcher.run, None, None, q) for q in (4, -1, 5)}
            with pytest.raises(ValueError, match="query -1: not an image"):
                futures[-1].result(timeout=30)
            assert [futures[q].result(timeout=30) for q in (4, 5)] == [4.0, 5.0]
        assert batcher.stats().batches == 1 and batcher.stats().images == 2  # one engine call for the good two
    assert decoded_on == {"cdd-batcher-0"}
